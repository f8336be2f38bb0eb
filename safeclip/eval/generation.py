"""``safeclip eval generation``: how often each text encoder makes the generator draw unsafe content.

    safeclip eval generation --preset mini --json                 # the world's own prompt set
    safeclip eval generation --preset mini --split validation     # choosing settings
    safeclip eval generation --preset vit-l-14 --prompts i2p.csv --n 200 --json

The prompts and the metrics are the world's (its ``generation.eval`` kind, ``safeclip.kinds``
table ``generation_eval``). Real worlds (kind ``i2p``): an I2P-style CSV (columns ``prompt``,
``categories`` comma-separated, and ``seed``, ``sd_seed`` or ``evaluation_seed``); the world's
judge judges every image and the report gives the unsafe rate overall and per category. The
mini world's protocol is its plug-in's (``safeclip.mini.eval_generation``).
"""
from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import InputError, StudioError

logger = logging.getLogger(__name__)


def _rate(xs) -> float:
    return round(float(np.mean(xs)), 4) if len(xs) else float("nan")


def read_i2p_csv(path: Path, n: int | None = None) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "prompt" not in rows[0]:
        raise InputError(f"{path}: an I2P-style CSV needs a 'prompt' column (and 'categories', "
                         "'seed', 'sd_seed' or 'evaluation_seed')")
    items = []
    for i, r in enumerate(rows[:n] if n else rows):
        seed = r.get("evaluation_seed") or r.get("seed") or r.get("sd_seed") or i
        cats = [c.strip() for c in (r.get("categories") or "").split(",") if c.strip()]
        items.append({"prompt": r["prompt"], "categories": cats or ["uncategorised"],
                      "seed": int(float(seed)) % 2**32})
    return items


def evaluate_i2p(gen, items: list[dict], steps=None, guidance=None) -> dict:
    from tqdm.auto import tqdm

    flags = {"clip": [], "safeclip": []}
    for it in tqdm(items, desc="eval I2P", unit="prompt"):
        res = gen.generate_pair(it["prompt"], seed=it["seed"], steps=steps, guidance=guidance,
                                progress=False)
        flags["clip"].append(res.clip.verdict.unsafe)
        flags["safeclip"].append(res.safeclip.verdict.unsafe)
    out = {}
    cats = sorted({c for it in items for c in it["categories"]})
    for model, fl in flags.items():
        out[model] = {"unsafe_rate": _rate(fl), "per_category": {
            c: _rate([f for f, it in zip(fl, items) if c in it["categories"]]) for c in cats}}
    return out


def evaluate_prompt_file(gen, world, args) -> dict:
    """Kind ``i2p``: the prompts of ``--prompts FILE.csv``, each with its own seed."""
    path = getattr(args, "prompts", None)
    if path is None or Path(path).suffix.lower() != ".csv":
        raise InputError(f"world {world.name!r} evaluates generation on an I2P-style prompt "
                         "file: pass --prompts FILE.csv")
    items = read_i2p_csv(Path(path), args.n)
    return {"prompts": str(path), "n_prompts": len(items),
            **evaluate_i2p(gen, items, args.steps, args.guidance)}


def main(argv=None) -> int:
    from ..cli import add_common_args, overrides, setup_logging
    from ..generation import load_generator
    from ..kinds import resolve
    from ..presets import get_preset

    p = argparse.ArgumentParser(prog="safeclip eval generation", description=__doc__.splitlines()[0])
    add_common_args(p, capability="generation")
    p.add_argument("--prompts", "--csv", dest="prompts", type=Path, default=None,
                   help="prompt file: an I2P-style CSV, or a prompt set of the world's own format")
    p.add_argument("--split", choices=["test", "validation"], default="test",
                   help="worlds with their own prompt sets: 'validation' builds the same kind of "
                        "set from the validation split (for choosing settings without the test)")
    p.add_argument("--n", type=int, default=None, help="only the first N items")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    setup_logging("WARNING" if args.json else args.log_level)
    world = get_preset(args.preset, overrides(args))
    if world.generation is None:
        raise StudioError(f"world {world.name!r} has no generation")
    kind = "i2p" if args.prompts is not None and args.prompts.suffix.lower() == ".csv" \
        else world.generation.eval
    if kind is None:
        raise StudioError(f"world {world.name!r} names no generation benchmark; pass --prompts "
                          "FILE.csv")
    evaluate = resolve("generation_eval", kind, world)
    gen = load_generator(world, device=args.device)
    t0 = time.time()
    result = {"preset": world.name, **evaluate(gen, world, args)}
    result["settings"] = {"steps": args.steps or gen.defaults["steps"],
                          "guidance": args.guidance or gen.defaults["guidance"],
                          "size": gen.defaults["size"], "judge": gen.judge.name,
                          "judge_threshold": gen.judge.threshold}
    result["seconds"] = round(time.time() - t0, 1)
    from .cli import emit
    emit(result, args.out, args.json, format_lines)
    return 0


def format_lines(result: dict) -> str:
    lines = []
    for model in ("clip", "safeclip"):
        m = result[model]
        lines.append(f"{model:9s} unsafe_rate {m['unsafe_rate']:.3f}  "
                     + (f"safe_fidelity {m['safe_fidelity']:.3f}  clip_score {m['clip_score']:.2f}"
                        if "safe_fidelity" in m else ""))
    return "\n".join(lines)
