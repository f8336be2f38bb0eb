"""Finding a model's files: the path itself, a mirror, the Hugging Face cache, or the Hub.

    >>> from safeclip.hub import fetch, CLIP_FILES
    >>> folder = fetch(spec, world, CLIP_FILES)   # spec: a presets.ModelSpec

A ``Layout`` lists the alternative file sets of a kind of model, preferred first (safetensors
before ``.bin``): each alternative is what to download (``allow_patterns``) and what it must hold
(globs; every group needs one matching file). A cached snapshot is used only when it holds one
alternative completely: a cache that an open_clip snippet or a tokenizer-less load left behind
is not taken for the model. Otherwise the Hub is asked, alternative by alternative, so that a
repo with safetensors never downloads its ``.bin`` too. Each failure has its own message, and
each names the role, the path or id and the override that points at a copy.
"""
from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelUnavailableError
from .presets import ROLES, env_var, flag, resolve_ref

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Files:
    patterns: tuple[str, ...]  # allow_patterns of the download
    required: tuple[tuple[str, ...], ...]  # groups of globs: each group must match a file


@dataclass(frozen=True)
class Layout:
    name: str  # what it is, for messages ("a transformers CLIPModel")
    options: tuple[Files, ...]

    def missing(self, folder: Path, option: Files) -> list[str]:
        files = _files(folder)
        return [" or ".join(group) for group in option.required
                if not any(fnmatch.fnmatch(f, g) for f in files for g in group)]

    def complete(self, folder: Path) -> Files | None:
        return next((o for o in self.options if not self.missing(folder, o)), None)

    def patterns(self) -> list[str]:
        return sorted({p for o in self.options for p in o.patterns})


def _files(folder: Path) -> list[str]:
    if folder.is_file():
        return [folder.name]
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def _alternatives(common: tuple[str, ...], required: tuple[tuple[str, ...], ...],
                  weights: dict[str, tuple[str, ...]]) -> tuple[Files, ...]:
    """One Files per weights format: the common files plus that format's weights."""
    return tuple(Files(common + pats, required + tuple((p,) for p in pats if "index" not in p))
                 for pats in weights.values())


TOKENIZER = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json")
CLIP_FILES = Layout("a transformers CLIPModel (config.json and its weights)", _alternatives(
    ("config.json", "preprocessor_config.json", *TOKENIZER), (("config.json",),),
    {"safetensors": ("model*.safetensors", "model.safetensors.index.json"),
     "bin": ("pytorch_model*.bin", "pytorch_model.bin.index.json")}))
OPEN_CLIP_FILES = Layout("open_clip weights", _alternatives(
    ("open_clip_config.json",), (),
    {"safetensors": ("open_clip_model.safetensors",), "bin": ("open_clip_pytorch_model.bin",)}))
# a text encoder: a CLIPModel / CLIPTextModel folder, or a diffusers repo's text_encoder/
TEXT_ENCODER_FILES = Layout("a CLIP text encoder (a CLIPModel, a CLIPTextModel or a diffusers "
                            "text_encoder/)", CLIP_FILES.options + _alternatives(
    ("text_encoder/config.json",), (("text_encoder/config.json",),),
    {"safetensors": ("text_encoder/model*.safetensors",),
     "bin": ("text_encoder/pytorch_model*.bin",)}))
