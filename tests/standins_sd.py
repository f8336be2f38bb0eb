"""Stable Diffusion stand-ins: CompVis/stable-diffusion-v1-4 and stabilityai/stable-diffusion-2.

Tiny UNets (two levels, one layer per block) and VAEs (four levels of 32 channels, so the VAE scale
factor is 8 as in the real ones), real scheduler configs, the real CLIP tokenizer; the text
encoders are the CLIP stand-ins' text towers (SD 1.4 = openai ViT-L/14's, SD 2 = LAION ViT-H/14's
first 23 layers).
"""

from __future__ import annotations

from pathlib import Path

import torch
from standins_clip import SD20, L, clip_config, legacy_text_config, sd2_text_state, text_tower
from standins_clip import SEEDS as CLIP_SEEDS
from standins_common import (
    save_weights,
    seeded_state,
    with_legacy_position_ids,
    write_clip_preprocessor,
    write_clip_tokenizer,
    write_json,
    write_stubs,
)

SEEDS = {"sd14-unet": 22, "sd14-vae": 23, "sd2-unet": 32, "sd2-vae": 33}
_DIFFUSERS_COMPONENTS = {
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
_SCHEDULE = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def model_index(sd2: bool) -> dict:
    if sd2:
        extra = {
            "_diffusers_version": "0.10.0.dev0",
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "DDIMScheduler"],
        }
    else:
        extra = {
            "_diffusers_version": "0.2.2",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "requires_safety_checker": True,
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "scheduler": ["diffusers", "PNDMScheduler"],
        }
    return dict(
        sorted({"_class_name": "StableDiffusionPipeline", **_DIFFUSERS_COMPONENTS, **extra}.items())
    )


def scheduler_config(sd2: bool) -> dict:
    if sd2:
        head = {
            "_class_name": "DDIMScheduler",
            "_diffusers_version": "0.8.0",
            "prediction_type": "v_prediction",
        }
    else:
        head = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.7.0.dev0"}
    return dict(sorted({**head, **_SCHEDULE}.items()))


def unet_config(sd2: bool) -> dict:
    cfg = {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.10.0.dev0" if sd2 else "0.2.2",
        "act_fn": "silu",
        "attention_head_dim": [2, 4] if sd2 else 8,
        "block_out_channels": [32, 64],
        "center_input_sample": False,
        "cross_attention_dim": SD20.text_width if sd2 else L.text_width,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 96 if sd2 else 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    }
    if sd2:
        cfg.update(
            {
                "dual_cross_attention": False,
                "num_class_embeds": None,
                "only_cross_attention": False,
                "use_linear_projection": True,
            }
        )
    return dict(sorted(cfg.items()))


def vae_config(sd2: bool) -> dict:
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.10.0.dev0" if sd2 else "0.2.2",
        "act_fn": "silu",
        "block_out_channels": [32, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 768 if sd2 else 512,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def _diffusers_state(cls_name: str, cfg: dict, seed: int) -> dict:
    import diffusers

    cls = getattr(diffusers, cls_name)
    with torch.device("meta"):
        model = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    return seeded_state(model, seed)


def text_encoder_config(sd2: bool) -> dict:
    if sd2:
        cfg = legacy_text_config(SD20, "4.25.0.dev0", projection_dim=512)  # real: 512, unused
        name = "hf-models/stable-diffusion-v2-768x768/text_encoder"
    else:
        cfg = legacy_text_config(L, "4.22.0.dev0", projection_dim=L.proj)  # real: 768 = CLIP's
        name = "openai/clip-vit-large-patch14"
    keep = (
        "attention_dropout",
        "bos_token_id",
        "dropout",
        "eos_token_id",
        "hidden_act",
        "hidden_size",
        "initializer_factor",
        "initializer_range",
        "intermediate_size",
        "layer_norm_eps",
        "max_position_embeddings",
        "model_type",
        "num_attention_heads",
        "num_hidden_layers",
        "pad_token_id",
        "projection_dim",
        "transformers_version",
        "vocab_size",
    )
    out = {k: cfg[k] for k in keep} | {
        "_name_or_path": name,
        "architectures": ["CLIPTextModel"],
        "torch_dtype": "float32",
    }
    return dict(sorted(out.items()))


def safety_checker_state() -> dict:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    cfg = CLIPConfig.from_dict(clip_config(L, "aimagelab"))
    with torch.device("meta"):
        model = StableDiffusionSafetyChecker(cfg)
    state = seeded_state(model, CLIP_SEEDS["sd14-safety"])
    # Thresholds of 1: cosine - 1 + adjustment never exceeds 0: the stand-in never blanks an image.
    for k in ("concept_embeds_weights", "special_care_embeds_weights"):
        state[k] = torch.ones_like(state[k])
    n_pos = (L.image_size // L.patch) ** 2 + 1
    return with_legacy_position_ids(state, {"vision_model.vision_model": n_pos})


def write_sd(d: Path, repo_id: str) -> None:
    sd2 = repo_id.startswith("stabilityai/")
    write_stubs(d, repo_id)
    write_json(d / "model_index.json", model_index(sd2))
    write_json(d / "scheduler" / "scheduler_config.json", scheduler_config(sd2))
    write_json(d / "text_encoder" / "config.json", text_encoder_config(sd2))
    text = sd2_text_state() if sd2 else text_tower("L")
    text = with_legacy_position_ids(text, {"text_model": 77})
    save_weights(text, d / "text_encoder", "model.safetensors", "pytorch_model.bin")
    write_clip_tokenizer(
        d / "tokenizer", with_tokenizer_json=False, pad_token="!" if sd2 else "<|endoftext|>"
    )
    tag = "sd2" if sd2 else "sd14"
    for sub, cls_name, cfg in (
        ("unet", "UNet2DConditionModel", unet_config(sd2)),
        ("vae", "AutoencoderKL", vae_config(sd2)),
    ):
        write_json(d / sub / "config.json", cfg)
        state = _diffusers_state(cls_name, cfg, SEEDS[f"{tag}-{sub}"])
        save_weights(
            state, d / sub, "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"
        )
    if not sd2:
        write_clip_preprocessor(d / "feature_extractor", 224, legacy=True, do_convert_rgb=True)
        write_json(
            d / "safety_checker" / "config.json",
            clip_config(
                L,
                "openai",
                name_or_path="CompVis/stable-diffusion-safety-checker",
                architectures=("StableDiffusionSafetyChecker",),
            ),
        )
        save_weights(
            safety_checker_state(), d / "safety_checker", "model.safetensors", "pytorch_model.bin"
        )
