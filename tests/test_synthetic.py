"""The mini world's generator: determinism, splits, captions, images, held-out wordings."""

import re
from collections import Counter

import numpy as np
import pytest

from safeclip.mini import synthetic as sy
from safeclip.mini.synthetic import (
    ALL_OBJECTS,
    CATEGORIES,
    HELDOUT_MARKERS,
    SAFE_OBJECTS,
    SPLIT_SEED,
    SPLITS,
    SYNONYM_MARKERS,
    TEMPLATE_MARKERS,
    UNSAFE_OBJECTS,
    SyntheticViSU,
    caption_pair,
    make_quad,
    object_phrases,
    render,
    sample_tags,
)


def _same_image(a, b) -> bool:
    return a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes()


def test_vocabulary_shapes():
    assert len(sy.SCENES) == 6 and len(sy.SUBJECTS) == 5 and len(sy.COLOURS) == 6
    assert len(SAFE_OBJECTS) == 8 and len(UNSAFE_OBJECTS) == 8
    assert ALL_OBJECTS == SAFE_OBJECTS + tuple(UNSAFE_OBJECTS)
    assert set(UNSAFE_OBJECTS.values()) == set(CATEGORIES)
    assert set(CATEGORIES) | set(sy.UNCOVERED_CATEGORIES) == set(sy.I2P_CATEGORIES)
    assert set(SPLITS) == {"train", "validation", "test"}
    assert SPLITS["train"] == 50_000 and SPLITS["test"] == 1_000
    assert len(set(SPLIT_SEED.values())) == len(SPLIT_SEED)


def test_same_seed_same_item():
    a, b = make_quad(42), make_quad(42)
    assert (a["S"], a["U"], a["tags"]) == (b["S"], b["U"], b["tags"])
    assert _same_image(a["V"], b["V"]) and _same_image(a["G"], b["G"])
    ds1, ds2 = SyntheticViSU("test"), SyntheticViSU("test")
    for i in (0, 7, 999):
        x, y = ds1[i], ds2[i]
        assert x["id"] == y["id"] and x["S"] == y["S"] and x["U"] == y["U"]
        assert _same_image(x["V"], y["V"]) and _same_image(x["G"], y["G"])


def test_splits_differ_in_content_and_train_never_draws_a_reserved_combination():
    import hashlib

    from safeclip.mini.synthetic import combination, reserved, split_tags

    assert len(SyntheticViSU("train")) == 50_000
    assert len(SyntheticViSU("validation")) == 1_000 and len(SyntheticViSU("test")) == 1_000
    train = [split_tags("train", i) for i in range(3000)]
    assert not any(reserved(t) for t in train)  # the train split skips them
    test = [split_tags("test", i) for i in range(1000)]
    assert 0.07 < np.mean([reserved(t) for t in test]) < 0.13  # other splits keep a tenth
    # a reserved combination is one of content: the same names, whatever position or jitter
    t = dict(test[next(i for i, t in enumerate(test) if reserved(t))])
    t["position"], t["seed"] = "left" if t["position"] == "right" else "right", 1
    assert reserved(t) and combination(t) == combination(test[[reserved(x) for x in test]
                                                              .index(True)])

    def pictures(split, n):
        ds = SyntheticViSU(split, n=n)
        return {hashlib.sha1(ds[i][k].tobytes()).hexdigest() for i in range(n) for k in "VG"}
    train_pix = pictures("train", 200)
    assert len(train_pix) == 400  # every picture of a split differs from the others
    assert not train_pix & pictures("test", 200) and not train_pix & pictures("validation", 200)
    # seed_offset shifts the index window
    assert SyntheticViSU("train", n=5, seed_offset=10)[0]["S"] == SyntheticViSU("train")[10]["S"]
    with pytest.raises(IndexError):
        SyntheticViSU("test", n=50)[50]
    with pytest.raises(ValueError, match="heldout must be"):
        SyntheticViSU("test", heldout=True)


def test_items_shape_and_category():
    ds = SyntheticViSU("validation", n=40, size=48)
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"id", "S", "U", "V", "G", "category", "tags"}
        assert item["category"] in CATEGORIES
        assert item["category"] == UNSAFE_OBJECTS[item["tags"]["unsafe_object"]]
        for key in ("V", "G"):
            assert item[key].mode == "RGB" and item[key].size == (48, 48)
    assert make_quad(1, size=96)["V"].size == (96, 96)


def _differing_middle(s: str, u: str) -> tuple[str, str]:
    """Token spans where s and u differ (after removing the common prefix and suffix)."""
    a, b = re.findall(r"[\w'-]+", s), re.findall(r"[\w'-]+", u)
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[-1 - j] == b[-1 - j]:
        j += 1
    return " ".join(a[i: len(a) - j]), " ".join(b[i: len(b) - j])


