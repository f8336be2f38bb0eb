"""Tiny, seeded stand-ins of the ten Hugging Face repositories the project loads, on disk exactly as
a Hub download leaves them (``root/org/name/...``), for tests without network.

    >>> from standins import write_all, write_repo, download, hub_files
    >>> dirs = write_all(tmp)          # {repo_id: folder}; skips complete repos
    >>> download(dirs["CompVis/stable-diffusion-v1-4"], dest, ["unet/*", "*.json"])

Each repo has the real repo's file list (minus huge files in formats nobody here loads: see
``OMITTED``), configs with the real fields (model_type, architectures, activations, layer counts,
image and patch sizes, token ids, vocabulary sizes, diffusers component classes, scheduler
settings) and tiny widths, so everything loads and runs in well under a second on a CPU with the
stock libraries. Weights are fp32 (as the real CLIP and SD repos) except LLaVA's, which are fp16
like the real checkpoint; all values are fp16-representable, so a cast to fp16 is exact.

Component relations (as the paper swaps them):

* SD 1.4 ``text_encoder`` == openai/clip-vit-large-patch14's text tower; aimagelab/safeclip_vit-l_14
  (same architecture, projection dim 32) is that CLIP with a merged rank-2 LoRA on k_proj,
  v_proj, out_proj, fc1, fc2 and patch_embedding weights of both towers: every other tensor is
  byte-identical. The same holds for the -336 pair (projection dim 24) and the ViT-H pair
  (projection dim 16).
* SD 2's ``text_encoder`` == LAION ViT-H/14's text tower minus its last layer (23 layers, gelu);
  aimagelab/safeclip_sd_20's text tower has the same config and is a LoRA-perturbed copy of it;
  its vision tower is aimagelab/safeclip_vit-h_14's.
* LLaVA's vision tower == openai/clip-vit-large-patch14-336's vision tower, so
  aimagelab/safeclip_vit-l_14_336's vision tower loads strictly into it.

Verified from public copies of the real files (search tool): openai/clip-vit-large-patch14's
config.json (``_name_or_path`` "clip-vit-large-patch14/", text_config dumped by transformers
4.16.0.dev0 with bos 0 / eos 2 / pad 1, quick_gelu, ``text_config_dict`` with the widths,
``transformers_version`` null, fp32; transformers 5 applies ``text_config_dict`` over its own
defaults, so the loaded ids are bos 49406 / eos 49407 / pad 1, as for the real file); SD 1.4's
text_encoder config (CLIPTextModel, bos 0, eos 2, pad 1; its projection_dim 768 equals the CLIP's,
so the stand-in writes the CLIP's tiny 32); SD 1.4's scheduler_config.json (PNDM, 0.7.0.dev0,
scaled_linear 0.00085..0.012, skip_prk_steps, set_alpha_to_one false, steps_offset 1, clip_sample
false); SD 1.x model_index.json components (feature_extractor CLIPImageProcessor, safety_checker
StableDiffusionSafetyChecker); llava-hf/llava-1.5-7b-hf's config.json (every top-level, text_config
and vision_config field written here, transformers 4.36.0.dev0, fp16) and its shard naming
``model-0000N-of-00003.safetensors``; the -336 repo serving ``pytorch_model.bin`` (no public
reference to a ``model.safetensors`` there, so it ships the .bin only); aimagelab/safeclip_vit-l_14
holding five files (hence no tokenizer or preprocessor files in the aimagelab repos); open_clip's
hub format (``open_clip_config.json`` = {"model_cfg", "preprocess_cfg": {mean, std}}, read from the
installed open_clip) and the built-in ViT-H-14 model_cfg form.

Assumptions (not verified): the exact file lists (from memory of the Hub pages, see ``FILES``);
openai -336's and LAION's config.json in the same 2022 style as ViT-L/14's (LAION's with
``hidden_act`` "gelu" in its ``*_config_dict``); 2022 checkpoints carrying the persistent
``*.embeddings.position_ids`` buffers (openai, LAION, SD text encoders, safety checker), the 2024
aimagelab ones not; aimagelab configs as transformers 4.40 ``save_pretrained`` writes them (token
ids left to the defaults: bos 49406, eos 49407, pad 1); tokenizer_config/special_tokens_map in the
2022 AddedToken form; SD 1.4's ``requires_safety_checker`` true and ``_diffusers_version`` of the
unet/vae/model_index; SD 2's model_index (diffusers 0.10.0.dev0, feature_extractor and
safety_checker [null, null], requires_safety_checker false), scheduler (DDIM, v_prediction,
clip_sample false, set_alpha_to_one false, steps_offset 1) and unet extras (use_linear_projection,
per-block attention_head_dim); LLaVA's tokenizer_config, generation_config, processor_config and
chat template contents. ``tokenizer.model`` (sentencepiece) of LLaVA is left out: it cannot be
built here (``tokenizer.json`` serves the fast tokenizer). The safety checker's thresholds are 1, so
it never blanks an image.
"""

from __future__ import annotations

import os
import shutil
from fnmatch import fnmatchcase
from pathlib import Path

import standins_clip as _clip
import standins_common as _common
import standins_llava as _llava
import standins_sd as _sd

_STUBS = (".gitattributes", "README.md")
_CLIP_TOK = (
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
)
_SD_TOK = tuple(
    f"tokenizer/{f}"
    for f in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
)
_SD_COMMON = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin",
    *_SD_TOK,
    *(
        f"{c}/{f}"
        for c in ("unet", "vae")
        for f in (
            "config.json",
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.bin",
        )
    ),
)

