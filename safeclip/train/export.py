"""Exporting a fine-tuned Safe-CLIP in every form its users load.

    >>> from safeclip.train.export import export_all
    >>> export_all(peft_model, "runs/x/export")
    runs/x/export/adapter/         peft adapter (``PeftModel.from_pretrained(base, ...)``)
    runs/x/export/merged/          a plain CLIPModel folder (``CLIPModel.from_pretrained``, our loaders)
    runs/x/export/text_encoder/    ``CLIPTextModel`` for diffusers (``pipe.text_encoder = ...``)
    runs/x/export/open_clip/       ``open_clip_config.json`` + ``open_clip_model.safetensors``
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from ..convert import save_clip_dir, save_open_clip

logger = logging.getLogger(__name__)


def merged_clip(peft_model):
    """A plain CLIPModel with the adapter merged in (the peft model is left untouched)."""
    return copy.deepcopy(peft_model).merge_and_unload().eval()


def save_text_encoder(clip, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """The text tower alone as a ``CLIPTextModel`` folder, the form diffusers pipelines take."""
    from transformers import CLIPTextModel

    text = CLIPTextModel(clip.config.text_config)
    inner = getattr(text, "text_model", text)  # transformers < 5 nests the transformer
    inner.load_state_dict(clip.text_model.state_dict())
    if dtype is not None:
        text = text.to(dtype)
    text.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def export_all(peft_model, out_dir: str | Path, dtype: torch.dtype | None = None,
               forms=("adapter", "merged", "text_encoder", "open_clip")) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    if "adapter" in forms:
        peft_model.save_pretrained(out / "adapter")
        paths["adapter"] = out / "adapter"
    merged = merged_clip(peft_model)
    if "merged" in forms:
        paths["merged"] = save_clip_dir(merged, out / "merged", dtype=dtype)
    if "text_encoder" in forms:
        paths["text_encoder"] = save_text_encoder(merged, out / "text_encoder", dtype)
    if "open_clip" in forms:
        paths["open_clip"] = save_open_clip(merged, out / "open_clip", dtype)
    logger.info("exported %s to %s", ", ".join(paths), out)
    return paths
