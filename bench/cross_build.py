"""A gallery built for the cross configuration only, against one built for both models.

    python bench/cross_build.py [--limit 1000] [--rounds 2] [--json]

Builds the mini world's pool gallery of ``--limit`` test items (images and captions) twice per
round, alternately: with both models (``safeclip index build``'s default) and with the original
model only (``--cross-only``, serving the clip and cross configurations). Models are loaded once,
outside the timing; the images are rendered by each build (as a folder of files is read by each
build). Prints the median build seconds of each and their ratio (bar: <= 0.55).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from safeclip.encoders import load_clip_pair
    from safeclip.retrieval import Gallery, build_gallery

    pair = load_clip_pair("mini", device="cpu")
    times = {"both": [], "cross_only": []}
    with tempfile.TemporaryDirectory(prefix="bench-cross-") as tmp:
        for r in range(args.rounds):
            for name, models in (("both", ("clip", "safeclip")), ("cross_only", ("clip",))):
                out = Path(tmp) / f"{name}{r}"
                t0 = time.perf_counter()
                build_gallery("mini", out, dataset="synthetic:test", limit=args.limit, pair=pair,
                              models=models, judge="none")
                times[name].append(time.perf_counter() - t0)
        served = {n: Gallery.open(Path(tmp) / f"{n}0", "mini", pair=pair).configs for n in times}
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"limit": args.limit, "rounds": args.rounds,
              "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
              "median_s": {k: round(v, 2) for k, v in med.items()},
              "ratio": round(med["cross_only"] / med["both"], 3), "bar": 0.55,
              "configs": {k: list(v) for k, v in served.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"pool gallery of {args.limit} mini test items, {args.rounds} alternating rounds: "
              f"both models {result['median_s']['both']} s (serves {', '.join(served['both'])}), "
              f"cross only {result['median_s']['cross_only']} s (serves "
              f"{', '.join(served['cross_only'])}) -> ratio {result['ratio']} (bar 0.55)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
