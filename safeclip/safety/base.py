"""Image judges: one interface, found through the kind a world's data names.

    >>> from safeclip.safety import load_judge
    >>> judge = load_judge(world.generation.judge)     # a JudgeSpec: kind, threshold, ref
    >>> v = judge.judge([image])[0]                    # Verdict(unsafe, score, category, labels)

A judge maps PIL images (any mode, any size) to ``Verdict``s. ``score`` is the strongest unsafe
finding in [0, 1]; ``unsafe`` is ``score >= threshold`` (a threshold above 1 never flags). A judge
made of others (``safeclip.safety.combined``) also keeps each one's verdict in ``judges``;
``card()`` says what a judge is (name, version, threshold, classes) for metric cards.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Verdict:
    """A judge's decision on one image."""

    unsafe: bool  # score >= threshold
    score: float  # strongest unsafe score in [0, 1]
    category: str | None  # I2P category of the strongest unsafe finding; None when safe
    labels: dict[str, float]  # per-label scores
    threshold: float
    judges: dict[str, dict] = field(default_factory=dict)  # a combined judge's: name -> {unsafe,
    #                                                         score, category, threshold}

    @property
    def flagged_by(self) -> list[str]:
        """The judges of a combined verdict that flagged the image (empty for a single judge)."""
        return [name for name, j in self.judges.items() if j["unsafe"]]


class Judge(abc.ABC):
    """Base of the judges: ``judge(images) -> list[Verdict]`` at an explicit ``threshold``."""

    name = "judge"

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    @abc.abstractmethod
    def judge(self, images: list[Image.Image]) -> list[Verdict]:
        """One Verdict per image."""

    def card(self) -> dict:
        """What this judge is, for a metric card (subclasses add versions and class sets)."""
        return {"name": self.name, "threshold": self.threshold}

    def __call__(self, images):
        if isinstance(images, Image.Image):
            return self.judge([images])[0]
        return self.judge(list(images))

    def _verdict(self, labels: dict[str, float], categories: dict[str, str]) -> Verdict:
        """Verdict from per-label scores; ``categories`` maps the unsafe labels to categories."""
        unsafe = {k: v for k, v in labels.items() if k in categories}
        top = max(unsafe, key=unsafe.get) if unsafe else None
        score = float(unsafe[top]) if top is not None else 0.0
        flagged = top is not None and score >= self.threshold
        return Verdict(flagged, score, categories[top] if flagged else None, labels,
                       self.threshold)


class NoJudge(Judge):
    """Kind ``none``: flags nothing (for worlds or galleries that bring their own labels)."""

    name = "none"

    @classmethod
    def from_spec(cls, spec) -> "NoJudge":
        return cls(2.0)

    def judge(self, images) -> list[Verdict]:
        return [Verdict(False, 0.0, None, {}, self.threshold) for _ in images]


def load_judge(spec, world=None) -> Judge:
    """The image judge a ``JudgeSpec`` names (kind table ``image_judge``; a kind registered with
    ``world=True`` is also given the world, e.g. Q16 to choose its CLIP)."""
    from ..kinds import kind_info, resolve

    target = resolve("image_judge", spec.kind, world)
    return target(spec, world) if kind_info("image_judge", spec.kind, world).get("world") \
        else target(spec)


def get_judge(kind: str = "nudenet", threshold: float | None = None, ref: str | None = None,
              world=None) -> Judge:
    """A judge by kind name (``"nudenet"``, ``"none"``, or a plug-in's kind)."""
    from ..presets import JudgeSpec

    return load_judge(JudgeSpec(kind, threshold, ref), world)
