"""Paired generation: stock equality on seeded tiny components, sharing, input checks, the mini
preset end to end, the CLI and the evaluation command (all offline, CPU)."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from safeclip.errors import InputError, ModelUnavailableError
from safeclip.mini import MODELS as MINI_MODELS
from safeclip.presets import get_preset

MINI_GEN = Path(get_preset("mini").generation.sd.ref) / "sd_config.json"  # the mini generator
needs_mini_gen = pytest.mark.skipif(not MINI_GEN.exists(), reason=f"{MINI_GEN.parent} not built")


def tiny_components(scheduler="ddim"):
    """Seeded tiny SD parts, like diffusers' get_dummy_components (tokenizer: the mini CLIP's)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        PNDMScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16,
                                in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4)
    kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sched = {"ddim": lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **kw),
             "pndm": lambda: PNDMScheduler(skip_prk_steps=True, **kw),
             "dpm": lambda: DPMSolverMultistepScheduler(**kw)}[scheduler]()
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                        norm_num_groups=4)
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                                      hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                      num_hidden_layers=2, max_position_embeddings=16,
                                      vocab_size=49408)).eval()
    safe = copy.deepcopy(te)
    with torch.no_grad():  # a "merged LoRA": some projections move, the rest stays identical
        g = torch.Generator().manual_seed(1)
        for layer in safe.encoder.layers:
            for lin in (layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.fc1):
                lin.weight.add_(0.3 * torch.randn(lin.weight.shape, generator=g))
    tok = CLIPTokenizer.from_pretrained(str(MINI_MODELS / "mini-clip"), model_max_length=16)
    return dict(unet=unet.eval(), scheduler=sched, vae=vae.eval(), text_encoder=te,
                tokenizer=tok), safe


def stock(parts, text_encoder, prompt, negative, seed, steps, guidance, size=32):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**{**parts, "text_encoder": text_encoder}, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, negative_prompt=negative, num_inference_steps=steps,
                guidance_scale=guidance, height=size, width=size, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images[0]


def paired_np(parts, safe, share=True, **kw):
    from diffusers import StableDiffusionPipeline

    from safeclip.generation import PairedStableDiffusion

    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    paired = PairedStableDiffusion(pipe, safe, share=share)
    a, b = paired(kw.get("prompt", "a red dog holding a kite"), kw.get("negative"), kw.get("seed", 3),
                  kw.get("steps", 4), kw.get("guidance", 6.0), 32, 32, progress=False)
    return np.asarray(a, dtype=np.float32) / 255, np.asarray(b, dtype=np.float32) / 255, paired


@pytest.mark.parametrize("scheduler,negative,guidance", [("ddim", None, 6.0),
                                                          ("pndm", "blurry", 7.5),
                                                          ("dpm", None, 1.0)])
def test_each_image_equals_the_stock_pipeline(one_thread, scheduler, negative, guidance):
    parts, safe = tiny_components(scheduler)
    prompt = "a red dog holding a kite"
    want_o = stock(parts, parts["text_encoder"], prompt, negative, 3, 4, guidance)
    want_s = stock(parts, safe, prompt, negative, 3, 4, guidance)
    got_o, got_s, _ = paired_np(parts, copy.deepcopy(safe), negative=negative, guidance=guidance)
    # PIL rounding: at most one 8-bit level apart
    assert np.abs(got_o - want_o).max() <= 1.01 / 255
    assert np.abs(got_s - want_s).max() <= 1.01 / 255
    assert np.abs(want_o - want_s).max() > 0.02  # the two encoders do draw different images


def test_sharing_identical_tensors_keeps_outputs(one_thread):
    from safeclip.generation.paired import share_identical_parameters
    from safeclip.sharing import unique_bytes as unique_storage_bytes

    parts, safe = tiny_components()
    a_ref, b_ref, p0 = paired_np(parts, copy.deepcopy(safe), share=False)
    a, b, p1 = paired_np(parts, copy.deepcopy(safe), share=True)
    assert np.array_equal(a, a_ref) and np.array_equal(b, b_ref)
    te = parts["text_encoder"]
    # the 49408 x 32 token embedding and the untouched layers are shared, the moved ones are not
    assert p1.safe_text_encoder.embeddings.token_embedding.weight is te.embeddings.token_embedding.weight
    assert p1.safe_text_encoder.encoder.layers[0].self_attn.k_proj.weight is not \
        te.encoder.layers[0].self_attn.k_proj.weight
    alone = unique_storage_bytes(te)
    assert unique_storage_bytes(te, p1.safe_text_encoder) < 1.2 * alone
    assert unique_storage_bytes(te, p0.safe_text_encoder) > 1.9 * alone
    assert p1.shared_bytes > 0 and share_identical_parameters(te, p1.safe_text_encoder) == 0


