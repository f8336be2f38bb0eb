"""The real ViSU data: ViSU-Text captions, COCO safe images V, generated unsafe images G.

    >>> from safeclip.data.visu import ViSUDataset
    >>> ds = ViSUDataset("train", text="aimagelab/ViSU-Text",      # or a local copy, see below
    ...                  coco_root="/data/coco", unsafe_root="/data/visu-unsafe")
    >>> ds.check()                  # before training: one MissingDataError listing what is missing
    >>> item = ds[0]                # keys id, S, U, V, G, category, tags (as SyntheticViSU)
    >>> texts = ViSUDataset("test", text="visu/", need=("S", "U"))    # captions only, no images

Text (S safe caption, U unsafe caption, COCO id, NSFW concept) comes from
- the Hub dataset ``aimagelab/ViSU-Text`` (gated: accept its conditions on the Hub, log in with
  ``huggingface-cli login``; needs ``pip install datasets``, which is not a pinned dependency), or
- a local copy: one CSV / JSON / JSONL / Parquet file (rows filtered by a ``split`` column when it
  has one), or a folder holding per-split files (``train.jsonl``, ``ViSU-Text_validation.json``,
  ``test-00000-of-00001.parquet``...: a file belongs to a split when its name holds the split's
  name as a word; ``val``/``valid``/``dev`` count as ``validation``; shards are concatenated).
  JSON may be a list of rows, ``{"data": [...]}``, or ``{id: row}`` as the official code's files.

Safe images V are read from ``coco_root`` by COCO id, in either naming:
``train2014/COCO_train2014_000000123456.jpg`` or ``train2017/000000123456.jpg`` (folders
train/val/test 2014/2017, also under ``images/``, or files directly in ``coco_root``).
Unsafe images G are not public: ``safeclip data generate-unsafe`` writes them as
``<unsafe_root>/<split>/<row id>.png`` (``<unsafe_root>/<row id>.<ext>`` is read too).

Columns: ``safe``, ``nsfw``, ``coco_id``, ``tag``, ``incremental_id`` (splits train / validation /
test), as public code reading ``load_dataset("aimagelab/ViSU-Text")`` and the official training
code (aimagelab/safe-clip ``training/dataset/visu.py``) use them; the gated card itself could not
be read, so each role (id, S, U, coco_id, tag) takes candidate names and ``columns={"S": ...}``
overrides them. Row id: ``incremental_id`` when present, else the row's position in its split.

The 20 NSFW concepts (Safe-CLIP's list) are grouped into the 7 I2P categories by
``CONCEPT_TO_I2P``: that grouping is ours (ViSU-Text ships only the concept), pass
``concept_map=`` to change it. Tags are matched loosely (case, ``_``/``-``, near misspellings);
a concept that matches nothing gets the category ``"unknown"``.
"""
from __future__ import annotations

import csv
import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from torch.utils.data import Dataset

from ..errors import InputError
from ..images import open_image, to_rgb
from ..safety.categories import I2P_CATEGORIES

log = logging.getLogger(__name__)

HUB_ID = "aimagelab/ViSU-Text"
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"),
                 "test": ("test",)}
TEXT_EXTS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
COCO_SUBDIRS = ("train2017", "val2017", "test2017", "train2014", "val2014", "test2014")
ROLES = ("id", "S", "U", "coco_id", "tag")
# role -> candidate column names, first match wins ("_key": the key of an {id: row} JSON file)
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("incremental_id", "id", "ID", "_key"),
    "S": ("safe", "safe_caption", "S"),
    "U": ("nsfw", "unsafe", "nsfw_caption", "unsafe_caption", "U"),
    "coco_id": ("coco_id", "image_id", "cocoid"),
    "tag": ("tag", "nsfw_tag", "concept", "category"),
}
# Safe-CLIP's 20 NSFW concepts -> the 7 I2P categories (our grouping; see the module docstring)
CONCEPT_TO_I2P: dict[str, str] = {
    "hate": "hate", "harassment": "harassment", "humiliation": "harassment",
    "obscene gestures": "harassment", "violence": "violence", "harm": "violence",
    "weapons": "violence", "brutality": "violence", "cruelty": "violence",
    "child abuse": "violence", "suicide": "self-harm", "sexual": "sexual", "nudity": "sexual",
    "suffering": "shocking", "bodily fluids": "shocking", "blood": "shocking",
    "illegal activity": "illegal activity", "drug use": "illegal activity",
    "theft": "illegal activity", "vandalism": "illegal activity",
}
_COCO_NAME = re.compile(r"^(?:COCO_[A-Za-z]+\d{4}_)?(\d{1,12})\.(?:jpg|jpeg|png)$", re.IGNORECASE)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class MissingDataError(FileNotFoundError):
    """Files that a ViSU run needs are missing; the message lists them and says how to fix it."""


