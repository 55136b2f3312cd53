"""Decoding images and preprocessing them into a model's input tensor.

``load_image(src, input_shape, layout, preprocess)`` turns one picture into
one sample for ``Model.predict``; ``load_images`` stacks a batch.  The steps,
in order:

1. **Decode** with Pillow.  ``src`` is a path (``str`` or ``os.PathLike``),
   ``bytes``/``bytearray``/``memoryview``, a binary file object, or a
   ``PIL.Image.Image``.  Only the first frame of a multi-frame file (GIF,
   TIFF) is used.  Pillow's decompression-bomb protection stays on: an image
   of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused (the
   ``DecompressionBombWarning`` Pillow gives for it is treated as an error),
   and truncated files are refused too (``ImageFile.LOAD_TRUNCATED_IMAGES``
   is left as it is, normally off).  Other warnings Pillow gives while
   decoding (metadata it skipped) are silenced.
2. **Orient** by the EXIF ``Orientation`` tag (``ImageOps.exif_transpose``).
   An EXIF block that cannot be parsed is ignored: the pixels are used as
   stored.
3. **Colour.**  ``preprocess["color"]`` is ``"L"`` (grayscale) or ``"RGB"``;
   without it, ``L`` is used for a 1-channel input and ``RGB`` for a
   3-channel one (any other channel count cannot be filled from an image).
   Conversions follow Pillow: RGB to L is the ITU-R 601-2 luma
   ``L = 0.299 R + 0.587 G + 0.114 B``; palette images use their palette;
   CMYK uses Pillow's conversion (no colour profile), as do YCbCr and HSV;
   1-bit images are 0 or 255; gray to RGB repeats the gray value.  LAB
   images are refused (Pillow has no conversion from LAB to RGB).
   *Transparency* (``RGBA``, ``LA``, ``PA``, palette or single-colour
   transparency) is composited over a **white** background, then the alpha
   channel is dropped: a transparent pixel reads as white whatever colour
   value it happens to store.
   *High bit depths* are scaled, not clipped: 16-bit grayscale (``I;16``,
   ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit integer ``I`` images (read as
   16-bit values, which must lie in 0..65535) become ``x * 255 / 65535``;
   float ``F`` images are taken as already on the 0..255 scale, as Pillow's
   own conversions take them, and must be finite.  These keep their
   fractional values through resizing.
4. **Resize** with Pillow's bilinear filter to ``preprocess["resize"]``
   (``[H, W]``, which must equal the input's ``H, W``); without ``resize``,
   an image whose size differs from the input's ``H, W`` is resized to it as
   well (the aspect ratio is not kept, nothing is cropped).
5. **Values.**  Pixels are 0..255 numbers.  With ``invert`` 1 each becomes
   ``255 - x``; then ``x * scale`` (default 1); then ``(x - mean) / std``
   per channel (``mean``/``std``: one value, or one per channel; defaults 0
   and 1).  The arithmetic is done in float64; the result is a C-contiguous
   float32 array ``(C, H, W)`` for ``NCHW`` or ``(H, W, C)`` for ``NHWC``.

Errors: a missing file raises ``FileNotFoundError`` (as a missing model file
does); an image that cannot be read, is empty, truncated, corrupt, too large
or of an unsupported mode raises :class:`ImageError`, a ``ValueError`` whose
one-line message starts with the file name (``<bytes>``, ``<file object>``,
``<PIL image>`` for other sources) and says what is wrong.  Bad arguments
(shape, layout, preprocessing settings) raise ``ValueError``.
"""
import io
import math
import os
import warnings
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["ImageError", "load_image", "load_images"]

COLORS = ("L", "RGB")
LAYOUTS = ("NCHW", "NHWC")
PREPROCESS_KEYS = ("color", "resize", "scale", "mean", "std", "invert")

_UINT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_UINT16_SCALE = 255.0 / 65535.0
# Pillow decodes these but has no colour conversion for them.
_UNSUPPORTED_MODES = ("LAB",)


class ImageError(ValueError):
    """An image cannot be used: unreadable, empty, corrupt, truncated, too large.

    The message is one line: the file name (or ``<bytes>``, ``<file object>``,
    ``<PIL image>``), a colon, and the problem.
    """


# --------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------

def _check_input_shape(input_shape):
    try:
        dims = tuple(input_shape)
    except TypeError:
        dims = None
    if (dims is None or len(dims) != 3
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
                       for d in dims)):
        raise ValueError(f"input_shape must be three positive integers (C, H, W), got {input_shape!r}")
    return tuple(int(d) for d in dims)


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