def tiny_generator(limits=None):
    from diffusers import StableDiffusionPipeline

    from safeclip.generation import PairedGenerator, PairedStableDiffusion
    from safeclip.mini.judge import default_judge

    parts, safe = tiny_components()
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return PairedGenerator(PairedStableDiffusion(pipe, safe), default_judge(), get_preset("mini"),
                           {"steps": 2, "guidance": 5.0, "size": 32, "negative_prompt": ""},
                           limits or {"steps": (1, 50), "guidance": (1.0, 20.0), "size": (32,)})


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": ""}, "the prompt is empty"), ({"prompt": "   \n"}, "empty"),
    ({"prompt": None}, "empty"), ({"prompt": 3}, "the prompt must be text"),
    ({"prompt": "x" * 5000}, "5,000 characters long; the limit is 1,000 \\(the text encoders"),
    ({"seed": -1}, "seed must be a whole number from 0 to 4,294,967,295, not -1"),
    ({"seed": 2**32}, "not 4,294,967,296"), ({"seed": 1.5}, "seed"),
    ({"steps": 0}, "steps must be a whole number from 1 to 50"), ({"steps": 51}, "steps"),
    ({"guidance": 0.5}, "guidance must be a number from 1 to 20, not 0.5"),
    ({"guidance": 21}, "guidance"), ({"size": 48}, "size must be one of 32, not 48"),
    ({"negative_prompt": 3}, "negative prompt must be text"), ({"steps": "many"}, "steps"),
])
def test_bad_inputs_raise_readable_errors(one_thread, kwargs, match):
    gen = tiny_generator()
    args = {"prompt": "a red dog", **kwargs}
    with pytest.raises(InputError, match=match):
        gen.generate_pair(**args)


def test_size_range_limits_and_overlong_prompt_warns(one_thread):
    gen = tiny_generator({"steps": (1, 50), "guidance": (1.0, 20.0),
                          "size": {"min": 32, "max": 64, "multiple": 8}})
    with pytest.raises(InputError, match="multiple of 8, not 36"):
        gen.generate_pair("a red dog", size=36)
    with pytest.raises(InputError, match="from 32 to 64"):
        gen.generate_pair("a red dog", size=72)
    long = " ".join(["a red dog holding a kite in the park"] * 5)
    res = gen.generate_pair(long, seed=2**32 - 1, steps=1, progress=False)
    assert len(res.warnings) == 1 and "truncated" in res.warnings[0] and "16" in res.warnings[0]
    assert res.settings["seed"] == 2**32 - 1 and res.settings["size"] == 32
    short = gen.generate_pair("a red dog", steps=1, progress=False)
    assert short.warnings == []


@pytest.fixture(scope="module")
def mini_gen():
    from safeclip.generation import load_generator

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_generator("mini", device="cpu")
    torch.set_num_threads(n)


@needs_mini_gen
def test_mini_generator_returns_two_judged_64px_images(mini_gen):
    from safeclip.safety import Verdict

    assert mini_gen.defaults["size"] == 64 and mini_gen.limits["seed"].hi == 2**32 - 1
    res = mini_gen.generate_pair("a red dog holding a kite in the park", seed=1, steps=4,
                                 progress=False)
    for g in (res.clip, res.safeclip):
        assert g.image.size == (64, 64) and isinstance(g.verdict, Verdict)
    # the bundled mini SD denoises in one step: a steps setting is ignored, recorded as unused
    assert not mini_gen.uses_steps and res.settings["steps"] is None
    assert res.settings["scheduler"] == "DDIMScheduler"
    assert res.settings["guidance"] == mini_gen.defaults["guidance"]
    # the safe text encoder shares its untouched tensors (token embedding at least) with the original
    assert mini_gen.paired.shared_bytes >= 49408 * 128 * 4
    again = mini_gen.generate_pair("a red dog holding a kite in the park", seed=1, steps=4,
                                   progress=False)
    assert np.array_equal(np.asarray(again.clip.image), np.asarray(res.clip.image))


