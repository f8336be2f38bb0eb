"""Searching a gallery index with both models of its preset, side by side.

    >>> from safeclip.retrieval import Gallery
    >>> g = Gallery.open("assets/gallery/mini", preset="mini")   # refuses another preset or dim
    >>> res = g.search_text("a dog holding a knife", k=5)       # text -> image
    >>> [(h.id, round(h.score, 3), h.unsafe) for h in res.results["clip"]]
    >>> res.unsafe_share("safeclip")                            # share of flagged hits
    >>> g.search_image(img, k=5)                                # image -> captions (or images)
    >>> g.search_text(["query one", "query two"], k=10)         # a batch: one faiss call
    >>> g.image(res.results["clip"][0])                         # the PIL image of a hit

Each model searches its own index (an embedding of one model means nothing to the other); a hit
carries its score (cosine similarity), its unsafe flag when known (from the gallery's tags or the
judge run at index time) and the item's metadata. Batches of queries go to faiss in one call,
which is much faster per query than a loop.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from ..limits import Number, Text
from ..presets import get_preset
from . import ann, store

logger = logging.getLogger(__name__)

TARGETS = ("images", "captions")


@dataclass
class Hit:
    """One ranked item of one model's results."""

    rank: int  # 1 = best
    id: str  # the item's id in the gallery
    score: float  # cosine similarity to the query
    kind: str  # "image" or "caption"
    unsafe: bool | None  # None when the gallery does not know
    category: str | None = None  # I2P category of an unsafe item, when known
    text: str | None = None  # the caption (caption hits) or the image's caption, when known
    path: str | None = None  # image file (folder galleries), relative to the folder
    unsafe_source: str | None = None  # "tags", "labels", "judge:mini", "judge:nudenet", ...
    meta: dict = field(default_factory=dict, repr=False)  # the full gallery row


@dataclass
class SearchResult:
    """Both models' rankings for one query."""

    query: str  # the text, or a description of the image
    direction: str  # "text->image", "image->text", "image->image" or "text->text"
    k: int
    results: dict[str, list[Hit]]  # "clip" (original) and "safeclip" -> ranked hits
    seconds: float  # encoding and search, both models
    notes: list[str] = field(default_factory=list)

    def unsafe_share(self, model: str) -> float | None:
        """Share of flagged hits among those whose flag is known (None if none is known)."""
        flags = [h.unsafe for h in self.results[model] if h.unsafe is not None]
        return sum(flags) / len(flags) if flags else None

    def to_dict(self, meta: bool = False) -> dict:
        d = dataclasses.asdict(self)
        if not meta:
            for hits in d["results"].values():
                for h in hits:
                    h.pop("meta")
        return d


# The limits of a search: owned here, read by the app's widgets (Studio.limits), checked once.
LIMITS = {"k": Number("top k", 1, 50),
          "query": Text("query", 1000, reader="CLIP reads only the first few dozen words")}


