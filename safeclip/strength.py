"""The strength dial: Safe-CLIP's weights moved part of the way from the original's, or past them.

    >>> from safeclip.strength import ALPHA, interpolate
    >>> half = interpolate(pair.clip, pair.safeclip, 0.5)   # theta = clip + 0.5 (safe - clip)
    >>> half.encode_text(["a man holding a gun"])           # a ClipEncoder like the others

``alpha`` 0 is the original model, 1 Safe-CLIP as published, up to 1.5 past it. Only the tensors
that differ between the two models are interpolated (a merged LoRA leaves most tensors equal);
the others are the very same tensors, so a dialled model costs only the tensors Safe-CLIP moved.
Both models must be of one kind (two transformers CLIPModels, or two open_clip models).
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict

import torch

from .errors import InputError
from .limits import Number

ALPHA = Number("strength alpha", 0.0, 1.5, integer=False)


def interpolate(original, safe, alpha: float):
    """A ClipEncoder whose weights are ``original + alpha * (safe - original)``."""
    alpha = ALPHA.check(alpha)
    if alpha == 1.0:
        return safe
    if original.backend != safe.backend or type(original.model) is not type(safe.model):
        raise InputError(f"the strength dial needs two models of one kind; this world's are "
                         f"{original.backend} and {safe.backend} (alpha must be 1)")
    a, b = dict(original.model.named_parameters()), dict(safe.model.named_parameters())
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise InputError("the strength dial needs two models of one architecture (alpha must "
                         "be 1)")
    dialled = copy.copy(safe)
    model = copy.deepcopy(safe.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            o, s = a[name], b[name]
            if s is o or torch.equal(s, o):
                owner, _, leaf = name.rpartition(".")
                (model.get_submodule(owner) if owner else model)._parameters[leaf] = o
            else:
                p.copy_(o + alpha * (s - o))
    dialled.model = model.eval()
    dialled.name = f"safeclip@{alpha:g}"
    return dialled


DIAL_BUDGET_BYTES = 2 * 2**30  # moved tensors the cache of dialled models may hold


def moved_bytes(dialled, original) -> int:
    """Bytes of the dialled model's own tensors (those not shared with the original)."""
    if dialled is original:
        return 0
    shared = {id(p) for p in original.model.parameters()}
    return sum(p.numel() * p.element_size() for p in dialled.model.parameters()
               if id(p) not in shared)


class Dial:
    """Dialled encoders of one pair, built once per alpha value and kept: at most ``keep``, and
    no more than fit in ``budget`` bytes of moved tensors (a fully fine-tuned ViT-L/14 moves
    1.7 GB, so it keeps one; the mini models keep ``keep``)."""

    def __init__(self, original, safe, keep: int = 4, budget: int = DIAL_BUDGET_BYTES):
        self.original, self.safe, self.keep, self.budget = original, safe, keep, budget
        self._cache: OrderedDict[float, object] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, alpha: float | None):
        if alpha is None:
            return self.safe
        alpha = round(ALPHA.check(alpha), 4)
        if alpha == 1.0:  # Safe-CLIP as published: nothing to build or keep
            return self.safe
        with self._lock:
            if alpha not in self._cache:
                dialled = interpolate(self.original, self.safe, alpha)
                size = moved_bytes(dialled, self.original)
                keep = self.keep if size == 0 else max(1, min(self.keep, self.budget // size))
                self._cache[alpha] = dialled
                while len(self._cache) > keep:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(alpha)
            return self._cache[alpha]
