"""The real worlds' retrieval evaluation data (kind ``visu``): ViSU's S, U, V, G quadruplets.

Captions from the Hub's ``aimagelab/ViSU-Text`` (gated) or a local copy (``--visu TEXT``), safe
images from COCO (``--coco-root``), unsafe images generated with ``safeclip data
generate-unsafe`` (``--unsafe-root``). Missing files are listed in one error before any model
loads.
"""
from __future__ import annotations

import functools

from ..errors import InputError


def _shrink(image, size: int):
    """Shortest edge down to the model's input size (what its preprocessing does first), so a
    batch of COCO photos stays small in memory."""
    from PIL import Image

    w, h = image.size
    if min(w, h) > size:
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                             Image.BICUBIC)
    return image


def visu_quads(world, split: str, n: int | None, args):
    from ..data.visu import ViSUDataset

    text = getattr(args, "visu", None) or "aimagelab/ViSU-Text"
    coco, unsafe = getattr(args, "coco_root", None), getattr(args, "unsafe_root", None)
    if coco is None or unsafe is None:
        raise InputError(f"world {world.name!r} evaluates retrieval on ViSU: pass --visu [TEXT] "
                         "--coco-root DIR --unsafe-root DIR (see `safeclip data check`)")
    ds = ViSUDataset(split, text=text, coco_root=coco, unsafe_root=unsafe, limit=n,
                     transform=functools.partial(_shrink, size=world.retrieval.image_size))
    ds.check()  # one MissingDataError listing the missing images, before loading any model
    return ds
