"""The ``safeclip`` command.

    safeclip presets [--json]                  the registered presets and their model ids
    safeclip mini build [--only STEP]          rebuild the bundled mini world (data, models)
    safeclip eval retrieval --preset mini      retrieval metrics of both models, JSON with --json

Every command is ``main(argv=None)`` in its own module, imported only when it runs, so
``safeclip presets`` starts fast and never imports torch models it does not need.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from .presets import ROLES, get_preset, list_presets

# command -> (module:function, one-line help)
COMMANDS = {
    "presets": ("safeclip.cli:presets_main", "list the presets and their model ids"),
    "mini": ("safeclip.mini.build:main", "build the bundled mini world from scratch"),
    "eval": ("safeclip.eval.cli:main", "evaluate a preset's two models (retrieval, ...)"),
    "train": ("safeclip.train.cli:main", "fine-tune a CLIP into a Safe-CLIP (LoRA, Accelerate)"),
    "data": ("safeclip.data.cli:main", "ViSU data: check, generate-unsafe"),
    "index": ("safeclip.index_cli:main", "build / extend faiss indexes of galleries (both models)"),
    "search": ("safeclip.index_cli:search_main", "search an index with both models, side by side"),
    "generate": ("safeclip.generation:main", "one prompt, two images: original and safe text encoder"),
    "caption": ("safeclip.captioning:main", "one image, two captions: original and safe vision tower"),
}


def add_common_args(parser: argparse.ArgumentParser, preset: bool = True) -> None:
    """--preset, the model overrides (--clip, --safe-clip, ...) and --log-level."""
    if preset:
        parser.add_argument("--preset", default="mini", choices=list_presets(),
                            help="named preset (default: mini)")
        for role, var in ROLES.items():
            parser.add_argument("--" + role.replace("_", "-"), dest=role, metavar="PATH",
                                help=f"override the preset's {role} model (env {var})")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def overrides(args: argparse.Namespace) -> dict[str, str]:
    return {r: getattr(args, r) for r in ROLES if getattr(args, r, None)}


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def presets_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="safeclip presets", description="List the presets.")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common_args(p, preset=False)
    for role, var in ROLES.items():
        p.add_argument("--" + role.replace("_", "-"), dest=role, metavar="PATH",
                       help=f"show the {role} override (env {var})")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    rows = []
    for name in list_presets():
        pr = get_preset(name, overrides(args))
        rows.append({"name": pr.name, "backend": pr.backend, "image_size": pr.image_size,
                     "embed_dim": pr.embed_dim, **{r: getattr(pr, r) for r in ROLES},
                     "bundled": pr.bundled, "description": pr.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["name", "backend", "image_size", "clip", "safe_clip", "sd", "llava"]
    cells = [[str(r[c] if r[c] is not None else "-") for c in cols] for r in rows]
    for row in cells:  # bundled paths are long: show them relative to the repo
        row[3:] = ["assets/" + c.split("/assets/")[-1] if "/assets/" in c else c for c in row[3:]]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return 0


def dispatch(argv, table: dict, prog: str, doc: str) -> int:
    """Run the (sub)command of ``table`` ({name: ("module:function", help)}) named by argv[0],
    importing its module only then."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(doc.strip() + "\n\ncommands:")
        for name, (_, text) in table.items():
            print(f"  {name:16s} {text}")
        return 0 if argv else 2
    if argv[0] not in table:
        print(f"{prog}: unknown command {argv[0]!r}; one of: {', '.join(table)}", file=sys.stderr)
        return 2
    module, func = table[argv[0]][0].split(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from importlib.metadata import version
        print(version("safeclip-studio"))
        return 0
    try:
        return dispatch(argv, COMMANDS, "safeclip", __doc__)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - known errors become one readable line
        from .encoders import ModelUnavailableError
        from .images import ImageError
        if isinstance(e, (ModelUnavailableError, ImageError, FileNotFoundError, KeyError, ValueError)):
            print(f"safeclip {argv[0]}: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
