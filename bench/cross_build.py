"""A gallery built for the cross configuration only, against one built for both models.

    python bench/cross_build.py [--limit 1000] [--rounds 2] [--json]

Builds the mini world's pool gallery of ``--limit`` test items (images and captions) twice per
round, alternately: with both models (``safeclip index build``'s default) and with the original
model only (``--cross-only``, serving the clip and cross configurations). Models are loaded once,
outside the timing. Prints the median build seconds of each and their ratio (bar: <= 0.55), for
two sources of the same items:

- ``rendered``: the mini world's procedural source, which draws every scene anew in each build;
  drawing a scene costs more than the mini CLIP's encoding of it, and both builds pay it once;
- ``folder``: the same images saved once as PNG files with a labels CSV (what a user's gallery
  is: each build reads and decodes the files).

The second is the one that says what ``--cross-only`` saves a user.
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
    result = {"limit": args.limit, "rounds": args.rounds, "bar": 0.55}
    with tempfile.TemporaryDirectory(prefix="bench-cross-") as tmp:
        folder, labels = save_as_folder(Path(tmp) / "files", args.limit)
        sources = {"rendered": dict(dataset="synthetic:test", limit=args.limit),
                   "folder": dict(images=folder, labels=labels)}
        for source, kw in sources.items():
            times = {"both": [], "cross_only": []}
            for r in range(args.rounds):
                for name, models in (("both", ("clip", "safeclip")), ("cross_only", ("clip",))):
                    out = Path(tmp) / f"{source}-{name}{r}"
                    t0 = time.perf_counter()
                    build_gallery("mini", out, pair=pair, models=models, judge="none", **kw)
                    times[name].append(time.perf_counter() - t0)
            served = {n: Gallery.open(Path(tmp) / f"{source}-{n}0", "mini", pair=pair).configs
                      for n in times}
            med = {k: statistics.median(v) for k, v in times.items()}
            result[source] = {"seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
                              "median_s": {k: round(v, 2) for k, v in med.items()},
                              "ratio": round(med["cross_only"] / med["both"], 3),
                              "configs": {k: list(v) for k, v in served.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for source in sources:
            r = result[source]
            print(f"{source}: pool gallery of {args.limit} mini test items, {args.rounds} "
                  f"alternating rounds: both models {r['median_s']['both']} s (serves "
                  f"{', '.join(r['configs']['both'])}), cross only {r['median_s']['cross_only']} "
                  f"s (serves {', '.join(r['configs']['cross_only'])}) -> ratio {r['ratio']} "
                  f"(bar 0.55)")
    return 0


def save_as_folder(folder: Path, limit: int) -> tuple[Path, Path]:
    """The pool gallery's images as PNG files and a labels CSV (file, unsafe, caption)."""
    import csv

    from safeclip.retrieval.sources import make_source

    source = make_source(dataset="synthetic:test", limit=limit)
    folder.mkdir(parents=True)
    rows = []
    for x in source.load(source.ids()):
        name = f"{x.row['id']}.png"
        x.image.save(folder / name)
        rows.append({"file": name, "unsafe": int(bool(x.row["unsafe"])),
                     "caption": x.row.get("caption") or ""})
    labels = folder.parent / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "unsafe", "caption"])
        w.writeheader()
        w.writerows(rows)
    return folder, labels


if __name__ == "__main__":
    sys.exit(main())
