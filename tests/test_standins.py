"""The stand-ins of tests/standins.py load and run with the stock libraries (no project code), and
the tensors that must be shared across repos are."""

from __future__ import annotations

import hashlib
import json
import time
from functools import cache

import numpy as np
import pytest
import standins
import torch
from PIL import Image
from standins_common import LORA_TARGETS

CLIPS = (
    "openai/clip-vit-large-patch14",
    "openai/clip-vit-large-patch14-336",
    "aimagelab/safeclip_vit-l_14",
    "aimagelab/safeclip_vit-l_14_336",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "aimagelab/safeclip_vit-h_14",
    "aimagelab/safeclip_sd_20",
)
# Where a repo without tokenizer / preprocessor files takes them from (as the official code does).
PROCESSOR_FROM = {
    "aimagelab/safeclip_vit-l_14": "openai/clip-vit-large-patch14",
    "aimagelab/safeclip_vit-l_14_336": "openai/clip-vit-large-patch14-336",
    "aimagelab/safeclip_vit-h_14": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "aimagelab/safeclip_sd_20": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
}
CAT_IDS = [
    49406,
    320,
    1125,
    539,
    320,
    2368,
    49407,
]  # "a photo of a cat" in the real CLIP vocabulary
LAYERS = {
    "openai/clip-vit-large-patch14": (12, 24, 224, "quick_gelu"),
    "openai/clip-vit-large-patch14-336": (12, 24, 336, "quick_gelu"),
    "aimagelab/safeclip_vit-l_14": (12, 24, 224, "quick_gelu"),
    "aimagelab/safeclip_vit-l_14_336": (12, 24, 336, "quick_gelu"),
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": (24, 32, 224, "gelu"),
    "aimagelab/safeclip_vit-h_14": (24, 32, 224, "gelu"),
    "aimagelab/safeclip_sd_20": (23, 32, 224, "gelu"),
}
ARCH = (
    "hidden_act",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "max_position_embeddings",
    "vocab_size",
    "layer_norm_eps",
)


@pytest.fixture(scope="session")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    t = time.perf_counter()
    dirs = standins.write_all(root)
    print(f"\nstand-ins written in {time.perf_counter() - t:.1f} s under {root}")
    return dirs


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(d, name=None) -> dict:
    from safetensors.torch import load_file

    if name is None:
        name = "model.safetensors" if (d / "model.safetensors").exists() else "pytorch_model.bin"
    if name.endswith(".bin"):
        return torch.load(d / name, map_location="cpu", weights_only=True)
    return load_file(d / name)


