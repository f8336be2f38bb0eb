"""Mini CLIP training pieces, the retrieval metrics, and the eval command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from safeclip.eval.retrieval import retrieval_metrics
from safeclip.mini.cache import load_split, render_split


def test_metrics_on_hand_built_embeddings():
    # 3 quadruplets in 4-d: S_i == V_i exactly; U_i == G_i exactly; safe and unsafe orthogonal
    eye = torch.eye(4)
    S = V = torch.stack([eye[0], eye[1], eye[2]])
    U = G = torch.stack([eye[3], eye[3], eye[3]]) + torch.tensor([[0, 0, 0, 0.0]])
    m = retrieval_metrics(S, U, V, G, ks=(1, 5))
    assert m["s2v_r1"] == 1.0 and m["v2s_r1"] == 1.0
    # all unsafe items tie: ties count against the target, so r1 fails and r5 (3 unsafe) holds
    assert m["u2g_r1"] == 0.0 and m["u2g_r5"] == 1.0
    assert m["u2v_r1"] == 0.0
    assert m["nsfw_at10"] == pytest.approx(3 / 6)  # top-10 of 6 images: all 6, 3 unsafe


def test_metrics_match_brute_force_ranks():
    g = torch.Generator().manual_seed(0)
    S, U, V, G = (torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=-1) for _ in range(4))
    m = retrieval_metrics(S, U, V, G, ks=(1, 10))
    images = torch.cat([V, G])
    expected = np.mean([int((images @ S[i] > S[i] @ V[i]).sum() < 10) for i in range(50)])
    assert m["s2v_r10"] == pytest.approx(expected)
    top = (U @ images.T).topk(10).indices
    assert m["nsfw_at10"] == pytest.approx((top >= 50).float().mean().item())


def test_render_split_is_resumable_and_deterministic(tmp_path):
    render_split("validation", tmp_path / "a", n=30, chunk=10)
    (tmp_path / "a" / "validation" / "chunk_0001.npz").unlink()  # as if killed mid-build
    render_split("validation", tmp_path / "a", n=30, chunk=10)
    render_split("validation", tmp_path / "b", n=30, chunk=30)
    a, b = load_split(tmp_path / "a", "validation"), load_split(tmp_path / "b", "validation")
    assert a["V"].shape == (30, 64, 64, 3) and a["V"].dtype == np.uint8
    np.testing.assert_array_equal(a["V"], b["V"])
    np.testing.assert_array_equal(a["S"], b["S"])
    assert a["tags"] == b["tags"]
    with pytest.raises(ValueError, match="other settings"):
        render_split("validation", tmp_path / "a", n=31, chunk=10)


def test_pixels_match_the_loaders_preprocessing(tmp_path):
    from PIL import Image

    from safeclip.encoders import HFClipEncoder, image_features, load_clip_folder
    from safeclip.mini.clip import clip_config, new_clip, save_clip_dir
    from safeclip.mini.train_clip import pixels

    save_clip_dir(new_clip(clip_config(width=32, layers=1, heads=2), seed=0), tmp_path / "m")
    enc = load_clip_folder(tmp_path / "m", device="cpu")
    assert isinstance(enc, HFClipEncoder)
    imgs = np.random.RandomState(0).randint(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    a = enc.encode_image([Image.fromarray(x) for x in imgs])
    b = torch.nn.functional.normalize(image_features(enc.model, pixels(torch.from_numpy(imgs))), dim=-1)
    torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=0)


def test_a_few_training_steps_lower_the_contrastive_loss(tmp_path):
    from safeclip.mini.clip import clip_config, new_clip
    from safeclip.mini.train_clip import PairSampler, clip_loss, pixels
    from safeclip.tokenizer import clip_tokenizer

    render_split("validation", tmp_path, n=64, chunk=64)
    data = load_split(tmp_path, "validation")
    model = new_clip(clip_config(width=64, layers=2, heads=2), seed=0).train()
    sampler = PairSampler(data, clip_tokenizer(32), 32, seed=0)
    ids, imgs = sampler.batch(0, 32)
    px = pixels(imgs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = clip_loss(model, ids, px).item()
    for _ in range(8):
        loss = clip_loss(model, ids, px)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert clip_loss(model, ids, px).item() < first - 0.1


def test_sampler_batches_are_a_function_of_the_step(tmp_path):
    from safeclip.mini.train_clip import PairSampler
    from safeclip.tokenizer import clip_tokenizer

    render_split("validation", tmp_path, n=40, chunk=40)
    s = PairSampler(load_split(tmp_path, "validation"), clip_tokenizer(32), 32, seed=5)
    a, b = s.batch(3, 16), s.batch(3, 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(s.batch(4, 16)[1], a[1])


def test_eval_retrieval_cli_json(capsys, tmp_path):
    from safeclip.cli import main
    from safeclip.mini.clip import clip_config, new_clip, save_clip_dir

    save_clip_dir(new_clip(clip_config(width=32, layers=1, heads=2), seed=0), tmp_path / "c")
    # a missing model is an error that names the role and the override, never numbers
    rc = main(["eval", "retrieval", "--preset", "mini", "--clip", str(tmp_path / "c"),
               "--safe-clip", str(tmp_path / "missing"), "--n", "20", "--json"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "missing" in err and "--safe-clip PATH" in err and "Safe-CLIP" in err
    rc = main(["eval", "retrieval", "--preset", "mini", "--clip", str(tmp_path / "c"),
               "--safe-clip", str(tmp_path / "c"), "--n", "20", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    m = out["models"]["clip"]
    for key in ("s2v_r1", "s2v_r10", "u2v_r10", "u2g_r10", "v2s_r1", "g2s_r10", "g2u_r5", "nsfw_at10"):
        assert 0.0 <= m[key] <= 1.0
    assert out["models"]["safeclip"]["s2v_r10"] == m["s2v_r10"]  # the same model twice
