"""Text encoders for the generators, read from any of the forms a Safe-CLIP ships in.

    >>> from safeclip.generation.text import load_text_encoder, load_text_embedder
    >>> enc = load_text_encoder(folder)     # CLIPTextModel: SD cross-attends to its last states
    >>> emb = load_text_embedder(folder)    # CLIPTextModelWithProjection: the pooled embedding

A folder may hold a whole ``CLIPModel`` (``aimagelab/safeclip_vit-l_14``, ``safeclip_sd_20``), a
``CLIPTextModel`` (what ``safeclip train`` exports as ``text_encoder/``) or a diffusers pipeline
(its ``text_encoder/``). From a CLIPModel only the text tower's weights are read (safetensors
tensor by tensor), so its vision tower never reaches memory.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..weights import read_weights

TEXT_PREFIXES = ("text_model.", "text_projection.")


def _config(folder: Path):
    from transformers import CLIPConfig, CLIPTextConfig

    data = json.loads((folder / "config.json").read_text())
    if data.get("model_type") == "clip":  # a whole CLIPModel: its text config and projection
        full = CLIPConfig.from_pretrained(folder)
        text = full.text_config
        text.projection_dim = full.projection_dim
        return text, True
    return CLIPTextConfig.from_pretrained(folder), False


def text_folder(path) -> Path:
    """The folder that holds the text encoder's config.json (a pipeline's text_encoder/)."""
    path = Path(path)
    if not (path / "config.json").exists() and (path / "text_encoder" / "config.json").exists():
        return path / "text_encoder"
    return path


def _load(cls, path, dtype, keys: tuple[str, ...]):
    folder = text_folder(path)
    config, whole = _config(folder)
    if not whole:  # a CLIPTextModel checkpoint: transformers reads it as it is
        return cls.from_pretrained(folder, dtype=dtype).eval().requires_grad_(False)
    with torch.device("meta"):
        model = cls(config)
    wanted = set(model.state_dict())
    nested = any(k.startswith("text_model.") for k in wanted)
    sd = {(k if nested or not k.startswith("text_model.") else k.removeprefix("text_model.")): v
          for k, v in read_weights(folder, prefixes=keys).items()}
    sd = {k: v for k, v in sd.items() if k in wanted}
    missing = sorted(wanted - set(sd))
    if missing:
        raise ValueError(f"{folder}: the text tower's weights are incomplete (missing "
                         f"{missing[:4]})")
    model.load_state_dict(sd, strict=True, assign=True)
    _fix_buffers(model)
    return model.to(dtype).eval().requires_grad_(False)


def _fix_buffers(model) -> None:
    """Buffers created on the meta device (position ids) rebuilt on the CPU."""
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            mod = model.get_submodule(owner) if owner else model
            mod.register_buffer(leaf, torch.arange(buf.shape[-1]).expand(buf.shape).clone(),
                                persistent=False)


def load_text_encoder(path, dtype=torch.float32):
    """A frozen ``CLIPTextModel`` (last hidden states: what Stable Diffusion reads)."""
    from transformers import CLIPTextModel

    return _load(CLIPTextModel, path, dtype, ("text_model.",))


def load_text_embedder(path, dtype=torch.float32):
    """A frozen ``CLIPTextModelWithProjection`` (the pooled, projected text embedding)."""
    from transformers import CLIPTextModelWithProjection

    return _load(CLIPTextModelWithProjection, path, dtype, TEXT_PREFIXES)
