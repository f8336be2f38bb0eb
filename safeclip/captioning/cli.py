"""``safeclip caption``: one image, two answers (original and Safe-CLIP vision tower).

    safeclip caption --preset mini --image photo.png [--question "..."] [--max-new-tokens 40] [--json]
"""
from __future__ import annotations

import argparse
import json


def main(argv=None) -> int:
    from ..cli import add_common_args, overrides, setup_logging
    from . import load_captioner

    p = argparse.ArgumentParser(prog="safeclip caption", description=__doc__.splitlines()[0])
    add_common_args(p, capability="captioning")
    p.add_argument("--image", required=True, help="image file (any mode and size)")
    p.add_argument("--question", default=None, help="default: the world's")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--quantize", choices=["4bit", "8bit"], default=None)
    p.add_argument("--offload", action="store_true", help="spread layers over GPU and CPU")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    setup_logging("WARNING" if args.json else args.log_level)
    cap = load_captioner(args.preset, overrides(args), args.device, args.quantize, args.offload)
    res = cap.caption_pair(args.image, args.question, args.max_new_tokens, args.seed)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    for name in ("clip", "safeclip"):
        c = getattr(res, name)
        flag = f"  [flagged: {', '.join(c.terms)}]" if c.flagged else ""
        print(f"{name:9s} {c.text}{flag}")
    for w in res.warnings:
        print(f"note: {w}")
    return 0
