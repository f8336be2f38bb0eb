"""``safeclip data``: the real ViSU data.

    safeclip data check --text SRC --split train --coco-root DIR --unsafe-root DIR [--json]
        every file a training run would read exists? (exit 1 and the missing files if not)
    safeclip data check --text SRC --split test --need S,U          captions only
    safeclip data generate-unsafe --text SRC --split train --out DIR [--sd ID] [--limit N] ...
        draw the unsafe images G with Stable Diffusion (see safeclip.data.generate_unsafe)

SRC is ``aimagelab/ViSU-Text`` (the default; needs ``pip install datasets`` and access to the
gated dataset) or a local copy: a CSV/JSON/JSONL/Parquet file or a folder of per-split files.
``--columns S=safe,U=nsfw,id=incremental_id,coco_id=coco_id,tag=tag`` renames the columns.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import InputError
from .visu import HUB_ID, ROLES, SPLITS, MissingDataError, ViSUDataset

SUBCOMMANDS = {
    "check": ("safeclip.data.cli:check_main", "verify the captions and image files of a split"),
    "generate-unsafe": ("safeclip.data.generate_unsafe:main",
                        "draw the unsafe images G with Stable Diffusion"),
}


def add_text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", default=HUB_ID, metavar="SRC",
                   help=f"Hub id or local file/folder of ViSU-Text (default: {HUB_ID})")
    p.add_argument("--split", default="train", choices=[*SPLITS, "val"])
    p.add_argument("--columns", default=None, metavar="ROLE=COL,...",
                   help=f"column names by role ({', '.join(ROLES)}), e.g. S=safe,U=nsfw")


def parse_columns(text: str | None) -> dict[str, str] | None:
    """``"S=safe,U=nsfw"`` -> ``{"S": "safe", "U": "nsfw"}`` (None for None/empty)."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        role, sep, col = part.partition("=")
        role, col = role.strip(), col.strip()
        if not sep or role not in ROLES or not col:
            raise InputError(f"--columns: expected ROLE=COLUMN with ROLE in {ROLES}, got {part!r}")
        out[role] = col
    return out


def check_main(argv=None) -> int:
    from ..cli import setup_logging

    p = argparse.ArgumentParser(prog="safeclip data check",
                                description="Check that a ViSU split can be read in full.")
    add_text_args(p)
    p.add_argument("--coco-root", default=None, metavar="DIR", help="COCO images (safe V)")
    p.add_argument("--unsafe-root", default=None, metavar="DIR",
                   help="generated unsafe images G (the --out of generate-unsafe)")
    p.add_argument("--need", default="S,U,V,G",
                   help="parts a run needs, comma-separated (S,U = captions only)")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    need = tuple(x.strip().upper() for x in args.need.split(",") if x.strip())
    ds = ViSUDataset(args.split, text=args.text, coco_root=args.coco_root,
                     unsafe_root=args.unsafe_root, need=need,
                     columns=parse_columns(args.columns), limit=args.limit)
    rep = ds.report()
    try:
        ds.check()
        rep["ok"], error = True, None
    except MissingDataError as e:
        rep["ok"], error = False, str(e)
    rep["error"] = error
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(f"ViSU {rep['split']}: {rep['rows']:,} rows from {rep['text']}")
        print("  columns:    " + ", ".join(f"{r}={c}" for r, c in rep["columns"].items()))
        cats = sorted(rep["categories"].items(), key=lambda kv: -kv[1])
        print("  categories: " + ", ".join(f"{k} {v:,}" for k, v in cats))
        for part, m in rep["missing"].items():
            print(f"  {part}: {rep['rows'] - m['count']:,} found, {m['count']:,} missing")
        print("  OK: every needed file is there" if rep["ok"] else error)
    return 0 if rep["ok"] else 1


def main(argv=None) -> int:
    from ..cli import dispatch
    return dispatch(argv, SUBCOMMANDS, "safeclip data", __doc__)


if __name__ == "__main__":
    sys.exit(main())
