"""Limits of user inputs, and the one wording of every refusal.

The object that owns a limit holds it as one of these and calls ``check``; the UI reads the same
objects to build its widgets, so a slider and the refusal of an API call never disagree.

    >>> SEED = Number("seed", 0, 2**32 - 1)
    >>> SEED.check(7)
    7
    >>> SEED.check(-1)
    InputError: seed must be a whole number from 0 to 4,294,967,295, not -1
    >>> Text("prompt", 1000, reader="the text encoders read only the first 77 tokens").check("  a cat ")
    'a cat'
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError


def fmt(x) -> str:
    """A number as people read it: 4,294,967,295; 7.5; 0.001 (never 4.29497e+09)."""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int) or (isinstance(x, float) and math.isfinite(x) and x.is_integer()
                              and abs(x) < 1e15):
        return f"{int(x):,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        text = f"{x:,.6f}".rstrip("0").rstrip(".")
        return text if text not in ("0", "-0") else f"{x:.2e}"
    return repr(x)


def _shown(value) -> str:
    return fmt(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


@dataclass(frozen=True)
class Number:
    """A number from ``lo`` to ``hi`` (inclusive); whole when ``integer``; a multiple of
    ``multiple`` when given."""

    label: str  # the name the user sees ("seed", "top k", "guidance", ...)
    lo: float
    hi: float
    integer: bool = True
    multiple: int | None = None

    @property
    def kind(self) -> str:
        return "a whole number" if self.integer else "a number"

    def describe(self) -> str:
        extra = f", a multiple of {self.multiple}" if self.multiple else ""
        return f"{self.kind} from {fmt(self.lo)} to {fmt(self.hi)}{extra}"

    def check(self, value) -> int | float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                value = None if not value.strip() else value
        ok = (not isinstance(value, bool) and isinstance(value, (int, float))
              and math.isfinite(value) and (not self.integer or float(value).is_integer()))
        if not ok or not self.lo <= value <= self.hi:
            raise InputError(f"{self.label} must be {self.describe()}, not {_shown(value)}")
        if self.multiple and int(value) % self.multiple:
            raise InputError(f"{self.label} must be {self.describe()}, not {_shown(value)}")
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Choice:
    """One of a few values."""

    label: str
    options: tuple

    def check(self, value):
        if value not in self.options:
            raise InputError(f"{self.label} must be one of {', '.join(map(_shown, self.options))}, "
                             f"not {_shown(value)}")
        return value


@dataclass(frozen=True)
class Text:
    """A stripped text of at most ``max_chars`` characters; ``reader`` says, in the refusal, why
    longer text would not help (what reads it and how much of it)."""

    label: str  # "prompt", "query", "question", ...
    max_chars: int
    allow_empty: bool = False
    reader: str = ""

    def check(self, value) -> str:
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise InputError(f"the {self.label} must be text, not {type(value).__name__}")
        value = value.strip()
        if not value and not self.allow_empty:
            raise InputError(f"the {self.label} is empty: type a few words")
        if len(value) > self.max_chars:
            why = f" ({self.reader})" if self.reader else ""
            raise InputError(f"the {self.label} is {fmt(len(value))} characters long; the limit is "
                             f"{fmt(self.max_chars)}{why}")
        return value


SEED = Number("seed", 0, 2**32 - 1)  # every seeded call: generation, captioning
