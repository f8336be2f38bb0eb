"""What the mini world's trainers (CLIP, captioner, generator) share: the learning-rate schedule
and the atomic checkpoint write."""
from __future__ import annotations

import math
from pathlib import Path

import torch


def warmup_cosine(base: float, step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to ``floor * base``
    at ``total`` steps (held there after)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_atomic(path: Path, obj: dict) -> None:
    """``torch.save`` under a temporary name, then rename: a kill mid-write keeps the old file."""
    tmp = Path(path).with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
