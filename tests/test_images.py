"""Bad and odd image inputs: clear errors, never crashes."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from safeclip.images import ImageError, load_rgb, open_image


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_corrupt_and_empty_files_are_refused(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(png_bytes(Image.new("RGB", (8, 8)))[:40])  # truncated
    with pytest.raises(ImageError, match="bad.png"):
        open_image(bad)
    with pytest.raises(ImageError):
        open_image(b"not an image at all")
    with pytest.raises(ImageError):
        open_image(b"")


def test_decompression_bombs_are_refused():
    big = png_bytes(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageError, match="too large"):
        open_image(big, max_pixels=1_000_000)
    assert open_image(big, max_pixels=10_000_000).size == (3000, 3000)


def test_every_mode_becomes_rgb():
    base = Image.fromarray(np.random.RandomState(0).randint(0, 255, (9, 7, 3), dtype=np.uint8))
    sixteen = Image.fromarray((np.arange(63).reshape(9, 7) * 1000).astype(np.uint16))
    for img in (base.convert(m) for m in ("RGBA", "L", "LA", "P", "CMYK", "1", "YCbCr")):
        out = load_rgb(img)
        assert out.mode == "RGB" and out.size == (7, 9)
    out = np.asarray(load_rgb(sixteen))
    assert out.max() > 200 and out.min() == 0  # rescaled, not clipped to white
    assert load_rgb(np.zeros((4, 5, 3), dtype=np.uint8)).size == (5, 4)


def test_transparent_pixels_go_on_white():
    out = load_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0)))
    assert out.getpixel((0, 0)) == (255, 255, 255)