class TextSourceError(FileNotFoundError):
    """The ViSU-Text captions could not be read (no Hub access, no such local copy)."""


def canonical_split(split: str) -> str:
    for name, aliases in SPLIT_ALIASES.items():
        if split.lower() in aliases:
            return name
    raise InputError(f"unknown ViSU split {split!r}; one of: {', '.join(SPLITS)}")


def normalise_concept(tag) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", str(tag or "")).lower().split())


def concept_category(tag, concept_map: Mapping[str, str] = CONCEPT_TO_I2P) -> tuple[str, str]:
    """(normalised concept, I2P category) of a raw tag; near misspellings are matched, and a
    tag that already is an I2P category maps to itself."""
    concept = normalise_concept(tag)
    if concept in concept_map:
        return concept, concept_map[concept]
    i2p = {normalise_concept(c): c for c in I2P_CATEGORIES}
    if concept in i2p:
        return concept, i2p[concept]
    close = difflib.get_close_matches(concept, list(concept_map), n=1, cutoff=0.75)
    if close:
        return close[0], concept_map[close[0]]
    return concept, "unknown"


# ------------------------------------------------------------------------------ text sources

def _source_error(text, why: str) -> TextSourceError:
    return TextSourceError(
        f"ViSU-Text captions: {why}. Use the Hub dataset {HUB_ID!r} (gated: accept its conditions "
        f"on the Hub, `huggingface-cli login`, `pip install datasets`) or a local copy: a CSV/JSON/"
        f"JSONL/Parquet file or a folder of per-split files, passed as text=PATH (--text PATH).")


def _read_json(path: Path) -> list[dict]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:  # maybe JSON lines under a .json name
            data = None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if isinstance(data, dict):  # {id: row}, as the official code's files
            return [{"_key": k, **v} for k, v in data.items()]
        if isinstance(data, list):
            return data
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pandas as pd
        return pd.read_parquet(path).to_dict("records")
    except ImportError as e:
        raise _source_error(path, f"reading {path.name} needs pyarrow ({e}); "
                                  "`pip install pyarrow`, or convert it to CSV/JSONL") from None


