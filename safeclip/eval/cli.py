"""``safeclip eval``: measure a world's two models.

    safeclip eval retrieval --preset mini [--split test] [--n 1000] [--json] [--out FILE]
    safeclip eval retrieval --preset vit-l-14 --visu [TEXT] --coco-root DIR --unsafe-root DIR
    safeclip eval generation --preset mini --json
    safeclip eval captioning --preset mini --json

Retrieval prints, per model (``clip`` the original, ``safeclip`` the safe one), the metrics of
``safeclip.eval.retrieval`` on a split of the world's evaluation data (its ``retrieval.eval``
kind: the real worlds' is ViSU, the mini world's its synthetic ViSU). On ViSU (``--visu``:
captions from the Hub's ``aimagelab/ViSU-Text`` or a local copy given as TEXT, safe images from
COCO, unsafe images generated with ``safeclip data generate-unsafe``) the paper's numbers of the
world are printed beside.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ..cli import add_common_args, overrides, setup_logging
from ..errors import StudioError
from ..presets import get_preset

logger = logging.getLogger(__name__)


def retrieval_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="safeclip eval retrieval",
                                description="Retrieval metrics of both models of a world.")
    add_common_args(p, capability="retrieval")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--n", type=int, default=None, help="number of quadruplets (default: the split)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    p.add_argument("--visu", nargs="?", const="aimagelab/ViSU-Text", default=None, metavar="TEXT",
                   help="real ViSU data: the ViSU-Text Hub id (default) or a local copy")
    p.add_argument("--coco-root", type=Path, default=None, help="--visu: COCO images (safe V)")
    p.add_argument("--unsafe-root", type=Path, default=None,
                   help="--visu: generated unsafe images (G), see `safeclip data generate-unsafe`")
    p.add_argument("--batch-size", type=int, default=64, help="quadruplets per batch")
    p.add_argument("--workers", type=int, default=2, help="image decoding processes (ViSU)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    result = evaluate_retrieval(args.preset, args.split, args.n, overrides(args), args.device,
                                args)
    emit(result, args.out, args.json, format_table)
    return 0


def emit(result: dict, out: Path | None, as_json: bool, table) -> None:
    """Write the JSON to ``out`` (if given) and print it, or print ``table(result)``."""
    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text if as_json else table(result))


def _as_list(batch):
    return batch


def evaluate_retrieval(preset_name, split: str = "test", n: int | None = None,
                       model_overrides: dict | None = None, device=None, args=None) -> dict:
    """The retrieval metrics of both models on ``split`` of the world's evaluation data (one
    pass over the items, both models encoding each batch)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..encoders import load_clip
    from ..kinds import kind_info, resolve
    from .retrieval import retrieval_metrics

    world = get_preset(preset_name, model_overrides)
    if world.retrieval is None:
        raise StudioError(f"world {world.name!r} has no retrieval")
    kind = "visu" if getattr(args, "visu", None) else world.retrieval.eval
    if kind is None:
        raise StudioError(f"world {world.name!r} names no retrieval evaluation data; pass --visu")
    ds = resolve("retrieval_eval", kind, world)(world, split, n, args)
    result = {"preset": world.name, "data": kind, "split": split, "n": len(ds),
              "source": getattr(ds, "source", kind), "models": {}, "notes": [],
              "paper": world.retrieval.paper or None}
    t0 = time.time()
    encoders = {name: load_clip(world, role, device=device)
                for role, name in (("clip", "clip"), ("safe_clip", "safeclip"))}
    parts: dict[str, dict[str, list]] = {m: {k: [] for k in "SUVG"} for m in encoders}
    io = kind_info("retrieval_eval", kind, world).get("io", False)  # files to decode: workers
    workers = getattr(args, "workers", 0) if io else 0
    loader = DataLoader(ds, batch_size=getattr(args, "batch_size", 64) or 64,
                        num_workers=workers, collate_fn=_as_list)
    for batch in tqdm(loader, desc=f"{kind} {split}", unit="batch"):
        for m, enc in encoders.items():
            for k in "SU":
                parts[m][k].append(enc.encode_text([q[k] for q in batch]))
            for k in "VG":
                parts[m][k].append(enc.encode_image([q[k] for q in batch]))
    for m, enc in encoders.items():
        S, U, V, G = (torch.cat(parts[m][k]) for k in "SUVG")
        metrics = retrieval_metrics(S, U, V, G, ks=(1, 5, 10, 20))
        result["models"][m] = {"ref": enc.ref, **metrics,
                               "paper_protocol": paper_protocol(S, U, V, G)}
    result["seconds"] = round(time.time() - t0, 2)
    return result


def paper_protocol(S, U, V, G, ks=(1, 10, 20)) -> dict[str, str]:
    """Recall@1/10/20 (in %) as the HySAC table reports them: T->I and I->T search the safe
    gallery only; T*->I∪I* and I*->T∪T* ask unsafe queries to find the safe counterpart in a
    gallery of safe and unsafe items together."""
    import torch

    from .retrieval import _ranks

    idx = torch.arange(len(S))
    plan = {"T->I": (S, V), "I->T": (V, S), "T*->I∪I*": (U, torch.cat([V, G])),
            "I*->T∪T*": (G, torch.cat([S, U]))}
    out = {}
    for name, (q, gallery) in plan.items():
        ranks = _ranks(q.float(), gallery.float(), idx)
        out[name] = "/".join(f"{100 * (ranks < k).float().mean().item():.1f}" for k in ks)
    return out


def format_table(result: dict) -> str:
    keys = [k for m in result["models"].values() if m for k in m
            if k.endswith(("_r1", "_r5", "_r10")) or k.startswith("nsfw")]
    keys = list(dict.fromkeys(keys))
    names = list(result["models"])
    data = "ViSU " if result.get("data") == "visu" else f"{result.get('data', '')} "
    lines = [f"preset {result['preset']}, {data}{result['split']} split, n={result['n']}",
             "metric".ljust(14) + "".join(n.rjust(10) for n in names)]
    for k in keys:
        row = [result["models"][n][k] if result["models"][n] else None for n in names]
        lines.append(k.ljust(14) + "".join(("-" if v is None else f"{v:.3f}").rjust(10) for v in row))
    lines += [f"note: {x}" for x in result["notes"]]
    for name, m in result["models"].items():
        if m and m.get("paper_protocol"):
            cells = ", ".join(f"{k} {v}" for k, v in m["paper_protocol"].items())
            lines.append(f"{name} R@1/10/20 (%): {cells}")
    paper = result.get("paper")
    if paper:
        lines.append(f"paper ({paper.get('source', '')}):")
        for name in ("clip", "safeclip"):
            if isinstance(paper.get(name), dict):
                lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in paper[name].items()))
    return "\n".join(lines)


SUBCOMMANDS = {
    "retrieval": ("safeclip.eval.cli:retrieval_main",
                  "retrieval metrics of both models (the world's data or real ViSU)"),
    "generation": ("safeclip.eval.generation:main",
                   "paired generation: unsafe rate, fidelity, CLIP score per model"),
    "captioning": ("safeclip.eval.captioning:main",
                   "paired captioning: unsafe caption rate and accuracy per model"),
}


def main(argv=None) -> int:
    from ..cli import dispatch
    return dispatch(argv, SUBCOMMANDS, "safeclip eval", __doc__)
