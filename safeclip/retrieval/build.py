"""Building a gallery index with a world's models, resumably.

    >>> from safeclip.retrieval.build import build_gallery
    >>> report = build_gallery("mini", "assets/gallery/mini", dataset="synthetic:test")
    >>> report = build_gallery("vit-l-14", "idx/photos", images="photos/", judge="nudenet")
    >>> build_gallery("vit-l-14", "idx/laion", images="photos/", models=("clip",))  # cross only
    >>> report.skipped                       # [{"id": "broken.jpg", "reason": "..."}], never fatal

Images are embedded in batches of ``batch_size`` with both models; each batch is written to
``DIR/.partial/`` as soon as it is done, so a crash loses at most one batch and rerunning the
same command continues from there. The caption corpus (captions of the items, plus an optional
``caption_file``) is embedded the same way. Unsafe flags come from the data when it knows them
(synthetic tags, a labels file, a dataset column), else from a judge run on the image now: the
world's retrieval judge by default (NudeNet + Q16 for the real worlds: each row keeps both
verdicts, ``judges`` and ``flagged_by``, and the manifest the judge's card), ``judge="none"``
leaves them unknown.
Then one faiss index per model and corpus is built (see ``ann.choose_spec``), the unsafe
direction of each index is estimated from its labelled items (for query-time steering), and the
manifest is written last. ``models=("clip",)`` embeds with the original only: a gallery for the
``clip`` and ``cross`` configurations, built in about half the time (``safeclip.retrieval.add``
appends images to a gallery).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..parallel import Workers
from ..presets import get_preset
from . import ann, store
from .sources import Source, make_source

logger = logging.getLogger(__name__)

PARTIAL, PARTIAL_ADD = ".partial", ".partial-add"


@dataclass
class BuildReport:
    """What a build (or add) did; ``skipped`` lists every unreadable input and why."""

    out: str
    count: int  # images in the gallery now
    captions: int  # captions in the caption corpus now
    embedded: int  # images embedded by this run (resumed batches excluded)
    resumed_batches: int  # batches found done by an interrupted run
    skipped: list[dict] = field(default_factory=list)  # {"id", "reason"}
    index: dict = field(default_factory=dict)  # corpus -> model -> IndexSpec dict
    unsafe: dict = field(default_factory=dict)  # counts of flagged / safe / unknown images
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    worker: str | None = None  # "worker 1 of 4" on a process that does not write the index

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class IndexOptions:
    """How to index (flags of `safeclip index build`)."""

    kind: str = "auto"  # auto | flat | ivf | ivfpq | hnsw
    exact_max: int = ann.EXACT_MAX  # auto: exact up to this many vectors
    nlist: int | None = None  # ivf lists (default ~4 sqrt(n))
    nprobe: int | None = None  # ivf lists searched (default: calibrated)
    hnsw_m: int = 32  # hnsw neighbours per node
    ef_search: int | None = None  # hnsw search breadth (default: calibrated)
    compress_bytes: int = ann.COMPRESS_BYTES  # auto: IVF-PQ past this size of raw vectors
    pq_m: int | None = None  # ivfpq: bytes per vector (default: dim / 8)
    rerank: int = ann.RERANK_DEPTH  # ivfpq: shortlist re-scored exactly (0: the codes alone)

    def spec(self, n: int, dim: int | None = None) -> ann.IndexSpec:
        return ann.choose_spec(n, self.kind, self.exact_max, self.nlist, self.nprobe,
                               self.hnsw_m, self.ef_search, dim=dim,
                               compress_bytes=self.compress_bytes, pq_m=self.pq_m,
                               rerank=self.rerank)


# ------------------------------------------------------------------------------ helpers

def as_encoders(pair, models=store.MODELS) -> dict:
    """{model name: encoder} of a ClipPair (or such a dict), for ``models``."""
    if isinstance(pair, dict):
        return {m: pair[m] for m in models}
    return {m: getattr(pair, m) for m in models}


def load_encoders(preset, models, device=None) -> dict:
    from ..encoders import load_clip

    return {m: load_clip(preset, "clip" if m == "clip" else "safe_clip", device=device)
            for m in models}


def _dims(encoders: dict) -> dict[str, int]:
    dims = {m: int(e.embed_dim) for m, e in encoders.items()}
    if len(set(dims.values())) != 1:
        raise store.GalleryMismatchError(f"the two models embed in different sizes: {dims}")
    return dims


def _models_entry(preset, encoders) -> dict:
    out = {}
    for m, enc in encoders.items():
        role = "clip" if m == "clip" else "safe_clip"
        ref = str(getattr(preset, role))
        out[m] = {"ref": store.portable_ref(ref), "fingerprint": store.model_fingerprint(enc.ref),
                  "backend": getattr(enc, "backend", None)}
        if store.portable_ref(enc.ref) != out[m]["ref"]:
            out[m]["resolved"] = store.portable_ref(enc.ref)
    return out


def _judge_spec(judge: str | None, world):
    """The JudgeSpec of ``--judge``: "auto" is the world's retrieval judge, "none" none, any
    other name a judge kind (with the world's settings when it is the world's own kind)."""
    from ..presets import JudgeSpec

    if judge in (None, "none"):
        return None
    own = world.retrieval.image_judge if world.retrieval else JudgeSpec()
    if judge == "auto":
        return own if own.kind != "none" else None
    return own if own.kind == judge else JudgeSpec(judge)


class _Judge:
    """The judge, loaded on first use (sources with known flags never need it)."""

    def __init__(self, spec, world=None):
        self.spec, self.world, self._judge = spec, world, None
        self.name = spec.kind if spec is not None else None
        self.notes: list[str] = []  # e.g. "judged for nudity only" (the build report's notes)

    def flag(self, loaded: list) -> None:
        todo = [x for x in loaded if x.image is not None and x.row.get("unsafe") is None]
        if not todo or self.spec is None:
            return
        if self._judge is None:
            from ..safety.base import load_judge
            self._judge = load_judge(self.spec, self.world)
        for x, v in zip(todo, self._judge.judge([x.image for x in todo])):
            x.row.update(unsafe=bool(v.unsafe), unsafe_source=f"judge:{self.name}",
                         unsafe_score=round(float(v.score), 4), category=v.category)
            if v.judges:  # a combined judge: each one's verdict, and which flagged
                x.row.update(judges=v.judges, flagged_by=v.flagged_by)
        notice = getattr(self._judge, "pop_notice", lambda: None)()
        if notice:
            self.notes.append(notice)

    def card(self) -> dict | None:
        """The judge's card (name, versions, thresholds, classes) once it has judged."""
        return self._judge.card() if self._judge is not None else None


