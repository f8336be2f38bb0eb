"""The app-facing paired generator: input limits, a lock, the judge, and the world's loader.

    >>> from safeclip.generation import load_generator
    >>> gen = load_generator("mini")                      # models loaded once
    >>> res = gen.generate_pair("a red dog holding a kite in the park", seed=0)
    >>> res.clip.image, res.clip.verdict.unsafe, res.safeclip.image, res.settings, res.warnings
    >>> gen.limits["steps"]                               # limits.Number("steps", 1, 150)

The world's ``generation`` entry names the generator's kind (``safeclip.kinds`` table
``generator``: ``diffusers-sd`` for Stable Diffusion, a plug-in's own), its models, its judge,
its defaults and limits. Models that are missing or unreachable raise ``ModelUnavailableError``
with a message that says how to point at a copy.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from ..errors import StudioError
from ..limits import SEED, Choice, Number, Text
from ..presets import Preset, get_preset
from ..safety.base import Judge, Verdict

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 1000  # longer prompts are refused; up to this, the encoders truncate


def make_limits(raw: dict) -> dict:
    """The world's limits (plain data) as ``safeclip.limits`` objects, by name."""
    size = raw.get("size", {"min": 256, "max": 1024, "multiple": 8})
    steps, guidance = raw.get("steps", (1, 150)), raw.get("guidance", (1.0, 20.0))
    return {"seed": SEED, "steps": Number("steps", *steps),
            "guidance": Number("guidance", *guidance, integer=False),
            "size": (Number("size", size["min"], size["max"], multiple=size.get("multiple"))
                     if isinstance(size, dict) else Choice("size", tuple(size)))}


@dataclass
class GeneratedImage:
    image: Image.Image  # the unblurred image (the UI blurs it when verdict.unsafe)
    verdict: Verdict  # the judge's decision on it
    model: str  # "clip" or "safeclip": which text encoder drew it

    @property
    def flagged(self) -> bool:
        return bool(self.verdict.unsafe)


@dataclass
class PairResult:
    clip: GeneratedImage  # the original text encoder's image
    safeclip: GeneratedImage  # Safe-CLIP's text encoder's image, same noise and settings
    settings: dict  # what was used, after defaults: prompt, negative_prompt, seed, steps, ...
    warnings: list[str] = field(default_factory=list)  # e.g. the prompt was truncated
    seconds: float = 0.0  # wall time of the pair (both images, judge included)

    def to_json(self) -> dict:
        def one(g: GeneratedImage) -> dict:
            v = g.verdict
            return {"flagged": g.flagged, "unsafe": bool(v.unsafe), "score": round(v.score, 4),
                    "category": v.category, "threshold": v.threshold,
                    "labels": {k: round(float(s), 4) for k, s in v.labels.items()},
                    **({"judges": v.judges, "flagged_by": v.flagged_by} if v.judges else {})}
        return {"settings": self.settings, "warnings": self.warnings,
                "seconds": round(self.seconds, 3), "clip": one(self.clip),
                "safeclip": one(self.safeclip)}