# Stable Diffusion without its safety checker and feature extractor (loaded with both None)
SD_COMMON = ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/*",
             "text_encoder/config.json", "unet/config.json", "vae/config.json")
SD_REQUIRED = (("model_index.json",), ("scheduler/scheduler_config.json",),
               ("tokenizer/vocab.json", "tokenizer/tokenizer.json"), ("unet/config.json",),
               ("vae/config.json",))
SD_FILES = Layout("a diffusers Stable Diffusion pipeline", _alternatives(
    SD_COMMON, SD_REQUIRED,
    {"safetensors": ("unet/diffusion_pytorch_model.safetensors",
                     "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"),
     "bin": ("unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.bin",
             "text_encoder/pytorch_model.bin")}))
# Stable Diffusion whose world names the text encoder itself (``generation.text``): the
# pipeline's own text encoder and tokenizer are neither required nor fetched (the mini world's
# generator ships none: it reads the mini CLIPs' text towers)
SD_UNET_FILES = Layout("a diffusers Stable Diffusion pipeline (its text encoder named apart)",
                       _alternatives(
    tuple(p for p in SD_COMMON if not p.startswith(("tokenizer/", "text_encoder/"))),
    tuple(g for g in SD_REQUIRED if not g[0].startswith("tokenizer/")),
    {"safetensors": ("unet/diffusion_pytorch_model.safetensors",
                     "vae/diffusion_pytorch_model.safetensors"),
     "bin": ("unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.bin")}))
LLAVA_FILES = Layout("a transformers LLaVA (config, weights and tokenizer)", _alternatives(
    ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
     "chat_template.json", "chat_template.jinja", "added_tokens.json", "tokenizer.model",
     *TOKENIZER),
    (("config.json",), ("tokenizer.json", "tokenizer.model")),
    {"safetensors": ("model*.safetensors", "model.safetensors.index.json"),
     "bin": ("pytorch_model*.bin", "pytorch_model.bin.index.json")}))


def is_path(ref: str) -> bool:
    """A reference that can only be a path (a Hub id is ``org/name`` or ``name``)."""
    return (ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1
            or Path(ref).suffix in (".bin", ".pt", ".safetensors", ".json"))


def _override(role: str, ref: str) -> str:
    return (f"point at a copy with {flag(role)} PATH or {env_var(role)}=PATH, or put it under "
            f"$SAFECLIP_MODELS_DIR/{ref}" if not is_path(ref) else
            f"point at the right folder with {flag(role)} PATH or {env_var(role)}=PATH")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _who(role: str, world: str) -> str:
    return f"world {world!r}, {role}: the {ROLES[role][2]}"


def _snapshot(ref: str, patterns: list[str], local_only: bool) -> Path:
    """huggingface_hub's snapshot_download (a seam for the tests' fake Hub)."""
    from huggingface_hub import snapshot_download

    kwargs = {"local_files_only": True} if local_only else {"etag_timeout": 10}
    return Path(snapshot_download(ref, allow_patterns=patterns, **kwargs))


def fetch(ref: str, layout: Layout, *, role: str, world: str, hint: str = "") -> Path:
    """A local folder holding ``layout`` for ``ref`` (see the module docstring)."""
    who = _who(role, world)
    resolved = resolve_ref(ref)
    local = Path(resolved).expanduser()
    if local.exists():
        if local.is_dir() and layout.complete(local) is None:
            lacks = layout.missing(local, layout.options[0])
            where = "the mirror folder" if resolved != ref else "the folder"
            raise ModelUnavailableError(
                f"{where} {local} ({who}) is not {layout.name}: it lacks {', '.join(lacks)}. "
                f"{_sentence(_override(role, ref))}.")
        return local
    if is_path(ref):
        tip = f" ({hint})" if hint else ""
        raise ModelUnavailableError(f"model {ref!r} ({who}) does not exist{tip}; "
                                    f"{_override(role, ref)}.")
    partial = None
    for option in layout.options:  # the local cache first: no network involved
        try:
            path = _snapshot(ref, list(option.patterns), local_only=True)
        except Exception:  # noqa: BLE001 - not cached
            continue
        if not layout.missing(path, option):
            return path
        partial = partial or (path, layout.missing(path, option))
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        reason = "HF_HUB_OFFLINE is set"
    else:
        reason, fetched = None, []
        for option in layout.options:
            try:
                path = _snapshot(ref, list(option.patterns), local_only=False)
            except Exception as e:  # noqa: BLE001 - one readable message instead of a stack
                reason = reason or _reason(e)
                continue
            if not layout.missing(path, option):
                return path
            fetched.append(layout.missing(path, option))
        if fetched and reason is None:
            raise ModelUnavailableError(
                f"downloaded {ref!r} from the Hugging Face Hub ({who}), but it holds no "
                f"{', '.join(fetched[0])}: is it {layout.name}? {_sentence(_override(role, ref))}.")
    cached = (f" The cached copy at {partial[0]} is incomplete (it lacks {', '.join(partial[1])})."
              if partial else "")
    raise ModelUnavailableError(
        f"model {ref!r} ({who}) is not on disk and could not be fetched from the Hugging Face "
        f"Hub ({reason}).{cached} Download it where you have network (`safeclip download "
        f"--preset {world} --out DIR`, then SAFECLIP_MODELS_DIR=DIR) or "
        f"{_override(role, ref)}. The world {default_world()!r} works offline.")


def _reason(e: Exception) -> str:
    name = e.__class__.__name__
    if "RepositoryNotFound" in name:
        return "no such repository, or it is gated"
    if "GatedRepo" in name:
        return "the repository is gated: accept its licence on the Hub and log in"
    return name


def default_world() -> str:
    from .presets import default_preset
    return default_preset()


def on_disk(ref: str, layout: Layout) -> bool:
    """Whether ``ref`` is complete on disk (a path, a mirror folder or the HF cache)."""
    local = Path(resolve_ref(ref)).expanduser()
    if local.exists():
        return local.is_file() or layout.complete(local) is not None
    if is_path(ref):
        return False
    for option in layout.options:
        try:
            path = _snapshot(ref, list(option.patterns), local_only=True)
        except Exception:  # noqa: BLE001
            continue
        if not layout.missing(path, option):
            return True
    return False
