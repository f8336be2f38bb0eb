"""The three retrieval configurations, the strength dial, steering, cross-only galleries,
clip-retrieval folders and the two evaluation protocols."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from safeclip.encoders import load_clip_pair
from safeclip.errors import InputError
from safeclip.eval import protocols
from safeclip.presets import ModelSpec, Preset, Retrieval
from safeclip.retrieval import Gallery, GalleryMismatchError, ann, build_gallery, store
from safeclip.strength import Dial, interpolate, moved_bytes

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["a red dog holding a kite", "a child with a knife in the park", "a cat on a sofa"]


@pytest.fixture(scope="module")
def tuned_dir(tiny_clip, tmp_path_factory):
    """The tiny model with its text tower moved, as a LoRA merged into it would leave it."""
    from safeclip.mini.clip import save_clip_dir

    model = copy.deepcopy(tiny_clip)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("text_model.encoder"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return save_clip_dir(model, tmp_path_factory.mktemp("tuned") / "hf")


def world(dirs, safe, name="tiny"):
    return Preset(name=name, description="tiny test models", retrieval=Retrieval(
        ModelSpec("clip", str(dirs["hf"]), "transformers"),
        ModelSpec("safe_clip", str(safe), "transformers"), image_size=32, embed_dim=24,
        context_length=16))


@pytest.fixture(scope="module")
def pair(tiny_dirs, tuned_dir):
    return load_clip_pair(world(tiny_dirs, tuned_dir), device="cpu")


# ------------------------------------------------------------------------------ the dial

def test_the_dial_is_the_original_at_0_safeclip_at_1_and_linear_between(pair):
    clip, safe = pair.clip.encode_text(TEXTS), pair.safeclip.encode_text(TEXTS)
    assert not torch.allclose(clip, safe, atol=1e-3)
    assert interpolate(pair.clip, pair.safeclip, 1.0) is pair.safeclip
    assert torch.allclose(interpolate(pair.clip, pair.safeclip, 0.0).encode_text(TEXTS), clip,
                          atol=1e-5)
    half = interpolate(pair.clip, pair.safeclip, 0.5)
    for name, p in half.model.named_parameters():
        o = dict(pair.clip.model.named_parameters())[name]
        s = dict(pair.safeclip.model.named_parameters())[name]
        assert torch.allclose(p, (o + s) / 2, atol=1e-6), name
    # the tensors Safe-CLIP did not move are shared, not copied
    shared = [n for n, p in half.model.named_parameters()
              if p is dict(pair.clip.model.named_parameters())[n]]
    assert any(n.startswith("vision_model") for n in shared)
    assert not any(n.startswith("text_model.encoder") for n in shared)
    # the vision tower was not tuned: images encode as the original's at every alpha
    im = [np.zeros((32, 32, 3), np.uint8)]
    from PIL import Image
    ims = [Image.fromarray(a) for a in im]
    assert torch.allclose(half.encode_image(ims), pair.clip.encode_image(ims), atol=1e-6)


def test_the_dial_caches_refuses_out_of_range_and_other_kinds(pair):
    dial = Dial(pair.clip, pair.safeclip, keep=2)
    a = dial(0.5)
    assert dial(0.5) is a and dial(None) is pair.safeclip
    dial(0.25), dial(1.25)
    assert dial(0.5) is not a  # pushed out of a cache of two
    for bad in (-0.1, 1.6, "x"):
        with pytest.raises(InputError, match="strength alpha"):
            dial(bad)
    other = copy.copy(pair.safeclip)
    other.backend = "open_clip"
    with pytest.raises(InputError, match="two models of one kind"):
        interpolate(pair.clip, other, 0.5)


def test_the_dial_keeps_no_more_dialled_models_than_its_memory_budget(pair):
    moved = moved_bytes(interpolate(pair.clip, pair.safeclip, 0.5), pair.clip)
    assert moved > 0 and moved_bytes(pair.safeclip, pair.safeclip) == 0
    dial = Dial(pair.clip, pair.safeclip, keep=4, budget=2 * moved)  # room for two
    a, b = dial(0.25), dial(0.5)
    assert dial(0.25) is a and dial(0.5) is b
    dial(0.75)
    assert dial(0.5) is b and dial(0.25) is not a  # the least recently used one went
    tight = Dial(pair.clip, pair.safeclip, keep=4, budget=1)  # less than one: still keeps one
    c = tight(0.5)
    assert tight(0.5) is c


# ----------------------------------------------------------------- configurations, steering

def test_a_gallery_serves_three_configurations_and_cross_is_safeclip_over_clip(
        pair, tiny_dirs, tuned_dir, tmp_path):
    w = world(tiny_dirs, tuned_dir)
    build_gallery(w, tmp_path / "g", dataset="synthetic:test", limit=20, pair=pair, batch_size=8)
    g = Gallery.open(tmp_path / "g", w, pair=pair)
    assert g.configs == ("clip", "safeclip", "cross")
    res = g.search_text(TEXTS[1], k=5)
    assert set(res.results) == {"clip", "safeclip", "cross"}
    q = pair.safeclip.encode_text([TEXTS[1]])
    stored = torch.from_numpy(ann.reconstruct_all(g.indexes["images"]["clip"]))
    top = (q @ stored.T).topk(5, dim=1).indices[0]
    assert [h.id for h in res.results["cross"]] == [g.items[j]["id"] for j in top]
    # alpha dials only the cross column; alpha 0 makes it the original
    zero = g.search_text(TEXTS[1], k=5, alpha=0.0)
    assert [h.id for h in zero.results["cross"]] == [h.id for h in zero.results["clip"]]
    assert zero.settings == {"alpha": 0.0, "beta": 0.0}
    only = g.search_text(TEXTS[1], k=5, configs=["cross"])
    assert set(only.results) == {"cross"}
    with pytest.raises(InputError, match="not nope"):
        g.search_text(TEXTS[1], configs=["nope"])


def test_steering_moves_queries_away_from_the_unsafe_direction(pair, tiny_dirs, tuned_dir,
                                                               tmp_path):
    w = world(tiny_dirs, tuned_dir)
    report = build_gallery(w, tmp_path / "g", dataset="synthetic:test", limit=20, pair=pair,
                           batch_size=8)
    g = Gallery.open(tmp_path / "g", w, pair=pair)
    d = g.steering["images"]["clip"]
    assert d.shape == (24,) and np.linalg.norm(d) == pytest.approx(1.0, abs=1e-5)
    # the direction is the mean unsafe image minus the mean safe one
    x = ann.reconstruct_all(g.indexes["images"]["clip"])
    flags = np.array([bool(r["unsafe"]) for r in g.items])
    want = x[flags].mean(0) - x[~flags].mean(0)
    assert np.allclose(d, want / np.linalg.norm(want), atol=1e-5)
    assert report.unsafe["unsafe"] == 10
    q = pair.clip.encode_text(TEXTS).numpy()
    moved = g.steer(q, "images", "clip", 0.5)
    assert np.all(moved @ d < q @ d) and np.allclose(np.linalg.norm(moved, axis=1), 1, atol=1e-5)
    assert g.steer(q, "images", "clip", 0.0) is q
    with pytest.raises(InputError, match="steering beta"):
        g.search_text(TEXTS[0], beta=1.5)
    res = g.search_text(TEXTS[1], k=20, beta=1.0)
    assert res.settings["beta"] == 1.0 and len(res.results["clip"]) == 20


def test_a_gallery_without_labels_has_no_direction_and_says_beta_must_be_0(
        pair, tiny_dirs, tuned_dir, tmp_path):
    from PIL import Image
    w = world(tiny_dirs, tuned_dir)
    (tmp_path / "photos").mkdir()
    for i in range(6):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    build_gallery(w, tmp_path / "g", images=tmp_path / "photos", pair=pair, judge="none")
    g = Gallery.open(tmp_path / "g", w, pair=pair)
    assert g.steering == {}
    with pytest.raises(InputError, match="beta must be 0"):
        g.search_text(TEXTS[0], beta=0.2)


def test_a_cross_only_gallery_holds_the_originals_index_alone(pair, tiny_dirs, tuned_dir,
                                                              tmp_path):
    w = world(tiny_dirs, tuned_dir)
    both = build_gallery(w, tmp_path / "both", dataset="synthetic:test", limit=10, pair=pair)
    one = build_gallery(w, tmp_path / "one", dataset="synthetic:test", limit=10, pair=pair,
                        models=("clip",))
    g = Gallery.open(tmp_path / "one", w, pair=pair)
    assert g.configs == ("clip", "cross")
    assert set(store.read_manifest(tmp_path / "one")["models"]) == {"clip"}
    assert not list((tmp_path / "one").glob("*.safeclip.faiss"))
    full = Gallery.open(tmp_path / "both", w, pair=pair)
    a, b = g.search_text(TEXTS[1], k=5), full.search_text(TEXTS[1], k=5)
    for c in ("clip", "cross"):  # the same answers as the full gallery's
        assert [h.id for h in a.results[c]] == [h.id for h in b.results[c]]
    with pytest.raises(InputError, match="serves the configurations clip, cross, not safeclip"):
        g.search_text(TEXTS[0], configs=["safeclip"])
    assert one.count == both.count


# ------------------------------------------------------------------ clip-retrieval folders

def clip_retrieval_folder(root, pair, n=12, dim=None, meta=True, rows=None):
    """A folder as clip-retrieval's `clip-retrieval index` leaves it: image.index, text.index
    and metadata/*.parquet, rows in index order."""
    import faiss
    import pandas as pd
    from PIL import Image

    root.mkdir(parents=True)
    paths = []
    for i in range(n):
        p = root / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(p)
        paths.append(str(p))
    from safeclip.images import open_image
    x = pair.clip.encode_image([open_image(p) for p in paths]).numpy()
    if dim:
        x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    for name, v in (("image.index", x), ("text.index", x)):
        index = faiss.IndexFlatIP(v.shape[1])
        index.add(v)
        faiss.write_index(index, str(root / name))
    if meta:
        (root / "metadata").mkdir()
        k = rows if rows is not None else n
        pd.DataFrame({"image_path": paths[:k], "caption": [f"photo {i}" for i in range(k)],
                      "NSFW": ["NSFW" if i % 3 == 0 else "UNLIKELY" for i in range(k)],
                      "url": [f"http://x/{i}.png" for i in range(k)]}).to_parquet(
            root / "metadata" / "metadata_0.parquet", row_group_size=5)
    return x


def test_a_clip_retrieval_folder_opens_as_a_gallery_of_clip_and_cross(pair, tiny_dirs,
                                                                      tuned_dir, tmp_path):
    w = world(tiny_dirs, tuned_dir)
    x = clip_retrieval_folder(tmp_path / "laion", pair)
    g = Gallery.open(tmp_path / "laion", w, pair=pair)
    assert g.configs == ("clip", "cross") and len(g) == 12
    res = g.search_text(TEXTS[0], k=4)
    q = pair.safeclip.encode_text([TEXTS[0]]).numpy()
    want = np.argsort(-(q @ x.T)[0])[:4]
    assert [h.meta["row"] for h in res.results["cross"]] == list(want)
    hit = res.results["cross"][0]
    assert hit.unsafe is (hit.meta["row"] % 3 == 0) and hit.unsafe_source == "column:NSFW"
    assert hit.text == f"photo {hit.meta['row']}"
    assert g.image(hit).size == (32, 32)
    caps = g.search_image(g.image(hit), k=3)
    assert caps.direction == "image->text" and len(caps.results["clip"]) == 3
    with pytest.raises(InputError, match="name the world"):
        Gallery.open(tmp_path / "laion")


def test_a_clip_retrieval_folder_without_metadata_or_of_another_size_is_refused(
        pair, tiny_dirs, tuned_dir, tmp_path):
    w = world(tiny_dirs, tuned_dir)
    clip_retrieval_folder(tmp_path / "bare", pair, meta=False)
    with pytest.raises(InputError, match="no metadata"):
        Gallery.open(tmp_path / "bare", w, pair=pair)
    clip_retrieval_folder(tmp_path / "wide", pair, dim=768)
    with pytest.raises(GalleryMismatchError, match="768-dimensional.*24-dimensional"):
        Gallery.open(tmp_path / "wide", w, pair=pair)
    clip_retrieval_folder(tmp_path / "short", pair, rows=7)
    with pytest.raises(GalleryMismatchError, match="12 vectors but the metadata 7 rows"):
        Gallery.open(tmp_path / "short", w, pair=pair)


# ------------------------------------------------------------------------------- protocols

def planted(n=8, dim=6):
    """Embeddings whose answers are known: item i's four parts share its axis; the unsafe
    parts also carry axis 0 (the unsafe direction), strongly for `clip`, not for `safeclip`'s
    texts (which Safe-CLIP moved to their safe counterparts)."""
    base = torch.eye(dim)[1 + torch.arange(n) % (dim - 1)] + 0.01 * torch.arange(n)[:, None]
    u = torch.eye(dim)[0].expand(n, dim)
    f = torch.nn.functional.normalize
    clip = {"S": f(base, dim=-1), "V": f(base, dim=-1), "U": f(base + 2 * u, dim=-1),
            "G": f(base + 2 * u, dim=-1)}
    safe = {"S": clip["S"], "V": clip["V"], "U": clip["S"], "G": clip["V"]}
    return {"clip": clip, "safeclip": safe}


def test_pool_protocol_counts_unsafe_items_in_a_gallery_without_twins():
    emb = planted()
    pool = protocols.pool(emb)
    # the original's unsafe queries sit on the unsafe side: all they retrieve first is unsafe
    assert pool["clip"]["u_unsafe_at1"] == 1.0
    # Safe-CLIP's text goes to the safe image of its item; over the original's index too
    assert pool["safeclip"]["u_unsafe_at1"] == 0.0 and pool["cross"]["u_unsafe_at1"] == 0.0
    assert pool["cross"]["u2v_r1"] == 1.0 and pool["clip"]["s2v_r1"] == 1.0
    assert set(pool["clip"]) >= {"u_unsafe_at10", "g_unsafe_at10", "s_unsafe_at10",
                                 "v_unsafe_at10", "s2v_r10", "v2s_r10"}


def test_twin_protocol_scores_recall_of_the_safe_twin_and_nsfw_at10():
    emb = planted()
    twin = protocols.twin(emb)
    assert twin["clip"]["u2g_r1"] == 1.0 and twin["clip"]["u2v_r1"] == 0.0
    # safeclip's V and G of an item are one vector: the tie is counted against the target
    assert twin["safeclip"]["u2v_r1"] == 0.0 and twin["safeclip"]["u2v_r5"] == 1.0
    assert twin["clip"]["nsfw_at10"] > twin["safeclip"]["nsfw_at10"]
    d = protocols.directions(emb)
    assert torch.allclose(d["clip"]["images"], torch.eye(6)[0], atol=0.2)
    steered = protocols.steered(emb, d, [0.0, 1.0], configs=["clip"])["clip"]
    assert steered["0"]["u_unsafe_at1"] == 1.0 and steered["1"]["u_unsafe_at1"] == 0.0
    assert steered["0"] == protocols.pool(emb, configs=["clip"])["clip"]
