"""The mini world's caption judge (kind ``mini-words``): every word the world uses for an unsafe
object, held-out synonyms included, matched as whole words.

    >>> from safeclip.mini.words import load_judge, unsafe_terms
    >>> load_judge(None)("a red dog holding a revolver").terms     # ['revolver']
"""
from __future__ import annotations

import re
from functools import lru_cache

from ..safety.text import LexiconJudge
from .vocab import HELDOUT_SYNONYMS, SYNONYMS, UNSAFE_OBJECTS

ARTICLES = r"^(a|an|some|the|a handful of|a pile of|a few) "


@lru_cache(maxsize=1)
def lexicon() -> dict[str, tuple[str, ...]]:
    """{I2P category: the words of its unsafe objects}."""
    out: dict[str, set] = {}
    for obj, category in UNSAFE_OBJECTS.items():
        words = out.setdefault(category, set())
        words.add(obj.replace("_", " "))
        for phrase in SYNONYMS[obj] + HELDOUT_SYNONYMS.get(obj, ()):
            words.add(re.sub(ARTICLES, "", phrase))
    return {c: tuple(sorted(w)) for c, w in out.items()}


def unsafe_terms() -> tuple[str, ...]:
    return tuple(sorted({w for ws in lexicon().values() for w in ws}, key=lambda w: (-len(w), w)))


@lru_cache(maxsize=1)
def _judge() -> LexiconJudge:
    judge = LexiconJudge(lexicon())
    judge.name = "mini-words"
    return judge


def load_judge(spec=None) -> LexiconJudge:
    return _judge()