def _embed_batches(items: list, prefix: str, work: Path, batch_size: int, embed, desc: str,
                   progress=None, workers: Workers | None = None):
    """Embed ``items`` batch by batch into shards, skipping shards already there; returns
    (number of shards, batches resumed, items embedded now). ``progress(what, done, total)`` is
    called after every batch. Under several ``workers`` each embeds its own batches, and all of
    them wait until every shard is written."""
    from tqdm.auto import tqdm

    workers = workers or Workers()
    starts = list(range(0, len(items), batch_size))
    mine = [b for b in range(len(starts)) if workers.mine(b)]
    if workers.world > 1:
        desc = f"{desc} ({workers.describe()})"
    resumed = embedded = 0
    for b in tqdm(mine, desc=desc, unit="batch", leave=False):
        s = starts[b]
        if store.shard_path(work, prefix, b).exists():
            resumed += 1
        else:
            vectors, rows, skipped = embed(items[s:s + batch_size])
            store.write_shard(work, prefix, b, vectors, rows, skipped)
            embedded += len(rows)
        if progress is not None:
            progress(prefix, min(s + batch_size, len(items)), len(items))
    workers.wait()
    resumed, embedded = workers.total(resumed), workers.total(embedded)
    return len(starts), resumed, embedded


def _encode_images(encoders: dict, loaded: list, dim: int) -> dict[str, np.ndarray]:
    """Each model's embeddings of the loaded images; an image that breaks the batch is found by
    encoding one at a time, and marked with its error instead."""
    from ..images import ImageError

    ok = [x for x in loaded if x.image is not None]
    try:
        return {m: e.encode_image([x.image for x in ok]).numpy().reshape(-1, dim)
                for m, e in encoders.items()}
    except (ImageError, OSError, ValueError) as err:
        logger.warning("a batch failed to encode (%s): retrying image by image", err)
    for x in ok:
        try:
            for e in encoders.values():
                e.encode_image([x.image])
        except (ImageError, OSError, ValueError) as err:
            x.image, x.error = None, f"cannot encode: {err.__class__.__name__}: {err}"
    ok = [x for x in loaded if x.image is not None]
    return {m: (e.encode_image([x.image for x in ok]).numpy() if ok
                else np.zeros((0, dim), np.float32)) for m, e in encoders.items()}


