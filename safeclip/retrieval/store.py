"""On-disk layout of a gallery index, and the batch shards that make its build resumable.

    DIR/manifest.json          preset, models (ref + weights fingerprint), dim, count, checksum
                               of the inputs, source, per-corpus index specs, unsafe counts, files
    DIR/items.jsonl            one row per indexed image (id, path or source row, caption, tags,
                               unsafe, unsafe_source, category, sha1)
    DIR/images.clip.faiss      image embeddings of each model (row i of items.jsonl = id i)
    DIR/images.safeclip.faiss
    DIR/captions.jsonl         the caption corpus (id, text, unsafe, item), when there is one
    DIR/captions.clip.faiss    caption embeddings of each model, for image -> text search
    DIR/captions.safeclip.faiss
    DIR/steering.npz           each index's unsafe direction (mean unsafe minus mean safe item)
    DIR/build_report.json      what the last build or add did, skipped files included
    DIR/.partial/              only while building: one .npz shard per embedded batch

The manifest is written last and names the other files: it is the commit point. A crash before
it leaves the previous gallery (or none) intact, and the shards let a rerun continue where the
crash happened, losing at most the batch in progress.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
MODELS = ("clip", "safeclip")  # ClipPair field names, also the file name parts
REPO_ROOT = Path(__file__).resolve().parents[2]


class GalleryMismatchError(InputError):
    """An index built with another preset, dimension or corpus than the one asked for."""


# ------------------------------------------------------------------------------------ files

def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a gallery index (no {MANIFEST}); build one "
                                f"with `safeclip index build --out {directory} ...`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise GalleryMismatchError(f"{directory}: index format {manifest.get('format')} is not "
                                   f"{FORMAT}; rebuild it with `safeclip index build`")
    return manifest


# ------------------------------------------------------------------------------ provenance

def model_fingerprint(ref: str | Path) -> str | None:
    """sha1 over the size and 32 evenly spaced 32 KiB samples of each weights file of a local
    model (None for others). Sampling the whole file matters: a fine-tune that leaves the first
    tensors alone (token embeddings, under LoRA) must still change the fingerprint."""
    path = Path(ref)
    files = ([path] if path.is_file() else
             sorted(p for ext in ("*.safetensors", "*.bin", "*.pt") for p in path.glob(ext))
             if path.is_dir() else [])
    if not files:
        return None
    h = hashlib.sha1()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}:".encode())
        with f.open("rb") as fh:
            for k in range(32):
                fh.seek(size * k // 32)
                h.update(fh.read(1 << 15))
    return h.hexdigest()


def portable_ref(ref: str) -> str:
    """Paths inside this repository are stored relative to it (the bundled gallery moves)."""
    try:
        return Path(ref).resolve().relative_to(REPO_ROOT).as_posix()
    except (ValueError, OSError):
        return str(ref)


def inputs_checksum(items: list[dict], captions: list[dict]) -> str:
    """sha256 of the inputs: every image's id and content hash, every caption's id and text."""
    h = hashlib.sha256()
    for r in items:
        h.update(f"i\t{r['id']}\t{r.get('sha1', '')}\n".encode())
    for c in captions:
        h.update(f"c\t{c['id']}\t{c['text']}\n".encode())
    return "sha256:" + h.hexdigest()


def plan_checksum(values) -> str:
    return hashlib.sha1("\n".join(map(str, values)).encode()).hexdigest()


def check_compatible(manifest: dict, preset_name: str, dims: dict[str, int],
                     where: str = "the index", fingerprints: dict | None = None) -> list[str]:
    """Refuse another preset or dimension (GalleryMismatchError); return warnings for weights
    that differ from the ones the index was built with."""
    built = manifest.get("preset")
    if built != preset_name:
        raise GalleryMismatchError(
            f"{where} was built with preset {built!r} (models {manifest['models']['clip']['ref']} "
            f"and {manifest['models']['safeclip']['ref']}), not {preset_name!r}: search it with "
            f"--preset {built}, or rebuild it with `safeclip index build --preset {preset_name}`")
    for name, dim in dims.items():
        if int(dim) != int(manifest["dim"]):
            raise GalleryMismatchError(
                f"{where} holds {manifest['dim']}-dimensional embeddings but the {name} model of "
                f"preset {preset_name!r} makes {dim}-dimensional ones (built from "
                f"{manifest['models'][name]['ref']}); rebuild the index with these models")
    warnings = []
    for name, fp in (fingerprints or {}).items():
        old = manifest["models"].get(name, {}).get("fingerprint")
        if fp and old and fp != old:
            warnings.append(f"{name}: the weights differ from those the index was built with "
                            f"({manifest['models'][name]['ref']}); scores may be meaningless")
    for w in warnings:
        logger.warning("%s: %s", where, w)
    return warnings


# ---------------------------------------------------------------------------------- shards

def prepare_work(work: Path, plan: dict, restart: bool = False) -> int:
    """Create or reuse the shard folder of an interrupted run with the same plan; the number
    of shards found. A different plan is refused unless ``restart``."""
    plan_file = work / "plan.json"
    if work.exists() and plan_file.exists() and not restart:
        old = json.loads(plan_file.read_text())
        if old != plan:
            changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise GalleryMismatchError(
                f"{work} holds an interrupted build with other settings ({', '.join(changed)}); "
                "pass --restart to discard it, or rerun the interrupted command")
        done = len(list(work.glob("*.npz")))
        if done:
            logger.info("resuming: %d batch shard(s) already in %s", done, work)
        return done
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(plan_file, plan)
    return 0


def shard_path(work: Path, prefix: str, b: int) -> Path:
    return work / f"{prefix}-{b:06d}.npz"


def write_shard(work: Path, prefix: str, b: int, vectors: dict[str, np.ndarray], rows: list,
                skipped: list | None = None) -> None:
    """One embedded batch, atomically: vectors per model, the rows, the skipped inputs."""
    path = shard_path(work, prefix, b)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, rows=np.array(json.dumps(rows)), skipped=np.array(json.dumps(skipped or [])),
             **{name: np.asarray(v, dtype=np.float32) for name, v in vectors.items()})
    os.replace(tmp, path)


def read_shards(work: Path, prefix: str, count: int, dim: int, models=MODELS):
    """(vectors per model, rows, skipped) of shards 0..count-1, concatenated in order."""
    vecs: dict[str, list] = {m: [] for m in models}
    rows, skipped = [], []
    for b in range(count):
        with np.load(shard_path(work, prefix, b)) as z:
            for m in models:
                vecs[m].append(z[m].reshape(-1, dim))
            rows += json.loads(str(z["rows"]))
            skipped += json.loads(str(z["skipped"]))
    out = {m: np.concatenate(v) if v else np.zeros((0, dim), np.float32) for m, v in vecs.items()}
    return out, rows, skipped


# -------------------------------------------------------------------------------- steering

STEER_MIN = 5  # labelled items of each kind an unsafe direction needs
STEERING = "steering.npz"


def write_steering(directory: Path, corpora: dict) -> dict:
    """The unsafe direction of each corpus and model (mean embedding of the items flagged
    unsafe minus that of those known safe, unit length), saved beside the indexes; the manifest
    entry."""
    arrays, entry = {}, {"corpora": {}}
    for corpus, (rows, vectors) in corpora.items():
        flags = np.array([r.get("unsafe") for r in rows], dtype=object)
        unsafe, safe = flags == True, flags == False  # noqa: E712 - None means unknown
        if unsafe.sum() < STEER_MIN or safe.sum() < STEER_MIN:
            entry["corpora"][corpus] = {"unsafe": int(unsafe.sum()), "safe": int(safe.sum()),
                                        "note": f"fewer than {STEER_MIN} labelled items of a kind: "
                                                "no direction"}
            continue
        for m, x in vectors.items():
            d = x[unsafe].mean(0) - x[safe].mean(0)
            arrays[f"{corpus}.{m}"] = (d / max(np.linalg.norm(d), 1e-12)).astype(np.float32)
        entry["corpora"][corpus] = {"unsafe": int(unsafe.sum()), "safe": int(safe.sum())}
    if arrays:
        tmp = Path(directory) / (STEERING + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, Path(directory) / STEERING)
        entry["file"] = STEERING
    return entry


def read_steering(directory: Path, manifest: dict) -> dict[str, dict[str, np.ndarray]]:
    """{corpus: {model: direction}} of a gallery (empty when it has none)."""
    name = manifest.get("files", {}).get("steering")
    if not name or not (Path(directory) / name).is_file():
        return {}
    out: dict[str, dict] = {}
    with np.load(Path(directory) / name) as z:
        for key in z.files:
            corpus, model = key.split(".", 1)
            out.setdefault(corpus, {})[model] = z[key]
    return out
