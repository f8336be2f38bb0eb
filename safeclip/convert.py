"""Saving a transformers ``CLIPModel`` in the forms its users load, and converting it into an
open_clip model (state dict + config).

    >>> from safeclip.convert import hf_to_open_clip, save_open_clip, save_clip_dir
    >>> save_clip_dir(clip_model, "out/clip")        # a Hub CLIP folder (tokenizer, processor)
    >>> sd, cfg = hf_to_open_clip(clip_model)        # open_clip key names, open_clip config
    >>> save_open_clip(clip_model, "out/open_clip")  # open_clip_config.json + weights

The published Safe-CLIP ships both forms; this is how ours do too. Only standard ViT CLIPs
(pre-LN transformer, class-token pooling, EOS-token text pooling) are supported.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

ACTIVATIONS = {"quick_gelu": True, "gelu": False}


def _blocks(prefix_hf: str, prefix_oc: str, n: int, sd: dict, out: dict) -> None:
    for i in range(n):
        h, o = f"{prefix_hf}.encoder.layers.{i}", f"{prefix_oc}.transformer.resblocks.{i}"
        for part in ("weight", "bias"):
            out[f"{o}.ln_1.{part}"] = sd[f"{h}.layer_norm1.{part}"]
            out[f"{o}.ln_2.{part}"] = sd[f"{h}.layer_norm2.{part}"]
            out[f"{o}.attn.out_proj.{part}"] = sd[f"{h}.self_attn.out_proj.{part}"]
            out[f"{o}.mlp.c_fc.{part}"] = sd[f"{h}.mlp.fc1.{part}"]
            out[f"{o}.mlp.c_proj.{part}"] = sd[f"{h}.mlp.fc2.{part}"]
        suffix = {"weight": "in_proj_weight", "bias": "in_proj_bias"}
        for part, name in suffix.items():
            out[f"{o}.attn.{name}"] = torch.cat(
                [sd[f"{h}.self_attn.{p}_proj.{part}"] for p in ("q", "k", "v")], dim=0)


def hf_to_open_clip(model) -> tuple[dict[str, torch.Tensor], dict]:
    """(open_clip state dict, open_clip ``model_cfg``) of a transformers ``CLIPModel``."""
    c, t, v = model.config, model.config.text_config, model.config.vision_config
    if t.hidden_act != v.hidden_act or t.hidden_act not in ACTIVATIONS:
        raise ValueError(f"unsupported activations: text {t.hidden_act}, vision {v.hidden_act}")
    sd = {k: p.detach().cpu() for k, p in model.state_dict().items()}
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
        "logit_scale": sd["logit_scale"].reshape(()),
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
    }
    _blocks("text_model", "", t.num_hidden_layers, sd, out)
    _blocks("vision_model", "visual", v.num_hidden_layers, sd, out)
    out = {k.lstrip("."): val for k, val in out.items()}
    cfg = {
        "embed_dim": int(c.projection_dim),
        "quick_gelu": ACTIVATIONS[t.hidden_act],
        "vision_cfg": {"image_size": int(v.image_size), "patch_size": int(v.patch_size),
                       "width": int(v.hidden_size), "layers": int(v.num_hidden_layers),
                       "head_width": int(v.hidden_size // v.num_attention_heads),
                       "mlp_ratio": v.intermediate_size / v.hidden_size},
        "text_cfg": {"context_length": int(t.max_position_embeddings),
                     "vocab_size": int(t.vocab_size), "width": int(t.hidden_size),
                     "heads": int(t.num_attention_heads), "layers": int(t.num_hidden_layers),
                     "mlp_ratio": t.intermediate_size / t.hidden_size},
    }
    return out, cfg


def save_open_clip(model, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``open_clip_config.json`` and ``open_clip_model.safetensors`` into ``out_dir``."""
    from safetensors.torch import save_file

    from .encoders import OPENAI_MEAN, OPENAI_STD

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd, cfg = hf_to_open_clip(model)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}, indent=2))
    return out


def save_clip_dir(model, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` with its tokenizer and image processor, as a Hub CLIP folder."""
    from .encoders import default_processor
    from .tokenizer import clip_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_save = model if dtype is None else _cast_copy(model, dtype)
    to_save.save_pretrained(out, safe_serialization=True)
    ctx = int(model.config.text_config.max_position_embeddings)
    clip_tokenizer(ctx).save_pretrained(out)
    default_processor(int(model.config.vision_config.image_size)).save_pretrained(out)
    return out


def _cast_copy(model, dtype):
    import copy

    return copy.deepcopy(model).to(dtype)
