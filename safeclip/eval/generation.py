"""``safeclip eval generation``: how often each text encoder makes the generator draw unsafe images.

    safeclip eval generation --preset mini --json                 # the world's own prompt set
    safeclip eval generation --preset mini --split validation     # choosing settings
    safeclip eval generation --preset vit-l-14 --prompts i2p.csv --out-dir runs/i2p --json
    safeclip eval generation --preset vit-l-14 --prompts ring-a-bell.csv --attack ring-a-bell

The prompts and the metrics are the world's (its ``generation.eval`` kind, ``safeclip.kinds``
table ``generation_eval``); this module parses the command, loads the generator (on this
process's GPU under ``accelerate launch`` / ``torchrun``) and prints what the protocol returns.
Real worlds (kind ``i2p``, ``safeclip.eval.i2p_run``): an I2P-shaped CSV, each prompt with its
own seed and guidance, judged by NudeNet and Q16, resumable, per category, with a metric card.
The mini world's protocol is its plug-in's (``safeclip.mini.eval_generation``).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import time
from pathlib import Path

from ..errors import StudioError

logger = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    from ..cli import add_common_args

    p = argparse.ArgumentParser(prog="safeclip eval generation",
                                description=__doc__.splitlines()[0])
    add_common_args(p, capability="generation")
    p.add_argument("--prompts", "--csv", dest="prompts", type=Path, default=None,
                   help="prompt file: an I2P-style CSV, or a prompt set of the world's own format")
    p.add_argument("--split", choices=["test", "validation"], default="test",
                   help="worlds with their own prompt sets: 'validation' builds the same kind of "
                        "set from the validation split (for choosing settings without the test)")
    p.add_argument("--n", type=int, default=None, help="only the first N items")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (I2P runs: 50 unless given)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale (I2P runs: for rows without their own)")
    i2p = p.add_argument_group("I2P-style prompt files (real worlds)")
    i2p.add_argument("--out-dir", type=Path, default=None,
                     help="run folder: images, records, result.json (default "
                          "runs/eval-generation-WORLD-FILE); rerunning continues it")
    i2p.add_argument("--images-per-prompt", type=int, default=1,
                     help="image pairs per prompt (seed, seed + 1, ...; default 1)")
    i2p.add_argument("--size", type=int, default=None, help="image size (default: the world's)")
    i2p.add_argument("--attack", default=None, metavar="NAME",
                     help="the prompt set is an attack's (e.g. ring-a-bell): also report the "
                          "attack success rate (prompts with at least one flagged image)")
    i2p.add_argument("--seed", type=int, default=0,
                     help="files without a seed column: row i gets seed SEED + i")
    i2p.add_argument("--nudenet-threshold", type=float, default=None,
                     help="NudeNet's score threshold (default: the world's; SLD used 0.6)")
    i2p.add_argument("--q16-threshold", type=float, default=None,
                     help="Q16's probability threshold (default: the world's, 0.5 = argmax)")
    i2p.add_argument("--nudity-only", action="store_true",
                     help="evaluate with NudeNet alone when Q16's prompt file is unavailable")
    i2p.add_argument("--no-images", action="store_true", help="keep the verdicts, not the images")
    i2p.add_argument("--restart", action="store_true", help="start the run folder over")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None) -> int:
    from ..cli import overrides, setup_logging
    from ..generation import load_generator
    from ..kinds import kind_info, resolve
    from ..parallel import Workers
    from ..presets import get_preset
    from .cli import emit

    args = parser().parse_args(argv)
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
    check = kind_info("generation_eval", kind, world).get("check")
    if check:  # the protocol's inputs, checked before the generator loads
        module, _, name = check.partition(":")
        getattr(importlib.import_module(module), name)(world, args)
    args.workers = workers = Workers.current(args.device)  # several under a launcher
    gen = load_generator(world, device=workers.device)
    t0 = time.time()
    result = {"preset": world.name, **evaluate(gen, world, args)}
    if "card" not in result:  # a world's own protocol: the settings it ran with
        result["settings"] = {"steps": args.steps or gen.defaults["steps"],
                              "guidance": args.guidance or gen.defaults["guidance"],
                              "size": gen.defaults["size"], "judge": gen.judge.name,
                              "judge_threshold": gen.judge.threshold}
    result["seconds"] = round(time.time() - t0, 1)
    if not workers.main:
        print(f"{workers.describe()}: done ({result.get('drawn', 0)} pairs drawn)")
        return 0
    emit(result, args.out, args.json, format_lines)
    return 0


def format_lines(result: dict) -> str:
    if "card" in result:
        from .i2p import format_table
        return format_table(result)
    lines = []
    for model in ("clip", "safeclip"):
        m = result[model]
        lines.append(f"{model:9s} unsafe_rate {m['unsafe_rate']:.3f}  "
                     + (f"safe_fidelity {m['safe_fidelity']:.3f}  clip_score {m['clip_score']:.2f}"
                        if "safe_fidelity" in m else ""))
    return "\n".join(lines)
