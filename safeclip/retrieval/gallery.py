"""Searching a gallery in three configurations, side by side.

    >>> from safeclip.retrieval import Gallery
    >>> g = Gallery.open("assets/gallery/mini", preset="mini")   # refuses another world or dim
    >>> res = g.search_text("a dog holding a knife", k=5)       # text -> image
    >>> [(h.id, round(h.score, 3), h.unsafe) for h in res.results["cross"]]
    >>> res.unsafe_share("clip"), res.unsafe_share("cross")     # share of flagged hits
    >>> g.search_image(img, k=5)                                # image -> captions (or images)
    >>> g.search_text("a man with a gun", alpha=0.5, beta=0.2)  # the dial, query-time steering
    >>> g.image(res.results["clip"][0])                         # the PIL image of a hit

The configurations (``CONFIGS``): ``clip`` (the original's query over the original's index),
``safeclip`` (both Safe-CLIP towers, the paper's) and ``cross`` (Safe-CLIP's query tower over the
original's index: Safe-CLIP's text tower was trained against the original image embeddings and
its vision tower against the original text embeddings, so it can search an index built by the
original CLIP, e.g. LAION's). A gallery built for ``cross`` only holds the original's index.
``alpha`` dials the Safe-CLIP query tower (``safeclip.strength``: 1 = as published) for ``cross``;
the ``safeclip`` index was embedded at alpha 1, so that column keeps it. ``beta`` moves every
query away from its index's unsafe direction (the mean unsafe minus the mean safe embedding of
the gallery's labelled items, unit length, stored with it): ``q' = normalize(q - beta d)``, a
training-free baseline. A hit carries its score (cosine similarity), its unsafe flag when known
and the item's metadata. Batches of queries go to faiss in one call.
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
CONFIGS = ("clip", "safeclip", "cross")
PLAN = {"clip": ("clip", "clip"), "safeclip": ("safeclip", "safeclip"),
        "cross": ("safeclip", "clip")}  # configuration -> (query encoder, index model)
BETA = Number("steering beta", 0.0, 1.0, integer=False)


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
    """Every configuration's ranking for one query."""

    query: str  # the text, or a description of the image
    direction: str  # "text->image", "image->text", "image->image" or "text->text"
    k: int
    results: dict[str, list[Hit]]  # configuration ("clip", "safeclip", "cross") -> ranked hits
    seconds: float  # encoding and search, all configurations
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # alpha, beta

    def unsafe_share(self, config: str) -> float | None:
        """Share of flagged hits among those whose flag is known (None if none is known)."""
        flags = [h.unsafe for h in self.results[config] if h.unsafe is not None]
        return sum(flags) / len(flags) if flags else None

    def unsafe_count(self, config: str) -> int:
        return sum(bool(h.unsafe) for h in self.results[config])

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


# (recognises(directory), open(directory, preset, pair=, overrides=, device=)) of index
# layouts other than this package's; modules that add one register it (safeclip.retrieval
# imports them), so this module imports none of them
OPENERS: list[tuple] = []


