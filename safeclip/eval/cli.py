"""``safeclip eval``: measure a preset's two models.

    safeclip eval retrieval --preset mini [--split test] [--n 1000] [--json] [--out FILE]
    safeclip eval retrieval --preset vit-l-14 --visu [TEXT] --coco-root DIR --unsafe-root DIR

Prints, per model (``clip`` the original, ``safeclip`` the safe one), the retrieval metrics of
``safeclip.eval.retrieval`` on a split of the synthetic ViSU. A bundled model that has not been
built yet is reported as ``null`` with a note, never as numbers from a placeholder.
``--visu`` computes the same metrics on the real ViSU split instead (captions from the Hub's
``aimagelab/ViSU-Text`` or a local copy given as TEXT, safe images from COCO, unsafe images
generated with ``safeclip data generate-unsafe``), next to the paper's numbers of the preset.
"""
from __future__ import annotations

import argparse
import json
import logging
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
    p.add_argument("--visu", nargs="?", const="aimagelab/ViSU-Text", default=None, metavar="TEXT",
                   help="real ViSU data: the ViSU-Text Hub id (default) or a local copy")
    p.add_argument("--coco-root", type=Path, default=None, help="--visu: COCO images (safe V)")
    p.add_argument("--unsafe-root", type=Path, default=None,
                   help="--visu: generated unsafe images (G), see `safeclip data generate-unsafe`")
    p.add_argument("--batch-size", type=int, default=64, help="--visu: quadruplets per batch")
    p.add_argument("--workers", type=int, default=2, help="--visu: image decoding processes")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    if args.visu:
        result = evaluate_visu(args.preset, args.visu, args.coco_root, args.unsafe_root,
                               args.split, args.n, overrides(args), args.device, args.batch_size,
                               args.workers)
    else:
        result = evaluate_retrieval(args.preset, args.split, args.n, overrides(args), args.device)
    emit(result, args.out, args.json, format_table)
    return 0


def emit(result: dict, out: Path | None, as_json: bool, table) -> None:
    """Write the JSON to ``out`` (if given) and print it, or print ``table(result)``."""
    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text if as_json else table(result))


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


def _shrink(image, size: int):
    """Shortest edge down to the model's input size (what its preprocessing does first), so a
    batch of COCO photos stays small in memory."""
    from PIL import Image

    w, h = image.size
    if min(w, h) > size:
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                             Image.BICUBIC)
    return image


def _as_list(batch):
    return batch


def evaluate_visu(preset_name: str, text, coco_root, unsafe_root, split: str = "test",
                  n: int | None = None, model_overrides: dict | None = None, device=None,
                  batch_size: int = 64, workers: int = 2) -> dict:
    """The retrieval metrics of both models on the real ViSU ``split`` (one pass over the
    images, both models encoding each batch)."""
    import functools

    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..data.visu import ViSUDataset
    from ..encoders import load_clip
    from .retrieval import retrieval_metrics

    preset = get_preset(preset_name, model_overrides)
    ds = ViSUDataset(split, text=text, coco_root=coco_root, unsafe_root=unsafe_root, limit=n,
                     transform=functools.partial(_shrink, size=preset.image_size))
    ds.check()  # one MissingDataError listing the missing images, before loading any model
    result = {"preset": preset.name, "data": "visu", "split": ds.split, "n": len(ds),
              "text": ds.source, "models": {}, "notes": [], "paper": preset.paper or None}
    t0 = time.time()
    encoders = {name: load_clip(preset, role, device=device)
                for role, name in (("clip", "clip"), ("safe_clip", "safeclip"))}
    parts: dict[str, dict[str, list]] = {m: {k: [] for k in "SUVG"} for m in encoders}
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_as_list)
    for batch in tqdm(loader, desc=f"ViSU {ds.split}", unit="batch"):
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
    data = "ViSU " if result.get("data") == "visu" else ""
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
                  "retrieval metrics of both models (mini world or real ViSU)"),
    "generation": ("safeclip.eval.generation:main",
                   "paired generation: unsafe rate, fidelity, CLIP score per model"),
    "captioning": ("safeclip.eval.captioning:main",
                   "paired captioning: unsafe caption rate and accuracy per model"),
}


def main(argv=None) -> int:
    from ..cli import dispatch
    return dispatch(argv, SUBCOMMANDS, "safeclip eval", __doc__)