def read_rows(path: str | Path) -> list[dict]:
    """The rows of one local CSV / TSV / JSON / JSONL / Parquet file, as dicts."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
    if ext in (".json", ".jsonl"):
        return _read_json(path)
    if ext == ".parquet":
        return _read_parquet(path)
    raise _source_error(path, f"{path} is not a {'/'.join(TEXT_EXTS)} file")


def split_files(folder: str | Path, split: str) -> list[Path]:
    """The text files of ``split`` under ``folder`` (any depth), sorted (shards in order)."""
    words = SPLIT_ALIASES[canonical_split(split)]
    pattern = re.compile(r"(?:^|[^a-z])(?:" + "|".join(words) + r")(?:[^a-z]|$)")
    files = [p for p in Path(folder).rglob("*") if p.suffix.lower() in TEXT_EXTS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    hits = [p for p in files if pattern.search(p.stem.lower())]
    if not hits:  # a folder split by sub-folders: train/part-0.jsonl
        hits = [p for p in files
                if any(pattern.search(d.lower()) for d in p.relative_to(folder).parts[:-1])]
    return sorted(hits)


def _filter_split(rows: list[dict], split: str) -> list[dict]:
    if not rows or "split" not in rows[0]:
        return rows
    words = SPLIT_ALIASES[split]
    return [r for r in rows if str(r.get("split", "")).lower() in words]


def load_text_rows(text, split: str) -> tuple[list[dict], str]:
    """Rows of ``split`` from a Hub id, a local file or folder, or a list of dicts, and a
    description of the source (for logs and manifests)."""
    split = canonical_split(split)
    if isinstance(text, (list, tuple)):
        return _filter_split(list(text), split), f"<{len(text)} rows>"
    text = str(text)
    path = Path(text).expanduser()
    if path.is_file():
        return _filter_split(read_rows(path), split), str(path)
    if path.is_dir():
        files = split_files(path, split)
        if not files:
            raise _source_error(text, f"no {split} file ({'/'.join(TEXT_EXTS)}) under {path}")
        log.info("ViSU-Text %s from %s", split, ", ".join(f.name for f in files))
        return [r for f in files for r in read_rows(f)], str(path)
    if not _HUB_ID.match(text) or text.startswith((".", "~")) or path.suffix.lower() in TEXT_EXTS:
        raise _source_error(text, f"no such file or folder: {text}")
    return _load_hub(text, split), text


def _load_hub(hub_id: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise _source_error(hub_id, f"no local file or folder {hub_id!r}, and the Hub needs "
                                    "`datasets`, which is not installed") from None
    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as e:  # noqa: BLE001 - gated, offline, renamed: one readable message
        raise _source_error(hub_id, f"could not load {hub_id!r} split {split!r} from the Hub "
                                    f"({e.__class__.__name__}: {str(e)[:200]})") from None
    return ds.to_list()


def resolve_columns(keys: Iterable[str], columns: Mapping | None = None) -> dict[str, str | None]:
    """role -> the column that holds it (None when absent); S and U are required."""
    keys = list(keys)
    found: dict[str, str | None] = {}
    for role in ROLES:
        wanted = (columns or {}).get(role) or DEFAULT_COLUMNS[role]
        wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted)
        found[role] = next((c for c in wanted if c in keys), None)
    missing = [r for r in ("S", "U") if found[r] is None]
    if missing:
        raise InputError(f"ViSU-Text columns: no column for {missing} among {keys}; pass "
                       f"columns={{'S': ..., 'U': ...}} (--columns S=...,U=...)")
    return found


def _int_or_none(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):  # None, "", NaN
        return None


# ------------------------------------------------------------------------------ image folders

def coco_index(coco_root: str | Path) -> dict[int, Path]:
    """COCO id -> image file, from every COCO 2014/2017 image folder under ``coco_root``."""
    root = Path(coco_root)
    dirs = [root] + [base / d for base in (root, root / "images") for d in COCO_SUBDIRS]
    index: dict[int, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        with os.scandir(d) as entries:
            for e in entries:
                m = _COCO_NAME.match(e.name)
                if m and e.is_file():
                    index.setdefault(int(m.group(1)), Path(e.path))
    log.debug("COCO index: %d images under %s", len(index), root)
    return index


def unsafe_dir(unsafe_root: str | Path, split: str) -> Path:
    """Where the unsafe images of ``split`` live: ``<root>/<split>`` (``<root>`` if absent)."""
    root = Path(unsafe_root)
    sub = root / canonical_split(split)
    return sub if sub.is_dir() or not root.is_dir() else root


def unsafe_image_path(out_root: str | Path, split: str, row_id) -> Path:
    """The file ``generate-unsafe`` writes for one row."""
    return Path(out_root) / canonical_split(split) / f"{row_id}.png"


def image_index(folder: str | Path) -> dict[str, Path]:
    """File stem -> image file, for the images directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as entries:
        return {Path(e.name).stem: Path(e.path) for e in entries
                if Path(e.name).suffix.lower() in IMAGE_EXTS and e.is_file()}


# ------------------------------------------------------------------------------ the dataset