def _image_embedder(source: Source, encoders: dict, judge: _Judge, dim: int):
    def embed(ids):
        loaded = source.load(ids)
        vectors = _encode_images(encoders, loaded, dim)
        judge.flag(loaded)
        skipped = [{"id": x.row["id"], "reason": x.error} for x in loaded if x.image is None]
        for s in skipped:
            logger.warning("skipped %s: %s", s["id"], s["reason"])
        return vectors, [x.row for x in loaded if x.image is not None], skipped
    return embed


def _text_embedder(encoders: dict, dim: int):
    def embed(rows):
        texts = [r["text"] for r in rows]
        return {m: e.encode_text(texts).numpy().reshape(-1, dim)
                for m, e in encoders.items()}, rows, []
    return embed


def read_caption_file(path: str | Path) -> list[dict]:
    """A caption corpus file: .txt (one caption a line) or CSV/JSON/JSONL rows with ``text``
    (or ``caption``) and optional ``unsafe``, ``category``, ``id``."""
    from ..data.visu import read_rows
    from .sources import as_flag

    path = Path(path)
    if path.suffix.lower() == ".txt":
        raw = [{"text": t.strip()} for t in path.read_text(encoding="utf-8").splitlines()]
    else:
        raw = [{**r, "text": r.get("text") or r.get("caption")} for r in read_rows(path)]
    rows = []
    for i, r in enumerate(raw):
        if r.get("text") and str(r["text"]).strip():
            rows.append({"id": str(r.get("id") or f"{path.stem}:{i}"),
                         "text": str(r["text"]).strip(),
                         "unsafe": as_flag(r.get("unsafe")), "item": None,
                         **({"category": r["category"]} if r.get("category") else {})})
    return rows


def _unsafe_counts(rows: list[dict]) -> dict:
    flags = [r.get("unsafe") for r in rows]
    sources = sorted({r["unsafe_source"] for r in rows if r.get("unsafe_source")})
    return {"unsafe": sum(f is True for f in flags), "safe": sum(f is False for f in flags),
            "unknown": sum(f is None for f in flags), "sources": sources}


def save_index_files(index, directory: Path, files: dict, key: str, name: str) -> None:
    """Save an index as ``name`` and record its files in the manifest's ``files`` (a re-ranked
    IVF-PQ index also its float16 vectors, as ``KEY.vectors``)."""
    written = ann.save_index(index, directory / name)
    files[key] = name
    if len(written) > 1:
        files[f"{key}.vectors"] = written[1].name


def _build_corpus(vectors: dict, queries: dict, options: IndexOptions, what: str, seed: int = 0):
    """One index per model; approximate ones are calibrated on the other modality's vectors."""
    indexes, specs = {}, {}
    for m in vectors:
        spec = options.spec(len(vectors[m]), vectors[m].shape[1] if len(vectors[m]) else None)
        q = queries.get(m)
        indexes[m], spec = ann.build_index(vectors[m], spec, q, calibration=what, seed=seed)
        specs[m] = spec.to_dict()
    return indexes, specs


# ------------------------------------------------------------------------------------ build

