"""``safeclip download``: fetch every model of a world where there is network, for offline use.

    safeclip download --preset vit-l-14                 # into the Hugging Face cache
    safeclip download --preset vit-l-14 --out /models   # a mirror: /models/org/name/...
    SAFECLIP_MODELS_DIR=/models python app.py --preset vit-l-14     # then, offline

Each model is fetched with the files its loader reads (``safeclip.hub`` layouts: safetensors
when the repository has them, else ``.bin``; no safety checker, no flax or TensorFlow copies),
so a mirror holds what a first run would download, and nothing more. Local paths are left alone.
A world that judges images with Q16 also gets Q16's prompt file (checked against its pinned
SHA-256, written as ``OUT/ml-research/Q16/data/ViT-L-14/prompts.p``) and, when the world's own
CLIP is not ViT-L/14, the ``openai/clip-vit-large-patch14`` that Q16 embeds with
(``--no-judges`` skips both).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from .hub import (
    CLIP_FILES,
    LLAVA_FILES,
    OPEN_CLIP_FILES,
    SD_FILES,
    TEXT_ENCODER_FILES,
    Layout,
    fetch,
    is_path,
)
from .presets import ROLES, Preset, get_preset


def layouts(world: Preset) -> dict[str, tuple[str, Layout]]:
    """role -> (reference, the layout its loader fetches) for the Hub models of ``world``."""
    out = {}
    for role, spec in world.models().items():
        cap, fld = ROLES[role][:2]
        if cap == "retrieval":
            layout = OPEN_CLIP_FILES if spec.kind == "open_clip" else CLIP_FILES
        elif cap == "generation":
            if world.generation.kind != "diffusers-sd":
                continue  # a plug-in's generator ships with its world
            layout = SD_FILES if fld == "sd" else TEXT_ENCODER_FILES
        else:
            if world.captioning.kind != "llava":
                continue
            layout = LLAVA_FILES if fld == "llava" else CLIP_FILES
        if not is_path(spec.ref):
            out[role] = (spec.ref, layout)
    return out


def download_world(world: Preset, out: str | Path | None = None,
                   roles: list[str] | None = None, judges: bool = False) -> dict[str, str]:
    """Fetch the world's Hub models (``roles``: only these); with ``out``, copy each to
    ``out/org/name`` (a ``SAFECLIP_MODELS_DIR`` mirror); with ``judges``, its judges' files too
    (``download_judges``). Returns role -> folder."""
    done: dict[str, str] = {}
    for role, (ref, layout) in layouts(world).items():
        if roles and role not in roles:
            continue
        path = fetch(ref, layout, role=role, world=world.name)
        done[role] = str(_copy(path, Path(out) / ref) if out is not None else path)
    if judges:
        done.update(download_judges(world, out))
    return done


def _copy(path: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for f in path.rglob("*"):
        if f.is_file():
            dest = target / f.relative_to(path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copyfile(f.resolve(), dest)
    return target


def uses_q16(world: Preset) -> bool:
    specs = [getattr(world.retrieval, "image_judge", None), getattr(world.generation, "judge",
                                                                     None)]
    return any(s is not None and s.kind in ("q16", "nudenet+q16") for s in specs)


def download_judges(world: Preset, out: str | Path | None = None) -> dict[str, str]:
    """Q16's prompt file and, when the world does not use it already, its CLIP (see the module
    docstring); with ``out``, into the mirror. Returns what -> file or folder."""
    from .safety import q16_prompts as qp
    from .safety.q16 import q16_clip_spec

    if not uses_q16(world):
        return {}
    done = {}
    spec, own = q16_clip_spec(world)
    if not own and not is_path(spec.ref):
        path = fetch(spec.ref, CLIP_FILES, role="clip", world=world.name)
        done["q16_clip"] = str(_copy(path, Path(out) / spec.ref) if out is not None else path)
    if out is not None:
        target = Path(out) / qp.Q16_REPO / qp.Q16_FILE
        data = qp.published_bytes()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        done["q16_prompts"] = str(target)
    else:
        done["q16_prompts"] = qp.load_prompts().source
    return done


def main(argv=None) -> int:
    from .cli import add_common_args, overrides, setup_logging

    p = argparse.ArgumentParser(prog="safeclip download", description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="copy the models into OUT/org/name (a SAFECLIP_MODELS_DIR mirror)")
    p.add_argument("--role", action="append", choices=list(ROLES), help="only these models")
    p.add_argument("--no-judges", action="store_true",
                   help="leave out the judges' files (Q16's prompts and its CLIP)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    world = get_preset(args.preset, overrides(args))
    done = download_world(world, args.out, args.role, judges=not (args.no_judges or args.role))
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        for role, path in done.items():
            print(f"{role:11s} {path}")
    return 0
