"""Where gallery images come from: a folder, a Hub dataset, or a kind a plug-in registers.

    >>> from safeclip.retrieval.sources import make_source
    >>> src = make_source(images="photos/")                    # any depth, sorted paths
    >>> src = make_source(dataset="org/name", split="test")    # needs `pip install datasets`
    >>> src = make_source(dataset="synthetic:test")            # a plug-in's kind (the mini world)
    >>> ids = src.ids()                     # cheap, deterministic order: the build plan
    >>> loaded = src.load(ids[:64])         # [Loaded(row, image, error)], corrupt files -> error

A source lists its items without decoding them, loads a batch on demand (an unreadable file is
an ``error`` string, never an exception), lists its caption corpus, and describes itself as JSON
so that a gallery can reopen its images later (``open_source(manifest["source"])``).
Item rows carry ``unsafe`` (True / False / None when unknown) and ``unsafe_source`` when known
from the data itself (synthetic tags, a labels file, a dataset column).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import ImageError, open_image, to_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TRUE_WORDS = ("1", "true", "yes", "unsafe", "nsfw")
FALSE_WORDS = ("0", "false", "no", "safe", "sfw")


@dataclass
class Loaded:
    """One item of a batch: its metadata row, and the image or why there is none."""

    row: dict[str, Any]
    image: Image.Image | None = None
    error: str | None = None


def as_flag(value) -> bool | None:
    """A labels-file / dataset value as an unsafe flag (None when absent or unreadable)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return bool(value)
    word = str(value).strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def pixel_sha1(image: Image.Image) -> str:
    return hashlib.sha1(to_rgb(image).tobytes()).hexdigest()