def _number(value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"preprocess '{key}' must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"preprocess '{key}' must be finite, got {value!r}")
    return out


def _per_channel(value, key, channels, default):
    if value is None:
        return np.full(channels, default, dtype=np.float64)
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.ndim > 1:
        raise ValueError(f"preprocess '{key}' must be a number or a list of numbers, got {value!r}")
    arr = arr.astype(np.float64).reshape(-1)
    if arr.size not in (1, channels):
        raise ValueError(
            f"preprocess '{key}' has {arr.size} values, expected 1 or {channels} (one per channel)"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"preprocess '{key}' must be finite, got {value!r}")
    return np.broadcast_to(arr, (channels,)).copy()


def _settings(c, h, w, preprocess):
    """Check ``preprocess`` against the input shape; return the full settings."""
    if preprocess is None:
        preprocess = {}
    if not isinstance(preprocess, Mapping):
        raise ValueError(f"preprocess must be a dict or None, got {type(preprocess).__name__}")
    unknown = sorted(str(k) for k in preprocess if k not in PREPROCESS_KEYS)
    if unknown:
        raise ValueError(
            f"unknown preprocess key(s) {', '.join(unknown)}; expected {', '.join(PREPROCESS_KEYS)}"
        )
    pre = {k: v for k, v in preprocess.items() if v is not None}

    color = pre.get("color")
    if color is None:
        if c == 1:
            color = "L"
        elif c == 3:
            color = "RGB"
        else:
            raise ValueError(
                f"the input has {c} channels; an image gives 1 (L) or 3 (RGB) channels"
            )
    elif color not in COLORS:
        raise ValueError(f"preprocess 'color' must be 'L' or 'RGB', got {color!r}")
    elif len(color) != c:
        raise ValueError(f"preprocess 'color' is {color} ({len(color)} channels) but the input has {c}")

    resize = pre.get("resize")
    if resize is not None:
        try:
            size = tuple(resize)
        except TypeError:
            size = None
        if (size is None or len(size) != 2
                or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)):
            raise ValueError(f"preprocess 'resize' must be two integers [H, W], got {resize!r}")
        if tuple(int(s) for s in size) != (h, w):
            raise ValueError(
                f"preprocess 'resize' is {[int(s) for s in size]} but the input's [H, W] is {[h, w]}"
            )

    invert = pre.get("invert", 0)
    if isinstance(invert, (bool, np.bool_)):
        invert = int(invert)
    if not isinstance(invert, (int, np.integer)) or invert not in (0, 1):
        raise ValueError(f"preprocess 'invert' must be 0 or 1, got {invert!r}")

    scale = _number(pre.get("scale", 1.0), "scale")
    mean = _per_channel(pre.get("mean"), "mean", c, 0.0)
    std = _per_channel(pre.get("std"), "std", c, 1.0)
    if (std == 0).any():
        raise ValueError(f"preprocess 'std' must not contain zeros, got {pre.get('std')!r}")
    return {"color": color, "invert": bool(invert), "scale": scale, "mean": mean, "std": std}


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------

def _one_line(exc):
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _source_name(src):
    from PIL import Image

    if isinstance(src, (str, os.PathLike)):
        return os.fsdecode(os.fspath(src))
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(src, Image.Image):
        return "<PIL image>"
    name = getattr(src, "name", None)
    return name if isinstance(name, str) else "<file object>"


