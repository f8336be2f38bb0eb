"""What the mini world's trainers (CLIP, captioner, generators) share: the learning-rate schedule,
the optimiser step and the atomic checkpoint write."""
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


def optimise(opt: torch.optim.Optimizer, loss: torch.Tensor, params, max_norm: float = 1.0) -> None:
    """One optimiser step on ``loss``: clear the gradients, backpropagate, clip their global norm
    over ``params`` to ``max_norm``, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
