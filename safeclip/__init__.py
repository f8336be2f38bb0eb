"""Safe-CLIP Studio core library: worlds, CLIP pair loaders, training, evaluation, inference.

    >>> import safeclip
    >>> safeclip.list_presets()                  # the worlds: ['mini', 'vit-h-14', ...]
    >>> world = safeclip.get_preset("mini")      # its capabilities, models, judges, limits
    >>> orig, safe = safeclip.load_clip_pair("mini")
    >>> orig.encode_text(["a dog on the beach"]).shape
    >>> gen = safeclip.load_generator("mini"); cap = safeclip.load_captioner("mini")
    >>> studio = safeclip.Studio("auto")         # what the app calls

This module only re-exports, lazily: ``import safeclip`` imports neither torch nor gradio, and
nothing heavy happens until a name is used.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "list_presets": "safeclip.presets", "get_preset": "safeclip.presets",
    "default_preset": "safeclip.presets", "Preset": "safeclip.presets",
    "load_clip": "safeclip.encoders", "load_clip_pair": "safeclip.encoders",
    "load_clip_folder": "safeclip.encoders",
    "load_generator": "safeclip.generation.generator",
    "load_captioner": "safeclip.captioning",
    "Gallery": "safeclip.retrieval.gallery", "build_gallery": "safeclip.retrieval.build",
    "Studio": "safeclip.services",
    "StudioError": "safeclip.errors", "InputError": "safeclip.errors",
    "ModelUnavailableError": "safeclip.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'safeclip' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