def _read_source(src, name):
    """Return the encoded image as a path or an in-memory stream."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such image file: {name}")
        if os.path.isdir(path):
            raise ImageError(f"{name}: is a directory, not an image file")
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise ImageError(f"{name}: cannot read the file ({exc.strerror or _one_line(exc)})") from None
        if size == 0:
            raise ImageError(f"{name}: the file is empty")
        return path
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif hasattr(src, "read"):
        try:
            data = src.read()
        except OSError as exc:
            raise ImageError(f"{name}: cannot read the file ({exc.strerror or _one_line(exc)})") from None
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"{name}: the file object must be opened in binary mode ('rb')")
    else:
        raise ValueError(
            "image must be a path, bytes, a binary file object or a PIL.Image.Image, "
            f"got {type(src).__name__}"
        )
    if not data:
        raise ImageError(f"{name}: no image data (empty)")
    return io.BytesIO(data)


def _check_pixels(img, name):
    from PIL import Image

    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: the image has no pixels ({w}x{h})")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise ImageError(
            f"{name}: {w}x{h} = {w * h} pixels is over the limit of {int(limit)} "
            "(PIL.Image.MAX_IMAGE_PIXELS, decompression-bomb protection)"
        )


def _decode_error(name, exc):
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return ImageError(f"{name}: not an image, or an image format Pillow cannot read")
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return ImageError(f"{name}: cannot read the file ({exc.strerror})")
    if isinstance(exc, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return ImageError(f"{name}: refused as a possible decompression bomb ({_one_line(exc)})")
    return ImageError(f"{name}: cannot decode the image ({_one_line(exc)})")


def _open(source, name):
    """Open and fully decode an image; every decoding problem is an ImageError."""
    from PIL import Image

    img = None
    try:
        img = Image.open(source)
        # Pillow checks the size in open(); checking again here keeps the
        # limit even if another thread changed the warning filters meanwhile.
        _check_pixels(img, name)
        img.load()
    except (ImageError, MemoryError):
        if img is not None:
            img.close()
        raise
    except Exception as exc:  # Pillow reports damaged data with many exception types
        if img is not None:
            img.close()
        raise _decode_error(name, exc) from None
    return img


class _decoding(warnings.catch_warnings):
    """Warning filters while an image is decoded.

    Pillow's DecompressionBombWarning becomes an error; the other warnings
    Pillow gives about damaged metadata it skipped (TIFF tags, EXIF) are
    silenced: the image either decodes or raises ImageError.
    """

    def __enter__(self):
        from PIL import Image

        out = super().__enter__()
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return out


def _orient(img):
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # unparsable EXIF: use the pixels as stored
        return img


def _has_transparency(img):
    if img.mode in _ALPHA_MODES:
        return True
    if img.mode in ("P", "L", "RGB"):
        flag = getattr(img, "has_transparency_data", None)
        if flag is not None:
            return bool(flag)
        return "transparency" in img.info
    return False


def _over_white(img):
    from PIL import Image

    if img.mode == "La":  # premultiplied; Pillow converts it only to LA
        img = img.convert("LA")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _pixels(img, color, size, name):
    """Convert to ``color``, resize to ``size`` (W, H); return float64 (H, W, C)."""
    from PIL import Image

    mode = img.mode
    channels = len(color)
    if mode in _UINT16_MODES or mode == "I" or mode == "F":
        gray = np.asarray(img)
        if mode == "F":
            gray = gray.astype(np.float64)
            if not np.isfinite(gray).all():
                raise ImageError(f"{name}: the float image has NaN or infinite pixels")
        else:
            if mode == "I" and gray.size and (gray.min() < 0 or gray.max() > 65535):
                raise ImageError(
                    f"{name}: 32-bit integer pixels range over {int(gray.min())}..{int(gray.max())}; "
                    "only 0..65535 (16-bit values) can be scaled to 0..255"
                )
            gray = gray.astype(np.float64) * _UINT16_SCALE
        if img.size != size:
            plane = Image.fromarray(gray.astype(np.float32), mode="F")
            gray = np.asarray(plane.resize(size, Image.BILINEAR), dtype=np.float64)
        return np.repeat(gray[:, :, None], channels, axis=2)

    if mode in _UNSUPPORTED_MODES:
        raise ImageError(f"{name}: image mode {mode} is not supported (save the image as RGB)")
    try:
        if mode == "1":
            img = img.convert("L")
        elif _has_transparency(img):
            img = _over_white(img)
        elif mode not in COLORS:
            img = img.convert("RGB")
        if img.mode != color:
            img = img.convert(color)
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: cannot convert image mode {mode} to {color} ({_one_line(exc)})") from None
    if img.size != size:
        img = img.resize(size, Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float64)
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def load_image(src, input_shape: Sequence[int], layout: str = "NCHW",
               preprocess: Optional[Mapping[str, object]] = None) -> np.ndarray:
    """Decode one image and preprocess it into one input sample.

    ``input_shape`` is the model's ``(C, H, W)`` (format order, whatever the
    layout); ``layout`` is ``"NCHW"`` (returns ``(C, H, W)``) or ``"NHWC"``
    (returns ``(H, W, C)``); ``preprocess`` is the model's
    ``/meta/preprocess`` dict (``color``, ``resize``, ``invert``, ``scale``,
    ``mean``, ``std``) or None.  Returns a C-contiguous float32 array.
    See the module documentation for each step and for the errors raised.
    """
    from PIL import Image

    c, h, w = _check_input_shape(input_shape)
    layout = _check_layout(layout)
    cfg = _settings(c, h, w, preprocess)
    name = _source_name(src)

    with _decoding():
        if isinstance(src, Image.Image):
            _check_pixels(src, name)
            try:
                src.load()
            except MemoryError:
                raise
            except Exception as exc:
                raise _decode_error(name, exc) from None
            x = _pixels(_orient(src), cfg["color"], (w, h), name)
        else:
            img = _open(_read_source(src, name), name)
            try:
                x = _pixels(_orient(img), cfg["color"], (w, h), name)
            finally:
                img.close()

    if cfg["invert"]:
        x = 255.0 - x
    if cfg["scale"] != 1.0:
        x = x * cfg["scale"]
    x = (x - cfg["mean"]) / cfg["std"]
    if not np.isfinite(x).all():
        raise ValueError(
            f"{name}: preprocessing gave non-finite values (scale {cfg['scale']}, "
            f"std {cfg['std'].tolist()})"
        )
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_images(srcs, input_shape: Sequence[int], layout: str = "NCHW",
                preprocess: Optional[Mapping[str, object]] = None) -> np.ndarray:
    """Load several images as one batch ``(N, *sample_shape)`` float32.

    Each element of ``srcs`` is anything ``load_image`` accepts; the first
    image that cannot be used raises its error.
    """
    if isinstance(srcs, (str, bytes, bytearray, memoryview, os.PathLike)) or not hasattr(srcs, "__iter__"):
        raise ValueError("srcs must be a list of images; use load_image for a single image")
    samples = [load_image(s, input_shape, layout, preprocess) for s in srcs]
    if not samples:
        raise ValueError("srcs is empty: expected at least one image")
    return np.ascontiguousarray(np.stack(samples))
