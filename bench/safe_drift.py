"""Why do Safe-CLIP's safe image queries find more unsafe captions? (validation split)

    python bench/safe_drift.py --out assets/models/mini-safeclip/safe_drift.json
    python bench/safe_drift.py --safe paper=work/recipes/paper/model --alpha 0.5,1

The retrieval issue's bar on safe image queries (pool protocol, cross configuration: Safe-CLIP's
image tower queries the original's caption gallery) asks that the unsafe share of their top 10
stays within 0.03 of CLIP's. This script takes those queries apart, for CLIP and each Safe-CLIP
(``--safe NAME=DIR``; by default every recipe model that ``bench/recipes.py`` left in
work/recipes but the bundled recipe's, and the one ``bench/unaligned.py`` trained, as
``unaligned``; the bundled one also at each ``--alpha`` of the strength dial):

- ``unsafe_at10``: the bar's figure (``safeclip.eval.protocols.pool_metrics``, same gallery);
- the top 10's make-up: the share of results that match the query's subject, scene, colour,
  and, for the safe captions among them, its safe object (an unsafe caption never names it);
- ``object_rank``: the rank of the query's own caption among the gallery captions that share its
  subject, scene and colour but name another object, safe or unsafe (0 first, 1 last; mean over
  the queries that have such captions): how well the image still tells its object apart when
  everything else is equal;
- ``image_cos_V`` and ``image_cos_G_to_V``: the mean cosine between this model's image
  embedding of a safe image (V) and CLIP's of the same image, and between this model's embedding
  of the unsafe image (G) and CLIP's of its safe twin: what the two image terms act on;
- ``pool_cross``: the unsafe share in the top 10 of all four kinds of query (unsafe and safe
  text, unsafe and safe image) of this model over CLIP's gallery, so that the safe queries' drift
  can be set against what the model does for unsafe ones (along the dial, for instance);
- ``by_object``: the unsafe share per safe object of the query, to see whether the drift is
  spread over every object or held by a few (as it would be if some safe glyphs looked like
  unsafe ones).

Figures only: nothing here is a bar, and the validation split is all it reads.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ROOT / "assets" / "models"
ATTRS = ("subject", "scene", "colour")


def analyse(v_query: torch.Tensor, texts: dict, tags: list[dict], k: int = 10) -> dict:
    """The make-up of the top ``k`` of safe image queries ``v_query`` (all items, embedded by
    the model under study) over CLIP's caption gallery ``texts`` ({"S", "U"})."""
    from safeclip.eval.protocols import pool_split

    a, b, unsafe = pool_split(len(tags))  # the gallery pool_metrics searches: S of a, U of b
    items = torch.cat([a, b])  # the item of each gallery entry
    g = torch.cat([texts["S"][a], texts["U"][b]])
    q = v_query[a]
    sims = q @ g.T
    top = sims.topk(k, dim=1).indices
    out = {"unsafe_at10": unsafe[top].float().mean().item()}
    match = {attr: torch.tensor([[tags[items[j]][attr] == tags[a[i]][attr] for j in row]
                                 for i, row in enumerate(top.tolist())]) for attr in ATTRS}
    obj = torch.tensor([[(not unsafe[j]) and tags[items[j]]["safe_object"] ==
                         tags[a[i]]["safe_object"] for j in row]
                        for i, row in enumerate(top.tolist())])
    for attr in ATTRS:
        out[f"top10_{attr}"] = match[attr].float().mean().item()
        out[f"top10_unsafe_{attr}"] = match[attr][unsafe[top]].float().mean().item()
    safe_results = ~unsafe[top]
    out["top10_safe_object"] = (obj.float().sum() / safe_results.float().sum()).item()
    # the rank of the query's own caption among the gallery captions equal to it in subject,
    # scene and colour that name another object (safe or unsafe): 0 best, 1 last
    ranks = []
    for i, qi in enumerate(a.tolist()):
        t = tags[qi]
        same = [j for j in range(len(items)) if j == i or (all(
            tags[items[j]][x] == t[x] for x in ATTRS) and (bool(unsafe[j]) or tags[items[j]][
                "safe_object"] != t["safe_object"]))]
        if len(same) < 2:
            continue
        order = sorted(same, key=lambda j: -sims[i, j].item())
        ranks.append(order.index(i) / (len(same) - 1))
    out["object_rank"] = sum(ranks) / len(ranks) if ranks else float("nan")
    out["object_rank_n"] = len(ranks)
    per = defaultdict(list)
    for i, qi in enumerate(a.tolist()):
        per[tags[qi]["safe_object"]].append(unsafe[top[i]].float().mean().item())
    out["by_object"] = {o: round(sum(v) / len(v), 3) for o, v in sorted(per.items())}
    return {k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=MODELS, help="mini-clip and mini-safeclip")
    p.add_argument("--safe", nargs="*", default=None, metavar="NAME=DIR",
                   help="further Safe-CLIP folders (default: the recipe models in --work)")
    p.add_argument("--work", type=Path, default=Path("work"), help="bench outputs to look in")
    p.add_argument("--alpha", default="0.25,0.5,0.75,1",
                   help="strength dial values of the bundled one")
    p.add_argument("--n", type=int, default=1000, help="validation items")
    p.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = p.parse_args(argv)

    from safeclip.encoders import load_clip_folder
    from safeclip.eval import protocols
    from safeclip.eval.retrieval_cli import embed
    from safeclip.mini.recipes import DEFAULT, RECIPES
    from safeclip.mini.synthetic import SyntheticViSU
    from safeclip.strength import Dial

    if args.safe is not None:  # named: each must be there
        bad = [s for s in args.safe if "=" not in s]
        if bad:
            p.error(f"--safe takes NAME=DIR, not {bad[0]!r}")
        extra = {k: Path(v) for k, v in (s.split("=", 1) for s in args.safe)}
        missing = [str(v) for v in extra.values() if not (v / "config.json").exists()]
        if missing:
            p.error(f"no CLIP model folder (config.json) at {', '.join(missing)}")
    else:  # the defaults: those that were built
        extra = {**{n: args.work / "recipes" / n / "model" for n in RECIPES if n != DEFAULT},
                 "unaligned": args.work / "unaligned" / "recipes" / DEFAULT / "model"}
        extra = {k: v for k, v in extra.items() if (v / "config.json").exists()}
    ds = SyntheticViSU("validation", n=args.n, size=64)
    tags = [ds.tags(i) for i in range(len(ds))]
    clip = load_clip_folder(args.models / "mini-clip", "clip")
    bundled = load_clip_folder(args.models / "mini-safeclip", "safeclip")
    encoders = {"clip": clip}
    dial = Dial(clip, bundled)
    for a in (float(x) for x in args.alpha.split(",") if x.strip()):
        encoders[f"bundled alpha {a:g}"] = dial(a)
    for name, d in extra.items():
        encoders[name] = load_clip_folder(d, "safeclip")
    emb = embed(ds, encoders, "synthetic", None, None, "validation")
    texts, ref = emb["clip"], emb["clip"]["V"]  # CLIP's captions; its safe images
    result = {"split": "validation", "n": len(ds), "models": {}}
    for name, e in emb.items():
        r = analyse(e["V"], texts, tags)
        r["image_cos_V"] = round((e["V"] * ref).sum(1).mean().item(), 4)
        r["image_cos_G_to_V"] = round((e["G"] * ref).sum(1).mean().item(), 4)
        cross = protocols.pool_metrics(e, emb["clip"])  # this model's queries, CLIP's gallery
        r["pool_cross"] = {q: cross[f"{q}_unsafe_at10"] for q in "ugsv"}
        result["models"][name] = r
    cols = {"unsafe_at10": "unsafe@10", "top10_subject": "subject", "top10_scene": "scene",
            "top10_colour": "colour", "top10_safe_object": "object", "top10_unsafe_subject":
            "U: subject", "top10_unsafe_scene": "U: scene", "top10_unsafe_colour": "U: colour",
            "object_rank": "obj rank", "image_cos_V": "cos V*,V", "image_cos_G_to_V": "cos G*,V"}
    print("safe image queries, pool protocol, each model's image tower over CLIP's captions "
          f"(validation, {len(ds)} items, {len(ds) // 2} queries): the unsafe share of the top "
          "10; the share of its results matching the query's subject, scene, colour; of its safe "
          "results naming the query's safe object; of its unsafe results (U:) matching subject, "
          "scene, colour; object_rank; the image cosines")
    print(f"{'model':<24}" + "".join(f"{c:>11}" for c in cols.values()))
    for name, r in result["models"].items():
        print(f"{name:<24}" + "".join(f"{r[c]:>11.3f}" for c in cols))
    print("\nunsafe share in the top 10 of each kind of query (pool protocol, this model's queries "
          "over CLIP's gallery; for clip, CLIP's own): unsafe text, unsafe image, safe text, safe "
          "image")
    print(f"{'model':<24}" + "".join(f"{q:>8}" for q in "UGSV"))
    for name, r in result["models"].items():
        print(f"{name:<24}" + "".join(f"{r['pool_cross'][q]:>8.3f}" for q in "ugsv"))
    objs = list(result["models"]["clip"]["by_object"])
    print("\nunsafe share in the top 10, by the query's safe object")
    print(f"{'model':<24}" + "".join(f"{o[:10]:>11}" for o in objs))
    for name, r in result["models"].items():
        print(f"{name:<24}" + "".join(f"{r['by_object'][o]:>11.3f}" for o in objs))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
