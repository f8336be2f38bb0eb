"""Indexes built elsewhere, opened as galleries: clip-retrieval's (and autofaiss's) layout.

    FOLDER/image.index        faiss index of the image embeddings (row i = metadata row i)
    FOLDER/text.index         faiss index of the caption embeddings (optional)
    FOLDER/metadata/*.parquet the rows, in order (url, caption, NSFW, ...; or metadata.parquet)

    >>> g = open_clip_retrieval("laion-index/", "vit-l-14")   # memory-mapped, read-only
    >>> g.configs                                            # ('clip', 'cross')
    >>> g.search_text("a dog on the beach", k=10).results["cross"]

Such an index holds the *original* model's embeddings only (LAION's are OpenAI ViT-L/14's), so it
serves the ``clip`` and ``cross`` configurations. The indexes are memory-mapped, so opening a
large one costs little resident memory; metadata rows are read from parquet when a hit needs
them. An index of another dimension than the world's models, or a folder without its metadata,
is refused with a message that says so.
"""
from __future__ import annotations

import bisect
import logging
import threading
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import ann, store
from .gallery import OPENERS, Gallery, Hit

logger = logging.getLogger(__name__)

NSFW_WORDS = {"NSFW": True, "UNLIKELY": False}  # LAION's NSFW column (UNSURE: unknown)
CAPTION_COLUMNS = ("caption", "TEXT", "text")


def is_clip_retrieval(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "image.index").is_file() and not (folder / store.MANIFEST).is_file()


class ParquetRows:
    """Rows of a folder of parquet files by global index, read a row group at a time."""

    def __init__(self, files: list[Path]):
        import pyarrow.parquet as pq

        self.files = [pq.ParquetFile(f) for f in files]
        self.starts, total = [], 0
        for f in self.files:
            self.starts.append(total)
            total += f.metadata.num_rows
        self.n = total
        self._cache: dict[tuple[int, int], list[dict]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        k = bisect.bisect_right(self.starts, i) - 1
        f, local = self.files[k], i - self.starts[k]
        g, offset = 0, 0
        while offset + f.metadata.row_group(g).num_rows <= local:
            offset += f.metadata.row_group(g).num_rows
            g += 1
        with self._lock:  # row groups kept as Arrow tables (compact), a few at a time
            if (k, g) not in self._cache:
                if len(self._cache) >= 8:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[(k, g)] = f.read_row_group(g)
            return self._cache[(k, g)].slice(local - offset, 1).to_pylist()[0]


def _row(meta: dict, i: int) -> dict:
    caption = next((meta[c] for c in CAPTION_COLUMNS if meta.get(c)), None)
    flag = meta.get("NSFW")
    unsafe = NSFW_WORDS.get(str(flag).upper()) if flag is not None else None
    return {"id": str(meta.get("key") or meta.get("id") or i), "caption": caption,
            "unsafe": unsafe, "unsafe_source": "column:NSFW" if unsafe is not None else None,
            "url": meta.get("url"), "path": meta.get("image_path"), "row": i}


def open_index_folder(directory: Path) -> tuple[dict, ParquetRows]:
    """The memory-mapped, read-only indexes ({"images": ..., "captions": ...}) of a
    clip-retrieval folder and its metadata rows; a folder without metadata is refused."""
    meta_dir = directory / "metadata"
    meta = sorted(meta_dir.glob("*.parquet")) if meta_dir.is_dir() else sorted(
        directory.glob("*.parquet"))
    if not meta:
        raise InputError(f"{directory} holds a clip-retrieval index but no metadata "
                         "(metadata/*.parquet): its hits could not be shown")
    f = ann.faiss()
    flag = f.IO_FLAG_MMAP | f.IO_FLAG_READ_ONLY
    indexes = {"images": f.read_index(str(directory / "image.index"), flag)}
    if (directory / "text.index").is_file():
        indexes["captions"] = f.read_index(str(directory / "text.index"), flag)
    return indexes, ParquetRows(meta)


class ForeignGallery(Gallery):
    """A clip-retrieval folder as a Gallery of the clip and cross configurations."""

    def __init__(self, directory: Path, world, pair):
        from ..strength import Dial

        self.directory, self.pair = Path(directory), pair
        self.warnings = []
        indexes, self.rows = open_index_folder(self.directory)
        self.indexes = {corpus: {"clip": index} for corpus, index in indexes.items()}
        dim = world.retrieval.embed_dim
        for corpus, by in self.indexes.items():
            index = by["clip"]
            if index.d != int(pair.clip.embed_dim):
                raise store.GalleryMismatchError(
                    f"{directory}: its {corpus} index holds {index.d}-dimensional embeddings, "
                    f"but the models of world {world.name!r} make {pair.clip.embed_dim}-"
                    f"dimensional ones ({dim} expected): it was built with another model")
            if corpus == "images" and index.ntotal != len(self.rows):
                raise store.GalleryMismatchError(
                    f"{directory}: image.index holds {index.ntotal} vectors but the metadata "
                    f"{len(self.rows)} rows")
        self.manifest = {"preset": world.name, "dim": self.indexes["images"]["clip"].d,
                         "checksum": f"clip-retrieval:{self.indexes['images']['clip'].ntotal}",
                         "source": {"kind": "clip-retrieval", "root": str(self.directory)},
                         "models": {"clip": {"ref": world.retrieval.clip.ref}}}
        self.items, self.captions = self.rows, self.rows
        self.steering = {}
        self.dial = Dial(pair.clip, pair.safeclip)
        self._sources = {}
        logger.info("clip-retrieval index %s: %d images (memory-mapped)", directory,
                    len(self.rows))

    def _hits(self, corpus: str, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        hits = []
        for s, i in zip(scores, ids):
            if i < 0:
                continue
            r = _row(self.rows[int(i)], int(i))
            hits.append(Hit(len(hits) + 1, r["id"], float(s), corpus[:-1], r["unsafe"], None,
                            r["caption"], r["path"], r["unsafe_source"], r))
        return hits

    def image(self, hit_or_id):
        from ..images import open_image

        row = hit_or_id.meta if isinstance(hit_or_id, Hit) else None
        if row and row.get("path") and Path(row["path"]).is_file():
            return open_image(row["path"])
        raise InputError("this clip-retrieval index links its images by URL; they are not on "
                         "this machine")


def open_clip_retrieval(folder, preset, *, pair=None, overrides=None, device=None):
    from ..encoders import load_clip_pair
    from ..presets import get_preset

    if preset is None:
        raise InputError(f"{folder} is a clip-retrieval index, which does not record its model: "
                         "name the world that built it (--preset)")
    world = get_preset(preset, overrides)
    return ForeignGallery(Path(folder), world, pair or load_clip_pair(world, device=device))


OPENERS.append((is_clip_retrieval, open_clip_retrieval))  # Gallery.open knows the layout