def _image(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


@cache
def _processors(src):
    from transformers import CLIPImageProcessor, CLIPTokenizer

    return CLIPTokenizer.from_pretrained(src), CLIPImageProcessor.from_pretrained(src)


def _feat(out):
    return out if torch.is_tensor(out) else out.pooler_output


def test_file_lists_and_sizes(repos):
    assert tuple(repos) == standins.REPOS and len(standins.REPOS) == 10
    for repo_id, d in repos.items():
        assert d.as_posix().endswith("/" + repo_id)
        assert standins.hub_files(d) == list(standins.FILES[repo_id])
        size = sum((d / f).stat().st_size for f in standins.hub_files(d))
        assert size < 25e6, (repo_id, size)
    first = repos[standins.REPOS[0]]
    t = time.perf_counter()
    assert standins.write_repo(standins.REPOS[0], first.parent.parent) == first
    assert time.perf_counter() - t < 0.5  # complete: skipped


@pytest.mark.parametrize("repo_id", CLIPS)
def test_clip_loads_and_encodes(repos, repo_id):
    from transformers import CLIPModel

    d = repos[repo_id]
    model, info = CLIPModel.from_pretrained(d, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert set(info["unexpected_keys"]) <= {
        "text_model.embeddings.position_ids",
        "vision_model.embeddings.position_ids",
    }
    t, v = model.config.text_config, model.config.vision_config
    assert (t.num_hidden_layers, v.num_hidden_layers, v.image_size, t.hidden_act) == LAYERS[repo_id]
    assert v.hidden_act == t.hidden_act and v.patch_size == 14
    assert (t.vocab_size, t.max_position_embeddings) == (49408, 77)
    src = repos[PROCESSOR_FROM.get(repo_id, repo_id)]
    tok, proc = _processors(src)
    assert tok.model_max_length == 77 and tok("a photo of a cat").input_ids == CAT_IDS
    pixels = proc(images=_image(400), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, v.image_size, v.image_size)
    with torch.no_grad():
        text = _feat(model.get_text_features(**tok(["a photo of a cat"], return_tensors="pt")))
        image = _feat(model.get_image_features(pixel_values=pixels))
    assert text.shape == image.shape == (1, model.config.projection_dim)
    assert torch.isfinite(text).all() and torch.isfinite(image).all()


def _open_clip_model(cfg: dict, quick_gelu: bool, weights: dict):
    from open_clip.model import CLIP

    model = CLIP(**cfg, quick_gelu=quick_gelu).eval()
    model.load_state_dict(weights, strict=True)
    return model


def _compare_with_hf(hf_dir, oc_model, image_size):
    from transformers import CLIPModel

    hf = CLIPModel.from_pretrained(hf_dir).eval()
    ids = torch.tensor([CAT_IDS + [49407] * (77 - len(CAT_IDS))])
    pixels = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            oc_model.encode_text(ids),
            _feat(hf.get_text_features(input_ids=ids)),
            atol=1e-4,
            rtol=1e-4,
        )
        torch.testing.assert_close(
            oc_model.encode_image(pixels),
            _feat(hf.get_image_features(pixel_values=pixels)),
            atol=1e-4,
            rtol=1e-4,
        )


def test_laion_open_clip_form_matches_transformers_form(repos):
    import open_clip

    d = repos["laion/CLIP-ViT-H-14-laion2B-s32B-b79K"]
    hub_cfg = json.loads((d / "open_clip_config.json").read_text())
    assert (
        set(hub_cfg) == {"model_cfg", "preprocess_cfg"} and "quick_gelu" not in hub_cfg["model_cfg"]
    )
    assert (
        hub_cfg["model_cfg"]["vision_cfg"]["layers"] == 32
        and hub_cfg["model_cfg"]["text_cfg"]["layers"] == 24
    )
    safe, pickled = (
        _weights(d, "open_clip_model.safetensors"),
        _weights(d, "open_clip_pytorch_model.bin"),
    )
    assert safe.keys() == pickled.keys() and all(torch.equal(safe[k], pickled[k]) for k in safe)
    model = _open_clip_model(hub_cfg["model_cfg"], False, safe)
    _compare_with_hf(d, model, 224)
    via_factory = open_clip.create_model(f"local-dir:{d}")  # open_clip's own reading of the folder
    assert torch.equal(via_factory.visual.proj, model.visual.proj)


def test_safeclip_open_clip_bin_is_quickgelu(repos):
    d = repos["aimagelab/safeclip_vit-l_14"]
    c = json.loads((d / "config.json").read_text())
    t, v = c["text_config"], c["vision_config"]
    cfg = {
        "embed_dim": c["projection_dim"],
        "vision_cfg": {
            "image_size": v["image_size"],
            "layers": v["num_hidden_layers"],
            "width": v["hidden_size"],
            "patch_size": v["patch_size"],
            "head_width": v["hidden_size"] // v["num_attention_heads"],
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": t["hidden_size"],
            "heads": t["num_attention_heads"],
            "layers": t["num_hidden_layers"],
        },
    }
    model = _open_clip_model(cfg, True, _weights(d, "open_clip_pytorch_model.bin"))
    _compare_with_hf(d, model, 224)


def _arch(cfg) -> dict:
    return {k: getattr(cfg, k) for k in ARCH}


def test_text_encoders_are_drop_in(repos):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModel

    sd14, sd2 = repos["CompVis/stable-diffusion-v1-4"], repos["stabilityai/stable-diffusion-2"]
    sd14_cfg = CLIPTextConfig.from_pretrained(sd14 / "text_encoder")
    sd2_cfg = CLIPTextConfig.from_pretrained(sd2 / "text_encoder")
    assert sd2_cfg.num_hidden_layers == 23 and sd2_cfg.hidden_act == "gelu"
    for safe, ref in (
        ("aimagelab/safeclip_vit-l_14", sd14_cfg),
        ("aimagelab/safeclip_sd_20", sd2_cfg),
    ):
        text_cfg = CLIPConfig.from_pretrained(repos[safe]).text_config
        assert _arch(text_cfg) == _arch(ref)
        model = CLIPTextModel(text_cfg)  # only text_model.* keys, v5 names without the prefix
        text = {
            k[len("text_model.") :]: w
            for k, w in _weights(repos[safe]).items()
            if k.startswith("text_model.")
        }
        model.load_state_dict(text, strict=True)
        loaded = CLIPTextModel.from_pretrained(repos[safe])  # the official Safe-CLIP usage
        got, want = loaded.state_dict(), model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    for repo in ("CompVis/stable-diffusion-v1-4", "stabilityai/stable-diffusion-2"):
        te = repos[repo] / "text_encoder"
        a, b = _weights(te, "model.safetensors"), _weights(te, "pytorch_model.bin")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _relation(base: dict, safe: dict, prefix: str = "") -> tuple[int, int]:
    """(identical, perturbed) counts; asserts that exactly the LoRA targets differ."""
    same = diff = 0
    for k, w in safe.items():
        if not k.startswith(prefix) or k.endswith("position_ids"):
            continue
        equal = torch.equal(base[k], w) and base[k].numpy().tobytes() == w.numpy().tobytes()
        assert equal != k.endswith(LORA_TARGETS), k
        same, diff = same + equal, diff + (not equal)
    return same, diff


def test_shared_and_perturbed_tensors(repos):
    r = {k: _weights(d) for k, d in repos.items() if k in CLIPS}
    for base, safe in (
        ("openai/clip-vit-large-patch14", "aimagelab/safeclip_vit-l_14"),
        ("openai/clip-vit-large-patch14-336", "aimagelab/safeclip_vit-l_14_336"),
        ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "aimagelab/safeclip_vit-h_14"),
    ):
        same, diff = _relation(r[base], r[safe])
        assert same > diff > 0 and same + diff == len(r[safe])
    sd14 = _weights(repos["CompVis/stable-diffusion-v1-4"] / "text_encoder")
    l14 = r["openai/clip-vit-large-patch14"]
    assert sd14.keys() == {k for k in l14 if k.startswith("text_model.")}
    assert all(torch.equal(w, l14[k]) for k, w in sd14.items())
    sd2 = _weights(repos["stabilityai/stable-diffusion-2"] / "text_encoder")
    laion, sd20, h14 = (
        r["laion/CLIP-ViT-H-14-laion2B-s32B-b79K"],
        r["aimagelab/safeclip_sd_20"],
        r["aimagelab/safeclip_vit-h_14"],
    )
    assert all(torch.equal(w, laion[k]) for k, w in sd2.items())
    assert not any(k.startswith("text_model.encoder.layers.23.") for k in sd2)
    assert _relation(sd2, sd20, "text_model.")[1] > 0
    assert all(torch.equal(w, h14[k]) for k, w in sd20.items() if not k.startswith("text_model."))