class Gallery:
    """An index directory opened with a world's two models (see the module docstring)."""

    limits = LIMITS

    def __init__(self, directory: Path, manifest: dict, pair, warnings: list[str] | None = None):
        from ..strength import Dial

        self.directory, self.manifest, self.pair = Path(directory), manifest, pair
        self.warnings = list(warnings or [])
        files = manifest["files"]
        self.items = store.read_jsonl(self.directory / files["items"])
        self.captions = (store.read_jsonl(self.directory / files["captions"])
                         if "captions" in files else [])
        self.indexes: dict[str, dict] = {}
        for corpus, rows in (("images", self.items), ("captions", self.captions)):
            models = [m for m in store.MODELS if f"{corpus}.{m}" in files]
            if not models:
                continue
            self.indexes[corpus] = {}
            for m in models:
                spec = ann.IndexSpec.from_dict(manifest["index"][corpus][m])
                index = ann.load_index(self.directory / files[f"{corpus}.{m}"], spec)
                if index.ntotal != len(rows) or index.d != manifest["dim"]:
                    raise store.GalleryMismatchError(
                        f"{directory}: {files[f'{corpus}.{m}']} holds {index.ntotal} vectors of "
                        f"dimension {index.d}, the manifest says {len(rows)} of {manifest['dim']}; "
                        "rebuild the index")
                self.indexes[corpus][m] = index
        self.steering = store.read_steering(self.directory, manifest)
        self.dial = Dial(pair.clip, pair.safeclip)
        self._sources: dict[str, object] = {}
        self._ids = {r["id"]: i for i, r in enumerate(self.items)}

    @classmethod
    def open(cls, directory: str | Path, preset=None, *, pair=None, overrides: dict | None = None,
             device=None) -> "Gallery":
        """Open an index for ``preset`` (default: the world it was built with); an index built
        with another world or embedding size is refused with GalleryMismatchError."""
        directory = Path(directory)
        for recognises, opener in OPENERS:  # other layouts (foreign.py: clip-retrieval folders)
            if recognises(directory):
                return opener(directory, preset, pair=pair, overrides=overrides, device=device)
        manifest = store.read_manifest(directory)
        preset = get_preset(preset or manifest["preset"], overrides)
        store.check_compatible(manifest, preset.name, {}, str(directory))  # before loading models
        if pair is None:
            from ..encoders import load_clip_pair
            pair = load_clip_pair(preset, device=device)
        dims = {m: int(getattr(pair, m).embed_dim) for m in store.MODELS}
        fps = {m: store.model_fingerprint(getattr(pair, m).ref) for m in manifest["models"]}
        warnings = store.check_compatible(manifest, preset.name, dims, str(directory), fps)
        return cls(directory, manifest, pair, warnings)

    # -- facts
    @property
    def preset(self) -> str:
        return self.manifest["preset"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def configs(self) -> tuple[str, ...]:
        """The configurations this gallery serves (a gallery built for ``cross`` holds only
        the original's index: ``clip`` and ``cross``)."""
        have = set().union(*(set(v) for v in self.indexes.values())) if self.indexes else set()
        return tuple(c for c in CONFIGS if PLAN[c][1] in have)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (f"Gallery({str(self.directory)!r}, preset={self.preset!r}, "
                f"images={len(self.items)}, captions={len(self.captions)}, "
                f"configs={self.configs})")

    # -- search
    def _corpus(self, target: str) -> str:
        if target not in TARGETS:
            raise InputError(f"target must be one of {TARGETS}, not {target!r}")
        if target not in self.indexes:
            raise InputError(f"{self.directory} has no {target} index (built without captions?)")
        return target

    def _configs(self, configs) -> tuple[str, ...]:
        configs = self.configs if configs is None else tuple(configs)
        unknown = [c for c in configs if c not in self.configs]
        if unknown:
            raise InputError(f"{self.directory} serves the configurations "
                             f"{', '.join(self.configs)}, not {', '.join(unknown)}")
        return configs

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

    def steer(self, vectors: np.ndarray, corpus: str, model: str, beta: float) -> np.ndarray:
        """Queries moved away from the unsafe direction of ``model``'s ``corpus`` index."""
        beta = BETA.check(beta)
        if beta == 0:
            return vectors
        d = self.steering.get(corpus, {}).get(model)
        if d is None:
            raise InputError(f"{self.directory} has no unsafe direction for steering (its items "
                             "are not labelled safe and unsafe); beta must be 0")
        q = vectors - beta * d[None, :]
        return (q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)

    def search_vectors(self, vectors: dict[str, np.ndarray], k: int, target: str = "images",
                       configs=None, beta: float = 0.0):
        """Per query, per configuration: ranked hits for query embeddings of each configuration
        (``vectors[config]``: n x dim, made by that configuration's query encoder)."""
        corpus = self._corpus(target)
        out = {}
        for c in self._configs(configs):
            index_model = PLAN[c][1]
            q = self.steer(vectors[c], corpus, index_model, beta)
            out[c] = ann.search(self.indexes[corpus][index_model], q, k)
        n = len(next(iter(vectors.values())))
        return [{c: self._hits(corpus, out[c][0][i], out[c][1][i]) for c in out}
                for i in range(n)]

    def query_encoders(self, configs, alpha: float | None = None) -> dict[str, object]:
        """The query encoder of each configuration (``alpha`` dials cross's)."""
        enc = {"clip": self.pair.clip, "safeclip": self.pair.safeclip}
        return {c: (self.dial(alpha) if c == "cross" and alpha is not None
                    else enc[PLAN[c][0]]) for c in configs}

    def query_vectors(self, encode, items, configs, alpha=None) -> dict[str, np.ndarray]:
        """Each configuration's query embeddings, ``encode(encoder, items)``; an encoder that
        several configurations share runs once."""
        done: dict[int, np.ndarray] = {}
        vectors = {}
        for c, e in self.query_encoders(configs, alpha).items():
            if id(e) not in done:
                done[id(e)] = encode(e, items).numpy()
            vectors[c] = done[id(e)]
        return vectors

    def image_target(self) -> str:
        """What an image query searches by default: captions when the gallery has them."""
        return "captions" if "captions" in self.indexes else "images"

    def _run(self, encode, items, labels, k, target, direction, configs, alpha, beta):
        t0 = time.perf_counter()
        k = LIMITS["k"].check(k)
        configs = self._configs(configs)
        vectors = self.query_vectors(encode, items, configs, alpha)
        ranked = self.search_vectors(vectors, k, target, configs, beta)
        seconds = (time.perf_counter() - t0) / max(len(items), 1)
        settings = {"alpha": 1.0 if alpha is None else float(alpha), "beta": float(beta)}
        return [SearchResult(label, direction, int(k), r, seconds, list(self.warnings), settings)
                for label, r in zip(labels, ranked)]

    def search_text(self, query: str | Sequence[str], k: int = 10, target: str = "images",
                    configs=None, alpha: float | None = None, beta: float = 0.0):
        """Text -> images (or ``target="captions"``); a list of queries is searched as a batch
        and gives a list of results."""
        single = isinstance(query, str) or query is None
        queries = [LIMITS["query"].check(q) for q in ([query] if single else list(query))]
        out = self._run(lambda enc, q: enc.encode_text(q), queries, queries, k, target,
                        f"text->{target[:-1] if target == 'images' else 'text'}", configs, alpha,
                        beta)
        return out[0] if single else out

    def search_image(self, image, k: int = 10, target: str = "auto", configs=None,
                     alpha: float | None = None, beta: float = 0.0):
        """Image (PIL of any mode, path or bytes) -> captions (``target="auto"`` falls back to
        images when the gallery has no caption corpus); a list is searched as a batch."""
        from ..images import load_rgb, need_image

        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        if not images:
            need_image(None)
        if target == "auto":
            target = self.image_target()
        pil = [load_rgb(need_image(im)) for im in images]  # ImageError: corrupt, bombs
        labels = [str(im) if isinstance(im, (str, Path)) else f"<image {p.size[0]}x{p.size[1]}>"
                  for im, p in zip(images, pil)]
        out = self._run(lambda enc, ims: enc.encode_image(ims), pil, labels, k, target,
                        "image->text" if target == "captions" else "image->image", configs,
                        alpha, beta)
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
