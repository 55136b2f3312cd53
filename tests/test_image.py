"""Image decoding and preprocessing (cnnrt.image) against NumPy references.

Every test builds a picture with NumPy, stores it (PNG, JPEG) or passes it
as a PIL image, and compares ``load_image`` with the expected array
computed here: colour conversions by their formulas, bilinear resizing by a
float64 implementation of Pillow's filter, and the value arithmetic
(invert, scale, mean/std) in float64.
"""
import io
import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image

from cnnrt.image import ImageError, load_image, load_images

RNG_SEED = 1234


def rng():
    return np.random.default_rng(RNG_SEED)


def save(tmp_path, img, name="img.png", **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def chw(a):
    """(H, W) or (H, W, C) -> (C, H, W) float64."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    return a.transpose(2, 0, 1)


# --------------------------------------------------------------------------
# Reference bilinear resize (Pillow's separable triangle filter, which widens
# the triangle by the scale factor when shrinking), in float64.
# --------------------------------------------------------------------------

def _bilinear_matrix(n_in, n_out):
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = fscale
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) / fscale))
        m[i, lo:hi] = w / w.sum()
    return m


def ref_resize(a, h, w):
    """Resize (H, W[, C]) float64 to (h, w[, C])."""
    a = np.asarray(a, dtype=np.float64)
    rows = _bilinear_matrix(a.shape[0], h)
    cols = _bilinear_matrix(a.shape[1], w)
    return np.einsum("ih,hw...,jw->ij...", rows, a, cols)


def luma(rgb):
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# --------------------------------------------------------------------------
# Modes and colour conversion
# --------------------------------------------------------------------------

def test_gray_png_is_exact(tmp_path):
    a = rng().integers(0, 256, (13, 21), dtype=np.uint8)
    x = load_image(save(tmp_path, Image.fromarray(a)), (1, 13, 21))
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert x.shape == (1, 13, 21)
    np.testing.assert_array_equal(x, chw(a))


def test_rgb_png_is_exact(tmp_path):
    a = rng().integers(0, 256, (9, 7, 3), dtype=np.uint8)
    x = load_image(save(tmp_path, Image.fromarray(a)), (3, 9, 7))
    np.testing.assert_array_equal(x, chw(a))


def test_rgb_to_gray_uses_luma(tmp_path):
    a = rng().integers(0, 256, (11, 12, 3), dtype=np.uint8)
    x = load_image(save(tmp_path, Image.fromarray(a)), (1, 11, 12), preprocess={"color": "L"})
    np.testing.assert_allclose(x[0], luma(a), atol=0.51)


def test_gray_to_rgb_repeats_the_value(tmp_path):
    a = rng().integers(0, 256, (5, 6), dtype=np.uint8)
    x = load_image(save(tmp_path, Image.fromarray(a)), (3, 5, 6))
    assert x.shape == (3, 5, 6)
    for c in range(3):
        np.testing.assert_array_equal(x[c], a)


def test_default_color_follows_channel_count(tmp_path):
    a = rng().integers(0, 256, (6, 6, 3), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(a))
    np.testing.assert_allclose(load_image(path, (1, 6, 6))[0], luma(a), atol=0.51)
    np.testing.assert_array_equal(load_image(path, (3, 6, 6)), chw(a))


def _alpha_values(shape):
    alpha = rng().integers(0, 256, shape, dtype=np.uint8)
    alpha[0, :] = 0
    alpha[1, :] = 255
    return alpha


def test_rgba_is_composited_over_white(tmp_path):
    rgb = rng().integers(0, 256, (8, 10, 3), dtype=np.uint8)
    alpha = _alpha_values((8, 10))
    img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    x = load_image(save(tmp_path, img), (3, 8, 10))
    a = alpha[:, :, None] / 255.0
    expected = rgb * a + 255.0 * (1.0 - a)
    np.testing.assert_allclose(x, chw(expected), atol=1.0)
    np.testing.assert_array_equal(x[:, 0, :], 255.0)  # transparent: white, whatever the colour
    np.testing.assert_array_equal(x[:, 1, :], chw(rgb)[:, 1, :])  # opaque: the colour


def test_la_is_composited_over_white(tmp_path):
    gray = rng().integers(0, 256, (8, 10), dtype=np.uint8)
    alpha = _alpha_values((8, 10))
    img = Image.fromarray(np.dstack([gray, alpha]), "LA")
    x = load_image(save(tmp_path, img), (1, 8, 10))
    a = alpha / 255.0
    np.testing.assert_allclose(x[0], gray * a + 255.0 * (1.0 - a), atol=1.0)
    x3 = load_image(save(tmp_path, img), (3, 8, 10))
    for c in range(3):
        np.testing.assert_allclose(x3[c], x[0], atol=1.0)


def _palette_image(idx, palette):
    img = Image.fromarray(idx.astype(np.uint8), "P")
    img.putpalette(palette.reshape(-1).tolist())
    return img


def test_palette_image_uses_its_palette(tmp_path):
    palette = rng().integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng().integers(0, 16, (9, 11))
    path = save(tmp_path, _palette_image(idx, palette))
    assert Image.open(path).mode == "P"
    x = load_image(path, (3, 9, 11))
    np.testing.assert_array_equal(x, chw(palette[idx]))
    xl = load_image(path, (1, 9, 11))
    np.testing.assert_allclose(xl[0], luma(palette[idx]), atol=0.51)


def test_palette_transparency_is_white(tmp_path):
    palette = rng().integers(0, 200, (4, 3), dtype=np.uint8)
    idx = rng().integers(0, 4, (6, 7))
    idx[0, 0] = 0
    path = save(tmp_path, _palette_image(idx, palette), "t.png", transparency=0)
    x = load_image(path, (3, 6, 7))
    expected = palette[idx].astype(np.float64)
    expected[idx == 0] = 255.0
    np.testing.assert_array_equal(x, chw(expected))


def test_gif_palette(tmp_path):
    palette = rng().integers(0, 256, (8, 3), dtype=np.uint8)
    idx = rng().integers(0, 8, (10, 10))
    path = save(tmp_path, _palette_image(idx, palette), "img.gif")
    np.testing.assert_array_equal(load_image(path, (3, 10, 10)), chw(palette[idx]))


def test_cmyk_jpeg(tmp_path):
    # flat 16x16 blocks of CMYK colours; JPEG keeps flat blocks nearly exact
    colours = np.array([[0, 0, 0, 0], [255, 0, 0, 0], [0, 128, 0, 64],
                        [30, 60, 90, 120], [200, 10, 250, 0], [0, 0, 0, 255]], dtype=np.uint8)
    cmyk = np.repeat(np.repeat(colours[None], 16, axis=0), 16, axis=1)  # 16 x 96 x 4
    path = save(tmp_path, Image.fromarray(cmyk, "CMYK"), "c.jpg", quality=100, subsampling=0)
    assert Image.open(path).mode == "CMYK"
    x = load_image(path, (3, 16, 96))
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    expected = np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)]) / 255
    np.testing.assert_allclose(x, expected, atol=4.0)


@pytest.mark.parametrize("mode,dtype", [("I;16", "<u2"), ("I;16B", ">u2")])
def test_16bit_gray_is_scaled_not_clipped(tmp_path, mode, dtype):
    a = rng().integers(0, 65536, (7, 9)).astype(np.uint16)
    a[0, :4] = [0, 257, 32768, 65535]
    img = Image.frombytes(mode, (9, 7), a.astype(dtype).tobytes())
    expected = a * (255.0 / 65535.0)
    np.testing.assert_allclose(load_image(img, (1, 7, 9))[0], expected, rtol=1e-6, atol=1e-4)
    path = save(tmp_path, img)
    assert Image.open(path).mode.startswith("I")
    x = load_image(path, (1, 7, 9))
    np.testing.assert_allclose(x[0], expected, rtol=1e-6, atol=1e-4)
    assert x[0, 0, 1] == pytest.approx(1.0) and x[0, 0, 3] == pytest.approx(255.0)
    x3 = load_image(path, (3, 7, 9))
    np.testing.assert_allclose(x3, np.repeat(x, 3, axis=0))


def test_16bit_gray_resize_keeps_fractions(tmp_path):
    a = rng().integers(0, 65536, (20, 30)).astype(np.uint16)
    path = save(tmp_path, Image.fromarray(a))
    x = load_image(path, (1, 11, 13))
    np.testing.assert_allclose(x[0], ref_resize(a * (255.0 / 65535.0), 11, 13), atol=1e-3)


def test_32bit_int_image(tmp_path):
    a = rng().integers(0, 65536, (5, 6)).astype(np.int32)
    x = load_image(Image.fromarray(a, "I"), (1, 5, 6))
    np.testing.assert_allclose(x[0], a * (255.0 / 65535.0), rtol=1e-6, atol=1e-4)
    a[2, 3] = 70000
    with pytest.raises(ImageError, match="0..65535"):
        load_image(Image.fromarray(a, "I"), (1, 5, 6))


def test_float_image_is_taken_as_0_to_255():
    a = rng().uniform(-10, 300, (4, 5)).astype(np.float32)
    x = load_image(Image.fromarray(a, "F"), (1, 4, 5))
    np.testing.assert_array_equal(x[0], a)
    a[1, 1] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        load_image(Image.fromarray(a, "F"), (1, 4, 5))


def test_premultiplied_alpha_modes():
    # La / RGBa store colour * alpha / 255; over white: c*a/255 + 255*(1 - a/255)
    x = load_image(Image.new("La", (2, 2), (50, 128)), (1, 2, 2))
    np.testing.assert_allclose(x[0], 50 + 255 * (1 - 128 / 255), atol=1.0)
    x = load_image(Image.new("RGBa", (2, 2), (50, 100, 0, 128)), (3, 2, 2))
    np.testing.assert_allclose(x[:, 0, 0], np.array([50, 100, 0]) + 255 * (1 - 128 / 255), atol=1.0)


def test_lab_is_refused():
    with pytest.raises(ImageError, match="LAB"):
        load_image(Image.new("LAB", (2, 2)), (3, 2, 2))


def test_one_bit_image(tmp_path):
    bits = rng().integers(0, 2, (12, 17)).astype(bool)
    img = Image.fromarray(bits)
    assert img.mode == "1"
    path = save(tmp_path, img)
    assert Image.open(path).mode == "1"
    x = load_image(path, (1, 12, 17))
    np.testing.assert_array_equal(x[0], np.where(bits, 255.0, 0.0))


# --------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------

ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise to display
    7: lambda a: a[::-1, ::-1].T,
    8: lambda a: np.rot90(a, 1),   # rotate 90 degrees counter-clockwise
}


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_png(tmp_path, orientation):
    a = rng().integers(0, 256, (6, 10), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(a), exif=_exif(orientation))
    expected = ORIENTATIONS[orientation](a)
    x = load_image(path, (1,) + expected.shape)
    np.testing.assert_array_equal(x[0], expected)


def test_exif_rotation_jpeg(tmp_path):
    # 48 wide x 32 tall, four flat quadrants; orientation 6 displays it 32 x 48
    a = np.zeros((32, 48), dtype=np.uint8)
    a[:16, :24], a[:16, 24:], a[16:, :24], a[16:, 24:] = 20, 90, 160, 230
    path = save(tmp_path, Image.fromarray(a), "r.jpg", quality=95, exif=_exif(6))
    x = load_image(path, (1, 48, 32))
    expected = np.rot90(a, -1)
    np.testing.assert_allclose(x[0], expected, atol=6)
    assert abs(x[0, 0, -1] - 20) < 6 and abs(x[0, 0, 0] - 160) < 6  # top row: top-left quadrant at right


def test_exif_orientation_of_a_pil_image():
    a = rng().integers(0, 256, (4, 9), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", exif=_exif(8))
    img = Image.open(io.BytesIO(buf.getvalue()))
    np.testing.assert_array_equal(load_image(img, (1, 9, 4))[0], np.rot90(a, 1))
    assert img.size == (9, 4)  # the caller's image is not changed


# --------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [((40, 30), (17, 23)), ((10, 8), (25, 19)), ((33, 33), (32, 32)),
                                     ((16, 64), (16, 20))])
def test_resize_is_bilinear(tmp_path, src, dst):
    a = rng().integers(0, 256, src, dtype=np.uint8)
    x = load_image(save(tmp_path, Image.fromarray(a)), (1,) + dst)
    expected = ref_resize(a, *dst)
    diff = np.abs(x[0] - expected)
    assert diff.max() <= 1.0 and diff.mean() < 0.35


def test_resize_rgb(tmp_path):
    a = rng().integers(0, 256, (21, 34, 3), dtype=np.uint8)
    x = load_image(save(tmp_path, Image.fromarray(a)), (3, 13, 8), preprocess={"resize": [13, 8]})
    diff = np.abs(x - chw(ref_resize(a, 13, 8)))
    assert diff.max() <= 1.0 and diff.mean() < 0.35


def test_resize_key_and_default_agree(tmp_path):
    a = rng().integers(0, 256, (50, 20, 3), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(a))
    np.testing.assert_array_equal(load_image(path, (3, 12, 14), preprocess={"resize": (12, 14)}),
                                  load_image(path, (3, 12, 14)))


def test_resize_must_match_input_shape(tmp_path):
    path = save(tmp_path, Image.new("L", (8, 8)))
    with pytest.raises(ValueError, match="resize"):
        load_image(path, (1, 8, 8), preprocess={"resize": [16, 16]})


# --------------------------------------------------------------------------
# Values and layout
# --------------------------------------------------------------------------

IMAGENET = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_invert_scale_mean_std(tmp_path):
    a = rng().integers(0, 256, (6, 9, 3), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(a))
    x = load_image(path, (3, 6, 9), preprocess=dict(IMAGENET, invert=1))
    mean = np.array(IMAGENET["mean"])
    std = np.array(IMAGENET["std"])
    expected = ((255.0 - a) / 255.0 - mean) / std
    np.testing.assert_allclose(x, chw(expected), rtol=1e-6, atol=1e-6)
    x = load_image(path, (3, 6, 9), preprocess=IMAGENET)
    np.testing.assert_allclose(x, chw((a / 255.0 - mean) / std), rtol=1e-6, atol=1e-6)


def test_single_mean_std_and_scale(tmp_path):
    a = rng().integers(0, 256, (5, 5), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(a))
    pre = {"color": "L", "scale": 0.5, "mean": [10.0], "std": 4.0, "invert": 1}
    x = load_image(path, (1, 5, 5), preprocess=pre)
    np.testing.assert_allclose(x[0], ((255.0 - a) * 0.5 - 10.0) / 4.0, rtol=1e-6)
    x3 = load_image(path, (3, 5, 5), preprocess={"mean": 100, "std": (2,)})
    np.testing.assert_allclose(x3, np.repeat((a[None] - 100.0) / 2.0, 3, axis=0), rtol=1e-6)


def test_none_values_mean_defaults(tmp_path):
    a = rng().integers(0, 256, (5, 5), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(a))
    x = load_image(path, (1, 5, 5), preprocess={"color": None, "scale": None, "mean": None,
                                                "std": None, "invert": None, "resize": None})
    np.testing.assert_array_equal(x[0], a)


def test_nhwc_layout(tmp_path):
    a = rng().integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(a))
    x = load_image(path, (3, 9, 4), layout="NHWC", preprocess=IMAGENET)
    assert x.shape == (9, 4, 3) and x.flags.c_contiguous and x.dtype == np.float32
    expected = (ref_resize(a, 9, 4) / 255.0 - np.array(IMAGENET["mean"])) / np.array(IMAGENET["std"])
    np.testing.assert_allclose(x, expected, atol=1.0 / 255 / 0.224 + 1e-6)
    np.testing.assert_array_equal(x, load_image(path, (3, 9, 4), preprocess=IMAGENET).transpose(1, 2, 0))


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------

def test_every_kind_of_source_gives_the_same_array(tmp_path):
    a = rng().integers(0, 256, (10, 12, 3), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(a))
    data = path.read_bytes()
    expected = chw(a)
    with open(path, "rb") as fh:
        from_file = load_image(fh, (3, 10, 12))
    sources = [str(path), pathlib.Path(path), data, bytearray(data), memoryview(data),
               io.BytesIO(data), Image.open(path), Image.fromarray(a)]
    for src in sources:
        np.testing.assert_array_equal(load_image(src, (3, 10, 12)), expected)
    np.testing.assert_array_equal(from_file, expected)


def test_load_images_stacks_a_batch(tmp_path):
    imgs = [rng().integers(0, 256, (8, 8), dtype=np.uint8) + i for i in range(3)]
    paths = [save(tmp_path, Image.fromarray(a.astype(np.uint8)), f"{i}.png") for i, a in enumerate(imgs)]
    batch = load_images(paths, (1, 8, 8), preprocess={"scale": 2.0})
    assert batch.shape == (3, 1, 8, 8) and batch.dtype == np.float32
    for i, a in enumerate(imgs):
        np.testing.assert_array_equal(batch[i, 0], a.astype(np.uint8) * 2.0)
    nhwc = load_images(paths, (1, 8, 8), "NHWC")
    assert nhwc.shape == (3, 8, 8, 1)
    with pytest.raises(ValueError):
        load_images([], (1, 8, 8))
    with pytest.raises(ValueError):
        load_images(str(paths[0]), (1, 8, 8))


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

def _noise_png(tmp_path, name="noise.png"):
    a = rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return save(tmp_path, Image.fromarray(a), name)


def _one_line(exc):
    msg = str(exc)
    assert "\n" not in msg and msg
    return msg


def test_corrupt_bytes():
    data = rng().integers(0, 256, 500, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError) as info:
        load_image(data, (1, 8, 8))
    assert _one_line(info.value).startswith("<bytes>:")
    assert isinstance(info.value, ValueError)


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ImageError) as info:
        load_image(path, (1, 8, 8))
    assert str(path) in _one_line(info.value)


def test_truncated_png(tmp_path):
    data = _noise_png(tmp_path).read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        load_image(path, (3, 64, 64))
    assert _one_line(info.value).startswith(str(path))


def test_truncated_jpeg(tmp_path):
    a = rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(tmp_path, Image.fromarray(a), "a.jpg").read_bytes()
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 2], (3, 64, 64))


def test_empty_inputs(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty") as info:
        load_image(path, (1, 8, 8))
    assert str(path) in _one_line(info.value)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"", (1, 8, 8))
    with pytest.raises(ImageError, match="empty"):
        load_image(io.BytesIO(), (1, 8, 8))


def test_missing_file_is_file_not_found(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(path, (1, 8, 8))


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path, (1, 8, 8))


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    default = Image.MAX_IMAGE_PIXELS
    path = save(tmp_path, Image.new("L", (30, 20)))
    load_image(path, (1, 4, 4))
    assert Image.MAX_IMAGE_PIXELS == default  # loading leaves the protection as it was
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape either
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over the limit: Pillow warns
        with pytest.raises(ImageError, match="decompression") as info:
            load_image(path, (1, 4, 4))
        assert str(path) in _one_line(info.value)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # over twice the limit: Pillow raises
        with pytest.raises(ImageError, match="decompression"):
            load_image(path.read_bytes(), (1, 4, 4))
        with pytest.raises(ImageError, match="decompression"):
            load_image(Image.new("L", (30, 20)), (1, 4, 4))


@pytest.mark.parametrize("kwargs,match", [
    ({"input_shape": (2, 8, 8)}, "channels"),
    ({"input_shape": (1, 8)}, "input_shape"),
    ({"input_shape": (1, 0, 8)}, "input_shape"),
    ({"layout": "CHW"}, "layout"),
    ({"preprocess": {"color": "RGB"}}, "color"),
    ({"preprocess": {"color": "CMYK"}}, "color"),
    ({"preprocess": {"scael": 1.0}}, "unknown"),
    ({"preprocess": {"std": [1.0, 0.0, 1.0]}, "input_shape": (3, 8, 8)}, "std"),
    ({"preprocess": {"mean": [1.0, 2.0]}, "input_shape": (3, 8, 8)}, "mean"),
    ({"preprocess": {"invert": 2}}, "invert"),
    ({"preprocess": {"scale": float("nan")}}, "scale"),
    ({"preprocess": {"resize": [8]}}, "resize"),
    ({"preprocess": "L"}, "preprocess"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    path = save(tmp_path, Image.new("L", (8, 8)))
    args = {"input_shape": (1, 8, 8), "layout": "NCHW", "preprocess": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        load_image(path, **args)


def test_bad_source_types(tmp_path):
    path = save(tmp_path, Image.new("L", (8, 8)))
    with pytest.raises(ValueError, match="path, bytes"):
        load_image(12, (1, 8, 8))
    with open(path, "r", encoding="latin-1") as fh:
        with pytest.raises(ValueError, match="binary"):
            load_image(fh, (1, 8, 8))
