"""The ``safeclip`` command: one verb per job, each a ``main(argv=None)`` imported when it runs.

    safeclip presets [--json]                  the worlds, their capabilities and model ids
    safeclip eval retrieval --preset mini      retrieval metrics of both models (--json)
    safeclip generate / caption / search       one input, both models, side by side
    safeclip index build / add                 faiss galleries of both models
    safeclip train                             fine-tune a CLIP into a Safe-CLIP
    safeclip data check / generate-unsafe      real ViSU data

Worlds' plug-ins add their own verbs (the mini world: ``safeclip mini build``). Errors a user can
fix print as one line (``safeclip VERB: error: ...``, exit status 1).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from .presets import ROLES, default_preset, flag, get_preset, list_presets

# command -> (module:function, one-line help)
COMMANDS = {
    "presets": ("safeclip.cli:presets_main", "list the worlds and their model ids"),
    "eval": ("safeclip.eval.cli:main", "evaluate a world's two models (retrieval, generation, "
                                       "captioning)"),
    "train": ("safeclip.train.cli:main", "fine-tune a CLIP into a Safe-CLIP (LoRA, Accelerate)"),
    "data": ("safeclip.data.cli:main", "ViSU data: check, generate-unsafe"),
    "index": ("safeclip.index_cli:main", "build / extend faiss indexes of galleries (both models)"),
    "search": ("safeclip.index_cli:search_main",
               "search a gallery in its configurations (clip, safeclip, cross), side by side"),
    "generate": ("safeclip.generation.cli:main",
                 "one prompt, two images: original and Safe-CLIP text encoder"),
    "caption": ("safeclip.captioning.cli:main",
                "one image, two captions: original and Safe-CLIP vision tower"),
    "download": ("safeclip.download:main",
                 "fetch every model of a world where there is network (for offline use)"),
}


def add_common_args(parser: argparse.ArgumentParser, preset: bool = True,
                    capability: str | None = None) -> None:
    """--preset, the model overrides of the roles (of ``capability``, or all) and --log-level."""
    if preset:
        default = default_preset()
        parser.add_argument("--preset", "--world", dest="preset", default=default,
                            choices=list_presets(), help=f"world (default: {default})")
        for role, (cap, _, what, var) in ROLES.items():
            if capability in (None, cap) or (capability == "generation" and cap == "retrieval"
                                             and role in ("clip", "safe_clip")):
                parser.add_argument(flag(role), dest=role, metavar="PATH",
                                    help=f"the {what} (env {var})")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def overrides(args: argparse.Namespace) -> dict[str, str]:
    return {r: getattr(args, r) for r in ROLES if getattr(args, r, None)}


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def world_rows(over: dict | None = None) -> list[dict]:
    rows = []
    for name in list_presets():
        w = get_preset(name, over)
        rows.append({"name": w.name, "description": w.description,
                     "capabilities": w.capabilities(), "offline": w.offline,
                     "models": {r: m.ref for r, m in w.models().items()},
                     "kinds": {c: getattr(getattr(w, c), "kind", None) for c in w.capabilities()}})
    return rows


def presets_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="safeclip presets", description="List the worlds.")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common_args(p, preset=False)
    for role, (_, _, what, var) in ROLES.items():
        p.add_argument(flag(role), dest=role, metavar="PATH", help=f"show the {what} override "
                                                                    f"(env {var})")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    rows = world_rows(overrides(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from .hub import is_path
    for r in rows:
        print(f"{r['name']}: {r['description']}")
        for role, ref in r["models"].items():
            shown = ref.split("/assets/")[-1] if is_path(ref) and "/assets/" in ref else ref
            print(f"  {role:11s} {('assets/' + shown) if shown != ref else ref}")
    return 0


def commands() -> dict:
    """The core's verbs and those the worlds' plug-ins register."""
    from .kinds import TABLES, known

    known("command")  # imports the plug-ins
    return {**COMMANDS, **{k: (e.target, e.info.get("help", "")) for k, e in
                           TABLES["command"].items()}}


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
        from importlib.metadata import PackageNotFoundError, version
        try:
            print(version("safeclip-studio"))
        except PackageNotFoundError:
            print("safeclip-studio (not installed: running from the code)")
        return 0
    table = COMMANDS if argv[:1] and argv[0] in COMMANDS else commands()
    try:
        return dispatch(argv, table, "safeclip", __doc__)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - known errors become one readable line
        from .errors import StudioError
        if isinstance(e, (StudioError, FileNotFoundError, FileExistsError)):
            print(f"safeclip {argv[0]}: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
