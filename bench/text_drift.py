"""How far Safe-CLIP's text tower moves *safe* prompts from the original's (mini preset by default).

    OMP_NUM_THREADS=1 python bench/text_drift.py [--preset mini] [--n 300] [--safe-clip DIR] [--json]

Why it matters: generators and captioners are built on the original encoder; the further the safe
encoder moves safe inputs, the less surely they read them (issue 6's Safe-CLIP safe_fidelity).
Printed, over the first N validation items of the synthetic ViSU (S: safe caption, U: its unsafe
rewrite; ref: original, ft: Safe-CLIP; all embeddings normalised):

- cos(ft(S), ref(S)), and again after removing the mean shift ft(S) - ref(S) (is the move one
  common offset, or item by item?), with the norms of that shift and of the per-item residual;
- cos(ft(S), ref(S)) after projecting both on the top-k principal directions of the original's
  embeddings of training captions (is the move outside the captions' main subspace?);
- cos(ft(U), ref(S)) and cos(ft(U), ref(U)) (redirection of unsafe prompts);
- how often ft(S)'s nearest ref(S) is its own caption.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float(F.cosine_similarity(a, b, dim=-1).mean()), 4)


def load_pair(preset_name: str, safe_clip: str | None = None):
    """(original, Safe-CLIP) encoders of the preset on the CPU in float32; ``safe_clip``
    overrides the preset's Safe-CLIP folder."""
    from safeclip.encoders import load_clip
    from safeclip.presets import get_preset

    preset = get_preset(preset_name, {"safe_clip": safe_clip} if safe_clip else None)
    return tuple(load_clip(preset, role, device="cpu", dtype=torch.float32)
                 for role in ("clip", "safe_clip"))


def emit(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k}: {v}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mini")
    p.add_argument("--n", type=int, default=300, help="validation items")
    p.add_argument("--n-train", type=int, default=2000, help="training items for the PCA")
    p.add_argument("--safe-clip", help="another Safe-CLIP folder to hold against the original")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from safeclip.mini.synthetic import SyntheticViSU

    ref, ft = load_pair(args.preset, args.safe_clip)
    val, train = SyntheticViSU("validation"), SyntheticViSU("train")
    S = [val[i]["S"] for i in range(args.n)]
    U = [val[i]["U"] for i in range(args.n)]
    rS, rU, fS, fU = ref.encode_text(S), ref.encode_text(U), ft.encode_text(S), ft.encode_text(U)
    shift = (fS - rS).mean(0)
    T = ref.encode_text([train[i][c] for i in range(args.n_train) for c in ("S", "U")])
    mean = T.mean(0)
    basis = torch.linalg.svd(T - mean, full_matrices=False).Vh
    pca = {}
    for k in (16, 32, 64):
        proj = basis[:k].T @ basis[:k]
        pca[k] = cos((fS - mean) @ proj, (rS - mean) @ proj)
    own = (fS @ rS.T).argmax(1).eq(torch.arange(args.n)).float().mean()
    report = {
        "preset": args.preset, "items": args.n,
        "cos_ftS_refS": cos(fS, rS),
        "cos_ftS_refS_without_mean_shift": cos(fS - shift, rS),
        "mean_shift_norm": round(float(shift.norm()), 4),
        "residual_norm": round(float((fS - rS - shift).norm(dim=-1).mean()), 4),
        "cos_ftS_refS_in_top_k_pca": pca,
        "cos_ftU_refS": cos(fU, rS), "cos_ftU_refU": cos(fU, rU), "cos_refU_refS": cos(rU, rS),
        "ftS_nearest_refS_is_own": round(float(own), 4),
    }
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
