"""Image decoding: any file Pillow reads -> RGB uint8 (H, W, 3), EXIF orientation applied.

Mode conversions (SPEC §0: images are RGB uint8 in datasets):
- ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` -> Pillow's own RGB
  conversion (palette looked up; CMYK by Pillow's naive formula).
- Alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency, ...) is **dropped**, not
  composited: the colour stored under a transparent pixel is kept. This is what
  detectron2's ``read_image`` (``convert("RGB")``) does, so pixel statistics match the
  reference pipeline.
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I``) is scaled by a **fixed** ``>> 8``
  (values clipped to 0..65535 first), never by the per-image maximum: a dark 16-bit
  photo stays dark, like its 8-bit version would.
- 32-bit float grey (``F``): values in [0, 1] are taken as fractions (x 255), otherwise
  as 0..255 intensities; both clipped.

The EXIF orientation tag is applied with ``PIL.ImageOps.exif_transpose``, so the array
is upright and (H, W) are the displayed size. A corrupt EXIF block is ignored (as
detectron2 does) rather than failing the image.

An image over Pillow's decompression-bomb limit gets a ``LargeImageWarning`` naming the
file and its size (in place of Pillow's DecompressionBombWarning, which names neither).

Errors: a missing file raises ``FileNotFoundError``; a file that cannot be decoded
(not an image, truncated, unsupported mode, decompression bomb) raises
``BadImageError`` (a ``ValueError``). Both messages name the file.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger("boxdepth")

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_PIL_TO_RGB_MODES = ("1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA",
                     "CMYK", "YCbCr", "LAB", "HSV")


class BadImageError(ValueError):
    """An image file exists but cannot be decoded into RGB."""


# file endings treated as images when a folder is scanned (predict, viz, depth)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _exif_upright(im: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as e:  # malformed EXIF must not cost the image
        logger.debug("ignoring unreadable EXIF orientation in %s: %s", path, e)
        return im


def _grey_to_rgb(grey_u8: np.ndarray) -> np.ndarray:
    return np.repeat(grey_u8[:, :, None], 3, axis=2)


def _to_rgb_array(im: Image.Image, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(im).astype(np.int64)
        return _grey_to_rgb((np.clip(arr, 0, 65535) >> 8).astype(np.uint8))
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        return _grey_to_rgb(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8))
    if mode in _PIL_TO_RGB_MODES:
        return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy
    raise BadImageError(f"image {path}: unsupported image mode {mode!r}")


class LargeImageWarning(UserWarning):
    """An image over Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): it is
    decoded (up to twice the limit, where Pillow refuses), but takes much memory."""


def _warn_if_huge(im: Image.Image, path: Path) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    w, h = im.size
    if limit and w * h > limit:
        warnings.warn(f"image {path} is {w}x{h} ({w * h / 1e6:.1f} Mpixels), over Pillow's "
                      f"decompression-bomb limit of {limit / 1e6:.1f} Mpixels; decoding it "
                      f"anyway, which needs about {w * h * 3 / 2**30:.1f} GiB", LargeImageWarning,
                      stacklevel=3)


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Decode `path` -> uint8 (H, W, 3) RGB, upright per its EXIF orientation."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise BadImageError(f"image {path} is not a regular file")
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():  # replaced by ours, which names the file
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _warn_if_huge(im, path)
                im.load()  # decode now so truncated files fail here, naming the file
                im = _exif_upright(im, path)
                arr = _to_rgb_array(im, path)
    except BadImageError:
        raise
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, bombs, ...)
        raise BadImageError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadImageError(f"image {path} decoded to an unusable shape {arr.shape}")
    return np.ascontiguousarray(arr)
