"""Recipes of the mini Safe-CLIP for the cross configuration, compared on the validation split.

    python bench/cross_recipes.py --work work/cross [--epochs 1] [--recipes base,hardref25,...]

Each recipe fine-tunes the bundled mini CLIP with ``safeclip train`` (the bundled recipe,
``safeclip.mini.build.SAFECLIP_ARGS``, shortened to ``--epochs``), then ``safeclip eval
retrieval --split validation`` measures the pool and twin protocols of the three configurations.
The test split is not read. The table is what chooses the recipe of the bundled mini Safe-CLIP.

Recipes: ``base`` (the bundled recipe), ``hardrefW`` (plus ``U_Vref_Grefneg`` and
``G_Sref_Urefneg`` at weight W/100: Safe-CLIP's unsafe items against the *original's* unsafe
items as hard negatives, the cross configuration's training option).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEYS = ("u_unsafe_at10", "g_unsafe_at10", "s_unsafe_at10", "v_unsafe_at10", "s2v_r10",
        "v2s_r10", "u2v_r10", "g2s_r10")


def recipe_args(name: str, epochs: int) -> list[str]:
    from safeclip.mini.build import SAFECLIP_ARGS

    args = list(SAFECLIP_ARGS)
    args[args.index("--epochs") + 1] = str(epochs)
    if name.startswith("hardref"):
        w = int(name.removeprefix("hardref")) / 100
        args += ["--weight", f"U_Vref_Grefneg={w}", "--weight", f"G_Sref_Urefneg={w}"]
    elif name != "base":
        raise SystemExit(f"unknown recipe {name!r}")
    return args


def run(name: str, work: Path, epochs: int) -> dict:
    from safeclip.eval.retrieval_cli import evaluate_retrieval
    from safeclip.mini import MODELS
    from safeclip.train.cli import main as train

    out = work / name
    t0 = time.time()
    if not (out / "export" / "merged" / "config.json").exists():
        train(["--preset", "mini", "--clip", str(MODELS / "mini-clip"), "--data-dir",
               str(work / "data"), "--out", str(out), *recipe_args(name, epochs)]
              + (["--resume"] if (out / "checkpoint").exists() else []))
    seconds = time.time() - t0
    ns = argparse.Namespace(beta="0", alpha="1", batch_size=64, workers=0, visu=None)
    res = evaluate_retrieval("mini", "validation", None, {"safe_clip": str(out / "export" /
                                                                          "merged")}, "cpu", ns)
    row = {"recipe": name, "train_seconds": round(seconds),
           "pool": {c: {k: res["protocols"]["pool"][c][k] for k in KEYS}
                    for c in ("clip", "safeclip", "cross")},
           "twin": {c: {k: res["protocols"]["twin"][c][k] for k in ("u2v_r10", "g2s_r10",
                                                                     "s2v_r10", "nsfw_at10")}
                    for c in ("clip", "safeclip", "cross")}}
    (out / "validation.json").write_text(json.dumps(row, indent=2))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "work" / "cross")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--recipes", default="base,hardref50")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = [run(r, args.work, args.epochs) for r in args.recipes.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"validation split, pool protocol, cross configuration ({args.epochs} epoch(s) each)")
    print("recipe".ljust(12) + "".join(k.rjust(15) for k in KEYS))
    for r in rows:
        print(r["recipe"].ljust(12) + "".join(f"{r['pool']['cross'][k]:15.3f}" for k in KEYS))
    print("clip (same)".ljust(12) + "".join(f"{rows[0]['pool']['clip'][k]:15.3f}" for k in KEYS))
    for r in rows:
        t = r["twin"]["safeclip"]
        print(f"twin safeclip {r['recipe']}: u2v_r10 {t['u2v_r10']:.3f} g2s_r10 {t['g2s_r10']:.3f} "
              f"s2v_r10 {t['s2v_r10']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
