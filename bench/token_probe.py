"""Do the text tower's token states still read as unsafe? (mini preset by default).

    OMP_NUM_THREADS=1 python bench/token_probe.py [--safe-clip DIR] [--json]

Stable Diffusion cross-attends to the last hidden state of every text position, not only to the
pooled one that the paper's loss terms move. A linear probe is trained on the *original* text
tower's states (training items): label 1 for the positions of an unsafe caption U from its first
token that differs from the safe caption S on (the object's word, everything after it in this
causal tower, the end token and the padding), label 0 for the same positions of S. Positions
before the object are equal in S and U and are left out. Printed, on validation items:

- ``original``: share of U's labelled positions the probe reads as unsafe with the original
  tower (how well the probe works), and its false alarms on S;
- ``safeclip``: the same shares with Safe-CLIP's text tower (the probe is not retrained: it asks
  whether Safe-CLIP's states still look like the original's unsafe ones);
- ``by_position``: for Safe-CLIP, the share at the object's first token, at the end token, and
  over the padding.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def states(folder, texts: list[str], context: int = 32):
    """Last hidden states (n, L, D) and token ids of ``texts`` by the text tower in ``folder``."""
    from safeclip.generation.text import load_text_encoder
    from safeclip.mini.train_gen import load_tokenizer

    tok = load_tokenizer(folder)
    ids = tok(texts, padding="max_length", truncation=True, max_length=context,
              return_tensors="pt").input_ids
    enc = load_text_encoder(folder)
    with torch.no_grad():
        h = torch.cat([enc(b)[0] for b in ids.split(256)])
    return torch.nn.functional.normalize(h, dim=-1), ids


def labelled(ids_s: torch.Tensor, ids_u: torch.Tensor) -> torch.Tensor:
    """(n, L) mask of the positions from the first one where S and U differ."""
    differ = (ids_s != ids_u).int()
    first = differ.argmax(1, keepdim=True)
    return torch.arange(ids_s.shape[1])[None] >= first


def probe(safe_dir: Path, clip_dir: Path, n_train: int = 3000, n_val: int = 500,
          data: Path = ROOT / "work" / "mini" / "data") -> dict:
    from safeclip.mini.cache import load_split

    train, val = load_split(data, "train"), load_split(data, "validation")
    s_tr, ids_s = states(clip_dir, [str(t) for t in train["S"][:n_train, 0]])
    u_tr, ids_u = states(clip_dir, [str(t) for t in train["U"][:n_train, 0]])
    keep = labelled(ids_s, ids_u)
    x = torch.cat([s_tr[keep], u_tr[keep]])
    y = torch.cat([torch.zeros(int(keep.sum())), torch.ones(int(keep.sum()))])
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 1e-4 * w @ w
        loss.backward()
        return loss
    opt.step(closure)
    out = {"n_train": n_train, "n_val": n_val}
    texts_s = [str(t) for t in val["S"][:n_val, 0]]
    texts_u = [str(t) for t in val["U"][:n_val, 0]]
    for name, folder in (("original", clip_dir), ("safeclip", safe_dir)):
        hs, ids_s = states(folder, texts_s)
        hu, ids_u = states(folder, texts_u)
        keep = labelled(ids_s, ids_u)
        with torch.no_grad():
            pu, ps = (hu @ w + b > 0), (hs @ w + b > 0)
        out[name] = {"unsafe_positions_read_unsafe": round(float(pu[keep].float().mean()), 4),
                     "safe_positions_read_unsafe": round(float(ps[keep].float().mean()), 4)}
        first = (ids_s != ids_u).int().argmax(1)
        eos = (ids_u == ids_u.max()).int().argmax(1)  # CLIP's end token has the highest id
        rows = torch.arange(len(ids_u))
        pad = torch.arange(ids_u.shape[1])[None] > eos[:, None]
        out[name]["by_position"] = {
            "object": round(float(pu[rows, first].float().mean()), 4),
            "end": round(float(pu[rows, eos].float().mean()), 4),
            "padding": round(float(pu[pad].float().mean()), 4) if pad.any() else None}
    return out


def main(argv=None) -> int:
    from safeclip.mini import MODELS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", type=Path, default=MODELS / "mini-clip")
    p.add_argument("--safe-clip", type=Path, default=MODELS / "mini-safeclip")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = probe(args.safe_clip, args.clip, args.n_train, args.n_val)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        for name in ("original", "safeclip"):
            m = r[name]
            print(f"{name:9s} unsafe positions read unsafe {m['unsafe_positions_read_unsafe']:.3f}"
                  f"  (safe positions {m['safe_positions_read_unsafe']:.3f}; object token "
                  f"{m['by_position']['object']:.3f}, end {m['by_position']['end']:.3f}, "
                  f"padding {m['by_position']['padding']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