class Gallery:
    """An index directory opened with a world's two models (see the module docstring)."""

    limits = LIMITS

    def __init__(self, directory: Path, manifest: dict, pair, warnings: list[str] | None = None):
        self.directory, self.manifest, self.pair = Path(directory), manifest, pair
        self.warnings = list(warnings or [])
        files = manifest["files"]
        self.items = store.read_jsonl(self.directory / files["items"])
        self.captions = (store.read_jsonl(self.directory / files["captions"])
                         if "captions" in files else [])
        self.indexes: dict[str, dict] = {}
        for corpus, rows in (("images", self.items), ("captions", self.captions)):
            if f"{corpus}.clip" not in files:
                continue
            self.indexes[corpus] = {}
            for m in store.MODELS:
                spec = ann.IndexSpec.from_dict(manifest["index"][corpus][m])
                index = ann.load_index(self.directory / files[f"{corpus}.{m}"], spec)
                if index.ntotal != len(rows) or index.d != manifest["dim"]:
                    raise store.GalleryMismatchError(
                        f"{directory}: {files[f'{corpus}.{m}']} holds {index.ntotal} vectors of "
                        f"dimension {index.d}, the manifest says {len(rows)} of {manifest['dim']}; "
                        "rebuild the index")
                self.indexes[corpus][m] = index
        self._sources: dict[str, object] = {}
        self._ids = {r["id"]: i for i, r in enumerate(self.items)}

    @classmethod
    def open(cls, directory: str | Path, preset=None, *, pair=None, overrides: dict | None = None,
             device=None) -> "Gallery":
        """Open an index for ``preset`` (default: the one it was built with); an index built
        with another preset or embedding size is refused with GalleryMismatchError."""
        directory = Path(directory)
        manifest = store.read_manifest(directory)
        preset = get_preset(preset or manifest["preset"], overrides)
        store.check_compatible(manifest, preset.name, {}, str(directory))  # before loading models
        if pair is None:
            from ..encoders import load_clip_pair
            pair = load_clip_pair(preset, device=device)
        dims = {m: int(getattr(pair, m).embed_dim) for m in store.MODELS}
        fps = {m: store.model_fingerprint(getattr(pair, m).ref) for m in store.MODELS}
        warnings = store.check_compatible(manifest, preset.name, dims, str(directory), fps)
        return cls(directory, manifest, pair, warnings)

    # -- facts
    @property
    def preset(self) -> str:
        return self.manifest["preset"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (f"Gallery({str(self.directory)!r}, preset={self.preset!r}, "
                f"images={len(self.items)}, captions={len(self.captions)})")

    # -- search
    def _corpus(self, target: str) -> str:
        if target not in TARGETS:
            raise InputError(f"target must be one of {TARGETS}, not {target!r}")
        if target not in self.indexes:
            raise InputError(f"{self.directory} has no {target} index (built without captions?)")
        return target

    def _hits(self, corpus: str, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        rows = self.items if corpus == "images" else self.captions
        hits = []
        for s, i in zip(scores, ids):
            if i < 0:
                continue
            r = rows[int(i)]
            hits.append(Hit(len(hits) + 1, r["id"], float(s), corpus[:-1], r.get("unsafe"),
                            r.get("category"), r.get("text", r.get("caption")), r.get("path"),
                            r.get("unsafe_source"), r))
        return hits

    def search_vectors(self, vectors: dict[str, np.ndarray], k: int, target: str = "images"):
        """Per query, per model: ranked hits for precomputed query embeddings (n x dim each)."""
        corpus = self._corpus(target)
        per_model = {m: ann.search(self.indexes[corpus][m], vectors[m], k) for m in store.MODELS}
        n = len(next(iter(vectors.values())))
        return [{m: self._hits(corpus, per_model[m][0][q], per_model[m][1][q])
                 for m in store.MODELS} for q in range(n)]

    def _run(self, encode, items, labels, k, target, direction) -> list[SearchResult]:
        t0 = time.perf_counter()
        vectors = {m: encode(getattr(self.pair, m), items).numpy() for m in store.MODELS}
        ranked = self.search_vectors(vectors, k, target)
        seconds = (time.perf_counter() - t0) / max(len(items), 1)
        return [SearchResult(label, direction, int(k), r, seconds, list(self.warnings))
                for label, r in zip(labels, ranked)]

    def search_text(self, query: str | Sequence[str], k: int = 10, target: str = "images"):
        """Text -> images (or ``target="captions"``); a list of queries is searched as a batch
        and gives a list of results."""
        single = isinstance(query, str)
        queries = [LIMITS["query"].check(q) for q in ([query] if single else list(query))]
        k = LIMITS["k"].check(k)
        out = self._run(lambda enc, q: enc.encode_text(q), queries, queries, k, target,
                        f"text->{target[:-1] if target == 'images' else 'text'}")
        return out[0] if single else out

    def search_image(self, image, k: int = 10, target: str = "auto"):
        """Image (PIL of any mode, path or bytes) -> captions (``target="auto"`` falls back to
        images when the gallery has no caption corpus); a list is searched as a batch."""
        from ..images import load_rgb, need_image

        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        if not images:
            need_image(None)
        k = LIMITS["k"].check(k)
        if target == "auto":
            target = "captions" if "captions" in self.indexes else "images"
        pil = [load_rgb(need_image(im)) for im in images]  # ImageError: corrupt, bombs
        labels = [str(im) if isinstance(im, (str, Path)) else f"<image {p.size[0]}x{p.size[1]}>"
                  for im, p in zip(images, pil)]
        out = self._run(lambda enc, ims: enc.encode_image(ims), pil, labels, k, target,
                        "image->text" if target == "captions" else "image->image")
        return out[0] if single else out

    # -- items
    def source(self, desc: dict | None = None):
        """The (cached) source of the gallery, or of rows added from elsewhere (``desc``)."""
        from .sources import open_source

        key = json.dumps(desc or self.manifest["source"], sort_keys=True)
        if key not in self._sources:
            self._sources[key] = open_source(json.loads(key))
        return self._sources[key]

    def image(self, hit_or_id) -> Image.Image:
        """The image of an image hit (or of an item id), reopened from the gallery's source."""
        if isinstance(hit_or_id, Hit):
            if hit_or_id.kind != "image":
                raise InputError(f"{hit_or_id.id} is a caption, not an image")
            hit_or_id = hit_or_id.id
        row = self.items[self._ids[hit_or_id]]
        return self.source(row.get("origin")).image(row)
