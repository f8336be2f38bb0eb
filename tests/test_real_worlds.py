"""The real worlds after a plain Hub download: tiny stand-ins of the published checkpoints in the
layout a download with the loaders' own file patterns leaves (tests/standins.py, the
``models_dir`` fixture), loaded through ``SAFECLIP_MODELS_DIR``, offline, on the CPU. Each bug of
the worlds issue has its test here: SD 1.4's feature extractor, the gelu ViT-H Safe-CLIP, the
text-only SD 2 encoder, LLaVA's legacy layout, partial caches, the downloaded weight formats."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from safeclip.errors import ModelUnavailableError

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["a photo of a dog", "a knife on a table"]


@pytest.fixture()
def offline_mirror(models_dir, monkeypatch):
    folder, _ = models_dir
    monkeypatch.setenv("SAFECLIP_MODELS_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


def noise(seed, size=(64, 48)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3),
                                                                dtype=np.uint8))


def test_a_download_fetches_one_weights_format_and_no_safety_checker(models_dir):
    folder, hub = models_dir
    for ref, patterns in hub.calls:
        assert not any("safety_checker" in p or "feature_extractor" in p for p in patterns), ref
    fetched = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    # repos that have safetensors: only those are downloaded, never the .bin beside them
    for repo in ("openai/clip-vit-large-patch14", "aimagelab/safeclip_vit-l_14",
                 "CompVis/stable-diffusion-v1-4", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"):
        assert not any(f.startswith(repo + "/") and f.endswith(".bin") for f in fetched), repo
    # a repo with only .bin (the 336 px CLIP) still gets its weights
    assert "openai/clip-vit-large-patch14-336/pytorch_model.bin" in fetched
    assert not any(f.startswith("CompVis/stable-diffusion-v1-4/safety_checker") for f in fetched)


def test_sd_1_4_loads_although_its_model_index_names_a_feature_extractor(offline_mirror):
    from diffusers import StableDiffusionPipeline

    from safeclip.generation import load_generator

    sd = offline_mirror / "CompVis" / "stable-diffusion-v1-4"
    index = json.loads((sd / "model_index.json").read_text())
    assert index["feature_extractor"][1] == "CLIPImageProcessor" and index["safety_checker"][1]
    assert not (sd / "feature_extractor").exists()
    with pytest.raises(OSError):  # what the earlier loader did: no feature_extractor=None
        StableDiffusionPipeline.from_pretrained(sd, safety_checker=None,
                                                requires_safety_checker=False)
    gen = load_generator("vit-l-14", cache=False)
    assert gen.defaults["size"] == 512 and gen.judge.name == "nudenet+q16"
    res = gen.generate_pair("a dog on the beach", seed=1, steps=2, size=256, progress=False)
    a, b = (np.asarray(g.image, dtype=np.int16) for g in (res.clip, res.safeclip))
    assert a.shape == (256, 256, 3) and np.abs(a - b).max() > 0  # the encoders differ
    assert gen.paired.shared_bytes > 0  # the merged LoRA left most text tensors equal


def test_vit_h_safe_clip_is_the_gelu_transformers_model_its_config_describes(offline_mirror,
                                                                               standin_repos):
    from transformers import CLIPModel, CLIPTokenizer

    from safeclip.encoders import load_clip_pair

    pair = load_clip_pair("vit-h-14", device="cpu")
    assert (pair.clip.backend, pair.safeclip.backend) == ("open_clip", "transformers")
    safe_dir = offline_mirror / "aimagelab" / "safeclip_vit-h_14"
    cfg = json.loads((safe_dir / "config.json").read_text())
    assert cfg["text_config"]["hidden_act"] == cfg["vision_config"]["hidden_act"] == "gelu"
    stock = CLIPModel.from_pretrained(safe_dir, dtype=torch.float32).eval()
    assert stock.config.text_config.num_hidden_layers == 24
    assert stock.config.vision_config.num_hidden_layers == 32
    tok = CLIPTokenizer.from_pretrained(standin_repos["laion/CLIP-ViT-H-14-laion2B-s32B-b79K"])
    ids = tok(TEXTS, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        want = stock.get_text_features(**ids)
    want = getattr(want, "pooler_output", want)
    got = pair.safeclip.encode_text(TEXTS)
    torch.testing.assert_close(got, torch.nn.functional.normalize(want, dim=-1), atol=1e-5,
                               rtol=0)
    # the same weights under QuickGELU (what the earlier preset loaded) give other embeddings
    stock.config.text_config.hidden_act = "quick_gelu"
    quick = CLIPModel(stock.config).eval()
    quick.load_state_dict(stock.state_dict())
    with torch.no_grad():
        q = quick.get_text_features(**ids)
    q = torch.nn.functional.normalize(getattr(q, "pooler_output", q), dim=-1)
    assert (q - got).abs().max() > 1e-3
    # the original (open_clip, LAION) and Safe-CLIP embed in the same space
    assert pair.clip.embed_dim == pair.safeclip.embed_dim


def test_safeclip_sd_20_gives_sd_2_its_text_tower_only(offline_mirror, monkeypatch):
    from safeclip import weights
    from safeclip.generation import load_generator
    from safeclip.generation.text import load_text_encoder

    asked = []
    real = weights.read_weights
    monkeypatch.setattr("safeclip.generation.text.read_weights",
                        lambda folder, prefixes=None: asked.append(prefixes) or real(folder,
                                                                                   prefixes))
    enc = load_text_encoder(offline_mirror / "aimagelab" / "safeclip_sd_20")
    assert type(enc).__name__ == "CLIPTextModel" and enc.config.num_hidden_layers == 23
    assert asked == [("text_model.",)]  # the vision tower's tensors are never read
    assert not any("vision" in n for n, _ in enc.named_parameters())
    gen = load_generator("vit-h-14", cache=False)
    assert gen.defaults["size"] == 768
    assert gen.paired.pipe.scheduler.config.prediction_type == "v_prediction"
    assert gen.paired.safe_text_encoder.config.num_hidden_layers == 23
    res = gen.generate_pair("a cat on a sofa", steps=2, size=256, progress=False)
    assert res.clip.image.size == res.safeclip.image.size == (256, 256)


def test_llava_1_5_in_its_legacy_layout_captions_with_both_towers(offline_mirror):
    from safetensors import safe_open

    from safeclip.captioning import load_captioner

    folder = offline_mirror / "llava-hf" / "llava-1.5-7b-hf"
    keys = set()
    for f in folder.glob("model-*.safetensors"):
        with safe_open(str(f), "pt") as h:
            keys |= set(h.keys())
    assert any(k.startswith("language_model.model.") for k in keys)  # the legacy layout
    assert any(k.startswith("vision_tower.vision_model.") for k in keys)
    cap = load_captioner("vit-l-14", device="cpu", cache=False)
    assert cap.model.config.vision_feature_layer == -2
    assert cap.image_features(cap.towers["clip"], cap.pixels(noise(0))).shape[1] == 576
    name = next(k for k in sorted(keys) if k.startswith("language_model.model.layers."))
    for f in folder.glob("model-*.safetensors"):
        with safe_open(str(f), "pt") as h:
            if name in h.keys():
                stored = h.get_tensor(name)
    loaded = dict(cap.model.named_parameters())["model." + name.replace("language_model.model.",
                                                                          "language_model.")]
    torch.testing.assert_close(loaded.float(), stored.float())  # loaded, not initialised
    res = cap.caption_pair(noise(1), max_new_tokens=3)
    assert res.clip.tokens > 0 and res.safeclip.tokens > 0
    assert cap.sharing["shared_tensors"] > 0
    assert cap.defaults["max_new_tokens"] == 80 and cap.judge.name == "lexicon"


def test_every_real_world_names_models_its_loaders_read(offline_mirror):
    from safeclip.encoders import load_clip_pair

    for name in ("vit-l-14", "vit-l-14-336", "vit-h-14"):
        pair = load_clip_pair(name, device="cpu")
        t = pair.clip.encode_text(TEXTS)
        s = pair.safeclip.encode_text(TEXTS)
        assert t.shape == s.shape and not torch.allclose(t, s)
        assert pair.clip.encode_image([noise(2)]).shape[1] == t.shape[1]


# ------------------------------------------------------------------------- the cache and the Hub
@pytest.fixture()
def fake_hub(standin_repos, tmp_path, monkeypatch):
    from fakehub import FakeHub

    hub = FakeHub(standin_repos, tmp_path / "cache")
    monkeypatch.setattr("safeclip.hub._snapshot", hub.snapshot)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return hub


def test_a_partial_cache_is_not_taken_for_the_model(fake_hub):
    from safeclip.encoders import load_clip

    # what the upstream open_clip snippet leaves in the cache: the open_clip weights only
    fake_hub.cache_only("aimagelab/safeclip_vit-l_14", ["open_clip_pytorch_model.bin"])
    fake_hub.offline = True
    with pytest.raises(ModelUnavailableError) as e:
        load_clip("vit-l-14", "safe_clip", device="cpu")
    msg = str(e.value)
    assert "cached copy" in msg and "incomplete" in msg and "config.json" in msg
    assert "holds no CLIPModel" not in msg and "safeclip download" in msg
    fake_hub.offline = False  # with network: the missing files are downloaded
    enc = load_clip("vit-l-14", "safe_clip", device="cpu")
    assert enc.encode_text(TEXTS).shape[0] == 2
    assert [c[0] for c in fake_hub.calls] == ["aimagelab/safeclip_vit-l_14"]


def test_a_llava_cached_without_its_tokenizer_is_downloaded_again(fake_hub):
    from safeclip.hub import LLAVA_FILES, fetch

    fake_hub.cache_only("llava-hf/llava-1.5-7b-hf", ["config.json", "model-*", "*.index.json"])
    path = fetch("llava-hf/llava-1.5-7b-hf", LLAVA_FILES, role="llava", world="vit-l-14")
    assert (path / "tokenizer.json").exists() and fake_hub.calls


def test_a_repository_without_the_files_has_its_own_message(fake_hub, standin_repos):
    from safeclip.hub import SD_FILES, fetch

    # a CLIP repository named as a Stable Diffusion: fetched, but it holds no pipeline
    fake_hub.repos["me/not-a-pipeline"] = standin_repos["openai/clip-vit-large-patch14"]
    with pytest.raises(ModelUnavailableError, match="downloaded 'me/not-a-pipeline'.*holds no "
                                                    "model_index.json.*--sd PATH"):
        fetch("me/not-a-pipeline", SD_FILES, role="sd", world="vit-l-14")
    with pytest.raises(ModelUnavailableError, match="no such repository, or it is gated"):
        fetch("me/typo", SD_FILES, role="sd", world="vit-l-14")


def test_a_mirror_folder_that_lacks_files_says_which(tmp_path, monkeypatch):
    from safeclip.encoders import load_clip

    (tmp_path / "openai" / "clip-vit-large-patch14").mkdir(parents=True)
    (tmp_path / "openai" / "clip-vit-large-patch14" / "config.json").write_text("{}")
    monkeypatch.setenv("SAFECLIP_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="mirror folder.*lacks model\\*.safetensors"):
        load_clip("vit-l-14", "clip")
