"""Adding images to a gallery without re-embedding the others.

    >>> from safeclip.retrieval.add import add_to_gallery
    >>> add_to_gallery("vit-l-14", "idx/photos", images="photos/")   # only the new files

Embeds only the items of a source that the gallery does not hold yet (resumably, as a build
does) and appends them to the existing indexes; an exact index that outgrows ``exact_max`` is
rebuilt as IVF from its stored vectors: still no re-embedding. The manifest is written last.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..presets import get_preset
from . import ann, store
from .build import (
    PARTIAL_ADD,
    BuildReport,
    IndexOptions,
    _dims,
    _embed_batches,
    _image_embedder,
    _Judge,
    _judge_spec,
    _text_embedder,
    _unsafe_counts,
    as_encoders,
    load_encoders,
    save_index_files,
)
from .sources import Source, make_source

logger = logging.getLogger(__name__)



def _stored_vectors(directory: Path, manifest: dict, corpus: str) -> dict[str, np.ndarray]:
    files = manifest["files"]
    return {m: ann.reconstruct_all(ann.load_index(directory / files[f"{corpus}.{m}"]))
            for m in store.MODELS if f"{corpus}.{m}" in files}


def _extend_corpus(directory: Path, manifest: dict, corpus: str, new: dict, options: IndexOptions,
                   gen: int, queries) -> tuple[dict, dict]:
    """Append ``new`` vectors to a corpus's indexes (or start them); returns (files, specs).
    An exact index grown past ``options.exact_max`` is rebuilt from its stored vectors."""
    files, specs = {}, {}
    for m in new:
        key = f"{corpus}.{m}"
        if key in manifest["files"]:
            spec = ann.IndexSpec.from_dict(manifest["index"][corpus][m])
            index = ann.load_index(directory / manifest["files"][key], spec)
            total = index.ntotal + len(new[m])
            fell_back = (spec.calibration or "").endswith("exact search instead")  # stays exact
            grown = spec.type == "flat" and total > options.exact_max and not fell_back
            if options.kind == "auto" and not spec.forced and grown:
                logger.info("%s: %d vectors pass exact_max=%d: rebuilding as %s", key, total,
                            options.exact_max, options.spec(total, index.d).type)
                x = np.concatenate([ann.reconstruct_all(index), new[m]])
                index, spec = ann.build_index(x, options.spec(total, index.d), queries().get(m))
            else:
                ann.add_vectors(index, new[m])
        else:
            index, spec = ann.build_index(new[m], options.spec(len(new[m]), new[m].shape[1]),
                                          queries().get(m))
        save_index_files(index, directory, files, key, f"{corpus}.{m}.g{gen}.faiss")
        specs[m] = spec.to_dict()
    return files, specs


def add_to_gallery(preset, directory: str | Path, *, images=None, dataset: str | None = None,
                   split: str = "test", limit: int | None = None, labels=None,
                   source: Source | None = None, pair=None, batch_size: int = 64,
                   judge: str | None = None, restart: bool = False, device=None,
                   overrides: dict | None = None, hub_columns: dict | None = None) -> BuildReport:
    """Embed the items of a source that the gallery does not hold yet and append them.

    Without ``images``/``dataset``/``source``, a folder gallery rescans its own folder.
    """
    from .sources import FolderSource

    t0 = time.time()
    directory = Path(directory)
    manifest = store.read_manifest(directory)
    preset = get_preset(preset, overrides)
    store.check_compatible(manifest, preset.name, {}, str(directory))  # before loading models
    if source is None:
        if images is None and dataset is None:
            if manifest["source"]["kind"] != "folder":
                raise InputError("say what to add: --images DIR or --dataset NAME")
            images = manifest["source"]["root"]
        source = make_source(images, dataset, split, limit, labels, preset.image_size,
                             exclude=directory, **(hub_columns or {}))
    if isinstance(source, FolderSource) and str(source.root) != manifest["source"].get("root"):
        source.absolute_ids = True  # another folder: ids and paths are absolute
    models = tuple(m for m in store.MODELS if m in manifest["models"])
    encoders = (load_encoders(preset, models, device) if pair is None
                else as_encoders(pair, models))
    dims = _dims(encoders)
    fps = {m: store.model_fingerprint(e.ref) for m, e in encoders.items()}
    notes = store.check_compatible(manifest, preset.name, dims, str(directory), fps)
    dim, files = manifest["dim"], manifest["files"]
    old_rows = store.read_jsonl(directory / files["items"])
    old_caps = store.read_jsonl(directory / files["captions"]) if "captions" in files else []
    have = {r["id"] for r in old_rows}
    new_ids = [i for i in source.ids() if i not in have]
    known = set(IndexOptions.__dataclass_fields__)
    options = IndexOptions(**{k: v for k, v in manifest.get("index_options", {}).items()
                              if k in known})
    if not new_ids:
        return BuildReport(str(directory), len(old_rows), len(old_caps), 0, 0,
                           notes=notes + ["nothing new to add"], index=manifest["index"],
                           unsafe=manifest["unsafe"]["images"], seconds=round(time.time() - t0, 2))
    gen = int(manifest.get("generation", 0)) + 1
    judge_spec = _judge_spec(manifest["unsafe"].get("judge") if judge is None else judge, preset)
    judge_name = judge_spec.kind if judge_spec else None
    work = directory / PARTIAL_ADD
    plan = {"base": manifest["checksum"], "generation": gen, "source": source.describe(),
            "n": len(new_ids), "ids": store.plan_checksum(new_ids), "batch_size": int(batch_size),
            "judge": judge_name}
    store.prepare_work(work, plan, restart)
    judge = _Judge(judge_spec, preset)
    n_img, resumed, embedded = _embed_batches(
        new_ids, "images", work, batch_size, _image_embedder(source, encoders, judge, dim),
        f"embed {len(new_ids)} images")
    vectors, rows, skipped = store.read_shards(work, "images", n_img, dim, models)
    if source.describe() != manifest["source"]:
        for r in rows:  # where to reopen these images (Gallery.image)
            r["origin"] = source.describe()
    cap_rows = source.captions([r["id"] for r in rows])
    n_cap, r2, _ = _embed_batches(cap_rows, "captions", work, 4 * batch_size,
                                  _text_embedder(encoders, dim), f"embed {len(cap_rows)} captions")
    cap_vectors, cap_rows, _ = store.read_shards(work, "captions", n_cap, dim, models)

    new_files, index = {}, dict(manifest["index"])
    all_rows, all_caps = old_rows + rows, old_caps + cap_rows

    def caption_queries():  # calibration queries of a rebuilt image index: all caption vectors
        old = _stored_vectors(directory, manifest, "captions")
        return {m: np.concatenate([old[m], cap_vectors[m]]) if m in old else cap_vectors[m]
                for m in models} if all_caps else {}

    def image_queries():
        old = _stored_vectors(directory, manifest, "images")
        return {m: np.concatenate([old[m], vectors[m]]) for m in models}

    if rows:
        f, index["images"] = _extend_corpus(directory, manifest, "images", vectors, options, gen,
                                            caption_queries)
        new_files.update(f)
    if cap_rows:
        f, index["captions"] = _extend_corpus(directory, manifest, "captions", cap_vectors,
                                              options, gen, image_queries)
        new_files.update(f)
    steering = store.write_steering(directory, {  # every item's vector, old and new
        "images": (all_rows, image_queries() if rows else _stored_vectors(directory, manifest,
                                                                           "images")),
        "captions": (all_caps, caption_queries())})
    if steering.get("file"):
        new_files["steering"] = steering["file"]
    new_files["items"] = f"items.g{gen}.jsonl"
    store.write_jsonl(directory / new_files["items"], all_rows)
    if all_caps:
        new_files["captions"] = f"captions.g{gen}.jsonl"
        store.write_jsonl(directory / new_files["captions"], all_caps)
    report = BuildReport(str(directory), len(all_rows), len(all_caps), embedded, resumed + r2,
                         skipped, index, _unsafe_counts(all_rows), notes=notes + judge.notes)
    old_files = dict(files)
    manifest.update(
        count=len(all_rows), captions=len(all_caps), index=index, generation=gen,
        checksum=store.inputs_checksum(all_rows, all_caps),
        skipped=manifest["skipped"] + len(skipped),
        files={**files, **new_files}, steering=steering,
        unsafe={**manifest["unsafe"], "images": report.unsafe,
                **({"judge_card": judge.card()} if judge.card() else {}),
                "captions": _unsafe_counts(all_caps) if all_caps else None})
    manifest.setdefault("history", []).append(
        {"added": len(rows), "skipped": len(skipped), "source": source.describe(),
         "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    report.seconds = round(time.time() - t0, 2)
    store.write_json(directory / "build_report.json", report.to_dict())
    store.write_json(directory / store.MANIFEST, manifest)  # the commit point
    for key, name in old_files.items():
        if manifest["files"].get(key) != name:
            (directory / name).unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    logger.info("gallery %s: added %d images (%d skipped), now %d", directory, len(rows),
                len(skipped), len(all_rows))
    return report
