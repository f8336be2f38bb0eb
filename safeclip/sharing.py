"""Two models that differ in a few layers, held in memory once: tensor sharing and its measure.

    >>> from safeclip.sharing import share_equal_tensors, unique_bytes
    >>> share_equal_tensors(clip_text_encoder, safe_text_encoder)   # frozen, inference only
    {'shared_tensors': 120, 'shared_bytes': 25296896, 'tensors': 140}
    >>> unique_bytes(clip_text_encoder, safe_text_encoder)          # distinct storages, in bytes

Safe-CLIP's LoRA, merged, leaves most tensors of the original untouched (embeddings, norms, every
layer it did not target). The paired generator (two text encoders) and the paired captioner (two
vision towers) point each such tensor of the safe model at the original's.
"""
from __future__ import annotations

import torch


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a is not b and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            and torch.equal(a.detach(), b.detach()))


def share_equal_tensors(reference: torch.nn.Module, other: torch.nn.Module) -> dict:
    """Point every parameter and buffer of ``other`` that exactly equals ``reference``'s
    same-named one (shape, dtype, device, values) at the reference tensor. Both modules must be
    frozen. Returns the parameters shared, the bytes ``other`` no longer holds on its own
    (parameters and buffers) and the reference's parameter count."""
    params, buffers = dict(reference.named_parameters()), dict(reference.named_buffers())
    n, saved = 0, 0
    for kind, table, own in (("_parameters", params, other.named_parameters()),
                             ("_buffers", buffers, other.named_buffers())):
        for name, t in list(own):
            r = table.get(name)
            if r is None or not _same(r, t):
                continue
            owner, _, leaf = name.rpartition(".")
            getattr(other.get_submodule(owner) if owner else other, kind)[leaf] = r
            saved += t.numel() * t.element_size()
            n += kind == "_parameters"
    return {"shared_tensors": n, "shared_bytes": saved, "tensors": len(params)}


def unique_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct tensor storages behind the modules' parameters and buffers."""
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            s = t.untyped_storage()
            key = (t.device, s.data_ptr())
            if key not in seen:
                seen.add(key)
                total += s.nbytes()
    return total
