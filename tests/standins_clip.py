"""CLIP stand-ins: openai ViT-L/14 (224, 336), LAION ViT-H/14, and the four Safe-CLIP checkpoints.

Widths are tiny, layer counts, patch and image sizes, vocabulary and context are the real ones.
Three families, each with its own widths so that a component of the wrong family fails to load:

    L     openai/clip-vit-large-patch14, aimagelab/safeclip_vit-l_14:  text 16, vision 24, proj 32
    L336  the -336 openai and aimagelab pair:                           text 16, vision 32, proj 24
    H     laion ViT-H-14, aimagelab/safeclip_vit-h_14 and _sd_20:        text 8,  vision 16, proj 16
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import torch
from standins_common import (
    OPENAI_MEAN,
    OPENAI_STD,
    lora_perturbed,
    save_weights,
    seeded_state,
    with_legacy_position_ids,
    write_clip_preprocessor,
    write_clip_tokenizer,
    write_json,
    write_stubs,
)


@dataclass(frozen=True)
class ClipSpec:
    text_width: int
    text_layers: int
    vision_width: int
    vision_layers: int
    image_size: int
    proj: int
    act: str
    heads: int = 2
    patch: int = 14
    context: int = 77
    vocab: int = 49408


L = ClipSpec(
    text_width=16,
    text_layers=12,
    vision_width=24,
    vision_layers=24,
    image_size=224,
    proj=32,
    act="quick_gelu",
)
L336 = replace(L, vision_width=32, image_size=336, proj=24)
H = ClipSpec(
    text_width=8,
    text_layers=24,
    vision_width=16,
    vision_layers=32,
    image_size=224,
    proj=16,
    act="gelu",
)
SD20 = replace(H, text_layers=23)
SEEDS = {
    "L": 1,
    "L336": 2,
    "H": 3,
    "L-safe": 11,
    "L336-safe": 12,
    "H-safe": 13,
    "SD20-text": 14,
    "sd14-safety": 21,
}

# What PretrainedConfig.to_dict() wrote for every (sub-)config in 2022 (transformers 4.16-4.24).
_LEGACY_FIELDS = {
    "_name_or_path": "",
    "add_cross_attention": False,
    "architectures": None,
    "bad_words_ids": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "decoder_start_token_id": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "task_specific_params": None,
    "temperature": 1.0,
    "tie_encoder_decoder": False,
    "tie_word_embeddings": True,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torch_dtype": None,
    "torchscript": False,
    "use_bfloat16": False,
}


def text_arch(s: ClipSpec) -> dict:
    """The architecture fields of a CLIP text tower (what a drop-in replacement must share)."""
    return {
        "hidden_act": s.act,
        "hidden_size": s.text_width,
        "intermediate_size": 4 * s.text_width,
        "num_attention_heads": s.heads,
        "num_hidden_layers": s.text_layers,
        "max_position_embeddings": s.context,
        "vocab_size": s.vocab,
        "layer_norm_eps": 1e-05,
    }


def vision_arch(s: ClipSpec) -> dict:
    return {
        "hidden_act": s.act,
        "hidden_size": s.vision_width,
        "intermediate_size": 4 * s.vision_width,
        "num_attention_heads": s.heads,
        "num_hidden_layers": s.vision_layers,
        "image_size": s.image_size,
        "patch_size": s.patch,
        "layer_norm_eps": 1e-05,
    }


def _common(s_dim: dict) -> dict:
    return {
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        **s_dim,
    }


def legacy_text_config(s: ClipSpec, version: str, projection_dim: int) -> dict:
    """A CLIPTextConfig as 2022 transformers dumped it (token ids 0/1/2: that era's defaults)."""
    return dict(
        sorted(
            {
                **_LEGACY_FIELDS,
                **_common(text_arch(s)),
                "bos_token_id": 0,
                "eos_token_id": 2,
                "pad_token_id": 1,
                "model_type": "clip_text_model",
                "projection_dim": projection_dim,
                "transformers_version": version,
            }.items()
        )
    )


def clip_config(
    s: ClipSpec, style: str, name_or_path: str = "", architectures=("CLIPModel",)
) -> dict:
    """config.json of a CLIPModel in one of three styles:

    * ``openai`` / ``laion``: 2022 dumps with full legacy sub-configs plus ``text_config_dict`` /
      ``vision_config_dict`` (which transformers applies on top of its own defaults);
    * ``aimagelab``: a 2024 ``save_pretrained`` (sub-configs hold the non-default fields only).
    """
    if style == "aimagelab":
        text = {
            "model_type": "clip_text_model",
            "projection_dim": s.proj,
            "dropout": 0.0,
            **text_arch(s),
        }
        vision = {
            "model_type": "clip_vision_model",
            "projection_dim": s.proj,
            "dropout": 0.0,
            **vision_arch(s),
        }
        return {
            "_name_or_path": name_or_path,
            "architectures": list(architectures),
            "initializer_factor": 1.0,
            "logit_scale_init_value": 2.6592,
            "model_type": "clip",
            "projection_dim": s.proj,
            "text_config": dict(sorted(text.items())),
            "torch_dtype": "float32",
            "transformers_version": "4.40.1",
            "vision_config": dict(sorted(vision.items())),
        }
    version = "4.16.0.dev0" if style == "openai" else "4.24.0.dev0"
    vision = dict(
        sorted(
            {
                **_LEGACY_FIELDS,
                **_common(vision_arch(s)),
                "bos_token_id": None,
                "eos_token_id": None,
                "pad_token_id": None,
                "model_type": "clip_vision_model",
                "num_channels": 3,
                "projection_dim": s.proj,
                "transformers_version": version,
            }.items()
        )
    )
    dict_keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    text_dict = {k: text_arch(s)[k] for k in dict_keys} | {"projection_dim": s.proj}
    vision_dict = {k: vision_arch(s)[k] for k in dict_keys + ("patch_size",)} | {
        "projection_dim": s.proj
    }
    if style == "laion":
        text_dict["hidden_act"] = vision_dict["hidden_act"] = s.act
    if s.image_size != 224:
        vision_dict["image_size"] = s.image_size
    return {
        "_name_or_path": name_or_path,
        "architectures": list(architectures),
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": s.proj,
        "text_config": legacy_text_config(s, version, s.proj),
        "text_config_dict": dict(sorted(text_dict.items())),
        "torch_dtype": "float32",
        "transformers_version": None,
        "vision_config": vision,
        "vision_config_dict": dict(sorted(vision_dict.items())),
    }


def hf_config(s: ClipSpec):
    from transformers import CLIPConfig

    return CLIPConfig.from_dict(clip_config(s, "aimagelab"))


def _fresh_state(s: ClipSpec, seed: int) -> dict:
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(hf_config(s))
    return seeded_state(model, seed)


@cache
def clip_state(family: str) -> dict:
    """In-memory weights (transformers CLIPModel key names) of a family: ``L``, ``L336``, ``H``,
    their
    ``-safe`` variants (LoRA-merged), or ``SD20`` (Safe-CLIP's 23-layer SD 2 text encoder)."""
    if family in ("L", "L336", "H"):
        return _fresh_state({"L": L, "L336": L336, "H": H}[family], SEEDS[family])
    if family.endswith("-safe"):
        return lora_perturbed(clip_state(family[:-5]), SEEDS[family])
    if family == "SD20":
        text = lora_perturbed(sd2_text_state(), SEEDS["SD20-text"])
        rest = {k: v for k, v in clip_state("H-safe").items() if not k.startswith("text_model.")}
        return {**text, **rest}
    raise KeyError(family)


def sd2_text_state() -> dict:
    """SD 2's text encoder: LAION ViT-H/14's text tower minus its last layer (text_model.* keys)."""
    last = f"text_model.encoder.layers.{H.text_layers - 1}."
    return {
        k: v
        for k, v in clip_state("H").items()
        if k.startswith("text_model.") and not k.startswith(last)
    }


def text_tower(family: str) -> dict:
    return {k: v for k, v in clip_state(family).items() if k.startswith("text_model.")}


def _legacy(state: dict, s: ClipSpec) -> dict:
    """Weights as a 2022 checkpoint holds them: with the persistent ``position_ids`` buffers."""
    prefixes = {}
    if any(k.startswith("text_model.") for k in state):
        prefixes["text_model"] = s.context
    if any(k.startswith("vision_model.") for k in state):
        prefixes["vision_model"] = (s.image_size // s.patch) ** 2 + 1
    return with_legacy_position_ids(state, prefixes)


def open_clip_state(family: str, spec: ClipSpec) -> tuple[dict, dict]:
    """(open_clip state dict, model_cfg) of a family, converted by the project's converter."""
    from transformers import CLIPModel

    from safeclip.convert import hf_to_open_clip

    model = CLIPModel(hf_config(spec)).eval()
    model.load_state_dict(clip_state(family), strict=True)
    return hf_to_open_clip(model)


def open_clip_model_cfg(s: ClipSpec) -> dict:
    """``model_cfg`` in the form of open_clip's built-in ``ViT-H-14.json`` (the real repo's)."""
    return {
        "embed_dim": s.proj,
        "vision_cfg": {
            "image_size": s.image_size,
            "layers": s.vision_layers,
            "width": s.vision_width,
            "head_width": s.vision_width // s.heads,
            "patch_size": s.patch,
        },
        "text_cfg": {
            "context_length": s.context,
            "vocab_size": s.vocab,
            "width": s.text_width,
            "heads": s.heads,
            "layers": s.text_layers,
        },
    }


# ----------------------------------------------------------------------------- repo writers
def write_openai(d: Path, repo_id: str) -> None:
    spec, family = (L336, "L336") if repo_id.endswith("-336") else (L, "L")
    write_stubs(d, repo_id)
    write_json(
        d / "config.json", clip_config(spec, "openai", name_or_path=repo_id.split("/")[1] + "/")
    )
    save_weights(
        _legacy(clip_state(family), spec),
        d,
        None if family == "L336" else "model.safetensors",
        "pytorch_model.bin",
    )
    write_clip_tokenizer(d, name_or_path="openai/clip-vit-base-patch32")
    write_clip_preprocessor(d, spec.image_size, legacy=True)


def write_safeclip_l(d: Path, repo_id: str) -> None:
    spec, family = (L336, "L336-safe") if repo_id.endswith("_336") else (L, "L-safe")
    write_stubs(d, repo_id)
    base = "openai/clip-vit-large-patch14" + ("-336" if family == "L336-safe" else "")
    write_json(d / "config.json", clip_config(spec, "aimagelab", name_or_path=base))
    save_weights(clip_state(family), d, "model.safetensors", None)
    if family == "L-safe":
        sd, _cfg = open_clip_state(family, spec)
        torch.save(sd, d / "open_clip_pytorch_model.bin")


def write_laion_h(d: Path, repo_id: str) -> None:
    write_stubs(d, repo_id)
    write_json(d / "config.json", clip_config(H, "laion"))
    save_weights(_legacy(clip_state("H"), H), d, "model.safetensors", "pytorch_model.bin")
    sd, _cfg = open_clip_state("H", H)
    save_weights(sd, d, "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    write_json(
        d / "open_clip_config.json",
        {
            "model_cfg": open_clip_model_cfg(H),
            "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD},
        },
    )
    write_clip_tokenizer(d, name_or_path="openai/clip-vit-base-patch32")
    write_clip_preprocessor(d, H.image_size, legacy=True)


def write_safeclip_h(d: Path, repo_id: str) -> None:
    spec, family = (SD20, "SD20") if repo_id.endswith("sd_20") else (H, "H-safe")
    write_stubs(d, repo_id)
    write_json(
        d / "config.json",
        clip_config(spec, "aimagelab", name_or_path="laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    )
    save_weights(clip_state(family), d, "model.safetensors", None)


def read_config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())
