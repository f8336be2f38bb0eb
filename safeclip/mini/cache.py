"""Rendered splits of the mini world, cached as arrays so that training never waits on PIL.

    >>> from safeclip.mini.cache import render_split, load_split
    >>> render_split("train", "work/data")         # resumable: chunks already written are kept
    >>> data = load_split("work/data", "train")    # V, G: uint8 (n, 64, 64, 3); S, U: lists

Each chunk is an ``.npz`` written atomically (temp file, then rename), so a killed build loses at
most the chunk in progress. Captions are stored as text and tokenised by the consumer.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .synthetic import (
    NOVEL_EVERY,
    SPLIT_SEED,
    SPLITS,
    caption_pair,
    render_pair,
    sample_tags,
    split_rng,
)

logger = logging.getLogger(__name__)

CHUNK = 5000
N_WORDINGS = 2  # caption wordings stored per item (training samples one per visit)


def _chunk_path(root: Path, split: str, k: int) -> Path:
    return root / split / f"chunk_{k:04d}.npz"


def item_captions(split: str, i: int) -> tuple[dict, list[tuple[str, str]]]:
    """Tags and the N_WORDINGS (S, U) caption pairs that item i of ``split`` has in the cache:
    the first is the dataset's own (same draws as SyntheticViSU), the others extra paraphrases
    from an independent stream. Cheap: nothing is drawn."""
    rng = split_rng(split, i)
    t = sample_tags(rng, split)
    pairs = [caption_pair(t, rng)]
    extra = np.random.default_rng([7, SPLIT_SEED[split], i])
    pairs += [caption_pair(t, extra) for _ in range(N_WORDINGS - 1)]
    return t, pairs


def _render_chunk(split: str, start: int, stop: int, size: int) -> dict:
    V, G, S, U, tags = [], [], [], [], []
    for i in range(start, stop):
        t, pairs = item_captions(split, i)
        v, g = render_pair(t, size)
        V.append(np.asarray(v, dtype=np.uint8))
        G.append(np.asarray(g, dtype=np.uint8))
        S.append([p[0] for p in pairs])
        U.append([p[1] for p in pairs])
        tags.append(t)
    return {"V": np.stack(V), "G": np.stack(G), "S": np.array(S), "U": np.array(U),
            "tags": np.array([json.dumps(t) for t in tags])}


def render_split(split: str, root: str | Path, n: int | None = None, size: int = 64,
                 chunk: int = CHUNK) -> Path:
    """Render items [0, n) of ``split`` into ``root/split``; chunks already there are skipped."""
    root = Path(root)
    n = SPLITS[split] if n is None else int(n)
    (root / split).mkdir(parents=True, exist_ok=True)
    meta = {"split": split, "n": n, "size": size, "chunk": chunk, "wordings": N_WORDINGS,
            "novel_every": NOVEL_EVERY}
    meta_path = root / split / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        raise ValueError(f"{meta_path} was rendered with other settings; delete {root / split}")
    meta_path.write_text(json.dumps(meta))
    starts = list(range(0, n, chunk))
    todo = [k for k, _ in enumerate(starts) if not _chunk_path(root, split, k).exists()]
    if todo:
        logger.info("rendering %s: %d items in %d chunk(s) to %s", split, n, len(todo), root)
    for k in tqdm(todo, desc=f"render {split}", unit="chunk", disable=not todo):
        start = starts[k]
        arrays = _render_chunk(split, start, min(start + chunk, n), size)
        path = _chunk_path(root, split, k)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return root / split


def load_split(root: str | Path, split: str) -> dict:
    """All chunks of a rendered split, concatenated: V, G (uint8 NHWC), S, U (n x wordings), tags."""
    d = Path(root) / split
    meta = json.loads((d / "meta.json").read_text())
    parts = [np.load(_chunk_path(Path(root), split, k)) for k in range(-(-meta["n"] // meta["chunk"]))]
    out = {key: np.concatenate([p[key] for p in parts]) for key in ("V", "G", "S", "U", "tags")}
    out["tags"] = [json.loads(t) for t in out["tags"]]
    return out


def train_sources(args, tokenizer, processor, context, need):
    """Training data kind ``synthetic``: the rendered splits in ``args.data_dir`` (rendered
    there, whole, the first time)."""
    from ..train.data import ArrayQuads

    for split in ("validation", "train"):
        if not (Path(args.data_dir) / split / "meta.json").exists():
            render_split(split, args.data_dir)

    def src(split, n):
        data = load_split(args.data_dir, split)
        if n:
            data = {k: v[:n] for k, v in data.items()}
        return ArrayQuads(data, tokenizer, context, need)
    return src("train", args.n_train), src("validation", args.n_val)
