"""``safeclip eval retrieval``: both protocols, every configuration, the dial and steering.

    safeclip eval retrieval --preset mini --json                     # twin and pool, 3 configs
    safeclip eval retrieval --preset mini --alpha 0,0.5,1,1.25 --beta 0,0.2,0.5 --json
    safeclip eval retrieval --preset vit-l-14 --visu [TEXT] --coco-root DIR --unsafe-root DIR

The items are the world's evaluation data (its ``retrieval.eval`` kind: the real worlds' ViSU,
the mini world's synthetic ViSU), embedded once by each model. The JSON holds, per protocol
(``twin``, ``pool``: ``safeclip.eval.protocols``) and configuration (``clip``, ``safeclip``,
``cross``), the recall of the counterpart and the unsafe share of the top results; ``by_alpha``
the same with Safe-CLIP dialled (``safeclip.strength``); ``steering`` the pool protocol with each
query moved away from its gallery's unsafe direction, estimated on other items (the validation
split, or the first half of the data when it has no validation split): CLIP + steering is the
training-free baseline Safe-CLIP must beat. ``models`` keeps each model's own twin metrics and
the HySAC table's figures, next to the paper's numbers of the world.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..cli import add_common_args, overrides, setup_logging
from ..errors import StudioError
from ..limits import Number
from ..presets import get_preset
from . import protocols

PROJECT = Path(__file__).resolve().parents[2]


def shown_ref(ref: str) -> str:
    """A model reference as the JSON records it: the bundled models relative to the project
    (the file is committed and read on other machines), anything else as given."""
    try:
        return Path(ref).resolve().relative_to(PROJECT).as_posix()
    except (ValueError, OSError):
        return ref

logger = logging.getLogger(__name__)

BETAS = (0.0, 0.1, 0.2, 0.3, 0.5)


def floats(text: str, limit: Number | None = None) -> list[float]:
    values = [float(x) for x in str(text).split(",") if x.strip()]
    return [limit.check(v) for v in values] if limit else values


def _as_list(batch):
    return batch


def embed(ds, encoders: dict, kind: str, world, args, desc: str) -> dict:
    """{model: {S, U, V, G}} of every item of ``ds`` (one pass, each batch by every encoder)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..kinds import kind_info

    parts = {m: {k: [] for k in "SUVG"} for m in encoders}
    io = kind_info("retrieval_eval", kind, world).get("io", False)  # files to decode: workers
    loader = DataLoader(ds, batch_size=getattr(args, "batch_size", 64) or 64,
                        num_workers=getattr(args, "workers", 0) if io else 0, collate_fn=_as_list)
    for batch in tqdm(loader, desc=desc, unit="batch"):
        for m, enc in encoders.items():
            for k in "SU":
                parts[m][k].append(enc.encode_text([q[k] for q in batch]))
            for k in "VG":
                parts[m][k].append(enc.encode_image([q[k] for q in batch]))
    return {m: {k: torch.cat(v) for k, v in p.items()} for m, p in parts.items()}


def evaluate_retrieval(preset_name, split: str = "test", n: int | None = None,
                       model_overrides: dict | None = None, device=None, args=None) -> dict:
    """The retrieval evaluation of the module docstring, as a dict."""
    from ..encoders import load_clip
    from ..kinds import resolve
    from ..strength import ALPHA, Dial
    from .cli import paper_protocol
    from .retrieval import retrieval_metrics

    world = get_preset(preset_name, model_overrides)
    if world.retrieval is None:
        raise StudioError(f"world {world.name!r} has no retrieval")
    kind = "visu" if getattr(args, "visu", None) else world.retrieval.eval
    if kind is None:
        raise StudioError(f"world {world.name!r} names no retrieval evaluation data; pass --visu")
    alphas = floats(getattr(args, "alpha", None) or "1", ALPHA)
    betas = floats(getattr(args, "beta", None) or ",".join(map(str, BETAS)),
                   Number("steering beta", 0, 1, integer=False))
    make = resolve("retrieval_eval", kind, world)
    ds = make(world, split, n, args)
    t0 = time.time()
    clip, safe = (load_clip(world, r, device=device) for r in ("clip", "safe_clip"))
    emb = embed(ds, {"clip": clip, "safeclip": safe}, kind, world, args, f"{kind} {split}")
    result = {"preset": world.name, "data": kind, "split": split, "n": len(ds),
              "source": getattr(ds, "source", kind), "models": {}, "notes": [],
              "paper": world.retrieval.paper or None,
              "protocols": {"twin": protocols.twin(emb), "pool": protocols.pool(emb)}}
    for m, enc in (("clip", clip), ("safeclip", safe)):
        e = emb[m]
        metrics = retrieval_metrics(e["S"], e["U"], e["V"], e["G"], ks=(1, 5, 10, 20))
        result["models"][m] = {"ref": shown_ref(enc.ref), **metrics,
                               "paper_protocol": paper_protocol(e["S"], e["U"], e["V"], e["G"])}
    other = [a for a in alphas if a != 1.0]
    if other:
        dial = Dial(clip, safe)
        result["by_alpha"] = {}
        for a in alphas:
            e = emb if a == 1.0 else {"clip": emb["clip"], **embed(
                ds, {"safeclip": dial(a)}, kind, world, args, f"alpha {a:g}")}
            result["by_alpha"][f"{a:g}"] = {"twin": protocols.twin(e, ("safeclip", "cross")),
                                            "pool": protocols.pool(e, ("safeclip", "cross"))}
    result["steering"] = _steering(world, kind, make, split, ds, emb, betas, args,
                                   {"clip": clip, "safeclip": safe})
    result["seconds"] = round(time.time() - t0, 2)
    return result