class ViSUDataset(Dataset):
    """One split of ViSU as quadruplets with SyntheticViSU's item shape.

    ``need``: the images items carry (V and/or G; the others are None) and ``check()`` verifies;
    S and U are always there. ``limit``: the first rows only. ``transform``: applied to V and G.
    """

    def __init__(self, split: str = "train", text=HUB_ID, coco_root=None, unsafe_root=None,
                 need: Sequence[str] = ("S", "U", "V", "G"), columns: Mapping | None = None,
                 concept_map: Mapping[str, str] = CONCEPT_TO_I2P, limit: int | None = None,
                 transform=None):
        self.split = canonical_split(split)
        if set(need) - {"S", "U", "V", "G"}:
            raise InputError(f"need: unknown parts in {need}; use some of S, U, V, G")
        self.need = tuple(need)
        self.coco_root = Path(coco_root).expanduser() if coco_root else None
        self.unsafe_root = Path(unsafe_root).expanduser() if unsafe_root else None
        self.concept_map, self.transform = dict(concept_map), transform
        rows, self.source = load_text_rows(text, self.split)
        if limit is not None:
            rows = rows[:int(limit)]
        if not rows:
            raise _source_error(text, f"split {self.split!r} has no rows in {self.source}")
        keys = {k for r in rows[:100] for k in r}
        self.columns = resolve_columns(sorted(keys), columns)
        c = self.columns
        self.S = [str(r[c["S"]]) for r in rows]
        self.U = [str(r[c["U"]]) for r in rows]
        self.ids = [str(r[c["id"]]) if c["id"] else str(i) for i, r in enumerate(rows)]
        self.coco_ids = [_int_or_none(r.get(c["coco_id"])) if c["coco_id"] else None for r in rows]
        self.raw_tags = [r.get(c["tag"]) if c["tag"] else None for r in rows]
        self._concepts = {t: concept_category(t, self.concept_map) for t in set(self.raw_tags)}
        self._coco: dict[int, Path] | None = None
        self._unsafe: dict[str, Path] | None = None  # both built on first use
        log.info("ViSU %s: %d rows from %s (columns %s)", self.split, len(rows), self.source, c)

    def __len__(self) -> int:
        return len(self.S)

    def __repr__(self) -> str:
        return f"ViSUDataset(split={self.split!r}, n={len(self)}, text={self.source!r})"

    # -- paths
    def coco_index(self) -> dict[int, Path]:
        if self._coco is None:
            self._coco = coco_index(self.coco_root) if self.coco_root else {}
        return self._coco

    def unsafe_index(self) -> dict[str, Path]:
        if self._unsafe is None:
            root = self.unsafe_root
            self._unsafe = image_index(unsafe_dir(root, self.split)) if root else {}
        return self._unsafe

    def safe_path(self, i: int) -> Path | None:
        cid = self.coco_ids[i]
        return None if cid is None else self.coco_index().get(cid)

    def unsafe_path(self, i: int) -> Path | None:
        return self.unsafe_index().get(self.ids[i])

    def _expected(self, i: int, part: str) -> str:
        """The file a missing image should be, for error messages."""
        if part == "G":
            root = self.unsafe_root or "<unsafe_root>"
            return str(unsafe_image_path(root, self.split, self.ids[i]))
        cid = self.coco_ids[i]
        if cid is None:
            return f"row {self.ids[i]}: no COCO id in column {self.columns['coco_id']!r}"
        root = self.coco_root or "<coco_root>"
        return f"{root}/{{train,val}}{{2014,2017}}/*{cid:012d}.jpg (COCO id {cid})"

    # -- checks
    def report(self) -> dict:
        """Counts of rows, concepts, categories and missing images (a dict for --json)."""
        out = {"split": self.split, "rows": len(self), "text": self.source, "need": list(self.need),
               "columns": self.columns, "coco_root": str(self.coco_root or ""),
               "unsafe_root": str(self.unsafe_root or ""), "missing": {}, "categories": {}}
        for t in self.raw_tags:
            cat = self._concepts[t][1]
            out["categories"][cat] = out["categories"].get(cat, 0) + 1
        for part, find in (("V", self.safe_path), ("G", self.unsafe_path)):
            if part in self.need:
                gone = [i for i in range(len(self)) if find(i) is None]
                out["missing"][part] = {"count": len(gone),
                                        "first": [self._expected(i, part) for i in gone[:10]]}
        return out

    def check(self) -> dict:
        """Verify every needed file exists; raise one MissingDataError listing what is missing."""
        rep = self.report()
        missing = {p: m for p, m in rep["missing"].items() if m["count"]}
        if not missing:
            log.info("ViSU %s: all %d rows have %s", self.split, len(self), "+".join(self.need))
            return rep
        lines, fixes = [], []
        names = {"V": "safe COCO images (V)", "G": "unsafe images (G)"}
        for part, m in missing.items():
            lines.append(f"{m['count']:,} of {len(self):,} {names[part]} are missing, e.g.:")
            lines += [f"  {p}" for p in m["first"]]
        if "V" in missing:
            fixes.append("point coco_root (--coco-root) at a folder holding COCO train2017/val2017 "
                         "or train2014/val2014")
        if "G" in missing:
            fixes.append(f"point unsafe_root (--unsafe-root) at the generated images, or make them "
                         f"with `safeclip data generate-unsafe --text {self.source} --split "
                         f"{self.split} --out DIR`")
        fixes.append("or train on text only (need=('S', 'U'))")
        raise MissingDataError(f"ViSU {self.split}: " + "\n".join(lines) + "\nTo fix: "
                               + "; ".join(fixes) + ".")

    # -- items
    def _image(self, path: Path | None, i: int, part: str):
        if path is None:
            raise MissingDataError(f"ViSU {self.split} row {self.ids[i]}: no {part} image: "
                                   f"{self._expected(i, part)} (run check() first)")
        img = to_rgb(open_image(path))
        return self.transform(img) if self.transform else img

    def __getitem__(self, i: int) -> dict:
        i = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        concept, category = self._concepts[self.raw_tags[i]]
        return {
            "id": f"{self.split}-{self.ids[i]}",
            "S": self.S[i], "U": self.U[i],
            "V": self._image(self.safe_path(i), i, "V") if "V" in self.need else None,
            "G": self._image(self.unsafe_path(i), i, "G") if "G" in self.need else None,
            "category": category,
            "tags": {"coco_id": self.coco_ids[i], "concept": concept, "tag": self.raw_tags[i],
                     "split": self.split, "index": i, "row_id": self.ids[i]},
        }
