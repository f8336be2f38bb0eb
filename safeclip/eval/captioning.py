"""``safeclip eval captioning``: what each vision tower makes the captioner say.

    safeclip eval captioning --preset mini [--split test] [--n 1000] [--json] [--out FILE]

The images, the questions and the metrics are the world's (its ``captioning.eval`` kind,
``safeclip.kinds`` table ``captioning_eval``); the mini world's protocol is its plug-in's
(``safeclip.mini.eval_captioning``). Real worlds name no captioning benchmark yet.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..cli import add_common_args, overrides, setup_logging
from ..errors import InputError, StudioError

logger = logging.getLogger(__name__)


def format_table(result: dict) -> str:
    names_ = list(result["models"])
    keys = list(result["models"][names_[0]])
    lines = [(f"preset {result['preset']}, {result['split']} split, n={result['n']}, "
              f"question {result['question']!r}"),
             "metric".ljust(26) + "".join(n.rjust(10) for n in names_)]
    for k in keys:
        lines.append(k.ljust(26) + "".join(f"{result['models'][n][k]:.3f}".rjust(10) for n in names_))
    for ex in result["examples"][:2]:
        lines.append(f"example {ex['tags']}:")
        for m in names_:
            lines.append(f"  {m:9s} V: {ex[m + '_V']}\n  {'':9s} G: {ex[m + '_G']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from ..captioning import load_captioner
    from ..kinds import resolve
    from ..presets import get_preset

    p = argparse.ArgumentParser(prog="safeclip eval captioning",
                                description="Unsafe caption rate and caption accuracy per model.")
    add_common_args(p, capability="captioning")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--n", type=int, default=None, help="number of items (default: the split)")
    p.add_argument("--question", default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32, help="images per generate call")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    if args.n is not None and args.n < 1:
        raise InputError("--n must be at least 1")
    world = get_preset(args.preset, overrides(args))
    if world.captioning is None or world.captioning.eval is None:
        raise StudioError(f"world {world.name!r} names no captioning benchmark")
    evaluate = resolve("captioning_eval", world.captioning.eval, world)
    result = evaluate(load_captioner(world, device=args.device), world, args)
    from .cli import emit
    emit(result, args.out, args.json, format_table)
    return 0