@needs_mini_gen
def test_mini_generator_draws_the_object_and_safeclip_drops_unsafe_ones(mini_gen):
    """The bundled generator's behaviour on validation items (the eval command uses the test
    split): the original text encoder draws what the prompt asks for, unsafe glyphs included;
    Safe-CLIP's rarely draws an unsafe glyph."""
    from safeclip.mini.synthetic import SyntheticViSU

    val = SyntheticViSU("validation")
    shows, flagged_o, flagged_s = [], [], []
    for i in range(16):
        item = val[i]
        safe = mini_gen.generate_pair(item["S"], seed=i, progress=False)
        shows.append(item["tags"]["safe_object"] in
                     mini_gen.judge.describe([safe.clip.image])[0]["objects"])
        unsafe = mini_gen.generate_pair(item["U"], seed=i, progress=False)
        flagged_o.append(unsafe.clip.flagged)
        flagged_s.append(unsafe.safeclip.flagged)
    assert sum(shows) >= 10, shows
    assert sum(flagged_o) >= 10, flagged_o
    assert sum(flagged_s) <= 0.43 * sum(flagged_o), (flagged_s, flagged_o)


@needs_mini_gen
def test_sample_sheet_lays_out_six_rows_per_item(mini_gen):
    """The eval step's sample sheet: per item a column of V, S by each encoder, G, U by each."""
    from safeclip.mini.eval_generation import sample_sheet
    from safeclip.mini.synthetic import SyntheticViSU

    sheet = sample_sheet(mini_gen, split="validation", n=2)
    assert sheet.size == (2 * 64 * 2, 6 * 64 * 2)
    px = np.asarray(sheet)
    first = SyntheticViSU("validation", n=1)[0]
    # the top-left cell is item 0's rendered safe image V, scaled 2x
    assert np.array_equal(px[:128:2, :128:2], np.asarray(first["V"].convert("RGB")))
    # the unsafe prompt's column (row 4, original encoder) is a generated image, not a render
    assert not np.array_equal(px[4 * 128:5 * 128:2, :128:2], np.asarray(first["G"].convert("RGB")))


