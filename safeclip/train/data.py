"""Batches of quadruplets as tensors, for the trainer.

Two sources share one interface, ``get(indices, wordings) -> {"S", "U": token ids, "V", "G": pixels}``:

- ``ArrayQuads``: a rendered mini-world split (``safeclip.mini.cache``), tokenised once, images
  kept as uint8; nothing is decoded per step.
- ``ItemQuads``: any dataset whose items have the ViSU shape (id, S, U, V, G, ...): the real ViSU
  loader or ``SyntheticViSU``; texts are tokenised and images preprocessed per batch.

``n_wordings`` > 1 means each item has several captions; the trainer picks one per visit.
"""
from __future__ import annotations

import numpy as np
import torch

from ..encoders import OPENAI_MEAN, OPENAI_STD


def normalise_u8(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (what CLIPImageProcessor gives for inputs at size)."""
    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class ArrayQuads:
    def __init__(self, data: dict, tokenizer, context: int, need=("S", "U", "V", "G")):
        n, w = data["S"].shape
        self.n, self.n_wordings, self.need = n, w, tuple(need)
        self.ids = {}
        for key in ("S", "U"):
            if key in need:
                flat = [str(t) for t in data[key].reshape(-1)]
                self.ids[key] = tokenizer(flat, padding="max_length", truncation=True,
                                          max_length=context, return_tensors="pt"
                                          ).input_ids.reshape(n, w, context)
        self.images = {k: data[k] for k in ("V", "G") if k in need}

    def get(self, idx: np.ndarray, wording: np.ndarray) -> dict[str, torch.Tensor]:
        i, w = torch.as_tensor(idx), torch.as_tensor(wording)
        out = {k: v[i, w] for k, v in self.ids.items()}
        out.update({k: normalise_u8(torch.from_numpy(v[idx])) for k, v in self.images.items()})
        return out


class ItemQuads:
    n_wordings = 1

    def __init__(self, dataset, tokenizer, processor, context: int, need=("S", "U", "V", "G")):
        self.dataset, self.tokenizer, self.processor = dataset, tokenizer, processor
        self.context, self.need, self.n = context, tuple(need), len(dataset)

    def get(self, idx: np.ndarray, wording: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        from ..images import to_rgb

        items = [self.dataset[int(i)] for i in idx]
        out = {}
        for key in ("S", "U"):
            if key in self.need:
                out[key] = self.tokenizer([it[key] for it in items], padding="max_length",
                                          truncation=True, max_length=self.context,
                                          return_tensors="pt").input_ids
        for key in ("V", "G"):
            if key in self.need:
                out[key] = self.processor(images=[to_rgb(it[key]) for it in items],
                                          return_tensors="pt").pixel_values
        return out


def visu_sources(args, tokenizer, processor, context, need):
    """Training data kind ``visu``: ViSU-Text with COCO (V) and generated unsafe images (G)."""
    from ..data.visu import ViSUDataset

    sets = []
    for split, n in (("train", args.n_train), ("validation", args.n_val)):
        ds = ViSUDataset(split, text=args.visu_text, coco_root=args.coco_root,
                         unsafe_root=args.unsafe_root, need=need, limit=n)
        ds.check()  # one clear error listing missing files, before any training
        sets.append(ItemQuads(ds, tokenizer, processor, context, need))
    return tuple(sets)