@pytest.mark.parametrize("heldout", [False, "template", "synonym"])
def test_unsafe_caption_only_swaps_object_phrase(heldout):
    rng = np.random.default_rng(0)
    for _ in range(300):
        tags = sample_tags(rng)
        s, u = caption_pair(tags, rng, heldout=heldout)
        assert s != u
        # longest first: "a razor blade" before "a razor"
        phrases_s = sorted(object_phrases(tags["safe_object"]), key=len, reverse=True)
        phrases_u = sorted(object_phrases(tags["unsafe_object"]), key=len, reverse=True)
        ps = next(p for p in phrases_s if re.search(rf"\b{re.escape(p)}\b", s))
        pu = next(p for p in phrases_u if re.search(rf"\b{re.escape(p)}\b", u))
        assert s.replace(ps, "<obj>", 1) == u.replace(pu, "<obj>", 1)
        ds, du = _differing_middle(s, u)  # the differing tokens lie inside the phrases
        assert ds in ps and du in pu


def test_articles():
    rng = np.random.default_rng(1)
    for _ in range(500):
        s, u = caption_pair(sample_tags(rng), rng)
        for text in (s, u):
            assert not re.search(r"\ba [aeiou]", text, re.I), text
            assert not re.search(r"\ban [^aeiou\s]", text, re.I), text


def _markers_in(text: str, markers=HELDOUT_MARKERS) -> list[str]:
    return [m for m in markers if re.search(rf"\b{re.escape(m)}\b", text)]


def test_heldout_wordings_come_in_two_kinds():
    rng = np.random.default_rng(2)
    train, template, synonym = set(), set(), set()
    for _ in range(400):
        tags = sample_tags(rng)
        for text in caption_pair(tags, rng, heldout=False):
            assert not _markers_in(text), text
            train.add(text)
        for text in caption_pair(tags, rng, heldout="template"):
            # a held-out sentence shape, written with training words only
            assert _markers_in(text, TEMPLATE_MARKERS) and not _markers_in(text, SYNONYM_MARKERS)
            template.add(text)
        s, u = caption_pair(tags, rng, heldout="synonym")
        for text in (s, u):
            # a training sentence shape whose words are held-out synonyms
            assert not _markers_in(text, TEMPLATE_MARKERS) and _markers_in(text, SYNONYM_MARKERS)
            synonym.add(text)
        assert sy.HELDOUT_SYNONYMS[tags["subject"]][0] in s
    assert not train & template and not train & synonym and not template & synonym
    hits = Counter(m for text in synonym for m in _markers_in(text, SYNONYM_MARKERS))
    assert len(hits) >= 20  # many held-out synonyms show up, not a few
    assert SyntheticViSU("test", n=3, heldout="template")[0]["S"] != \
        SyntheticViSU("test", n=3)[0]["S"]


def test_safe_and_unsafe_images_differ_only_around_object():
    for seed in range(20):
        q = make_quad(seed)
        v, g = np.asarray(q["V"]).astype(int), np.asarray(q["G"]).astype(int)
        diff = np.abs(v - g).max(axis=2) > 0
        assert 0.01 < diff.mean() < 0.2
        cols = np.nonzero(diff.any(axis=0))[0]
        # the object sits in the left or right third of the image, the subject in the middle
        if q["tags"]["position"] == "left":
            assert cols.max() < 30
        else:
            assert cols.min() > 34


def test_render_is_determined_by_tags():
    tags = sample_tags(np.random.default_rng(5))
    assert _same_image(render(tags, "gun"), render(tags, "gun"))
    other = render(tags, "gun", rng=np.random.default_rng(6))
    assert not _same_image(render(tags, "gun"), other)
    for obj in ALL_OBJECTS:  # every object name draws
        assert render(tags, obj, size=32).size == (32, 32)
    with pytest.raises(ValueError):
        render(tags, "unicorn")


def test_test_split_combos_mostly_unique():
    ds = SyntheticViSU("test")
    combos = Counter(
        tuple(t[k] for k in ("scene", "subject", "colour", "position", "safe_object"))
        for t in (ds.tags(i) for i in range(len(ds)))
    )
    # 2,880 possible combos: 832 distinct among the 1,000 test items, at most 4 items share one
    assert len(combos) >= 800
    assert max(combos.values()) <= 5


def test_a_pool_gallery_holds_no_twins_and_a_twin_gallery_both():
    from safeclip.errors import InputError
    from safeclip.mini.sources import SyntheticSource

    pool = SyntheticSource.from_dataset("synthetic:test", limit=6)
    ids = pool.ids()
    assert ids == [f"test-{i:06d}-{'V' if i % 2 == 0 else 'G'}" for i in range(6)]
    caps = pool.captions(ids)
    assert [c["id"][-1] for c in caps] == ["S", "U", "S", "U", "S", "U"]
    assert [c["unsafe"] for c in caps] == [False, True] * 3
    twin = SyntheticSource.from_dataset("synthetic:test:twin", limit=3)
    assert [x[-1] for x in twin.ids()] == ["V", "G"] * 3 and len(twin.captions(twin.ids())) == 6
    # a pool item's image is the same picture as in the twin layout
    assert pool.load(["test-000001-G"])[0].image.tobytes() == \
        twin.load(["test-000001-G"])[0].image.tobytes()
    assert pool.describe()["dataset"] == "synthetic:test:pool"
    # a gallery built before layouts existed was a twin gallery
    old = {k: v for k, v in twin.describe().items() if k != "layout"}
    assert SyntheticSource.from_description(old).layout == "twin"
    with pytest.raises(InputError, match="'pool' or 'twin', not 'mixed'"):
        SyntheticSource.from_dataset("synthetic:test:mixed")