class PairedGenerator:
    """Checks inputs against ``limits``, applies ``defaults``, runs the paired pipeline under a
    lock and judges both images.

    ``defaults``: steps, guidance, size (width = height), negative_prompt. ``limits``: seed,
    steps, guidance and size as ``safeclip.limits`` objects (see ``make_limits``).
    """

    def __init__(self, paired, judge: Judge, world: Preset, defaults: dict, limits: dict):
        self.world, self.paired, self.judge = world, paired, judge
        self.preset = world.name
        self.defaults = dict(defaults)
        self.limits = make_limits(limits) if not isinstance(limits.get("seed"), Number) else limits
        reader = f"the text encoders read only their first {self.context_length} tokens"
        self.limits["prompt"] = Text("prompt", MAX_PROMPT_CHARS, reader=reader)
        self.limits["negative_prompt"] = Text("negative prompt", MAX_PROMPT_CHARS,
                                              allow_empty=True, reader=reader)
        self._lock = threading.Lock()

    @property
    def uses_steps(self) -> bool:
        return bool(getattr(self.paired, "uses_steps", True))

    @property
    def context_length(self) -> int:
        return int(self.paired.tokenizer.model_max_length)

    def _truncation(self, text: str, what: str, warnings: list[str]) -> None:
        tok = self.paired.tokenizer
        n = len(tok(text, truncation=False, verbose=False).input_ids)
        if n > self.context_length:
            ids = tok(text, truncation=True, max_length=self.context_length).input_ids
            kept = tok.decode(ids, skip_special_tokens=True)
            warnings.append(f"the {what} is {n} tokens long; the text encoders read only "
                            f"{self.context_length} (start and end included), so it was "
                            f"truncated to: {kept!r}")

    def check(self, prompt, negative_prompt=None, seed=0, steps=None, guidance=None, size=None):
        """The inputs after defaults and limits, and the warnings they deserve."""
        warnings: list[str] = []
        prompt = self.limits["prompt"].check(prompt)
        self._truncation(prompt, "prompt", warnings)
        if negative_prompt is None:
            negative_prompt = self.defaults.get("negative_prompt") or None
        if negative_prompt is not None:
            negative_prompt = self.limits["negative_prompt"].check(negative_prompt) or None
            if negative_prompt:
                self._truncation(negative_prompt, "negative prompt", warnings)
        d, lim = self.defaults, self.limits
        if steps is not None:  # out of range is refused even where the setting is not used
            lim["steps"].check(steps)
        if steps is None or not self.uses_steps:  # a one-step generator ignores a steps setting
            steps = d["steps"]
        values = {"seed": lim["seed"].check(seed),
                  "steps": lim["steps"].check(steps),
                  "guidance": lim["guidance"].check(d["guidance"] if guidance is None
                                                    else guidance),
                  "size": lim["size"].check(d["size"] if size is None else size)}
        return prompt, negative_prompt, values, warnings

    def generate_pair(self, prompt: str, negative_prompt: str | None = None, seed: int = 0,
                      steps: int | None = None, guidance: float | None = None,
                      size: int | None = None, progress: bool = True,
                      judge: Judge | None = None) -> PairResult:
        """Both images of ``prompt`` from the same noise, judged by ``judge`` (default: the
        world's); see the class docstring for limits. A judge's one-time notice (e.g. "judged
        for nudity only") comes back among the warnings, once."""
        t0 = time.time()
        judge = judge or self.judge
        prompt, negative_prompt, v, warnings = self.check(prompt, negative_prompt, seed, steps,
                                                          guidance, size)
        with self._lock:
            img_o, img_s = self.paired(prompt, negative_prompt, v["seed"], v["steps"],
                                       v["guidance"], v["size"], v["size"], progress=progress)
            v_o, v_s = judge.judge([img_o, img_s])
        settings = {"preset": self.preset, "prompt": prompt, "negative_prompt": negative_prompt,
                    "seed": v["seed"], "steps": v["steps"] if self.uses_steps else None,
                    "guidance": v["guidance"], "size": v["size"],
                    "scheduler": self.paired.sampler, "judge": judge.name}
        for w in warnings:
            logger.warning(w)
        notice = getattr(judge, "pop_notice", lambda: None)()  # the judge logged it already
        if notice:
            warnings.append(notice)
        return PairResult(GeneratedImage(img_o, v_o, "clip"),
                          GeneratedImage(img_s, v_s, "safeclip"), settings, warnings,
                          time.time() - t0)


def generation_settings(preset: str | Preset, overrides: dict | None = None) -> dict:
    """``{"defaults", "limits", "uses_steps"}`` of a world's generator, known without loading it
    (the UI is built before any model loads): the world's data, then the generator folder's
    settings file (a JSON with ``defaults``, ``limits`` and, for a generator that takes one
    step whatever it is asked, ``uses_steps`` false) when the world names one."""
    import json
    from pathlib import Path

    from ..kinds import kind_info
    from ..presets import resolve_ref

    p = get_preset(preset, overrides)
    g = p.generation
    if g is None:
        raise StudioError(f"world {p.name!r} has no generation")
    defaults, limits = dict(g.defaults), dict(g.limits)
    uses_steps = kind_info("generator", g.kind, p).get("uses_steps", True)
    if g.settings_file:
        f = Path(resolve_ref(g.sd.ref)) / g.settings_file
        if f.is_file():
            conf = json.loads(f.read_text())
            defaults.update(conf.get("defaults", {}))
            limits.update(conf.get("limits", {}))
            uses_steps = conf.get("uses_steps", uses_steps)
    return {"defaults": defaults, "limits": limits, "uses_steps": bool(uses_steps)}


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def load_generator(preset: str | Preset, overrides: dict | None = None, device=None,
                   offload: bool = False, cache: bool = True) -> PairedGenerator:
    """The paired generator of a world (loaded once per world, overrides, device, offload)."""
    from ..kinds import resolve

    world = get_preset(preset, overrides)
    if world.generation is None:
        raise StudioError(f"world {world.name!r} has no generation")
    key = (world, str(device), bool(offload))
    with _CACHE_LOCK:
        if cache and key in _CACHE:
            return _CACHE[key]
        gen = resolve("generator", world.generation.kind, world)(world, device, offload)
        if cache:
            _CACHE[key] = gen
        return gen
