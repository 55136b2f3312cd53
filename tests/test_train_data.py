"""Training data: image folders, digits, splits, and preprocessing that matches
cnnrt.image.load_image exactly."""
import os

import numpy as np
import pytest
from PIL import Image

from cnnrt.image import load_image
from cnnrt.train.data import (apply_preprocess, list_image_folder, load_image_folder,
                              make_preprocess, save_digits_folder, stratified_split)


def make_folder(root, classes=("cat", "dog", "emu"), per_class=4, mode="L", sizes=((10, 12), (7, 7))):
    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            shape = (h, w) if mode == "L" else (h, w, 3)
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            ext = ".png" if i % 2 == 0 else ".jpg"
            Image.fromarray(arr, mode=mode).save(root / name / f"{i}{ext}")
    (root / "notes.txt").write_text("not a class")
    (root / classes[0] / "readme.md").write_text("not an image")
    return root


def test_image_folder_labels_and_shapes(tmp_path):
    root = make_folder(tmp_path / "data")
    os.makedirs(tmp_path / "data" / "empty")
    labels, items = list_image_folder(root)
    assert labels == ["cat", "dog", "emu"]  # sorted; the empty folder is no class
    assert len(items) == 12
    ds = load_image_folder(root, size=(6, 5))
    assert ds.color == "L" and ds.input_shape == (1, 6, 5)
    assert ds.raw.shape == (12, 6, 5, 1) and ds.raw.dtype == np.uint8
    assert list(ds.y) == [0] * 4 + [1] * 4 + [2] * 4


def test_color_detection(tmp_path):
    root = make_folder(tmp_path / "rgb", mode="RGB")
    assert load_image_folder(root, size=8).color == "RGB"
    assert load_image_folder(root, size=8, color="L").input_shape == (1, 8, 8)


@pytest.mark.parametrize("mode,invert", [("L", False), ("L", True), ("RGB", False)])
def test_preprocessing_matches_load_image_exactly(tmp_path, mode, invert):
    root = make_folder(tmp_path / "d", mode=mode)
    ds = load_image_folder(root, size=(9, 11), invert=invert)
    train, _ = stratified_split(ds.y, 0.25, seed=1)
    pre = make_preprocess(ds, train)
    assert pre["invert"] == int(invert) and pre["resize"] == [9, 11]
    assert len(pre["mean"]) == len(pre["std"]) == len(ds.color)
    x = apply_preprocess(ds.raw, pre)
    for i, path in enumerate(ds.files):
        ref = load_image(path, ds.input_shape, "NCHW", pre)
        np.testing.assert_array_equal(x[i], ref)  # bit for bit: same arithmetic
    # Normalised with the training split's statistics.
    xt = x[train].astype(np.float64)
    assert abs(xt.mean()) < 1e-3 and abs(xt.std() - 1) < 1e-2


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_image_folder(tmp_path / "missing")
    os.makedirs(tmp_path / "one" / "only")
    Image.new("L", (4, 4)).save(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(ValueError, match="at least two classes"):
        load_image_folder(tmp_path / "one")
    root = make_folder(tmp_path / "bad")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(root, size=4)
    with pytest.raises(ValueError, match="size"):
        load_image_folder(root, size=0)


def test_stratified_split():
    y = np.repeat(np.arange(4), [10, 5, 2, 1])
    tr, va = stratified_split(y, 0.2, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == y.size
    assert [int(np.sum(y[va] == c)) for c in range(4)] == [2, 1, 1, 0]
    tr2, va2 = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, stratified_split(y, 0.2, seed=4)[1])
    tr0, va0 = stratified_split(y, 0.0)
    assert va0.size == 0 and tr0.size == y.size
    with pytest.raises(ValueError, match="split"):
        stratified_split(y, 1.0)


def test_digits(tmp_path):
    pytest.importorskip("sklearn")
    from cnnrt.train.data import digits_images, load_digits

    images, y = digits_images()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    # Dark ink on white paper: the border is mostly background (255).
    assert np.median(images[:, :, 0]) == 255
    ds = load_digits(16)
    assert ds.input_shape == (1, 16, 16) and ds.invert and ds.labels == [str(i) for i in range(10)]
    # A saved digit PNG goes through load_image to exactly the training input.
    paths = save_digits_folder(tmp_path / "digits", indices=[5, 700])
    pre = make_preprocess(ds)
    x = apply_preprocess(ds.raw[[5, 700]], pre)
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(load_image(p, (1, 16, 16), "NCHW", pre), x[i])
    assert os.path.basename(os.path.dirname(paths[1])) == str(y[700])
