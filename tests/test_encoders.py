"""Loaders and encoders on seeded tiny models saved in the real checkpoints' layouts."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from safeclip.encoders import ModelUnavailableError, load_clip, load_clip_pair
from safeclip.presets import ModelSpec, Preset, Retrieval

TEXTS = ["a dog on the beach", "A woman, holding an UMBRELLA!", "naïve café ☕", "x"]


def tiny_preset(dirs, backend="transformers", clip=None, safe=None, arch=None):
    """A world holding only a retrieval pair of the tiny test models."""
    def spec(role, ref):
        return ModelSpec(role, str(ref), backend, arch)
    return Preset(name="tiny", description="tiny test models", retrieval=Retrieval(
        spec("clip", clip or dirs["hf"]), spec("safe_clip", safe or dirs["hf"]), image_size=32,
        embed_dim=24, context_length=16))


def noise_image(seed, size=(32, 32)):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 255, (*size[::-1], 3), dtype=np.uint8))


def odd_images():
    rgb = noise_image(0, (50, 37))
    sixteen = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16))
    gif = io.BytesIO()
    rgb.convert("P").save(gif, format="GIF")
    return {
        "RGB": rgb, "RGBA": rgb.convert("RGBA"), "L": rgb.convert("L"), "P": rgb.convert("P"),
        "CMYK": rgb.convert("CMYK"), "I;16": sixteen, "1": rgb.convert("1"),
        "GIF": Image.open(io.BytesIO(gif.getvalue())), "tall": noise_image(1, (7, 300)),
        "tiny": noise_image(2, (1, 1)),
    }


@pytest.mark.parametrize("backend", ["transformers", "open_clip"])
def test_embeddings_are_normalised_with_the_right_shape(tiny_dirs, backend):
    d = tiny_dirs["hf"] if backend == "transformers" else tiny_dirs["oc"]
    enc = load_clip(tiny_preset(tiny_dirs, backend, clip=d), "clip", device="cpu")
    t = enc.encode_text(TEXTS)
    imgs = odd_images()
    v = enc.encode_image(list(imgs.values()))
    assert t.shape == (len(TEXTS), 24) and v.shape == (len(imgs), 24)
    assert t.dtype == v.dtype == torch.float32 and t.device.type == "cpu"
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(len(imgs)))
    assert torch.isfinite(v).all()
    assert enc.embed_dim == 24


def test_batching_does_not_change_results(tiny_dirs):
    enc = load_clip(tiny_preset(tiny_dirs), device="cpu")
    imgs = [noise_image(i) for i in range(5)]
    torch.testing.assert_close(enc.encode_image(imgs, batch_size=2), enc.encode_image(imgs))
    torch.testing.assert_close(enc.encode_text(TEXTS, batch_size=1), enc.encode_text(TEXTS))


def test_concurrent_callers_get_the_same_embeddings_as_one(tiny_dirs):
    from concurrent.futures import ThreadPoolExecutor

    enc = load_clip(tiny_preset(tiny_dirs), device="cpu")
    texts = [f"a photo of {n} dogs on a {w} beach" * (1 + n % 3) for n, w in
             zip(range(16), ["sunny", "long", "cold", "red"] * 4)]
    alone = [enc.encode_text([t]) for t in texts]
    with ThreadPoolExecutor(8) as pool:  # the app encodes from several worker threads
        together = list(pool.map(lambda t: enc.encode_text([t]), texts))
    for a, b in zip(alone, together):
        torch.testing.assert_close(a, b)


def test_the_two_backends_agree_on_the_same_weights(tiny_dirs):
    hf = load_clip(tiny_preset(tiny_dirs), device="cpu")
    oc = load_clip(tiny_preset(tiny_dirs, "open_clip", clip=tiny_dirs["oc"]), device="cpu")
    imgs = [noise_image(i) for i in range(4)]  # at the model's size: no resize differences
    torch.testing.assert_close(hf.encode_text(TEXTS), oc.encode_text(TEXTS), atol=1e-5, rtol=0)
    torch.testing.assert_close(hf.encode_image(imgs), oc.encode_image(imgs), atol=1e-5, rtol=0)


def test_open_clip_bin_with_named_quickgelu_architecture(tiny_dirs):
    """The layout of the published open_clip Safe-CLIP: a bare .bin and a -quickgelu arch."""
    preset = tiny_preset(tiny_dirs, "open_clip", clip=tiny_dirs["bin"], safe=tiny_dirs["bin"],
                         arch=tiny_dirs["arch"])
    pair = load_clip_pair(preset, device="cpu")
    hf = load_clip(tiny_preset(tiny_dirs), device="cpu")
    torch.testing.assert_close(pair.safeclip.encode_text(TEXTS), hf.encode_text(TEXTS),
                               atol=1e-5, rtol=0)
    assert pair.clip.backend == "open_clip"


def test_quickgelu_matters(tiny_dirs):
    """Loading QuickGELU weights into a GELU architecture changes the embeddings."""
    import json

    import open_clip
    cfg = json.loads((tiny_dirs["oc"] / "open_clip_config.json").read_text())["model_cfg"]
    cfg["quick_gelu"] = False
    gelu_dir = tiny_dirs["bin"].parent / "gelu_arch"
    gelu_dir.mkdir(exist_ok=True)
    (gelu_dir / "tiny-test-gelu.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(gelu_dir)
    gelu = load_clip(tiny_preset(tiny_dirs, "open_clip", clip=tiny_dirs["bin"], arch="tiny-test-gelu"))
    quick = load_clip(tiny_preset(tiny_dirs, "open_clip", clip=tiny_dirs["bin"], arch=tiny_dirs["arch"]))
    assert (gelu.encode_text(TEXTS) - quick.encode_text(TEXTS)).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["transformers", "open_clip"])
def test_long_prompts_are_truncated_with_a_warning(tiny_dirs, backend, caplog):
    d = tiny_dirs["hf"] if backend == "transformers" else tiny_dirs["oc"]
    enc = load_clip(tiny_preset(tiny_dirs, backend, clip=d), device="cpu")
    long = "a dog on the beach " * 40
    with caplog.at_level(logging.WARNING, logger="safeclip.encoders"):
        e = enc.encode_text([long, "a cat"])
    assert any("truncated" in r.message for r in caplog.records)
    # only the first context_length tokens matter
    torch.testing.assert_close(e[0], enc.encode_text(["a dog on the beach " * 4])[0])


def test_short_prompts_do_not_warn(tiny_dirs, caplog):
    enc = load_clip(tiny_preset(tiny_dirs), device="cpu")
    with caplog.at_level(logging.WARNING, logger="safeclip.encoders"):
        enc.encode_text(["a cat"])
    assert not [r for r in caplog.records if "truncated" in r.message]


def test_offline_error_names_model_preset_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelUnavailableError) as err:
        load_clip("vit-l-14", "safe_clip")
    msg = str(err.value)
    assert "aimagelab/safeclip_vit-l_14" in msg and "vit-l-14" in msg
    assert "--safe-clip" in msg and "SAFECLIP_SAFE_CLIP" in msg
    assert err.value.__cause__ is None  # one readable message, no stack of hub errors
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_missing_local_path_is_a_clear_error(tiny_dirs, tmp_path):
    preset = tiny_preset(tiny_dirs, clip=tmp_path / "nowhere")
    with pytest.raises(ModelUnavailableError, match="nowhere") as err:
        load_clip(preset)
    assert "--clip PATH" in str(err.value)


def test_override_by_environment_points_at_a_local_copy(tiny_dirs, monkeypatch):
    monkeypatch.setenv("SAFECLIP_SAFE_CLIP", str(tiny_dirs["hf"]))
    enc = load_clip("vit-l-14", "safe_clip", device="cpu")
    assert enc.ref == str(tiny_dirs["hf"]) and enc.encode_text(["a"]).shape == (1, 24)


def test_models_dir_mirror(tiny_dirs, monkeypatch, tmp_path):
    import shutil
    shutil.copytree(tiny_dirs["hf"], tmp_path / "openai" / "clip-vit-large-patch14")
    monkeypatch.setenv("SAFECLIP_MODELS_DIR", str(tmp_path))
    enc = load_clip("vit-l-14", "clip", device="cpu")
    assert enc.ref.startswith(str(tmp_path))


def test_mini_preset_loads_through_the_same_loader():
    pair = load_clip_pair("mini", device="cpu")
    assert pair.clip.backend == pair.safeclip.backend == "transformers"
    e = pair.clip.encode_image([noise_image(0, (64, 64))])
    assert e.shape == (1, 128)


def test_default_device_and_dtype():
    from safeclip.encoders import default_device_dtype
    dev, dt = default_device_dtype()
    if torch.cuda.is_available():
        assert (dev.type, dt) == ("cuda", torch.float16)
    else:
        assert dt == torch.float32
    assert default_device_dtype("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)


@pytest.mark.hub
def test_real_vit_l_14_pair_from_the_hub():
    pair = load_clip_pair("vit-l-14")
    t = pair.clip.encode_text(["a photo of a cat", "a photo of a dog"])
    s = pair.safeclip.encode_text(["a photo of a cat", "a photo of a dog"])
    assert t.shape == s.shape == (2, 768)
    assert not torch.allclose(t, s)
