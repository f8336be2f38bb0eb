"""Generator kind ``diffusers-sd``: a Stable Diffusion pipeline with two text encoders.

    >>> from safeclip.generation.sd import load_sd_generator
    >>> gen = load_sd_generator(get_preset("vit-l-14"), device="cuda")

The pipeline loads without its safety checker and feature extractor (``CompVis/stable-diffusion-
v1-4`` names both in ``model_index.json``; neither is downloaded): images are judged by the world's
judge instead. Its own text encoder is the original, unless the world names one (``text``); the
Safe-CLIP text encoder comes from the world's ``safe_text`` model, in any form a Safe-CLIP ships
(``safeclip.generation.text``). Parameters equal in both encoders are stored once.
"""
from __future__ import annotations

import logging

from ..encoders import default_device_dtype
from ..hub import SD_FILES, SD_UNET_FILES, TEXT_ENCODER_FILES, fetch
from ..safety.base import load_judge
from .generator import PairedGenerator, generation_settings
from .paired import PairedStableDiffusion
from .text import load_text_encoder

logger = logging.getLogger(__name__)


def text_encoder(spec, world, dtype):
    """The text encoder a ModelSpec names (any Safe-CLIP form), frozen, in ``dtype``."""
    path = fetch(spec.ref, TEXT_ENCODER_FILES, role=spec.role, world=world.name, hint=spec.hint)
    return load_text_encoder(path, dtype)


def _tokenizer(spec, world, text_config):
    """The tokenizer of a text encoder's folder (a pipeline whose world names its text encoder
    may have none of its own), at the encoder's context length."""
    from transformers import AutoTokenizer

    from .text import text_folder

    path = fetch(spec.ref, TEXT_ENCODER_FILES, role=spec.role, world=world.name, hint=spec.hint)
    folder = path if (path / "tokenizer_config.json").exists() else text_folder(path)
    return AutoTokenizer.from_pretrained(folder,
                                         model_max_length=text_config.max_position_embeddings)


def load_sd_generator(world, device=None, offload: bool = False) -> PairedGenerator:
    from diffusers import StableDiffusionPipeline

    g = world.generation
    device, dtype = default_device_dtype(device)
    layout = SD_FILES if g.text is None else SD_UNET_FILES
    path = fetch(g.sd.ref, layout, role="sd", world=world.name, hint=g.sd.hint)
    extra = {}
    if g.text is not None:  # the world names the original text encoder itself
        extra["text_encoder"] = text_encoder(g.text, world, dtype)
        if not any((path / "tokenizer").glob("*")):
            extra["tokenizer"] = _tokenizer(g.text, world, extra["text_encoder"].config)
    pipe = StableDiffusionPipeline.from_pretrained(
        path, dtype=dtype, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, **extra)
    pipe.set_progress_bar_config(disable=True)
    safe = text_encoder(g.safe_text, world, dtype)
    if device.type == "cuda":
        pipe.enable_attention_slicing()
    if offload and device.type == "cuda":
        from accelerate import cpu_offload_with_hook

        pipe.enable_model_cpu_offload()
        cpu_offload_with_hook(safe, device)
        paired = PairedStableDiffusion(pipe, safe, share=False)  # offload hooks move modules
    else:
        pipe.to(device)
        paired = PairedStableDiffusion(pipe, safe.to(device))
    settings = generation_settings(world)
    defaults, limits = settings["defaults"], settings["limits"]
    paired.uses_steps = settings["uses_steps"]
    native = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    defaults.setdefault("size", native)
    return PairedGenerator(paired, load_judge(g.judge, world), world, defaults, limits)
