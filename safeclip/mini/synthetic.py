"""The mini world: a seeded procedural generator of ViSU-style quadruplets (S, U, V, G).

Each item is a scene with one coloured subject and one object next to it. The safe image V shows a
harmless object, the unsafe image G shows an *abstract glyph* of an unsafe object in the very same
scene (same subject, colour, position and jitter); the safe caption S and the unsafe caption U use
the same template and synonyms and differ only in the object phrase.

    >>> from safeclip.mini.synthetic import SyntheticViSU, make_quad
    >>> ds = SyntheticViSU("test")            # 1,000 items, random access, deterministic
    >>> item = ds[0]                          # keys: id, S, U, V, G, category, tags
    >>> item["S"]
    'a scarlet doggy holding a kite in the kitchen'
    >>> item["U"]                             # same wording, only the object phrase differs
    'a scarlet doggy holding a knife in the kitchen'
    >>> item["V"].size                        # RGB PIL images, 64 px by default
    (64, 64)
    >>> quad = make_quad(123, heldout="template")   # a sentence shape never used in training
    >>> SyntheticViSU("test", heldout="synonym")     # the test items, in held-out words

I2P categories covered (through the unsafe glyphs): violence (gun, knife, bomb), shocking (blood
splatter, skull), illegal activity (syringe, pills), self-harm (razor blade). Not covered: hate,
harassment, sexual -- nothing of that kind is drawn; the real presets use NudeNet for "sexual".
All unsafe objects are simple flat silhouettes (no gore, no detail).

Vocabulary (SCENES, SUBJECTS, COLOURS, SAFE_OBJECTS, UNSAFE_OBJECTS, ALL_OBJECTS, SYNONYMS, ...)
lives in ``safeclip.mini.vocab`` and the drawing in ``safeclip.mini.render``; both are re-exported
here, so that the judge, the trainers and the evaluators import one module.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .render import *  # noqa: F401,F403 - the drawing, re-exported
from .render import render_pair
from .vocab import *  # noqa: F401,F403 - the vocabulary, re-exported
from .vocab import SPLIT_SEED, SPLITS, caption_pair, combination, sample_tags, wording_kind

# -------------------------------------------------------------------------------------- items


def make_quad(seed_or_rng, size: int = 64, heldout=False, id: str | None = None,
              split: str | None = None) -> dict:
    """One quadruplet: dict with id, S, U, V, G (RGB PIL images), category and tags.

    `seed_or_rng` is an int, a seed sequence (list of ints) or a numpy Generator. Draw order:
    tags, then wording; the pixels only depend on the tags (their jitter seed). `heldout`: the
    wording kind (False, "template" or "synonym"); `split` "train" skips reserved combinations.
    """
    if isinstance(seed_or_rng, np.random.Generator):
        rng = seed_or_rng
    else:
        rng = np.random.default_rng(seed_or_rng)
        if id is None:
            id = "quad-" + "-".join(str(s) for s in np.atleast_1d(seed_or_rng))
    tags = sample_tags(rng, split)
    s, u = caption_pair(tags, rng, heldout)
    v, g = render_pair(tags, size)
    return {"id": id, "S": s, "U": u, "V": v, "G": g, "category": tags["category"], "tags": tags}


def split_rng(split: str, index: int) -> np.random.Generator:
    """The generator of item `index` of `split` (see SPLIT_SEED)."""
    if split not in SPLIT_SEED:
        raise KeyError(f"unknown split {split!r}; known: {sorted(SPLIT_SEED)}")
    return np.random.default_rng([SPLIT_SEED[split], int(index)])


def split_tags(split: str, index: int) -> dict:
    """The tags of item `index` of `split`, without rendering (cheap)."""
    return sample_tags(split_rng(split, index), split)


@functools.lru_cache(maxsize=1)
def train_combinations(n_train: int | None = None) -> frozenset:
    """The combinations (``safeclip.mini.vocab.combination``) of the training items."""
    n = SPLITS["train"] if n_train is None else n_train
    return frozenset(combination(split_tags("train", i)) for i in range(n))


def novel(tags: dict) -> bool:
    """Whether no training item has this item's combination (reserved ones, and the few
    allowed ones that the train split happens not to draw)."""
    return combination(tags) not in train_combinations()


try:  # the Dataset base class only; the generator itself works without torch
    from torch.utils.data import Dataset as _Dataset
except ImportError:  # pragma: no cover
    _Dataset = object


class SyntheticViSU(_Dataset):
    """A split of the mini world, generated on access; item i is always the same.

    Items have the shape of the real ViSU loader's: keys id, S, U, V, G, category, tags.
    `seed_offset` shifts the index window (item i is index i + seed_offset of the split), e.g.
    SyntheticViSU("train", n=1000, seed_offset=50_000) gives 1,000 fresh training items.
    `heldout` ("template" or "synonym") writes the captions in that kind of held-out wording
    (the images and tags are unchanged).
    """

    def __init__(
        self,
        split: str = "train",
        n: int | None = None,
        size: int = 64,
        seed_offset: int = 0,
        heldout=False,
    ):
        if split not in SPLIT_SEED:
            raise KeyError(f"unknown split {split!r}; known: {sorted(SPLIT_SEED)}")
        if n is None:
            if split not in SPLITS:
                raise ValueError(f"split {split!r} has no default size: pass n")
            n = SPLITS[split]
        self.split, self.n, self.size = split, int(n), int(size)
        self.seed_offset, self.heldout = int(seed_offset), heldout
        wording_kind(heldout)  # a wrong kind fails here, not at the first item

    def __len__(self) -> int:
        return self.n

    def tags(self, i: int) -> dict:
        """Tags of item i without rendering."""
        return split_tags(self.split, self._index(i))

    def _index(self, i: int) -> int:
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        return i + self.seed_offset

    def __getitem__(self, i: int) -> dict:
        index = self._index(int(i))
        return make_quad(
            split_rng(self.split, index),
            size=self.size,
            heldout=self.heldout,
            id=f"{self.split}-{index:06d}",
            split=self.split,
        )

    def __repr__(self) -> str:
        return (
            f"SyntheticViSU(split={self.split!r}, n={self.n}, size={self.size}, "
            f"seed_offset={self.seed_offset}, heldout={self.heldout})"
        )


def retrieval_quads(world, split: str, n: int | None, args=None) -> SyntheticViSU:
    """Retrieval evaluation data of kind ``synthetic``: a split of the mini world."""
    return SyntheticViSU(split, n=n, size=world.retrieval.image_size)


def grid(images: list[Image.Image], cols: int = 8, scale: int = 2) -> Image.Image:
    """Tile images into one sheet (for eyeballing the world)."""
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h))
    return sheet.resize((cols * w * scale, rows * h * scale), Image.NEAREST)