class Source:
    """Base class: ``ids``, ``load``, ``captions``, ``describe``, ``image``."""

    kind = "source"

    def ids(self) -> list[str]:
        raise NotImplementedError

    def load(self, ids: list[str]) -> list[Loaded]:
        raise NotImplementedError

    def captions(self, ids: list[str]) -> list[dict]:
        """Caption corpus rows (id, text, unsafe, item) of the items ``ids``."""
        return []

    def describe(self) -> dict:
        raise NotImplementedError

    def image(self, row: dict) -> Image.Image:
        """The image of a gallery row (for display)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------ folder

class FolderSource(Source):
    """Image files under ``root`` (any depth; hidden folders and ``exclude`` skipped).

    Captions: a ``<name>.txt`` file beside an image, or a ``caption`` column of ``labels``.
    ``labels``: a CSV / JSON / JSONL / Parquet file with a ``file`` (or ``path``/``image``) column
    relative to ``root`` and optional ``unsafe``, ``category`` and ``caption`` columns.
    """

    kind = "folder"

    def __init__(self, root: str | Path, labels: str | Path | None = None,
                 limit: int | None = None, exclude: str | Path | None = None,
                 absolute_ids: bool = False):
        self.root = Path(root).expanduser().resolve()
        self.absolute_ids = absolute_ids  # ids (and paths) as absolute paths, not relative ones
        if not self.root.is_dir():
            raise FileNotFoundError(f"no such image folder: {root}")
        self.labels_file = Path(labels).resolve() if labels else None
        self.limit = limit
        self.exclude = Path(exclude).resolve() if exclude else None
        self._ids: list[str] | None = None
        self.labels = self._read_labels() if labels else {}
        self.ignored = 0  # files without an image extension

    def _read_labels(self) -> dict[str, dict]:
        from ..data.visu import read_rows

        out = {}
        for r in read_rows(self.labels_file):
            key = next((r[c] for c in ("file", "path", "image", "filename") if r.get(c)), None)
            if key is None:
                raise InputError(f"{self.labels_file}: rows need a 'file' column, got {sorted(r)}")
            out[Path(str(key)).as_posix().removeprefix("./")] = r
        logger.info("labels for %d files from %s", len(out), self.labels_file)
        return out

    def ids(self) -> list[str]:
        if self._ids is None:
            ids, ignored = [], 0
            for p in sorted(self.root.rglob("*")):
                rel = p.relative_to(self.root)
                if any(part.startswith(".") for part in rel.parts) or not p.is_file():
                    continue
                if self.exclude and (p == self.exclude or self.exclude in p.parents):
                    continue
                if p.suffix.lower() in IMAGE_EXTS:
                    ids.append(p.as_posix() if self.absolute_ids else rel.as_posix())
                elif p.suffix.lower() not in (".txt", ".json", ".jsonl", ".csv", ".parquet"):
                    ignored += 1
            self.ignored = ignored
            self._ids = ids[:self.limit] if self.limit is not None else ids
        return self._ids

    def _label(self, id_: str) -> dict:
        path = Path(id_)
        rel = path.relative_to(self.root).as_posix() if path.is_absolute() else id_
        return self.labels.get(rel, {})

    def _caption(self, rel: str) -> str | None:
        label = self._label(rel)
        if label.get("caption"):
            return str(label["caption"])
        side = (self.root / rel).with_suffix(".txt")
        if side.is_file():
            text = side.read_text(encoding="utf-8", errors="replace").strip()
            return text or None
        return None

    def load(self, ids: list[str]) -> list[Loaded]:
        out = []
        for rel in ids:
            label = self._label(rel)
            unsafe = as_flag(label.get("unsafe"))
            row = {"id": rel, "path": rel, "caption": self._caption(rel), "unsafe": unsafe,
                   "unsafe_source": "labels" if unsafe is not None else None,
                   "category": label.get("category") or None}
            try:
                data = (self.root / rel).read_bytes()
                row["sha1"] = hashlib.sha1(data).hexdigest()
                image = open_image(data)
                row.update(width=image.size[0], height=image.size[1], mode=image.mode)
                out.append(Loaded(row, image))
            except (OSError, ImageError) as e:
                out.append(Loaded(row, None, str(e).replace("<bytes>: ", "")))
            except Exception as e:  # noqa: BLE001 - a decoder bug on one file never stops a build
                out.append(Loaded(row, None, f"{e.__class__.__name__}: {e}"))
        return out

    def captions(self, ids: list[str]) -> list[dict]:
        rows = []
        for rel in ids:
            text = self._caption(rel)
            if text:
                flag = as_flag(self._label(rel).get("caption_unsafe"))
                rows.append({"id": f"{rel}#caption", "text": text, "unsafe": flag, "item": rel})
        return rows

    def describe(self) -> dict:
        d = {"kind": self.kind, "root": str(self.root)}
        if self.labels_file:
            d["labels"] = str(self.labels_file)
        return d

    def image(self, row: dict) -> Image.Image:
        return open_image(self.root / row["path"])


# ---------------------------------------------------------------------------------------- hub

class HubSource(Source):
    """A Hugging Face dataset with an image column (``datasets`` is imported only here)."""

    kind = "hub"
    CAPTION_COLUMNS = ("caption", "captions", "text", "sentence", "sentences", "prompt", "safe")
    UNSAFE_COLUMNS = ("unsafe", "nsfw", "is_nsfw", "label_unsafe")

    def __init__(self, hub_id: str, split: str = "test", image_column: str | None = None,
                 caption_column: str | None = None, unsafe_column: str | None = None,
                 limit: int | None = None):
        self.hub_id, self.split, self.limit = hub_id, split, limit
        ds = self._load(hub_id, split)
        if limit is not None:
            ds = ds.select(range(min(int(limit), len(ds))))
        self.ds = ds
        cols = list(ds.column_names)
        self.image_column = image_column or self._image_column(ds)
        self.caption_column = caption_column or next(
            (c for c in self.CAPTION_COLUMNS if c in cols), None)
        self.unsafe_column = unsafe_column or next(
            (c for c in self.UNSAFE_COLUMNS if c in cols), None)
        for c in (self.image_column, self.caption_column, self.unsafe_column):
            if c is not None and c not in cols:
                raise InputError(f"{hub_id}: no column {c!r}; columns: {', '.join(cols)}")

    @staticmethod
    def _load(hub_id: str, split: str):
        try:
            import datasets
        except ImportError:
            raise ImportError(f"--dataset {hub_id} needs the `datasets` package: pip install "
                              "datasets (or save the images to a folder and pass --images DIR)") from None
        try:
            return datasets.load_dataset(hub_id, split=split)
        except Exception as e:  # noqa: BLE001 - gated, offline, unknown: one readable message
            raise FileNotFoundError(f"could not load {hub_id!r} split {split!r} from the Hub "
                                    f"({e.__class__.__name__}: {str(e)[:200]})") from None

    @staticmethod
    def _image_column(ds) -> str:
        for name, feat in ds.features.items():
            if feat.__class__.__name__ == "Image":
                return name
        for name in ("image", "img", "jpg", "png"):
            if name in ds.column_names:
                return name
        raise InputError(f"no image column among {ds.column_names}; pass --image-column")

    def ids(self) -> list[str]:
        return [f"{self.split}-{i}" for i in range(len(self.ds))]

    def _decode(self, value) -> Image.Image:
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, dict) and value.get("bytes"):
            return open_image(value["bytes"])
        if isinstance(value, dict) and value.get("path"):
            return open_image(value["path"])
        raise ImageError(f"not an image: {type(value).__name__}")

    def _caption(self, rec: dict) -> str | None:
        if not self.caption_column:
            return None
        value = rec.get(self.caption_column)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        return str(value) if value else None

    def load(self, ids: list[str]) -> list[Loaded]:
        out = []
        for id_ in ids:
            i = int(id_.rsplit("-", 1)[1])
            row = {"id": id_, "row": i, "unsafe": None, "unsafe_source": None, "category": None}
            try:
                rec = self.ds[i]
                row["caption"] = self._caption(rec)
                if self.unsafe_column:
                    row["unsafe"] = as_flag(rec.get(self.unsafe_column))
                    if row["unsafe"] is not None:
                        row["unsafe_source"] = f"column:{self.unsafe_column}"
                image = self._decode(rec[self.image_column])
                row["sha1"] = pixel_sha1(image)
                out.append(Loaded(row, image))
            except Exception as e:  # noqa: BLE001 - one bad row never stops a build
                out.append(Loaded(row, None, f"{e.__class__.__name__}: {e}"))
        return out

    def captions(self, ids: list[str]) -> list[dict]:
        if not self.caption_column:
            return []
        rows = []
        for id_ in ids:
            i = int(id_.rsplit("-", 1)[1])
            text = self._caption(self.ds[i])
            if text:
                rows.append({"id": f"{id_}#caption", "text": text, "unsafe": None, "item": id_})
        return rows

    def describe(self) -> dict:
        return {"kind": self.kind, "dataset": self.hub_id, "split": self.split,
                "image_column": self.image_column, "caption_column": self.caption_column,
                "unsafe_column": self.unsafe_column, "limit": self.limit}

    def image(self, row: dict) -> Image.Image:
        return self._decode(self.ds[int(row["row"])][self.image_column])


# ------------------------------------------------------------------------------------ factory

def _plugin_source(dataset: str):
    """The source kind a ``--dataset KIND:ARG`` names, when a plug-in registered one."""
    from ..kinds import TABLES, known

    prefix = dataset.partition(":")[0]
    known("source")
    for kind, e in TABLES["source"].items():
        if e.info.get("prefix") == prefix:
            return kind
    return None


def make_source(images=None, dataset: str | None = None, split: str = "test", limit=None,
                labels=None, size: int = 64, exclude=None, **hub_columns) -> Source:
    """``images=DIR`` -> FolderSource; ``dataset="KIND:ARG"`` -> a plug-in's source when one
    has that prefix (``synthetic:test``); any other ``dataset`` -> HubSource
    (``image_column=``, ``caption_column=``, ...)."""
    from ..kinds import resolve

    if (images is None) == (dataset is None):
        raise InputError("give exactly one of --images DIR and --dataset NAME")
    if images is not None:
        return FolderSource(images, labels=labels, limit=limit, exclude=exclude)
    kind = _plugin_source(dataset) if ":" in dataset else None
    if kind is not None:
        return resolve("source", kind).from_dataset(dataset, split=split, limit=limit, size=size)
    return HubSource(dataset, split=split, limit=limit, **hub_columns)


def open_source(desc: dict) -> Source:
    """Reopen the source a manifest describes (to show a gallery's images)."""
    from ..kinds import TABLES, resolve

    kind = desc.get("kind")
    if kind == "folder":
        return FolderSource(desc["root"])  # labels are in the rows already
    if kind == "hub":
        cols = {k: desc.get(k) for k in ("image_column", "caption_column", "unsafe_column")}
        return HubSource(desc["dataset"], desc["split"], limit=desc.get("limit"), **cols)
    try:
        cls = resolve("source", kind)
    except Exception:  # noqa: BLE001 - an unknown kind: one message below
        cls = None
    if cls is None or kind not in TABLES["source"]:
        raise InputError(f"unknown gallery source {desc!r}")
    return cls.from_description(desc)
