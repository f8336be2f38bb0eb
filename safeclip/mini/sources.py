"""Galleries of the mini world's splits (source kind ``synthetic``: ``--dataset synthetic:test``).

Items ``<split>-<i>-V`` (safe) and ``-G`` (unsafe) with their tags; the caption corpus is every
S (safe) and U (unsafe) caption of the split.
"""
from __future__ import annotations

import functools

from PIL import Image

from ..retrieval.sources import Loaded, Source, pixel_sha1


class SyntheticSource(Source):
    """The mini world's split: items ``<split>-<i>-V`` (safe) and ``-G`` (unsafe), with tags;
    the caption corpus is every S (safe) and U (unsafe) caption."""

    kind = "synthetic"

    @classmethod
    def from_dataset(cls, dataset: str, split: str = "test", limit=None, size: int = 64):
        """``--dataset synthetic:SPLIT`` (``synthetic`` alone: ``split``)."""
        _, _, name = dataset.partition(":")
        return cls(name or split, limit=limit, size=size)

    @classmethod
    def from_description(cls, desc: dict):
        return cls(desc["split"], limit=desc.get("n"), size=desc.get("size", 64))

    def __init__(self, split: str = "test", limit: int | None = None, size: int = 64):
        from .synthetic import SyntheticViSU

        self.split, self.size = split, int(size)
        self.data = SyntheticViSU(split, n=limit, size=self.size)

    def ids(self) -> list[str]:
        return [f"{self.split}-{i:06d}-{p}" for i in range(len(self.data)) for p in "VG"]

    @staticmethod
    def _parse(id_: str) -> tuple[int, str]:
        stem, part = id_.rsplit("-", 1)
        return int(stem.rsplit("-", 1)[1]), part

    def _row(self, i: int, part: str, quad: dict) -> dict:
        unsafe = part == "G"
        return {"id": f"{self.split}-{i:06d}-{part}", "index": i, "part": part,
                "caption": quad["U" if unsafe else "S"], "unsafe": unsafe, "unsafe_source": "tags",
                "category": quad["category"] if unsafe else None,
                "tags": {k: v for k, v in quad["tags"].items() if k != "seed"}}

    def load(self, ids: list[str]) -> list[Loaded]:
        quads: dict[int, dict] = {}
        out = []
        for id_ in ids:
            i, part = self._parse(id_)
            if i not in quads:
                quads[i] = self.data[i]
            image = quads[i][part]
            row = self._row(i, part, quads[i])
            row["sha1"] = pixel_sha1(image)
            out.append(Loaded(row, image))
        return out

    def captions(self, ids: list[str]) -> list[dict]:
        from .synthetic import caption_pair, sample_tags, split_rng

        rows = []
        for i in dict.fromkeys(self._parse(x)[0] for x in ids):
            rng = split_rng(self.split, i + self.data.seed_offset)
            tags = sample_tags(rng)  # same draws as make_quad: tags, then the caption pair
            s, u = caption_pair(tags, rng)
            base = f"{self.split}-{i:06d}"
            rows.append({"id": f"{base}-S", "text": s, "unsafe": False, "unsafe_source": "tags",
                         "item": f"{base}-V"})
            rows.append({"id": f"{base}-U", "text": u, "unsafe": True, "unsafe_source": "tags",
                         "item": f"{base}-G", "category": tags["category"]})
        return rows

    def describe(self) -> dict:
        return {"kind": self.kind, "dataset": f"synthetic:{self.split}", "split": self.split,
                "n": len(self.data), "size": self.size}

    @functools.lru_cache(maxsize=128)
    def _quad(self, i: int) -> dict:
        return self.data[i]

    def image(self, row: dict) -> Image.Image:
        return self._quad(int(row["index"]))[row["part"]]
