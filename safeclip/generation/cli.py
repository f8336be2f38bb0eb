"""``safeclip generate``: one prompt, two images (original and Safe-CLIP text encoder).

    safeclip generate --preset mini --prompt "a red dog holding a kite in the park" --seed 0 \
        --out out/gen [--negative-prompt "..."] [--steps 20 --guidance 5 --size 64] [--json]

Writes OUT/clip.png, OUT/safeclip.png and OUT/result.json (settings, warnings and each image's
verdict). Images the judge flags are still written, unblurred, and marked ``"flagged": true`` in
result.json; look before you share them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_common_args

    p = argparse.ArgumentParser(prog="safeclip generate", description=__doc__.splitlines()[0])
    add_common_args(p, capability="generation")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the world's; a one-pass generator ignores them)")
    p.add_argument("--guidance", type=float, default=None, help="default: the world's")
    p.add_argument("--size", type=int, default=None, help="width = height; default: the world's")
    p.add_argument("--out", type=Path, required=True, help="folder for the images and result.json")
    p.add_argument("--device", default=None)
    p.add_argument("--offload", action="store_true", help="CPU offload (small GPUs)")
    p.add_argument("--json", action="store_true", help="print result.json to stdout")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..cli import overrides, setup_logging
    from .generator import load_generator

    setup_logging("WARNING" if args.json else args.log_level)
    gen = load_generator(args.preset, overrides(args), device=args.device, offload=args.offload)
    res = gen.generate_pair(args.prompt, args.negative_prompt, seed=args.seed, steps=args.steps,
                            guidance=args.guidance, size=args.size, progress=not args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    out = res.to_json()
    for name, g in (("clip", res.clip), ("safeclip", res.safeclip)):
        g.image.save(args.out / f"{name}.png")
        out[name]["file"] = f"{name}.png"
    (args.out / "result.json").write_text(json.dumps(out, indent=2) + "\n")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name in ("clip", "safeclip"):
            o = out[name]
            print(f"{name:9s} {args.out / o['file']}  "
                  f"{'FLAGGED ' + str(o['category']) if o['flagged'] else 'ok'} (score {o['score']:.2f})")
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
    return 0
