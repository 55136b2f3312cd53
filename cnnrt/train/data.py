"""Training data: image folders, the bundled digits, splits and preprocessing.

The preprocessing a model is trained with is exactly what its file's
``/meta/preprocess`` tells a reader to do, so ``cnnrt-run`` (which uses
``cnnrt.image.load_image``) feeds the network the same numbers as training
did.  To guarantee it, images are decoded, converted and resized by
``cnnrt.image.load_image`` itself (colour ``L`` or ``RGB``, Pillow bilinear
resize), and the value steps (invert, scale, per-channel mean/std) are
computed here with the same float64 arithmetic in the same order.

* :func:`load_image_folder` reads ``ROOT/<class name>/*.png|jpg|...``;
* :func:`load_digits` builds scikit-learn's bundled 8x8 handwritten digits
  as the dark-on-white 8-bit images their PNG files hold (see
  :func:`digits_images`), resized like any image;
* :func:`stratified_split` holds out a fraction of every class;
* :func:`make_preprocess` / :func:`apply_preprocess` turn raw pixels into
  network inputs.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = [
    "ImageSet", "load_image_folder", "load_digits", "digits_images", "save_digits_folder",
    "stratified_split", "make_preprocess", "apply_preprocess", "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass
class ImageSet:
    """Decoded images before the value steps of preprocessing.

    ``raw`` is (N, H, W, C): pixel values 0..255 after colour conversion and
    resizing (uint8 when they are whole numbers, else float64); ``y`` the
    class index of each image; ``labels`` the class names."""

    raw: np.ndarray
    y: np.ndarray
    labels: List[str]
    color: str
    size: Tuple[int, int]
    source: str
    files: Optional[List[str]] = None
    invert: bool = False
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def input_shape(self):
        return (len(self.color), self.size[0], self.size[1])

    def __len__(self):
        return int(self.y.shape[0])


def _check_size(size):
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be an integer or (H, W), got {size!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ValueError(f"size must be positive integers, got {size!r}")
    return (int(h), int(w))


def _pack_raw(samples):
    raw = np.stack(samples).astype(np.float64)
    if np.array_equal(raw, np.round(raw)) and raw.min() >= 0 and raw.max() <= 255:
        return raw.astype(np.uint8)
    return raw


def list_image_folder(root) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Class names (sorted sub-folder names) and (file, class index) pairs."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise ValueError(f"{root}: not a folder (expected ROOT/<class name>/<images>)")
        raise FileNotFoundError(f"no such folder: {root}")
    classes = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    items = []
    kept = []
    for name in classes:
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder)
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if files:
            kept.append(name)
            idx = len(kept) - 1
            items.extend((os.path.join(folder, f), idx) for f in files)
    if len(kept) < 2:
        raise ValueError(f"{root}: found {len(kept)} class folder(s) with images; an image folder "
                         f"needs ROOT/<class name>/*.png|jpg for at least two classes")
    return kept, items


def _detect_color(files):
    from PIL import Image

    for path in files:
        try:
            with Image.open(path) as img:
                mode = img.mode
                if mode == "P":
                    pal = img.convert("RGB")
                    arr = np.asarray(pal)
                    if not (np.array_equal(arr[..., 0], arr[..., 1])
                            and np.array_equal(arr[..., 1], arr[..., 2])):
                        return "RGB"
                    continue
        except Exception:
            continue  # load_image reports unreadable files with a clear message
        if mode not in _GRAY_MODES:
            return "RGB"
    return "L"


def load_image_folder(root, size=32, color="auto", invert=False) -> ImageSet:
    """Decode every image of ``ROOT/<class>/*`` to ``size`` (H, W) in ``color``.

    ``color`` 'L', 'RGB' or 'auto' (L when every image is grayscale);
    ``invert`` records that inputs are 255 - pixel (for light-on-dark
    models of dark-on-light images).  Unreadable images raise
    ``cnnrt.image.ImageError`` naming the file."""
    from ..image import load_image

    size = _check_size(size)
    if color not in ("auto", "L", "RGB"):
        raise ValueError(f"color must be auto, L or RGB, got {color!r}")
    labels, items = list_image_folder(root)
    files = [f for f, _ in items]
    if color == "auto":
        color = _detect_color(files)
    shape = (len(color), size[0], size[1])
    pre = {"color": color, "resize": list(size)}
    samples = [load_image(f, shape, "NHWC", pre) for f in files]
    y = np.array([c for _, c in items], dtype=np.int64)
    return ImageSet(_pack_raw(samples), y, labels, color, size, os.path.abspath(os.fspath(root)),
                    files, bool(invert))


def digits_images() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits as 8-bit images.

    Returns (images uint8 (1797, 8, 8), labels int64).  The data set stores
    ink as 0..16; the images are dark ink on white, pixel = 255 - round(v *
    255 / 16), which is what a PNG of a digit written on paper looks like.
    Needs scikit-learn (``pip install cnnrt[train]``); no network access."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError:
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn "
                          "(or pip install 'cnnrt[train]')") from None
    d = _sk_digits()
    ink = np.round(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0))
    images = (255 - ink).astype(np.uint8)
    return images, np.asarray(d.target, dtype=np.int64)


def load_digits(size=16) -> ImageSet:
    """The digits as an :class:`ImageSet` of ``size`` (H, W), inverted on input
    (white ink on black, as the network sees it)."""
    from PIL import Image

    from ..image import load_image

    size = _check_size(size)
    images, y = digits_images()
    shape = (1, size[0], size[1])
    pre = {"color": "L", "resize": list(size)}
    samples = [load_image(Image.fromarray(img, mode="L"), shape, "NHWC", pre) for img in images]
    return ImageSet(_pack_raw(samples), y, [str(i) for i in range(10)], "L", size,
                    "scikit-learn digits (8x8 handwritten digits, 1797 images)",
                    invert=True, info={"native_size": [8, 8]})


def save_digits_folder(root, indices=None) -> List[str]:
    """Write the digits as 8x8 PNG files ``ROOT/<digit>/<index>.png``.

    Training on that folder (``cnnrt-train --data ROOT --size 16 --invert``)
    sees the same pixels as ``--dataset digits``."""
    from PIL import Image

    images, y = digits_images()
    if indices is None:
        indices = range(len(y))
    paths = []
    for i in indices:
        folder = os.path.join(os.fspath(root), str(int(y[i])))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{int(i):04d}.png")
        Image.fromarray(images[i], mode="L").save(path)
        paths.append(path)
    return paths


def stratified_split(y, fraction, seed=0) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out): ``fraction`` of every class held out.

    Every class with at least two samples keeps at least one on each side.
    The choice depends only on ``seed`` and the labels."""
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation split must be in [0, 1), got {fraction}")
    y = np.asarray(y)
    rng = np.random.default_rng([int(seed), 2])
    train, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(idx.size)]
        k = int(round(fraction * idx.size))
        if fraction > 0 and idx.size >= 2:
            k = min(max(k, 1), idx.size - 1)
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def make_preprocess(images: ImageSet, train_idx=None, normalize=True) -> Dict[str, object]:
    """The ``/meta/preprocess`` dict for these images: colour, resize, invert,
    scale 1/255 and, with ``normalize``, the mean and standard deviation per
    channel of the training images (after invert and scale)."""
    pre = {"color": images.color, "resize": list(images.size), "invert": int(images.invert),
           "scale": 1.0 / 255.0}
    if normalize:
        raw = images.raw if train_idx is None else images.raw[train_idx]
        x = raw.astype(np.float64)
        if images.invert:
            x = 255.0 - x
        x = x * pre["scale"]
        axes = (0, 1, 2)
        mean = x.mean(axis=axes)
        std = x.std(axis=axes)
        std = np.where(std < 1e-3, 1.0, std)
        pre["mean"] = [float(f"{v:.6g}") for v in mean]
        pre["std"] = [float(f"{v:.6g}") for v in std]
    return pre


def apply_preprocess(raw, pre, dtype=np.float32) -> np.ndarray:
    """Network inputs (N, C, H, W) from raw (N, H, W, C) pixels, with the
    arithmetic of ``cnnrt.image.load_image``: invert, scale, (x - mean) / std
    in float64, then cast."""
    x = np.asarray(raw).astype(np.float64)
    c = x.shape[-1]
    if pre.get("invert"):
        x = 255.0 - x
    scale = float(pre.get("scale", 1.0))
    if scale != 1.0:
        x = x * scale
    mean = np.broadcast_to(np.asarray(pre.get("mean", [0.0]), dtype=np.float64).reshape(-1), (c,))
    std = np.broadcast_to(np.asarray(pre.get("std", [1.0]), dtype=np.float64).reshape(-1), (c,))
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=dtype)
