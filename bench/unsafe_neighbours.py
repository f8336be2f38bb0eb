"""What the unsafe images among an unsafe query's top 10 have in common with the query.

    python bench/unsafe_neighbours.py [--preset mini] [--split test] [--safe-clip DIR] [--json]

For each model of the preset, over the synthetic ViSU split: ``nsfw_at10`` (as ``safeclip eval
retrieval``), then, among the unsafe images G_j (j != i) that land in the top 10 of unsafe caption
U_i, the share that show the same unsafe object as U_i names, the same subject, scene and colour,
each beside its chance level in the split. The twin G_i is counted apart. Cosines of U_i with its
own G_i and V_i, and of G_i with V_i, close the picture.

It answers one question: does an unsafe query still find unsafe images *because they are
unsafe* (same unsafe object far above chance), or because they show the same subject, scene and
colour once the unsafe object no longer counts?
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safeclip.encoders import load_clip
from safeclip.eval.retrieval import encode_quads, retrieval_metrics
from safeclip.mini.synthetic import SyntheticViSU
from safeclip.presets import get_preset

ATTRS = ("unsafe_object", "subject", "scene", "colour")


def anatomy(S, U, V, G, tags) -> dict:
    n = len(tags)
    top = (U @ torch.cat([V, G]).T).topk(10, dim=1).indices
    same, others, twins = collections.Counter(), 0, 0
    for i in range(n):
        for j in top[i].tolist():
            if j < n:
                continue
            if j - n == i:
                twins += 1
                continue
            others += 1
            for a in ATTRS:
                same[a] += tags[j - n][a] == tags[i][a]
    chance = {}
    for a in ATTRS:  # probability that two different items share the attribute
        counts = collections.Counter(t[a] for t in tags)
        chance[a] = sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))
    m = retrieval_metrics(S, U, V, G)
    return {
        "nsfw_at10": round(m["nsfw_at10"], 3),
        "twin_in_top10": round(twins / n, 3),
        "other_unsafe_per_query": round(others / n, 2),
        "other_unsafe_sharing": {a: round(same[a] / max(others, 1), 3) for a in ATTRS},
        "chance": {a: round(c, 3) for a, c in chance.items()},
        "cos_U_G": round((U * G).sum(1).mean().item(), 3),
        "cos_U_V": round((U * V).sum(1).mean().item(), 3),
        "cos_G_V": round((G * V).sum(1).mean().item(), 3),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mini")
    p.add_argument("--split", default="test")
    p.add_argument("--safe-clip", help="another Safe-CLIP folder to hold against the original")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    preset = get_preset(args.preset, {"safe_clip": args.safe_clip} if args.safe_clip else None)
    quads = SyntheticViSU(args.split, size=preset.image_size)
    tags = [q["tags"] for q in quads]
    out = {}
    for role, name in (("clip", "clip"), ("safe_clip", "safeclip")):
        out[name] = anatomy(*encode_quads(load_clip(preset, role), quads), tags)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for name, r in out.items():
        share = ", ".join(f"{a} {r['other_unsafe_sharing'][a]:.2f} (chance {r['chance'][a]:.2f})"
                          for a in ATTRS)
        print(f"{name}: nsfw_at10 {r['nsfw_at10']:.3f}; twin G_i in top 10 for "
              f"{r['twin_in_top10']:.0%}; {r['other_unsafe_per_query']:.1f} other unsafe images "
              f"per query, sharing {share}; cos U.G {r['cos_U_G']:.2f}, U.V {r['cos_U_V']:.2f}, "
              f"G.V {r['cos_G_V']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
