"""The combined judge where a user meets it, on the real worlds' stand-ins, offline: the app blurs
an image that only Q16 flags (and says which judge flagged), says once that images are judged for
nudity only when Q16's file is missing, and a gallery built for a real world keeps each judge's
verdict in its rows."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from safeclip.safety.q16 import Q16_CLIP

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT, SEED, STEPS, GUIDANCE = "a dog with a ball in the park", 3, 2, 5.0


@pytest.fixture()
def offline(models_dir, monkeypatch):
    monkeypatch.setenv("SAFECLIP_MODELS_DIR", str(models_dir[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SAFECLIP_Q16_PROMPTS", raising=False)
    return models_dir[0]


def embed(folder, images) -> np.ndarray:
    """CLIP ViT-L/14 (stand-in) image embeddings, computed the plain transformers way."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    pix = CLIPImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    with torch.no_grad():
        e = model.get_image_features(pixel_values=pix.pixel_values)
    e = getattr(e, "pooler_output", e).numpy()
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def sharpness(path) -> float:
    a = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return float(np.abs(np.diff(a, axis=1)).mean())


def test_the_app_blurs_an_image_only_q16_flags(offline, tmp_path, monkeypatch):
    from demo import handlers as h
    from safeclip.services import Studio

    studio = Studio("vit-l-14")
    gen = studio.generator()
    size = gen.limits["size"].lo
    monkeypatch.setitem(gen.defaults, "size", size)  # the app's default (512 px), made small
    raw_c, raw_s = gen.paired(PROMPT, None, SEED, STEPS, GUIDANCE, size, size, progress=False)
    e_c, e_s = embed(offline / Q16_CLIP, [raw_c, raw_s])
    # Q16's "inappropriate" prompt points from Safe-CLIP's image to the original's (the tiny
    # stand-ins draw two close images), its "appropriate" one back
    d = e_c - e_s
    prompts = tmp_path / "prompts.p"
    prompts.write_bytes(pickle.dumps(np.stack([-d, d]).astype(np.float32), protocol=3))
    monkeypatch.setenv("SAFECLIP_Q16_PROMPTS", str(prompts))
    img_c, img_s, ver_c, ver_s, notes, res = h.generate(studio, PROMPT, "", SEED, STEPS,
                                                        GUIDANCE, False)
    v_c, v_s = res.clip.verdict, res.safeclip.verdict
    assert v_c.unsafe and v_c.flagged_by == ["q16"] and not v_c.judges["nudenet"]["unsafe"]
    assert not v_s.unsafe and set(v_s.judges) == {"nudenet", "q16"}
    np.testing.assert_array_equal(np.asarray(res.clip.image), np.asarray(raw_c))  # same image
    assert "judged unsafe** by Q16" in ver_c and "blurred" in ver_c
    assert "judged safe" in ver_s and "blurred" not in ver_s
    assert sharpness(img_c) < 0.5 * sharpness(img_s)  # the flagged one is shown blurred
    shown, *_ = h.rerender_generation(res, reveal=True)
    assert sharpness(shown) > 2 * sharpness(img_c)  # ticking reveal shows it as drawn
    assert "nudity only" not in notes


def test_without_q16_s_file_the_app_says_once_that_it_judges_nudity_only(offline, monkeypatch):
    from demo import handlers as h
    from safeclip.services import Studio

    studio = Studio("vit-l-14-336")  # its Q16 would load openai/clip-vit-large-patch14
    gen = studio.generator()
    monkeypatch.setitem(gen.defaults, "size", gen.limits["size"].lo)
    first = h.generate(studio, PROMPT, "", SEED, STEPS, GUIDANCE, False)
    second = h.generate(studio, PROMPT, "", SEED + 1, STEPS, GUIDANCE, False)
    assert "Images are judged for nudity only (NudeNet)" in first[4]
    assert "nudity only" not in second[4]  # once
    assert set(first[5].clip.verdict.judges) == {"nudenet"}


def test_a_real_world_gallery_keeps_each_judge_s_verdict(offline, tmp_path, monkeypatch):
    from safeclip.retrieval.build import build_gallery

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
              for _ in range(4)]
    for i, im in enumerate(images):
        im.save(folder / f"p{i}.png")
    e = embed(offline / Q16_CLIP, images)
    prompts = tmp_path / "prompts.p"  # Q16 calls p2 inappropriate: the prompt is its embedding
    prompts.write_bytes(pickle.dumps(np.stack([e[0], e[2]]).astype(np.float16), protocol=3))
    monkeypatch.setenv("SAFECLIP_Q16_PROMPTS", str(prompts))
    report = build_gallery("vit-l-14", tmp_path / "gallery", images=folder, batch_size=2)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "gallery" / "items.jsonl")
                                    .read_text().splitlines())}
    assert rows["p2.png"]["unsafe"] and rows["p2.png"]["flagged_by"] == ["q16"]
    assert not rows["p0.png"]["unsafe"] and rows["p0.png"]["flagged_by"] == []
    for r in rows.values():
        assert set(r["judges"]) == {"nudenet", "q16"} and r["unsafe_source"] == "judge:nudenet+q16"
        assert r["unsafe"] == (r["judges"]["nudenet"]["unsafe"] or r["judges"]["q16"]["unsafe"])
    manifest = json.loads((tmp_path / "gallery" / "manifest.json").read_text())
    card = manifest["unsafe"]["judge_card"]
    assert card["judges"]["q16"]["prompts_source"] == str(prompts)
    assert report.unsafe["unsafe"] == sum(r["unsafe"] for r in rows.values())
