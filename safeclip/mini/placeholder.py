"""Seeded tiny random stand-ins for bundled models that have not been built yet.

A placeholder keeps the code paths of a preset runnable (and loudly named as such in the logs)
before ``safeclip mini build`` has produced the real artifact. It is never committed.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("SAFECLIP_CACHE", Path.home() / ".cache" / "safeclip"))


def placeholder_clip_dir(preset, seed: int = 0) -> Path:
    """A folder with a seeded tiny-random CLIPModel shaped like ``preset``'s models."""
    from .clip import clip_config, new_clip, save_clip_dir

    out = cache_root() / f"tiny-random-clip-{preset.name}-{preset.embed_dim}-seed{seed}"
    if not (out / "model.safetensors").exists():
        cfg = clip_config(width=64, layers=2, heads=2, image_size=preset.image_size,
                          patch=max(preset.image_size // 8, 1), context=preset.context_length,
                          embed_dim=preset.embed_dim)
        save_clip_dir(new_clip(cfg, seed), out)
        logger.info("wrote placeholder model %s", out)
    return out
