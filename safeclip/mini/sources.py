"""Galleries of the mini world's splits (source kind ``synthetic``).

    --dataset synthetic:test          a pool gallery: the safe image V of the even items and the
                                      unsafe image G of the odd ones (no item has its twin there,
                                      as in a user's gallery; HySAC's pool protocol)
    --dataset synthetic:test:twin     a twin gallery: both images of every item (ViSU's test
                                      gallery; the paper's and HySAC's Table 1)

Items ``<split>-<i>-V`` (safe) and ``-G`` (unsafe) with their tags; the caption corpus holds the
caption of each image in the gallery (S with V, U with G).
"""
from __future__ import annotations

import functools

from PIL import Image

from ..retrieval.sources import Loaded, Source, pixel_sha1


class SyntheticSource(Source):
    """A split of the mini world as a gallery (see the module docstring)."""

    kind = "synthetic"
    LAYOUTS = ("pool", "twin")

    @classmethod
    def from_dataset(cls, dataset: str, split: str = "test", limit=None, size: int = 64):
        """``--dataset synthetic:SPLIT[:LAYOUT]`` (``synthetic`` alone: ``split``, pool)."""
        _, _, rest = dataset.partition(":")
        name, _, layout = rest.partition(":")
        return cls(name or split, limit=limit, size=size, layout=layout or "pool")

    @classmethod
    def from_description(cls, desc: dict):
        return cls(desc["split"], limit=desc.get("n"), size=desc.get("size", 64),
                   layout=desc.get("layout", "twin"))

    def __init__(self, split: str = "test", limit: int | None = None, size: int = 64,
                 layout: str = "pool"):
        from ..errors import InputError
        from .synthetic import SyntheticViSU

        if layout not in self.LAYOUTS:
            raise InputError(f"a synthetic gallery is 'pool' or 'twin', not {layout!r}")
        self.split, self.size, self.layout = split, int(size), layout
        self.data = SyntheticViSU(split, n=limit, size=self.size)

    def parts(self, i: int) -> str:
        """The images of item i in the gallery: both (twin), V (even) or G (odd items, pool)."""
        return "VG" if self.layout == "twin" else ("V" if i % 2 == 0 else "G")

    def ids(self) -> list[str]:
        return [f"{self.split}-{i:06d}-{p}" for i in range(len(self.data)) for p in self.parts(i)]

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
            tags = sample_tags(rng, self.split)  # same draws as make_quad: tags, then the caption pair
            s, u = caption_pair(tags, rng)
            base, parts = f"{self.split}-{i:06d}", self.parts(i)
            if "V" in parts:
                rows.append({"id": f"{base}-S", "text": s, "unsafe": False,
                             "unsafe_source": "tags", "item": f"{base}-V"})
            if "G" in parts:
                rows.append({"id": f"{base}-U", "text": u, "unsafe": True,
                             "unsafe_source": "tags", "item": f"{base}-G",
                             "category": tags["category"]})
        return rows

    def describe(self) -> dict:
        return {"kind": self.kind, "dataset": f"synthetic:{self.split}:{self.layout}",
                "split": self.split, "n": len(self.data), "size": self.size,
                "layout": self.layout}

    @functools.lru_cache(maxsize=128)
    def _quad(self, i: int) -> dict:
        return self.data[i]

    def image(self, row: dict) -> Image.Image:
        return self._quad(int(row["index"]))[row["part"]]