def build_gallery(preset, out: str | Path, *, images=None, dataset: str | None = None,
                  split: str = "test", limit: int | None = None, labels=None,
                  source: Source | None = None, captions: bool = True, caption_file=None,
                  pair=None, batch_size: int = 64, options: IndexOptions | None = None,
                  judge: str = "auto", overwrite: bool = False, restart: bool = False,
                  device=None, overrides: dict | None = None, hub_columns: dict | None = None,
                  progress=None, models: tuple[str, ...] = store.MODELS) -> BuildReport:
    """Embed a gallery with ``models`` of ``preset`` (both by default; ``("clip",)`` for a
    gallery of the clip and cross configurations) and write its index to ``out``."""
    t0 = time.time()
    preset = get_preset(preset, overrides)
    options = options or IndexOptions()
    out = Path(out)
    old_files = []
    if (out / store.MANIFEST).exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a gallery index: add images with "
                                  f"`safeclip index add --index {out}`, or pass --overwrite")
        old_files = list(store.read_manifest(out).get("files", {}).values())
    source = source or make_source(images, dataset, split, limit, labels, preset.image_size,
                                   exclude=out, **(hub_columns or {}))
    ids = source.ids()
    if not ids:
        raise InputError(f"no images in {source.describe()}")
    models = tuple(models)
    if models not in (("clip",), ("clip", "safeclip"), ("safeclip",)):
        raise InputError(f"a gallery embeds with clip, or clip and safeclip, not {models}")
    workers = Workers.current(device)  # several under accelerate launch / torchrun
    encoders = (load_encoders(preset, models, workers.device) if pair is None
                else as_encoders(pair, models))
    dim = next(iter(_dims(encoders).values()))
    models = _models_entry(preset, encoders)
    judge_spec = _judge_spec(judge, preset)
    judge_name = judge_spec.kind if judge_spec else None
    work = out / PARTIAL
    plan = {"format": store.FORMAT, "preset": preset.name, "models": models, "dim": dim,
            "source": source.describe(), "n": len(ids), "ids": store.plan_checksum(ids),
            "batch_size": int(batch_size), "judge": judge_name, "captions": bool(captions),
            "caption_file": str(caption_file) if caption_file else None}
    if workers.main:  # the others join the shard folder once it is ready
        store.prepare_work(work, plan, restart)
    workers.wait()
    if not workers.main:
        store.prepare_work(work, plan, restart=False)

    judge = _Judge(judge_spec, preset)
    n_img, resumed, embedded = _embed_batches(
        ids, "images", work, batch_size, _image_embedder(source, encoders, judge, dim),
        f"embed {len(ids)} images", progress, workers)
    vectors, rows, skipped = store.read_shards(work, "images", n_img, dim, tuple(encoders))
    if not rows:
        raise InputError(f"none of the {len(ids)} images could be read (first: {skipped[:3]})")

    cap_rows = source.captions([r["id"] for r in rows]) if captions else []
    if caption_file:
        cap_rows += read_caption_file(caption_file)
    n_cap, r2, _ = _embed_batches(cap_rows, "captions", work, 4 * batch_size,
                                  _text_embedder(encoders, dim), f"embed {len(cap_rows)} captions",
                                  progress, workers)
    if not workers.main:  # worker 0 indexes and writes the gallery
        return BuildReport(str(out), len(rows), len(cap_rows), embedded, resumed + r2,
                           seconds=round(time.time() - t0, 2), worker=workers.describe())
    cap_vectors, cap_rows, _ = store.read_shards(work, "captions", n_cap, dim, tuple(encoders))

    files, index_specs = {"items": "items.jsonl"}, {}
    img_idx, index_specs["images"] = _build_corpus(vectors, cap_vectors if cap_rows else {},
                                                   options, "caption embeddings (text -> image)")
    for m, idx in img_idx.items():
        save_index_files(idx, out, files, f"images.{m}", f"images.{m}.faiss")
    if cap_rows:
        cap_idx, index_specs["captions"] = _build_corpus(cap_vectors, vectors, options,
                                                         "image embeddings (image -> text)")
        files["captions"] = "captions.jsonl"
        for m, idx in cap_idx.items():
            save_index_files(idx, out, files, f"captions.{m}", f"captions.{m}.faiss")
        store.write_jsonl(out / "captions.jsonl", cap_rows)
    store.write_jsonl(out / "items.jsonl", rows)
    steering = store.write_steering(out, {"images": (rows, vectors),
                                          "captions": (cap_rows, cap_vectors)})
    if steering.get("file"):
        files["steering"] = steering["file"]
    report = BuildReport(str(out), len(rows), len(cap_rows), embedded, resumed + r2, skipped,
                         index_specs, _unsafe_counts(rows), 0.0)
    report.notes += judge.notes
    if workers.world > 1:
        report.notes.append(f"embedded by {workers.world} workers")
    if getattr(source, "ignored", 0):
        report.notes.append(f"{source.ignored} file(s) without an image extension ignored")
    manifest = {
        "format": store.FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "preset": preset.name, "models": models, "dim": dim, "count": len(rows),
        "captions": len(cap_rows), "checksum": store.inputs_checksum(rows, cap_rows),
        "source": source.describe(), "index": index_specs,
        "index_options": dataclasses.asdict(options),
        "unsafe": {"judge": judge_name, "judge_card": judge.card(), "images": report.unsafe,
                   "captions": _unsafe_counts(cap_rows) if cap_rows else None},
        "skipped": len(skipped), "generation": 0, "files": files, "steering": steering,
    }
    report.seconds = round(time.time() - t0, 2)
    store.write_json(out / "build_report.json", report.to_dict())
    store.write_json(out / store.MANIFEST, manifest)  # the commit point
    for name in set(old_files) - set(files.values()):  # an overwritten index's other files
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    logger.info("gallery %s: %d images, %d captions, %d skipped (%.1fs)", out, len(rows),
                len(cap_rows), len(skipped), report.seconds)
    return report
