"""Reading model weights safely, and only the part that is needed.

    >>> from safeclip.weights import read_weights, load_state_dict
    >>> text = read_weights(folder, prefixes=("text_model.",))   # a CLIPModel's text tower only
    >>> sd = load_state_dict("open_clip_pytorch_model.bin")      # never unpickles objects

safetensors files are read tensor by tensor (``safe_open``), so the keys left out never reach
memory; ``.bin`` files load with ``torch.load(weights_only=True, mmap=True)``: no arbitrary
objects are unpickled, and the tensors left out stay on disk.
"""
from __future__ import annotations

from pathlib import Path

import torch


def weight_files(folder: str | Path) -> list[Path]:
    """The weights files of a transformers folder: safetensors (shards included) when there
    are any, else ``pytorch_model*.bin``."""
    folder = Path(folder)
    found = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("*.safetensors"))
    return found or sorted(folder.glob("pytorch_model*.bin"))


def load_state_dict(path: str | Path, prefixes: tuple[str, ...] | None = None) -> dict:
    """One weights file as a state dict (keys starting with ``prefixes`` only, when given)."""
    path = Path(path)
    keep = (lambda k: True) if not prefixes else (lambda k: k.startswith(prefixes))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if keep(k)}


def read_weights(folder: str | Path, prefixes: tuple[str, ...] | None = None) -> dict:
    """Every weights file of ``folder`` merged (see ``weight_files``), filtered by ``prefixes``."""
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no weights (model*.safetensors, pytorch_model*.bin)")
    out: dict = {}
    for f in files:
        out.update(load_state_dict(f, prefixes))
    return out
