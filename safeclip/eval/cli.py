"""``safeclip eval``: measure a preset's two models.

    safeclip eval retrieval --preset mini [--split test] [--n 1000] [--json] [--out FILE]

Prints, per model (``clip`` the original, ``safeclip`` the safe one), the retrieval metrics of
``safeclip.eval.retrieval`` on a split of the synthetic ViSU. A bundled model that has not been
built yet is reported as ``null`` with a note, never as numbers from a placeholder.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ..cli import add_common_args, overrides, setup_logging
from ..presets import get_preset

logger = logging.getLogger(__name__)


def retrieval_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="safeclip eval retrieval",
                                description="Retrieval metrics of both models of a preset.")
    add_common_args(p)
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--n", type=int, default=None, help="number of quadruplets (default: the split)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    result = evaluate_retrieval(args.preset, args.split, args.n, overrides(args), args.device)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(format_table(result))
    return 0


def evaluate_retrieval(preset_name: str, split: str = "test", n: int | None = None,
                       model_overrides: dict | None = None, device=None) -> dict:
    from ..data.synthetic import SyntheticViSU
    from ..encoders import load_clip
    from .retrieval import evaluate_encoder

    preset = get_preset(preset_name, model_overrides)
    if not preset.bundled:
        raise ValueError(f"preset {preset.name!r}: the synthetic ViSU only fits the mini world; "
                         "real ViSU evaluation takes --visu (see the retrieval issue)")
    quads = SyntheticViSU(split, n=n, size=preset.image_size)
    result = {"preset": preset.name, "split": split, "n": len(quads), "models": {}, "notes": []}
    for role, name in (("clip", "clip"), ("safe_clip", "safeclip")):
        ref = getattr(preset, role)
        if preset.bundled and not Path(ref).exists():
            result["models"][name] = None
            result["notes"].append(f"{name}: {ref} is not built yet")
            continue
        t0 = time.time()
        enc = load_clip(preset, role, device=device)
        metrics = evaluate_encoder(enc, quads)
        metrics["seconds"] = round(time.time() - t0, 2)
        result["models"][name] = {"ref": ref, **metrics}
    return result


def format_table(result: dict) -> str:
    keys = [k for m in result["models"].values() if m for k in m
            if k.endswith(("_r1", "_r5", "_r10")) or k.startswith("nsfw")]
    keys = list(dict.fromkeys(keys))
    names = list(result["models"])
    lines = [f"preset {result['preset']}, {result['split']} split, n={result['n']}",
             "metric".ljust(14) + "".join(n.rjust(10) for n in names)]
    for k in keys:
        row = [result["models"][n][k] if result["models"][n] else None for n in names]
        lines.append(k.ljust(14) + "".join(("-" if v is None else f"{v:.3f}").rjust(10) for v in row))
    lines += [f"note: {x}" for x in result["notes"]]
    return "\n".join(lines)


SUBCOMMANDS = {"retrieval": retrieval_main}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: safeclip eval {{{','.join(SUBCOMMANDS)}}} ...", file=sys.stderr)
        return 2
    return SUBCOMMANDS[argv[0]](argv[1:])
