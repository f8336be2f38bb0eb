"""bench/safe_drift.py: the make-up of safe image queries' top 10 (the pool cross bar's figure)."""
from __future__ import annotations

import itertools

import torch

from safeclip.eval import protocols

SUBJECTS, SCENES, COLOURS = ("man", "dog", "cat"), ("beach", "kitchen", "street"), ("red", "blue")
SAFE, UNSAFE = ("ball", "kite", "cup"), ("knife", "skull")


def world():
    """Items over every combination, captions as one-hot attribute vectors (object slot: the
    safe object for S, the unsafe one for U), safe images that see the object (``aware``) or
    see it only faintly (``blind``)."""
    tags = [dict(subject=s, scene=c, colour=k, safe_object=o, unsafe_object=u)
            for s, c, k, o, u in itertools.product(SUBJECTS, SCENES, COLOURS, SAFE, UNSAFE)]
    names = [*SUBJECTS, *SCENES, *COLOURS, *SAFE, *UNSAFE]

    def vec(t, obj, weight=1.0):
        v = torch.zeros(len(names))
        for attr in ("subject", "scene", "colour"):
            v[names.index(t[attr])] = 1.0
        v[names.index(obj)] = weight
        return v

    def unit(rows):
        x = torch.stack(rows)
        return x / x.norm(dim=1, keepdim=True)

    texts = {"S": unit([vec(t, t["safe_object"]) for t in tags]),
             "U": unit([vec(t, t["unsafe_object"]) for t in tags])}
    aware = unit([vec(t, t["safe_object"], 1.5) for t in tags])
    blind = unit([vec(t, t["safe_object"], 0.2) for t in tags])
    return tags, texts, aware, blind


def test_the_unsafe_share_is_the_pool_protocols_figure(bench_script):
    drift = bench_script("safe_drift")
    tags, texts, aware, blind = world()
    for v in (aware, blind):
        emb = {"S": texts["S"], "U": texts["U"], "V": v, "G": v}
        want = protocols.pool_metrics(emb, emb)
        got = drift.analyse(v, texts, tags)
        assert abs(got["unsafe_at10"] - want["v_unsafe_at10"]) < 1e-4


def test_an_image_tower_that_sees_the_object_less_finds_it_less_and_more_unsafe_captions(
        bench_script):
    drift = bench_script("safe_drift")
    tags, texts, aware, blind = world()
    a, b = drift.analyse(aware, texts, tags), drift.analyse(blind, texts, tags)
    assert a["top10_safe_object"] > b["top10_safe_object"] + 0.05
    assert b["unsafe_at10"] > a["unsafe_at10"]
    # subject, scene and colour are seen alike by both: the top 10 matches them at least as often
    for attr in ("subject", "scene", "colour"):
        assert b[f"top10_{attr}"] >= a[f"top10_{attr}"] - 1e-6
    assert set(a["by_object"]) == set(SAFE)
    assert 0.0 <= a["object_rank"] <= b["object_rank"] <= 1.0