# repo id -> (writer, relative file paths the stand-in holds)
_REPOS = {
    "openai/clip-vit-large-patch14": (
        _clip.write_openai,
        (
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "preprocessor_config.json",
            *_CLIP_TOK,
        ),
    ),
    "openai/clip-vit-large-patch14-336": (
        _clip.write_openai,
        ("config.json", "pytorch_model.bin", "preprocessor_config.json", *_CLIP_TOK),
    ),
    "aimagelab/safeclip_vit-l_14": (
        _clip.write_safeclip_l,
        ("config.json", "model.safetensors", "open_clip_pytorch_model.bin"),
    ),
    "aimagelab/safeclip_vit-l_14_336": (
        _clip.write_safeclip_l,
        ("config.json", "model.safetensors"),
    ),
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": (
        _clip.write_laion_h,
        (
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "open_clip_config.json",
            "open_clip_model.safetensors",
            "open_clip_pytorch_model.bin",
            "preprocessor_config.json",
            *_CLIP_TOK,
        ),
    ),
    "aimagelab/safeclip_vit-h_14": (_clip.write_safeclip_h, ("config.json", "model.safetensors")),
    "aimagelab/safeclip_sd_20": (_clip.write_safeclip_h, ("config.json", "model.safetensors")),
    "CompVis/stable-diffusion-v1-4": (
        _sd.write_sd,
        (
            *_SD_COMMON,
            "feature_extractor/preprocessor_config.json",
            "safety_checker/config.json",
            "safety_checker/model.safetensors",
            "safety_checker/pytorch_model.bin",
        ),
    ),
    "stabilityai/stable-diffusion-2": (_sd.write_sd, _SD_COMMON),
    "llava-hf/llava-1.5-7b-hf": (
        _llava.write_llava,
        (
            "added_tokens.json",
            "chat_template.json",
            "config.json",
            "generation_config.json",
            *(
                f"model-{i:05d}-of-{_llava.N_SHARDS:05d}.safetensors"
                for i in range(1, _llava.N_SHARDS + 1)
            ),
            "model.safetensors.index.json",
            "preprocessor_config.json",
            "processor_config.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ),
    ),
}
REPOS: tuple[str, ...] = tuple(_REPOS)
FILES: dict[str, tuple[str, ...]] = {
    r: tuple(sorted((*_STUBS, *f))) for r, (_w, f) in _REPOS.items()
}
_FLAX_TF = ("flax_model.msgpack", "tf_model.h5")
# Real files the stand-ins leave out (huge, in formats nobody here loads; or not buildable here).
OMITTED: dict[str, tuple[str, ...]] = {
    "openai/clip-vit-large-patch14": _FLAX_TF,
    "openai/clip-vit-large-patch14-336": ("tf_model.h5",),
    "CompVis/stable-diffusion-v1-4": tuple(
        f"{c}/flax_model.msgpack" for c in ("safety_checker", "text_encoder")
    )
    + ("unet/diffusion_flax_model.msgpack", "vae/diffusion_flax_model.msgpack"),
    "stabilityai/stable-diffusion-2": ("768-v-ema.ckpt", "768-v-ema.safetensors"),
    "llava-hf/llava-1.5-7b-hf": ("tokenizer.model",),
}


def hub_files(repo_dir: Path) -> list[str]:
    """The repo's relative file paths (posix), sorted."""
    repo_dir = Path(repo_dir)
    return sorted(p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file())


def write_repo(repo_id: str, root: Path) -> Path:
    """Write the stand-in of ``repo_id`` at ``root/repo_id`` and return that folder. Idempotent: a
    complete folder is left alone; the folder appears atomically (written aside, then renamed)."""
    writer, _files = _REPOS[repo_id]
    final = Path(root) / repo_id
    if final.is_dir() and hub_files(final) == list(FILES[repo_id]):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    writer(tmp, repo_id)
    expected = list(FILES[repo_id])
    got = hub_files(tmp)
    if got != expected:
        raise AssertionError(f"{repo_id}: wrote {got}, expected {expected}")
    if final.is_dir() and hub_files(final) != expected:
        shutil.rmtree(final)  # an incomplete or stale folder
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished the same repo first
        if not (final.is_dir() and hub_files(final) == expected):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_all(root: Path) -> dict[str, Path]:
    return {repo_id: write_repo(repo_id, root) for repo_id in REPOS}


def _pattern(p: str) -> str:
    p = str(p).replace("\\", "/")
    return p + "*" if p.endswith("/") else p


def download(
    repo_dir: Path,
    dest: Path,
    allow_patterns: list[str] | str | None = None,
    ignore_patterns: list[str] | str | None = None,
) -> Path:
    """Copy the files of a stand-in repo that ``huggingface_hub.snapshot_download(
    allow_patterns=..., ignore_patterns=...)`` would fetch into ``dest``, keeping relative paths;
    returns ``dest``.

    Same matching as huggingface_hub's ``filter_repo_objects``: case-sensitive ``fnmatch`` on the
    whole relative path (``*`` crosses ``/``), backslashes read as ``/``, a pattern ending with
    ``/`` gets ``*`` appended; a file must match an allow pattern (if any) and no ignore pattern.
    """
    allow = [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns
    ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns
    allow = None if allow is None else [_pattern(p) for p in allow]
    ignore = None if ignore is None else [_pattern(p) for p in ignore]
    dest = Path(dest)
    for rel in hub_files(repo_dir):
        if allow is not None and not any(fnmatchcase(rel, p) for p in allow):
            continue
        if ignore is not None and any(fnmatchcase(rel, p) for p in ignore):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(repo_dir) / rel, target)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def clear_caches() -> None:
    """Forget the in-memory weights (so that a second write recomputes them from the seeds)."""
    _clip.clip_state.cache_clear()
    _llava.llava_state.cache_clear()
    _common.clip_bpe_files.cache_clear()
