"""How far Safe-CLIP's vision tower moves *safe* images from the original's (mini preset by default).

    OMP_NUM_THREADS=1 python bench/vision_drift.py [--preset mini] [--n 300] [--safe-clip DIR] [--json]

Why it matters: the captioner's projector and language model are trained on the original tower's
patch tokens (issue 7); the further Safe-CLIP moves the patch tokens of safe images, the less
surely the captioner reads them. Printed, over the first N validation items of the synthetic
ViSU (V: safe image, G: its unsafe twin; ref: original, ft: Safe-CLIP):

- pooled, projected and normalised embeddings: cos(ft(V), ref(V)) (what the training objective
  preserves), cos(ft(G), ref(V)) (what it redirects towards), cos(ft(G), ref(G));
- patch tokens at the hidden layer the captioner reads (``--layer``, default -2 as the mini
  captioner and LLaVA-1.5 read it, CLS dropped),
  per token: cos(ft(V), ref(V)) and cos(ft(G), ref(G)).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from text_drift import cos, emit, load_pair  # a sibling bench script


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mini")
    p.add_argument("--n", type=int, default=300, help="validation items")
    p.add_argument("--layer", type=int, default=-2, help="hidden layer of the patch tokens")
    p.add_argument("--safe-clip", help="another Safe-CLIP folder to hold against the original")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from safeclip.mini.synthetic import SyntheticViSU
    from safeclip.train.trainer import vision_pooled_and_tokens

    ref, ft = load_pair(args.preset, args.safe_clip)
    val = SyntheticViSU("validation", n=args.n, size=ref.image_size)
    if not hasattr(ref.model, "vision_model"):
        raise SystemExit("patch tokens are read from transformers CLIPModel folders only")
    V = [val[i]["V"] for i in range(len(val))]
    G = [val[i]["G"] for i in range(len(val))]
    pooled = {k: (ref.encode_image(x), ft.encode_image(x)) for k, x in (("V", V), ("G", G))}

    def patches(enc, images):
        pix = enc.processor(images=images, return_tensors="pt").pixel_values
        with torch.no_grad():
            return vision_pooled_and_tokens(enc.model, pix, args.layer)[1]

    report = {
        "preset": args.preset, "items": len(val), "layer": args.layer,
        "pooled_cos_ftV_refV": cos(pooled["V"][1], pooled["V"][0]),
        "pooled_cos_ftG_refV": cos(pooled["G"][1], pooled["V"][0]),
        "pooled_cos_ftG_refG": cos(pooled["G"][1], pooled["G"][0]),
        "patch_cos_ftV_refV": cos(patches(ft, V), patches(ref, V)),
        "patch_cos_ftG_refG": cos(patches(ft, G), patches(ref, G)),
    }
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