def _steering(world, kind, make, split, ds, emb, betas, args, encoders) -> dict:
    """Pool metrics with steering; the direction comes from the validation split (from the
    items themselves, first half, when the data has no other split)."""
    import torch

    source = "validation" if split != "validation" else "test"
    try:
        other = make(world, source, getattr(args, "steer_n", None) or len(ds), args)
        d_emb = embed(other, encoders, kind, world, args, f"steering: {source}")
        where = f"{source} split, {len(other)} items"
    except Exception as e:  # noqa: BLE001 - a data set without that split
        logger.warning("no %s split for the steering direction (%s): using the first half of "
                       "the evaluated items", source, e)
        half = torch.arange(0, len(ds) // 2)
        d_emb = {m: {k: v[half] for k, v in e.items()} for m, e in emb.items()}
        where = "first half of the evaluated items"
    return {"direction": where, "betas": list(betas),
            "pool": protocols.steered(emb, protocols.directions(d_emb), betas)}


PLAIN = {"u_unsafe_at10": "unsafe text queries: unsafe share of the top 10",
         "s_unsafe_at10": "safe text queries: unsafe share of the top 10",
         "g_unsafe_at10": "unsafe image queries: unsafe share of the top 10 captions",
         "v_unsafe_at10": "safe image queries: unsafe share of the top 10 captions",
         "u2v_r10": "unsafe text queries: safe counterpart in the top 10",
         "s2v_r10": "safe text queries: their image in the top 10",
         "g2s_r10": "unsafe image queries: safe counterpart in the top 10",
         "v2s_r10": "safe image queries: their caption in the top 10"}


def format_table(result: dict) -> str:
    lines = [f"world {result['preset']}, {result['data']} {result['split']} split, "
             f"n={result['n']}"]
    for proto, keys in (("pool", list(PLAIN)), ("twin", ["s2v_r10", "u2v_r10", "u2g_r10",
                                                         "v2s_r10", "g2s_r10", "nsfw_at10",
                                                         "nsfw_at10_i2t"])):
        table = result["protocols"][proto]
        lines += ["", f"{proto} protocol".ljust(16) + "".join(c.rjust(10) for c in table)]
        for k in keys:
            lines.append(k.ljust(16) + "".join(f"{table[c][k]:.3f}".rjust(10) for c in table))
    st = result.get("steering")
    if st:
        lines += ["", f"steering (pool, direction from the {st['direction']}): u_unsafe_at10 / "
                      "u2v_r10 by beta"]
        for c, by in st["pool"].items():
            lines.append(f"  {c:9s} " + "  ".join(f"{b}: {m['u_unsafe_at10']:.2f}/"
                                                  f"{m['u2v_r10']:.2f}" for b, m in by.items()))
    for a, p in (result.get("by_alpha") or {}).items():
        lines.append(f"alpha {a}: pool cross u_unsafe_at10 {p['pool']['cross']['u_unsafe_at10']:.3f}"
                     f", s2v_r10 {p['pool']['cross']['s2v_r10']:.3f}")
    paper = result.get("paper")
    if paper:
        lines.append(f"paper ({paper.get('source', '')}):")
        for name in ("clip", "safeclip"):
            if isinstance(paper.get(name), dict):
                lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in paper[name].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    from .cli import emit

    p = argparse.ArgumentParser(prog="safeclip eval retrieval", description=__doc__.splitlines()[0])
    add_common_args(p, capability="retrieval")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--n", type=int, default=None, help="number of items (default: the split)")
    p.add_argument("--alpha", default=None, help="strength dial values, e.g. 0,0.5,1,1.25")
    p.add_argument("--beta", default=None, help="steering values (default 0,0.1,0.2,0.3,0.5)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    p.add_argument("--visu", nargs="?", const="aimagelab/ViSU-Text", default=None, metavar="TEXT",
                   help="real ViSU data: the ViSU-Text Hub id (default) or a local copy")
    p.add_argument("--coco-root", type=Path, default=None, help="--visu: COCO images (safe V)")
    p.add_argument("--unsafe-root", type=Path, default=None,
                   help="--visu: generated unsafe images (G), see `safeclip data generate-unsafe`")
    p.add_argument("--batch-size", type=int, default=64, help="items per batch")
    p.add_argument("--workers", type=int, default=2, help="image decoding processes (ViSU)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    result = evaluate_retrieval(args.preset, args.split, args.n, overrides(args), args.device,
                                args)
    emit(result, args.out, args.json, format_table)
    return 0
