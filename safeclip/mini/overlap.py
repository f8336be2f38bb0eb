"""What the validation and test splits share with the train split (``safeclip mini overlap``).

    safeclip mini overlap            # a table
    safeclip mini overlap --json     # the figures

- combinations: the (subject, colour, scene, safe object, unsafe object) of each item. How many
  of a split's items have a combination that some training item has, and how many have a
  reserved one (never drawn by the train split: ``safeclip.mini.vocab.reserved``);
- captions: how many of a split's captions are *exactly* a training caption (any of the
  wordings the rendered training data stores, which every mini model trains on): the
  dataset's own safe and unsafe captions, and the generation benchmark's prompts per wording
  kind (training wording, held-out template, held-out synonyms).

Nothing is rendered: tags and captions are cheap to draw again.
"""
from __future__ import annotations

import argparse
import json

from tqdm.auto import tqdm


def overlap(splits=("validation", "test"), n_train: int | None = None) -> dict:
    from .cache import item_captions
    from .eval_generation import build_prompt_set
    from .synthetic import SPLITS, combination, reserved

    n_train = SPLITS["train"] if n_train is None else n_train
    combos, safe, unsafe = set(), set(), set()
    for i in tqdm(range(n_train), desc="training items", unit="item", mininterval=2):
        tags, pairs = item_captions("train", i)
        combos.add(combination(tags))
        safe.update(p[0] for p in pairs)
        unsafe.update(p[1] for p in pairs)
    out = {"train": {"items": n_train, "combinations": len(combos),
                     "safe_captions": len(safe), "unsafe_captions": len(unsafe)}}
    for split in splits:
        tags, own = zip(*(item_captions(split, i) for i in range(SPLITS[split])))
        n = len(tags)
        prompts = build_prompt_set(None, split)
        kinds = {}
        for kind in ("train", "template", "synonym"):
            ps = [p for p in prompts if p["wording"] == kind]
            kinds[kind] = {"prompts": len(ps), "safe_exact": sum(p["safe"] in safe for p in ps),
                           "unsafe_exact": sum(p["unsafe"] in unsafe for p in ps)}
        out[split] = {
            "items": n,
            "combination_in_train": sum(combination(t) in combos for t in tags),
            "reserved": sum(reserved(t) for t in tags),
            "S_exact": sum(o[0][0] in safe for o in own),
            "U_exact": sum(o[0][1] in unsafe for o in own),
            "prompts": kinds}
    return out


def format_table(r: dict) -> str:
    t = r["train"]
    lines = [f"train: {t['items']} items, {t['combinations']} combinations, "
             f"{t['safe_captions']} safe and {t['unsafe_captions']} unsafe distinct captions"]
    for split in (k for k in r if k != "train"):
        s = r[split]
        lines.append(f"{split}: {s['items']} items; combination in train {s['combination_in_train']}"
                     f", reserved (never in train) {s['reserved']}; own captions exactly in "
                     f"train: S {s['S_exact']}, U {s['U_exact']}")
        for kind, k in s["prompts"].items():
            lines.append(f"  generation prompts, {kind} wording: {k['prompts']} items, exactly "
                         f"in train: safe {k['safe_exact']}, unsafe {k['unsafe_exact']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="safeclip mini overlap", description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=None, help="first N training items (all)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = overlap(n_train=args.n_train)
    print(json.dumps(r, indent=2) if args.json else format_table(r))
    return 0
