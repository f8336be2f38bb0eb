"""Named presets: which original CLIP, which Safe-CLIP, and which generator / captioner go together.

    >>> from safeclip.presets import list_presets, get_preset
    >>> list_presets()
    ['mini', 'vit-l-14', 'vit-l-14-336', 'vit-h-14']
    >>> p = get_preset("vit-l-14", overrides={"safe_clip": "/models/safeclip"})
    >>> p.safe_clip
    '/models/safeclip'

Every model reference (a Hub id or a local path) can be overridden, in this order of precedence:

1. explicitly: ``get_preset(name, overrides={"clip": PATH})`` or the CLI flags ``--clip``,
   ``--safe-clip``, ``--sd``, ``--safe-sd``, ``--llava``;
2. by environment variable: ``SAFECLIP_CLIP``, ``SAFECLIP_SAFE_CLIP``, ``SAFECLIP_SD``,
   ``SAFECLIP_SAFE_SD``, ``SAFECLIP_LLAVA`` (they apply to the preset being loaded);
3. by a mirror folder: with ``SAFECLIP_MODELS_DIR=/models``, the id ``org/name`` resolves to
   ``/models/org/name`` when that folder exists.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MINI_MODELS = ASSETS / "models"

# role -> environment variable that overrides it
ROLES = {
    "clip": "SAFECLIP_CLIP",
    "safe_clip": "SAFECLIP_SAFE_CLIP",
    "sd": "SAFECLIP_SD",
    "safe_sd": "SAFECLIP_SAFE_SD",
    "llava": "SAFECLIP_LLAVA",
}


@dataclass(frozen=True)
class Preset:
    name: str  # registry key, e.g. "vit-l-14"
    description: str  # one line for tables and the UI
    backend: str  # "transformers" (CLIPModel directories) or "open_clip"
    clip: str  # original CLIP: Hub id or local path
    safe_clip: str  # Safe-CLIP: Hub id or local path
    image_size: int  # input resolution of the vision encoder, in pixels
    embed_dim: int  # size of the joint embedding space
    context_length: int = 77  # text tokens, start and end included
    open_clip_arch: str | None = None  # open_clip config of the original (backend "open_clip")
    safe_open_clip_arch: str | None = None  # open_clip config of the safe model (QuickGELU)
    sd: str | None = None  # diffusers Stable Diffusion pipeline used for generation
    safe_sd: str | None = None  # where the safe text encoder for `sd` comes from (default: safe_clip)
    llava: str | None = None  # LLaVA checkpoint whose vision tower is swapped for captioning
    bundled: bool = False  # True: the models ship inside the repo (no network ever)
    paper: dict = field(default_factory=dict, compare=False)  # reported numbers, for the UI

    def ids(self) -> dict[str, str]:
        """The model references of this preset by role (roles without a model left out)."""
        return {r: getattr(self, r) for r in ROLES if getattr(self, r)}

    def with_overrides(self, overrides: dict[str, str | None] | None = None,
                       use_env: bool = True) -> "Preset":
        """A copy whose model references follow explicit overrides, then the environment."""
        changes = {}
        for role, var in ROLES.items():
            value = (overrides or {}).get(role) or (os.environ.get(var) if use_env else None)
            if value:
                changes[role] = value
        return dataclasses.replace(self, **changes) if changes else self


def resolve_ref(ref: str) -> str:
    """Map a Hub id to a local mirror folder when ``SAFECLIP_MODELS_DIR`` holds it."""
    mirror = os.environ.get("SAFECLIP_MODELS_DIR")
    if mirror and not Path(ref).exists():
        candidate = Path(mirror) / ref
        if candidate.exists():
            return str(candidate)
    return ref


_REGISTRY: dict[str, Preset] = {}


SEED_MAX = 2**32 - 1  # generation seeds: 0 .. SEED_MAX
REAL_GENERATION_DEFAULTS = {"steps": 30, "guidance": 7.5, "negative_prompt": ""}  # + native size
REAL_GENERATION_LIMITS = {"steps": (1, 150), "guidance": (1.0, 20.0),
                          "size": {"min": 256, "max": 1024, "multiple": 8}, "seed": (0, SEED_MAX)}


def mini_generation_limits(conf: dict) -> dict:
    """The limits of a bundled generator's sd_config.json, as ``PairedGenerator`` takes them."""
    lim = conf["limits"]
    return {"steps": tuple(lim["steps"]), "guidance": tuple(lim["guidance"]),
            "size": tuple(lim["size"]), "seed": (0, SEED_MAX)}