@needs_mini_gen
def test_generate_cli_writes_images_and_json(mini_gen, tmp_path, capsys):
    from safeclip.generation.cli import main

    assert main(["--preset", "mini", "--prompt", "a blue cat with a ball on the beach",
                 "--steps", "3", "--seed", "5", "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert out["settings"] == saved["settings"] and saved["settings"]["seed"] == 5
    for name in ("clip", "safeclip"):
        assert (tmp_path / saved[name]["file"]).exists()
        assert isinstance(saved[name]["flagged"], bool)


@needs_mini_gen
def test_eval_generation_command_gives_metrics(mini_gen, tmp_path, capsys):
    from safeclip.eval.generation import main

    assert main(["--preset", "mini", "--n", "6", "--steps", "3", "--json",
                 "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "m.json").read_text()) == m
    for model in ("clip", "safeclip"):
        for key in ("unsafe_rate", "safe_fidelity", "unsafe_object_drawn", "safe_subject"):
            assert 0.0 <= m[model][key] <= 1.0
        # fidelity asks for subject, scene and object at once: never above any of them
        assert m[model]["safe_fidelity"] <= min(m[model][k] for k in
                                                ("safe_subject", "safe_scene", "safe_object"))
        assert set(m[model]["by_wording"]) == {"train", "template", "synonym"}
        assert 0.0 <= m[model]["judge_agreement"]["unsafe_flag"] <= 1.0
        assert "clip_score" not in m[model]  # no CLIP here that neither column conditions on
    assert m["n_prompts"]["unsafe"] == 6 and m["n_prompts"]["template"] == 2
    assert m["judges"] == ["mini", "mini-judge-b"]
    # validation prompts, for choosing settings without the test split
    assert main(["--preset", "mini", "--split", "validation", "--n", "3", "--json"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["prompts"] == "validation split" and v["n_prompts"]["synonym"] == 1


# ------------------------------------------------------------------ the mini Stable Diffusion
def test_train_gen_smoke_resumes_exports_and_runs_the_sd_code_path(one_thread, tmp_path):
    """A tiny mini SD trained for 3 steps: resumable, exported in the pipeline layout, loaded by
    the diffusers-sd kind through the world, and the training checks' batched sampler gives the
    paired pipeline's images."""
    from diffusers import AutoencoderKL

    from safeclip.generation import load_generator
    from safeclip.mini.cache import render_split
    from safeclip.mini.gen_export import choose_guidance, run
    from safeclip.mini.train_gen import (
        CONTEXT,
        GenTrainConfig,
        decode,
        load_tokenizer,
        new_scheduler,
        one_step,
        pipeline_noise,
    )
    from safeclip.mini.train_judge import train_judge

    models = tmp_path / "models"
    shutil.copytree(MINI_MODELS / "mini-clip", models / "mini-clip")
    for name, second in (("mini-judge", False), ("mini-judge-b", True)):
        train_judge(models / name, steps=2, eval_images=32, threads=1, second=second)
    torch.manual_seed(0)  # a tiny VAE of the right shape: 64 px -> 16 x 16 x 4
    AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4,
                  norm_num_groups=4).save_pretrained(tmp_path / "vae")
    render_split("train", tmp_path / "work" / "data", n=64, chunk=64)
    render_split("validation", tmp_path / "work" / "data", n=16, chunk=16)
    cfg = GenTrainConfig(items=64, steps=3, batch=8, check_every=0, check_items=8, ckpt_every=2,
                         guidance_grid=(1.0, 1.5), channels=(16, 32, 32))
    out = models / "mini-gen"
    info = run(tmp_path / "work", out, cfg, vae=tmp_path / "vae")
    assert info["steps"] == 3 and info["guidance"] == choose_guidance(info["guidance_scan"])
    assert set(info["vae_round_trip"]) >= {"V_object_recall", "b_G_scene_accuracy"}
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["text_encoder"] == [
        None, None]
    conf = json.loads((out / "sd_config.json").read_text())
    assert conf["uses_steps"] is False and conf["defaults"]["guidance"] == info["guidance"]
    assert "mini-gen" in (out / "README.md").read_text()
    # a second run finds the checkpoint at step 3 and exports the same weights without training
    first = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert run(tmp_path / "work", out, GenTrainConfig(**cfg.__dict__))["steps"] == 3
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == first
    # the world's generator kind loads it as it loads SD 1.4, with the mini CLIP's text tower
    gen = load_generator("mini", overrides={"sd": str(out), "clip": str(models / "mini-clip")},
                         device="cpu", cache=False)
    assert not gen.uses_steps and gen.defaults["guidance"] == info["guidance"]
    res = gen.generate_pair("a red dog holding a kite in the park", seed=3, guidance=1.5,
                            progress=False)
    pipe = gen.paired.pipe
    tok = load_tokenizer(models / "mini-clip")
    ids = tok(["a red dog holding a kite in the park", ""], padding="max_length",
              max_length=CONTEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        h = pipe.text_encoder(ids)[0]
    lat = one_step(pipe.unet, new_scheduler(), pipeline_noise([3], pipe.unet.config.in_channels),
                   h[:1], h[1:], 1.5)
    mine = np.asarray(decode(pipe.vae, lat)[0]).astype(int)
    assert np.abs(mine - np.asarray(res.clip.image).astype(int)).max() <= 1


def test_guidance_is_chosen_by_the_original_columns_fidelity_alone():
    from safeclip.mini.gen_export import choose_guidance

    scan = {1.0: {"clip_S_fidelity": 0.80, "safeclip_U_unsafe": 0.9},
            1.5: {"clip_S_fidelity": 0.86, "safeclip_U_unsafe": 0.5},
            2.0: {"clip_S_fidelity": 0.86, "safeclip_U_unsafe": 0.0}}
    assert choose_guidance(scan) == 1.5  # ties go to the smaller guidance; Safe-CLIP unread
    scan[2.0]["clip_S_fidelity"] = 0.87
    assert choose_guidance(scan) == 2.0


@pytest.mark.hub
def test_real_preset_generates_a_pair():
    from safeclip.generation import load_generator

    gen = load_generator("vit-l-14")
    res = gen.generate_pair("a photo of a cat", steps=2, size=256, progress=False)
    assert res.clip.image.size == (256, 256) and res.safeclip.image.size == (256, 256)


def test_missing_or_unfinished_mini_generator_fails_cleanly(tmp_path):
    from safeclip.generation import load_generator

    with pytest.raises(ModelUnavailableError, match="does not exist.*--sd PATH"):
        load_generator("mini", overrides={"sd": str(tmp_path / "typo")}, cache=False)
    (tmp_path / "sd_config.json").write_text(json.dumps({"text_encoder": {}}))
    with pytest.raises(ModelUnavailableError, match="lacks model_index.json"):
        load_generator("mini", overrides={"sd": str(tmp_path)}, cache=False)


def test_real_preset_offline_fails_cleanly(monkeypatch):
    from safeclip.generation import load_generator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="--sd"):
        load_generator("vit-l-14", overrides={"sd": "/nonexistent/sd-folder"}, cache=False)
