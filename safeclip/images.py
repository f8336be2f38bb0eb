"""Turning whatever a user hands us into a sane RGB image, or a clear error.

    >>> from safeclip.images import open_image, to_rgb
    >>> img = open_image("photo.png")        # refuses corrupt files and decompression bombs
    >>> rgb = to_rgb(img)                    # any mode (RGBA, P, L, CMYK, I;16, F...) -> RGB

Every model entry point goes through ``to_rgb``, so encoders, judges and the UI agree on what a
16-bit PNG or a transparent GIF looks like.
"""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from .errors import InputError

logger = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; larger images are refused (decompression bombs)


class ImageError(InputError):
    """An input that is not a usable image (corrupt, empty, too large)."""


def open_image(source: str | Path | bytes | io.IOBase, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image, refusing corrupt data and images over ``max_pixels``."""
    name = str(source) if isinstance(source, (str, Path)) else "<bytes>"
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            check_size(img, max_pixels)
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image is too large (limit {max_pixels:,} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: not a readable image ({e.__class__.__name__}: {e})") from None
    return img


def check_size(img: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"image is too large: {w}x{h} = {w * h:,} pixels (limit {max_pixels:,})")


def to_rgb(img, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image (or HxW[xC] uint8 array) as 8-bit RGB: alpha composited on ``background``,
    16-bit and float greyscale rescaled, EXIF orientation applied, first frame of animations."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    if not isinstance(img, Image.Image):
        raise ImageError(f"expected a PIL image, got {type(img).__name__}")
    check_size(img)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF must not stop us
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16/32-bit greyscale: rescale to 8 bits (clipping would turn most 16-bit PNGs white)
        a = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or (a.min() >= 0 and 255 < a.max() <= 65535):
            a = a / 257.0
        elif mode == "F" and a.min() >= 0 and a.max() <= 1.0:
            a = a * 255.0
        elif a.min() < 0 or a.max() > 255:
            a = (a - a.min()) / max(a.max() - a.min(), 1e-12) * 255.0
        return Image.fromarray(np.round(a).clip(0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA") if mode != "La" else img.convert("LA").convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def need_image(value):
    """``value``, or an ImageError when there is no image at all."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ImageError("no image given: upload one or pick an example")
    return value


def load_rgb(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A path, bytes, numpy array or PIL image, as RGB (the one call entry points need)."""
    need_image(source)
    if isinstance(source, (Image.Image, np.ndarray)):
        return to_rgb(source)
    return to_rgb(open_image(source, max_pixels))


def blur(image: Image.Image, radius: float | None = None) -> Image.Image:
    """A strongly blurred RGB copy (for showing flagged images); radius ~ 1/16 of the size.
    Lives here, not in safeclip.safety, so that the UI can blur without importing torch."""
    image = to_rgb(image)
    if radius is None:
        radius = max(2.0, max(image.size) / 16)
    return image.filter(ImageFilter.GaussianBlur(radius))
