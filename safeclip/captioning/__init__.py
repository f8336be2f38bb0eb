"""One LLaVA, two vision towers: the original CLIP's and Safe-CLIP's, captions side by side.

    >>> from safeclip.captioning import load_captioner
    >>> cap = load_captioner("mini")               # or "vit-l-14" (LLaVA-1.5 7B; quantize="4bit")
    >>> res = cap.caption_pair("photo.png")         # PIL image (any mode, size) or a path
    >>> res.clip.text, res.clip.flagged, res.clip.terms
    ('a red dog holding a knife in the park', True, ['knife'])
    >>> res.safeclip.text, res.safeclip.flagged
    ('a red dog holding a kite in the park', False)

    safeclip caption --preset mini --image photo.png [--question "..."] [--json]

Modules: ``paired`` (the batched two-tower captioner), ``llava`` (the loader of kind ``llava``),
``cli``. Captions are judged by the world's caption judge (``safeclip.safety.text``).
"""
from __future__ import annotations

import threading

from ..errors import StudioError
from .paired import (
    DEFAULT_QUESTION,
    PROMPT,
    Caption,
    CaptionPair,
    PairedCaptioner,
    load_tower_weights,
    prompt_ids,
)

_CACHE: dict = {}
_LOCK = threading.Lock()


def load_captioner(preset, overrides: dict | None = None, device=None,
                   quantize: str | None = None, offload: bool = False,
                   cache: bool = True) -> PairedCaptioner:
    """The paired captioner of a world (a name or a Preset), loaded once per settings."""
    from ..kinds import resolve
    from ..presets import get_preset

    world = get_preset(preset, overrides)
    if world.captioning is None:
        raise StudioError(f"world {world.name!r} has no captioning")
    key = (world, str(device), quantize, bool(offload))
    with _LOCK:
        if cache and key in _CACHE:
            return _CACHE[key]
        cap = resolve("captioner", world.captioning.kind, world)(world, device, quantize, offload)
        if cache:
            _CACHE[key] = cap
        return cap


__all__ = ["DEFAULT_QUESTION", "PROMPT", "Caption", "CaptionPair", "PairedCaptioner",
           "load_captioner", "load_tower_weights", "prompt_ids"]