def generation_settings(preset: str | Preset, overrides: dict | None = None) -> dict:
    """A generator's defaults and limits, read without loading it (the UI is built before any
    model loads), and whether ``steps`` applies: False for the mini embedding decoder (one pass).
    Real presets' size default is the pipeline's native size, known once it loads (None here)."""
    import json

    p = get_preset(preset, overrides)
    conf_path = Path(p.sd or "") / "sd_config.json"
    if p.bundled and conf_path.is_file():
        conf = json.loads(conf_path.read_text())
        return {"defaults": dict(conf["defaults"]), "limits": mini_generation_limits(conf),
                "uses_steps": conf.get("kind") != "embedding-decoder"}
    return {"defaults": {**REAL_GENERATION_DEFAULTS, "size": None},
            "limits": dict(REAL_GENERATION_LIMITS), "uses_steps": True}


def register_preset(preset: Preset) -> Preset:
    if preset.name in _REGISTRY:
        raise ValueError(f"preset {preset.name!r} is already registered")
    _REGISTRY[preset.name] = preset
    return preset


def list_presets() -> list[str]:
    return sorted(_REGISTRY)


def get_preset(name: str | Preset, overrides: dict[str, str | None] | None = None,
               use_env: bool = True) -> Preset:
    """The preset called ``name`` with overrides applied (see the module docstring)."""
    if isinstance(name, Preset):
        return name.with_overrides(overrides, use_env)
    try:
        preset = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}") from None
    return preset.with_overrides(overrides, use_env)


register_preset(Preset(
    name="mini",
    description="Bundled mini world: small CLIPModels trained here on a procedural ViSU (CPU, offline)",
    backend="transformers",
    clip=str(MINI_MODELS / "mini-clip"),
    safe_clip=str(MINI_MODELS / "mini-safeclip"),
    image_size=64,
    embed_dim=128,
    context_length=32,
    sd=str(MINI_MODELS / "mini-gen"),  # an embedding decoder (safeclip.generation.decoder)
    llava=str(MINI_MODELS / "mini-llava"),
    bundled=True,
))

register_preset(Preset(
    name="vit-l-14",
    description="CLIP ViT-L/14 (224 px) vs Safe-CLIP; Stable Diffusion 1.4 for generation",
    backend="transformers",
    clip="openai/clip-vit-large-patch14",
    safe_clip="aimagelab/safeclip_vit-l_14",
    image_size=224,
    embed_dim=768,
    sd="CompVis/stable-diffusion-v1-4",
    paper={"source": "HySAC (CVPR 2025) Table 1, ViSU test, R@1/R@10/R@20",
           "clip": {"T->I": "36.8/71.6/81.5", "I->T": "39.8/74.2/83.5",
                    "T*->I∪I*": "2.0/24.8/33.2", "I*->T∪T*": "4.6/32.9/40.6"},
           "safeclip": {"T->I": "45.9/81.8/89.7", "I->T": "45.3/82.3/89.8",
                        "T*->I∪I*": "8.0/46.9/58.0", "I*->T∪T*": "19.1/62.9/71.1"}},
))

register_preset(Preset(
    name="vit-l-14-336",
    description="CLIP ViT-L/14 at 336 px vs Safe-CLIP 336; LLaVA-1.5 7B for captioning",
    backend="transformers",
    clip="openai/clip-vit-large-patch14-336",
    safe_clip="aimagelab/safeclip_vit-l_14_336",
    image_size=336,
    embed_dim=768,
    llava="llava-hf/llava-1.5-7b-hf",
))

register_preset(Preset(
    name="vit-h-14",
    description="OpenCLIP ViT-H/14 (LAION-2B) vs Safe-CLIP ViT-H/14; SD 2.0 with Safe-CLIP's encoder",
    backend="open_clip",
    clip="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    safe_clip="aimagelab/safeclip_vit-h_14",
    image_size=224,
    embed_dim=1024,
    open_clip_arch="ViT-H-14",
    safe_open_clip_arch="ViT-H-14-quickgelu",
    sd="stabilityai/stable-diffusion-2",
    safe_sd="aimagelab/safeclip_sd_20",
))
