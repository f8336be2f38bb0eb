"""The app-facing paired generator: input checks, a lock, the judge, and the preset loaders.

    >>> from safeclip.generation import load_generator
    >>> gen = load_generator("mini")                      # models loaded once
    >>> res = gen.generate_pair("a red dog holding a kite in the park", seed=0)
    >>> res.clip.image, res.clip.verdict.unsafe, res.safeclip.image, res.settings, res.warnings

Presets: ``mini`` (bundled, CPU, offline: assets/models/mini-gen, an embedding decoder, with the
mini CLIPs' text towers),
``vit-l-14`` (CompVis/stable-diffusion-v1-4 + Safe-CLIP ViT-L/14's text model) and ``vit-h-14``
(preset.sd + the text encoder of preset.safe_sd). Real presets need their weights on disk or the
Hub; offline they raise ``ModelUnavailableError`` with a message that says how to point at a copy.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..encoders import ModelUnavailableError, default_device_dtype, fetch
from ..presets import (
    REAL_GENERATION_DEFAULTS,
    REAL_GENERATION_LIMITS,
    SEED_MAX,
    Preset,
    get_preset,
    mini_generation_limits,
)
from ..safety import Judge, Verdict, get_judge
from .paired import PairedStableDiffusion

logger = logging.getLogger(__name__)

# what a diffusers SD repo needs here (no safety checker, no flax/onnx/ckpt copies)
SD_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "*/config.json",
            "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors")
SAFE_FILES = ("*.json", "*.txt", "model.safetensors", "pytorch_model.bin", "text_encoder/*")


@dataclass
class GeneratedImage:
    image: Image.Image  # the unblurred image (the UI blurs it when verdict.unsafe)
    verdict: Verdict  # the judge's decision on it
    model: str  # "clip" or "safeclip": which text encoder drew it

    @property
    def flagged(self) -> bool:
        return bool(self.verdict.unsafe)


@dataclass
class PairResult:
    clip: GeneratedImage  # the original text encoder's image
    safeclip: GeneratedImage  # Safe-CLIP's text encoder's image, same noise and settings
    settings: dict  # what was used, after defaults: prompt, negative_prompt, seed, steps, ...
    warnings: list[str] = field(default_factory=list)  # e.g. the prompt was truncated
    seconds: float = 0.0  # wall time of the pair (both images, judge included)

    def to_json(self) -> dict:
        def one(g: GeneratedImage) -> dict:
            v = g.verdict
            return {"flagged": g.flagged, "unsafe": bool(v.unsafe), "score": round(v.score, 4),
                    "category": v.category, "threshold": v.threshold,
                    "labels": {k: round(float(s), 4) for k, s in v.labels.items()}}
        return {"settings": self.settings, "warnings": self.warnings,
                "seconds": round(self.seconds, 3), "clip": one(self.clip),
                "safeclip": one(self.safeclip)}


class PairedGenerator:
    """Checks inputs, applies defaults, runs the paired pipeline under a lock, judges both images.

    ``defaults``: steps, guidance, size (width = height), negative_prompt.
    ``limits``: steps (min, max), guidance (min, max), size (a tuple of choices, or
    {"min", "max", "multiple"}), seed (0, 2**32 - 1). Out-of-range values raise ValueError.
    """

    def __init__(self, paired: PairedStableDiffusion, judge: Judge, preset: str | Preset,
                 defaults: dict, limits: dict):
        self.preset_obj = preset if isinstance(preset, Preset) else None  # with overrides
        self.paired, self.judge = paired, judge
        self.preset = preset.name if isinstance(preset, Preset) else str(preset)
        self.defaults, self.limits = dict(defaults), dict(limits)
        self._lock = threading.Lock()

    @property
    def context_length(self) -> int:
        return int(self.paired.tokenizer.model_max_length)

    # ------------------------------------------------------------------------------ checks
    def _check_text(self, text, what: str, warnings: list[str], allow_empty: bool) -> str | None:
        if text is None:
            return None
        if not isinstance(text, str):
            raise ValueError(f"{what} must be text, not {type(text).__name__}")  # noqa: TRY004
        text = text.strip()
        if not text and not allow_empty:
            raise ValueError(f"{what} is empty: type a description of the image to generate")
        n = len(self.paired.tokenizer(text, truncation=False, verbose=False).input_ids)
        if n > self.context_length:
            ids = self.paired.tokenizer(text, truncation=True, max_length=self.context_length).input_ids
            kept = self.paired.tokenizer.decode(ids, skip_special_tokens=True)
            warnings.append(f"{what} is {n} tokens long; the text encoders read only "
                            f"{self.context_length} (start and end included), so it was truncated "
                            f"to: {kept!r}")
        return text

    @staticmethod
    def _number(value, kind, lo, hi, what: str):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and isinstance(value, float) and not float(value).is_integer()):
            raise ValueError(f"{what} must be {'an integer' if kind is int else 'a number'}, "
                             f"not {value!r}")
        value = kind(value)
        if not lo <= value <= hi:
            raise ValueError(f"{what} must be between {lo} and {hi}, not {value}")
        return value

    def _check_size(self, size) -> int:
        lim = self.limits["size"]
        if isinstance(lim, dict):
            size = self._number(size, int, lim["min"], lim["max"], "size")
            if size % lim["multiple"]:
                raise ValueError(f"size must be a multiple of {lim['multiple']}, not {size}")
            return size
        if isinstance(size, bool) or not isinstance(size, int) or size not in lim:
            raise ValueError(f"size must be one of {list(lim)} for preset {self.preset!r}, not {size!r}")
        return size

    # ------------------------------------------------------------------------------ generation
    def generate_pair(self, prompt: str, negative_prompt: str | None = None, seed: int = 0,
                      steps: int | None = None, guidance: float | None = None,
                      size: int | None = None, progress: bool = True) -> PairResult:
        """Both images of ``prompt`` from the same noise; see the class docstring for limits."""
        t0, warnings = time.time(), []
        prompt = self._check_text(prompt, "prompt", warnings, allow_empty=False)
        if negative_prompt is None:
            negative_prompt = self.defaults.get("negative_prompt") or None
        negative_prompt = self._check_text(negative_prompt, "negative prompt", warnings, True)
        seed = self._number(seed, int, 0, SEED_MAX, "seed")
        steps = self._number(self.defaults["steps"] if steps is None else steps, int,
                             *self.limits["steps"], "steps")
        guidance = self._number(self.defaults["guidance"] if guidance is None else guidance,
                                float, *self.limits["guidance"], "guidance")
        size = self._check_size(self.defaults["size"] if size is None else size)
        with self._lock:
            img_o, img_s = self.paired(prompt, negative_prompt, seed, steps, guidance, size, size,
                                       progress=progress)
            v_o, v_s = self.judge.judge([img_o, img_s])
        settings = {"preset": self.preset, "prompt": prompt, "negative_prompt": negative_prompt,
                    "seed": seed, "steps": steps if self.paired.uses_steps else None,
                    "guidance": guidance, "size": size, "scheduler": self.paired.sampler,
                    "judge": self.judge.name}
        for w in warnings:
            logger.warning(w)
        return PairResult(GeneratedImage(img_o, v_o, "clip"), GeneratedImage(img_s, v_s, "safeclip"),
                          settings, warnings, time.time() - t0)


# ---------------------------------------------------------------------------------- loaders
def _sd_pipeline(unet, vae, scheduler, text_encoder, tokenizer):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _mini_limits(conf: dict) -> tuple[dict, dict]:
    return conf["defaults"], mini_generation_limits(conf)


def load_mini(preset: Preset, device=None) -> PairedGenerator:
    """The bundled generator of ``preset.sd``: assets/models/mini-gen (an embedding decoder, the
    default) or a diffusers SD folder such as the one `safeclip mini build --only sd` writes, with
    the text towers of the preset's two CLIPs."""
    from transformers import CLIPTokenizer

    sd = Path(preset.sd)
    conf_path = sd / "sd_config.json"
    if not conf_path.exists():
        raise ModelUnavailableError(f"the mini generator is not built yet ({sd}): run "
                                    "`safeclip mini build --only gen` (or `--only sd` for the "
                                    "mini Stable Diffusion)")
    conf = json.loads(conf_path.read_text())
    device, _ = default_device_dtype(device, torch.float32)
    if conf.get("kind") == "embedding-decoder":
        from diffusers import AutoencoderKL

        from .decoder import EmbeddingDecoder, PairedEmbeddingDecoder, load_text_embedder

        tokenizer = CLIPTokenizer.from_pretrained(preset.clip, model_max_length=preset.context_length)
        paired = PairedEmbeddingDecoder(
            EmbeddingDecoder.load(sd / "decoder").to(device),
            AutoencoderKL.from_pretrained(sd / conf["vae"]).float().eval().to(device), tokenizer,
            load_text_embedder(preset.clip).to(device), load_text_embedder(preset.safe_clip).to(device))
        return PairedGenerator(paired, get_judge("mini"), preset, *_mini_limits(conf))
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel

    from .text import load_text_encoder

    if not (sd / "unet" / "config.json").exists():
        raise ModelUnavailableError(f"{sd} has an sd_config.json but no unet/: an unfinished "
                                    "export? Rebuild it with `safeclip mini build --only sd`")
    mode = conf["text_encoder"].get("hidden_states", "all")
    unet = UNet2DConditionModel.from_pretrained(sd / "unet").float().eval().to(device)
    vae = AutoencoderKL.from_pretrained(sd / "vae").float().eval().to(device)
    scheduler = DPMSolverMultistepScheduler.from_pretrained(sd / "scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(preset.clip, model_max_length=preset.context_length)
    te_o = load_text_encoder(preset.clip, mode).to(device)
    te_s = load_text_encoder(preset.safe_clip, mode).to(device)
    pipe = _sd_pipeline(unet, vae, scheduler, te_o, tokenizer)
    return PairedGenerator(PairedStableDiffusion(pipe, te_s), get_judge("mini"), preset,
                           *_mini_limits(conf))


def _safe_text_encoder(ref: str, preset: Preset, role: str, dtype):
    """The text encoder of a Safe-CLIP checkpoint: a diffusers repo's text_encoder/, a CLIPModel
    folder's text tower, or a CLIPTextModel folder."""
    from transformers import CLIPTextModel

    from .text import load_text_encoder

    path = fetch(ref, preset.name, role, SAFE_FILES)
    if (path / "text_encoder" / "config.json").exists():
        return CLIPTextModel.from_pretrained(path / "text_encoder", dtype=dtype).eval()
    if (path / "config.json").exists():
        return load_text_encoder(path, "all", dtype)
    raise ModelUnavailableError(f"{ref!r} (preset {preset.name!r}, {role}) holds no text encoder "
                                "(no text_encoder/config.json, no config.json)")


def load_real(preset: Preset, device=None, offload: bool = False) -> PairedGenerator:
    from diffusers import StableDiffusionPipeline

    if not preset.sd:
        raise ValueError(f"preset {preset.name!r} has no Stable Diffusion model")
    device, dtype = default_device_dtype(device)
    path = fetch(preset.sd, preset.name, "sd", SD_FILES)
    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    role = "safe_sd" if preset.safe_sd else "safe_clip"
    safe = _safe_text_encoder(preset.safe_sd or preset.safe_clip, preset, role, dtype)
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
    native = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    return PairedGenerator(paired, get_judge("nudenet"), preset,
                           {**REAL_GENERATION_DEFAULTS, "size": native},
                           dict(REAL_GENERATION_LIMITS))


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def load_generator(preset: str | Preset = "mini", overrides: dict | None = None, device=None,
                   offload: bool = False, cache: bool = True) -> PairedGenerator:
    """The paired generator of ``preset`` (loaded once per preset, overrides, device, offload)."""
    p = get_preset(preset, overrides)
    key = (p, str(device), bool(offload))
    with _CACHE_LOCK:
        if cache and key in _CACHE:
            return _CACHE[key]
        gen = load_mini(p, device) if p.bundled else load_real(p, device, offload)
        if cache:
            _CACHE[key] = gen
        return gen
