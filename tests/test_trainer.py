"""Safe-CLIP fine-tuning on tiny models and a tiny rendered mini world."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from safeclip.mini.cache import render_split
    from safeclip.mini.clip import clip_config, new_clip, save_clip_dir

    root = tmp_path_factory.mktemp("world")
    render_split("train", root / "data", n=96, chunk=96)
    render_split("validation", root / "data", n=32, chunk=32)
    save_clip_dir(new_clip(clip_config(width=32, layers=1, heads=2), seed=0), root / "clip")
    return root


def sources(world, need=("S", "U", "V", "G")):
    from safeclip.mini.cache import load_split
    from safeclip.tokenizer import clip_tokenizer
    from safeclip.train.data import ArrayQuads

    tok = clip_tokenizer(32)
    return (ArrayQuads(load_split(world / "data", "train"), tok, 32, need),
            ArrayQuads(load_split(world / "data", "validation"), tok, 32, need))


def base_clip(world):
    from transformers import CLIPModel
    return CLIPModel.from_pretrained(world / "clip").train()


def config(out, **kw):
    from safeclip.train.lora import LoraSettings
    from safeclip.train.trainer import TrainConfig
    kw.setdefault("lora", LoraSettings(r=4, alpha=4, dropout=0.0))
    kw.setdefault("epochs", 2)
    return TrainConfig(out=str(out), batch=16, ckpt_every=2, cpu=True, **kw)


def adapter(run):
    return load_file(str(run / "checkpoint" / "adapter.safetensors"))


def test_reference_stays_frozen_while_ft_moves(tiny_world, tmp_path):
    from safeclip.train.trainer import reference_embeddings, train

    tr, va = sources(tiny_world)
    model, summary = train(config(tmp_path / "run", max_steps=5, lr=1e-2), base_clip(tiny_world), tr, va)
    cache = load_file(str(tmp_path / "run" / "ref_train.safetensors"))
    model.eval()
    with model.disable_adapter():  # the original, inside the trained model
        again = reference_embeddings(model, tr, ("S", "V"))
    torch.testing.assert_close(again["S"], cache["S"], atol=1e-5, rtol=0)
    torch.testing.assert_close(again["V"], cache["V"], atol=1e-5, rtol=0)
    moved = reference_embeddings(model, tr, ("S", "V"))  # adapter on: the tuned model
    assert (moved["V"] - cache["V"]).abs().max() > 1e-3
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert len(losses) == 5


def test_training_lowers_the_loss_and_text_mode_needs_no_unsafe_image(tiny_world, tmp_path):
    from safeclip.train.trainer import train

    tr, va = sources(tiny_world, need=("S", "U", "V"))
    _, summary = train(config(tmp_path / "t", mode="text", max_steps=12, lr=1e-2),
                       base_clip(tiny_world), tr, va)
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert set(summary["history"][0]) >= {"text_safe", "text_nsfw", "S_Vref", "U_Vref"}
    assert "G_Sref" not in summary["history"][0]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert any("recall_sum" in h for h in summary["history"])


def test_resume_continues_exactly(tiny_world, tmp_path):
    from safeclip.train.trainer import train

    tr, va = sources(tiny_world)
    train(config(tmp_path / "full", max_steps=8), base_clip(tiny_world), tr, va)
    train(config(tmp_path / "cut", max_steps=4), base_clip(tiny_world), tr, va)
    cut = json.loads((tmp_path / "cut" / "checkpoint" / "progress.json").read_text())
    assert cut["global_step"] == 4
    _, s = train(config(tmp_path / "cut", max_steps=8), base_clip(tiny_world), tr, va, resume=True)
    a, b = adapter(tmp_path / "full"), adapter(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    assert s["global_step"] == 8
    # the time before the cut counts: the card's "N steps in T s" is the whole training
    assert cut["seconds"] > 0 and s["seconds_this_run"] > 0
    assert s["seconds"] == pytest.approx(cut["seconds"] + s["seconds_this_run"], abs=0.15)


def test_early_stopping_after_patience(tiny_world, tmp_path):
    from safeclip.train.trainer import train

    tr, va = sources(tiny_world)
    # lr 0: validation never improves after the first epoch
    _, s = train(config(tmp_path / "es", lr=0.0, patience=1, epochs=5), base_clip(tiny_world), tr, va)
    epochs = [h for h in s["history"] if "val_loss" in h]
    assert len(epochs) == 2  # epoch 0 sets the best, epoch 1 fails to improve: stop


def test_export_round_trips(tiny_world, tmp_path):
    from safeclip.encoders import load_clip
    from safeclip.presets import ModelSpec, Preset, Retrieval
    from safeclip.train.export import export_all
    from safeclip.train.trainer import train

    tr, va = sources(tiny_world)
    model, _ = train(config(tmp_path / "ex", max_steps=4, lr=1e-2), base_clip(tiny_world), tr, va)
    model.eval()
    paths = export_all(model, tmp_path / "export")
    texts = ["a red man holding a gun on the beach", "a cat"]
    from PIL import Image
    images = [Image.fromarray(np.random.RandomState(i).randint(0, 255, (64, 64, 3), dtype=np.uint8))
              for i in range(2)]
    def world(kind, ref):
        spec = ModelSpec("clip", str(ref), kind)
        return Preset("w", "w", Retrieval(spec, spec, image_size=64, embed_dim=128))
    hf = load_clip(world("transformers", paths["merged"]))
    oc = load_clip(world("open_clip", paths["open_clip"]))
    with torch.no_grad():
        tok = hf.tokenizer(texts, padding="max_length", max_length=32, return_tensors="pt")
        from safeclip.encoders import image_features, text_features
        ref_t = torch.nn.functional.normalize(text_features(model, tok.input_ids, tok.attention_mask), dim=-1)
        px = hf.processor(images=images, return_tensors="pt").pixel_values
        ref_v = torch.nn.functional.normalize(image_features(model, px), dim=-1)
    for enc in (hf, oc):
        torch.testing.assert_close(enc.encode_text(texts), ref_t, atol=1e-5, rtol=0)
        torch.testing.assert_close(enc.encode_image(images), ref_v, atol=1e-5, rtol=0)
    from transformers import CLIPTextModel
    te = CLIPTextModel.from_pretrained(paths["text_encoder"])
    assert te.config.hidden_size == 32
    assert (paths["adapter"] / "adapter_config.json").exists()


def cli_args(world, out, steps):
    return [sys.executable, "-m", "safeclip.train.cli", "--preset", "mini", "--clip",
            str(world / "clip"), "--data-dir", str(world / "data"), "--out", str(out),
            "--batch", "16", "--max-steps", str(steps), "--ckpt-every", "1", "--lora-r", "4",
            "--lora-alpha", "4", "--lora-dropout", "0", "--cpu", "--no-export", "--log-level", "WARNING"]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return e


@pytest.mark.slow
def test_kill_9_then_resume_reaches_the_same_result(tiny_world, tmp_path):
    subprocess.run(cli_args(tiny_world, tmp_path / "ref", 10), check=True, env=env(), capture_output=True)
    proc = subprocess.Popen(cli_args(tiny_world, tmp_path / "k", 10), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "k" / "checkpoint" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if progress.exists() and json.loads(progress.read_text())["global_step"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(progress.read_text())["global_step"]
    assert killed_at < 10, "the run finished before it could be killed"
    subprocess.run(cli_args(tiny_world, tmp_path / "k", 10) + ["--resume"], check=True, env=env(),
                   capture_output=True)
    a, b = adapter(tmp_path / "ref"), adapter(tmp_path / "k")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_world, tmp_path):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    one = subprocess.run(cli_args(tiny_world, tmp_path / "one", 4), env=env(), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29533"]
                         + cli_args(tiny_world, tmp_path / "two", 4)[1:], env=env(),
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    h1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    h2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert h2["world_size"] == 2 and h1["world_size"] == 1
    l1 = [h["loss"] for h in h1["history"] if "loss" in h]
    l2 = [h["loss"] for h in h2["history"] if "loss" in h]
    assert len(l1) == len(l2) == 4
    np.testing.assert_allclose(l1, l2, rtol=1e-4, atol=1e-5)


def test_trimmed_padding_gives_the_same_text_features(tiny_clip):
    from safeclip.encoders import text_features
    from safeclip.train.trainer import trim_padding

    eos = int(tiny_clip.config.text_config.eos_token_id)
    ids = torch.full((3, 16), eos)
    ids[:, 0] = eos - 1  # start token
    ids[0, 1:4] = torch.tensor([320, 1929, 525])
    ids[1, 1:7] = torch.tensor([320, 1125, 539, 320, 2368, 518])
    trimmed = trim_padding(ids, eos)
    assert trimmed.shape == (3, 8)  # the longest row's end token is at position 7
    with torch.no_grad():
        torch.testing.assert_close(text_features(tiny_clip, trimmed), text_features(tiny_clip, ids),
                                   atol=1e-5, rtol=1e-5)
    no_end = ids.clone()
    no_end[2] = 7
    assert trim_padding(no_end, eos).shape == ids.shape  # left alone


def _lora_clip(tiny_clip):
    import copy

    from safeclip.train.lora import LoraSettings, add_lora

    model = add_lora(copy.deepcopy(tiny_clip), LoraSettings(dropout=0.0))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: lora_B is zero at initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_pooled_last_layer_gives_the_same_features_and_gradients(tiny_clip, tower):
    from safeclip.encoders import image_features, text_features
    from safeclip.train.pooled import pooled_last_layer, pooled_positions

    model = _lora_clip(tiny_clip)
    layer = model.get_base_model().text_model.encoder.layers[-1]
    eos = int(tiny_clip.config.text_config.eos_token_id)
    ids = torch.full((3, 10), eos)
    ids[:, 0] = eos - 1
    ids[0, 1:4] = torch.tensor([320, 1929, 525])
    ids[1, 1:8] = torch.tensor([320, 1125, 539, 320, 2368, 518, 77])
    pix = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def run(pooled: bool):
        model.zero_grad()
        if tower == "text":
            ctx = pooled_last_layer(model, "text", pooled_positions(ids, eos)) if pooled else None
            call = lambda: text_features(model, ids)
        else:
            ctx = pooled_last_layer(model, "vision") if pooled else None
            call = lambda: image_features(model, pix)
        if ctx is None:
            feats = call()
        else:
            with ctx:
                assert "forward" in vars(layer if tower == "text" else
                                         model.get_base_model().vision_model.encoder.layers[-1])
                feats = call()
        (feats * torch.linspace(-1, 1, feats.shape[-1])).sum().backward()
        return feats.detach(), _grads(model)

    full, g_full = run(False)
    pooled, g_pooled = run(True)
    torch.testing.assert_close(pooled, full, atol=1e-5, rtol=1e-5)
    assert g_full.keys() == g_pooled.keys() and len(g_full) > 0
    for name in g_full:
        torch.testing.assert_close(g_pooled[name], g_full[name], atol=1e-5, rtol=1e-4)
    assert "forward" not in vars(layer)  # removed on exit: the model is whole again
    after, _ = run(False)
    torch.testing.assert_close(after, full)


def test_pooled_positions_follow_transformers_rule():
    from safeclip.train.pooled import pooled_last_layer, pooled_positions

    ids = torch.tensor([[49406, 320, 49407, 49407], [49406, 49407, 0, 0]])
    assert pooled_positions(ids, 49407).tolist() == [2, 1]  # the first end token
    assert pooled_positions(torch.tensor([[5, 9, 2, 0]]), 2).tolist() == [1]  # legacy: highest id
    with pytest.raises(ValueError, match="pooled positions"), \
            pooled_last_layer(torch.nn.Module(), "text"):
        pass


def test_token_terms_train_the_patch_tokens_against_a_frozen_reference(tiny_world, tmp_path):
    from safeclip.train.losses import DEFAULT_WEIGHTS, cos_d
    from safeclip.train.trainer import DualEncoder, train, vision_pooled_and_tokens

    tr, va = sources(tiny_world)
    pix = tr.get(np.arange(32), np.zeros(32, int))
    original = base_clip(tiny_world).eval()
    with torch.no_grad():
        ref_tokens = vision_pooled_and_tokens(original, pix["V"], -1)[1]

    def run(name, weights):
        model, summary = train(config(tmp_path / name, max_steps=6, lr=1e-2, weights=weights),
                               base_clip(tiny_world), tr, va)
        model.eval()
        with torch.no_grad():
            out = DualEncoder(model, token_layer=-1)({"V": pix["V"], "G": pix["G"]})
        return out, [h for h in summary["history"] if "loss" in h]

    token_weights = {**DEFAULT_WEIGHTS, "vision_tokens_safe": 2.0, "vision_tokens_nsfw": 2.0}
    out, steps = run("tok", token_weights)
    plain, _ = run("plain", DEFAULT_WEIGHTS)
    assert len(steps) == 6
    assert steps[0]["vision_tokens_safe"] < 1e-6  # the adapter starts as the identity
    assert steps[0]["vision_tokens_nsfw"] > 1e-3  # G's tokens differ from their safe twin's
    # the reference tokens are the original's, whatever the adapter learnt
    torch.testing.assert_close(out["V_tokens_ref"], ref_tokens, atol=1e-5, rtol=0)
    assert (out["V_tokens"] - ref_tokens).abs().max() > 1e-3  # the tuned tokens moved
    assert out["G_tokens"].shape == ref_tokens.shape
    assert out["V"].shape == (32, original.config.projection_dim)
    # against the same training without them: safe tokens stay closer, unsafe ones come closer
    assert cos_d(out["V_tokens"], ref_tokens) < cos_d(plain["V_tokens"], ref_tokens)
    assert cos_d(out["G_tokens"], ref_tokens) < cos_d(plain["G_tokens"], ref_tokens)


def test_pooled_last_layer_honours_a_padding_mask(tiny_clip):
    from safeclip.encoders import text_features
    from safeclip.train.pooled import pooled_last_layer, pooled_positions

    model = _lora_clip(tiny_clip)
    eos = int(tiny_clip.config.text_config.eos_token_id)
    ids = torch.full((2, 8), eos)
    ids[:, 0] = eos - 1
    ids[0, 1:5] = torch.tensor([320, 1929, 525, 77])
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0  # padding after the second row's end token
    with torch.no_grad():
        full = text_features(model, ids, mask)
        with pooled_last_layer(model, "text", pooled_positions(ids, eos)):
            pooled = text_features(model, ids, mask)
    torch.testing.assert_close(pooled, full, atol=1e-5, rtol=1e-5)


def test_token_terms_alone_are_refused(tiny_world, tmp_path):
    from safeclip.train.trainer import train

    tr, va = sources(tiny_world)
    with pytest.raises(ValueError, match="pooled term beside them"):
        train(config(tmp_path / "t", max_steps=1, weights={"vision_tokens_safe": 1.0}),
              base_clip(tiny_world), tr, va)


def test_text_token_terms_move_every_position_and_the_mean_patch_token(tiny_world, tmp_path):
    from safeclip.train.losses import DEFAULT_WEIGHTS, align_tokens, cos_d
    from safeclip.train.trainer import DualEncoder, train, vision_pooled_and_tokens

    tr, va = sources(tiny_world)
    b = tr.get(np.arange(32), np.zeros(32, int))
    original = base_clip(tiny_world).eval()
    with torch.no_grad():
        ref_s = original.text_model(input_ids=b["S"]).last_hidden_state
        ref_v = vision_pooled_and_tokens(original, b["V"], -2)[1]
    align = align_tokens(b["U"], b["S"])
    target_u = ref_s.gather(1, align[..., None].expand(-1, -1, ref_s.shape[-1]))

    def run(name, weights, token_layer=-2):
        model, summary = train(config(tmp_path / name, max_steps=6, lr=1e-2, weights=weights,
                                      token_layer=token_layer), base_clip(tiny_world), tr, va)
        model.eval()
        with torch.no_grad():
            out = DualEncoder(model, token_layer=-2, text_tokens=True)(b)
        return out, [h for h in summary["history"] if "loss" in h]

    weights = {**DEFAULT_WEIGHTS, "text_tokens_safe": 2.0, "text_tokens_nsfw": 2.0,
               "vision_tokens_nsfw_mean": 2.0}
    out, steps = run("tok", weights)
    plain, _ = run("plain", DEFAULT_WEIGHTS)
    assert len(steps) == 6
    assert steps[0]["text_tokens_safe"] < 1e-6  # the adapter starts as the identity
    assert steps[0]["text_tokens_nsfw"] > 1e-3 and steps[0]["vision_tokens_nsfw_mean"] > 1e-4
    # every position of the context is returned (padding included), the reference is frozen
    assert out["S_tokens"].shape == out["U_tokens"].shape == ref_s.shape
    torch.testing.assert_close(out["S_tokens_ref"], ref_s, atol=1e-5, rtol=0)
    # against the same training without them: safe states stay closer to the original's, unsafe
    # ones come closer to their aligned safe states, the unsafe images' mean token to the safe one
    assert cos_d(out["S_tokens"], ref_s) < cos_d(plain["S_tokens"], ref_s)
    assert cos_d(out["U_tokens"], target_u) < cos_d(plain["U_tokens"], target_u)
    assert cos_d(out["G_tokens"].mean(1), ref_v.mean(1)) < \
        cos_d(plain["G_tokens"].mean(1), ref_v.mean(1))