def _pipe_image(pipe, prompt="a photo of a cat"):
    out = pipe(
        prompt,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=2.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    return out


@pytest.mark.parametrize(
    "repo_id,swap",
    [
        ("CompVis/stable-diffusion-v1-4", "aimagelab/safeclip_vit-l_14"),
        ("stabilityai/stable-diffusion-2", "aimagelab/safeclip_sd_20"),
    ],
)
def test_sd_pipeline_generates(repos, repo_id, swap):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    sd2 = repo_id.startswith("stabilityai")
    pipe = StableDiffusionPipeline.from_pretrained(
        repos[repo_id], safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    assert type(pipe.scheduler).__name__ == ("DDIMScheduler" if sd2 else "PNDMScheduler")
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if sd2 else "epsilon")
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == (96 if sd2 else 64)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.tokenizer.model_max_length == 77 and pipe.tokenizer.pad_token == (
        "!" if sd2 else "<|endoftext|>"
    )
    _pipe_image(pipe)
    pipe.text_encoder = CLIPTextModel.from_pretrained(repos[swap])  # the paper's swap
    _pipe_image(pipe)


def test_sd14_loads_everything(repos):
    from diffusers import StableDiffusionPipeline

    d = repos["CompVis/stable-diffusion-v1-4"]
    index = json.loads((d / "model_index.json").read_text())
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    pipe = StableDiffusionPipeline.from_pretrained(d)
    assert type(pipe.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    assert pipe.feature_extractor is not None
    out = _pipe_image(pipe)
    assert out.nsfw_content_detected == [False]


def test_llava_legacy_checkpoint(repos):
    from transformers import (
        AutoProcessor,
        AutoTokenizer,
        CLIPVisionModel,
        LlavaForConditionalGeneration,
    )

    d = repos["llava-hf/llava-1.5-7b-hf"]
    keys = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    assert {k.split(".")[0] for k in keys} == {
        "language_model",
        "vision_tower",
        "multi_modal_projector",
    }
    assert "language_model.lm_head.weight" in keys and "multi_modal_projector.linear_2.bias" in keys
    model, info = LlavaForConditionalGeneration.from_pretrained(d, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    c = model.config
    assert (c.image_token_index, c.pad_token_id, c.vision_feature_layer) == (32000, 32001, -2)
    assert c.vision_feature_select_strategy == "default" and c.projector_hidden_act == "gelu"
    assert (c.text_config.model_type, c.text_config.vocab_size) == ("llama", 32064)
    assert model.dtype == torch.float16
    tower = model.model.vision_tower
    base = _weights(repos["openai/clip-vit-large-patch14-336"])
    want = {
        k[len("vision_model.") :]: w
        for k, w in base.items()
        if k.startswith("vision_model.") and not k.endswith("position_ids")
    }
    got = tower.state_dict()
    assert got.keys() == want.keys() and all(
        torch.equal(got[k].float(), w) for k, w in want.items()
    )
    safe = CLIPVisionModel.from_pretrained(repos["aimagelab/safeclip_vit-l_14_336"])
    tower.load_state_dict(safe.state_dict(), strict=True)  # Safe-CLIP's tower drops in
    tok = AutoTokenizer.from_pretrained(d)
    prompt = "USER: <image>\nDescribe the image. ASSISTANT:"
    ids = tok(prompt).input_ids
    assert ids[0] == 1 and ids.count(32000) == 1
    assert tok.convert_ids_to_tokens(ids)[ids.index(32000)] == "<image>"
    assert tok.pad_token_id == 32001
    processor = AutoProcessor.from_pretrained(d)
    inputs = processor(images=_image(336), text=prompt, return_tensors="pt")
    assert (
        inputs.pixel_values.shape == (1, 3, 336, 336) and (inputs.input_ids == 32000).sum() == 576
    )
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs.input_ids.shape[1] + 3


@pytest.mark.parametrize(
    "allow,ignore",
    [
        (None, None),
        (["*.json"], None),
        (["unet/"], None),
        ("model_index.json", None),
        (["text_encoder/*", "tokenizer/*", "*.json"], ["*.bin"]),
        (["*.safetensors"], None),
        (["unet\\config.json"], None),
        (["*/config.json"], ["vae/*"]),
        (["README*"], None),
        ([], None),
    ],
)
def test_download_matches_huggingface_hub(repos, tmp_path, allow, ignore):
    from huggingface_hub.utils import filter_repo_objects

    d = repos["CompVis/stable-diffusion-v1-4"]
    files = standins.hub_files(d)
    want = sorted(filter_repo_objects(files, allow_patterns=allow, ignore_patterns=ignore))
    dest = standins.download(d, tmp_path / "dl", allow, ignore)
    assert standins.hub_files(dest) == want
    assert all((dest / f).read_bytes() == (d / f).read_bytes() for f in want[:3])


def test_writer_is_deterministic(repos, tmp_path):
    standins.clear_caches()
    for repo_id in ("aimagelab/safeclip_vit-l_14", "stabilityai/stable-diffusion-2"):
        again = standins.write_repo(repo_id, tmp_path)
        for f in standins.hub_files(again):
            a, b = (again / f).read_bytes(), (repos[repo_id] / f).read_bytes()
            assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), (repo_id, f)
