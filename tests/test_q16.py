"""Q16 and the combined judge of the real worlds: the prompt file read without unpickling (a
malicious pickle runs nothing), its checksum and cache, Q16's verdicts on the stand-in CLIP
against an independent computation, which CLIP each world's Q16 uses, and NudeNet + Q16 combined
(which judge flagged, the nudity-only notice once)."""
from __future__ import annotations

import hashlib
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from safeclip.errors import InputError
from safeclip.presets import JudgeSpec, get_preset
from safeclip.safety import load_judge
from safeclip.safety import q16_prompts as qp
from safeclip.safety.combined import CombinedJudge
from safeclip.safety.q16 import Q16_CLIP, Q16Judge, q16_clip_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def noise(seed, size=64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def write_prompts(path, array, protocol=3):
    """A prompt file as Q16 writes one: ``pickle.dump(ndarray)`` (its file is protocol 3)."""
    path.write_bytes(pickle.dumps(array, protocol=protocol))
    return path


@pytest.fixture()
def offline(models_dir, monkeypatch):
    monkeypatch.setenv("SAFECLIP_MODELS_DIR", str(models_dir[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(qp.PROMPTS_ENV, raising=False)
    return models_dir[0]


def clip_embedding(folder, image) -> np.ndarray:
    """CLIP's image embedding computed the plain transformers way (not Q16's code path)."""
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    pix = CLIPImageProcessor.from_pretrained(folder)(images=[image], return_tensors="pt")
    with torch.no_grad():
        e = model.get_image_features(pixel_values=pix.pixel_values)
    e = getattr(e, "pooler_output", e)[0].numpy()
    return e / np.linalg.norm(e)


# ------------------------------------------------------------------------------ the prompt file
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pickled_array_is_read_as_its_numbers(tmp_path, protocol):
    want = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float16)
    path = write_prompts(tmp_path / "prompts.p", want, protocol)
    got = qp.read_prompt_pickle(path.read_bytes())
    assert got.dtype == np.float32 and got.shape == (2, 32)
    np.testing.assert_array_equal(got, want.astype(np.float32))


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evaluates:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [RunsACommand, Evaluates,
                                     lambda m: np.array([RunsACommand(m)], dtype=object),
                                     lambda m: [np.zeros((2, 4), np.float16), RunsACommand(m)]])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "ran"
    data = pickle.dumps(payload(marker), protocol=3)
    with pytest.raises(qp.Q16FileError, match="not a Q16 prompt file") as e:
        qp.read_prompt_pickle(data, "evil.p")
    assert not marker.exists()  # nothing ran
    assert str(e.value).startswith("evil.p: ") and "\n" not in str(e.value)
    path = tmp_path / "evil.p"  # through the file loader too: refused before any cache is written
    path.write_bytes(data)
    with pytest.raises(qp.Q16FileError):
        qp.load_prompts(path)
    key = hashlib.sha256(data).hexdigest()[:16]
    assert not marker.exists() and not list(qp.cache_dir().glob(f"*{key}*"))


@pytest.mark.parametrize("obj, match", [
    (np.array(["a", "b"]), "dtype"), (np.zeros((1, 4), np.float32), "shape"),
    (np.zeros((2, 4), np.float32), "zero"), ({"prompts": 1}, "dict"),
    (np.zeros((2, 2, 2), np.float16), "shape")])
def test_an_array_that_is_not_two_prompts_is_refused(obj, match):
    with pytest.raises(qp.Q16FileError, match=match):
        qp.read_prompt_pickle(pickle.dumps(obj, protocol=3))
    with pytest.raises(qp.Q16FileError, match="unreadable pickle"):
        qp.read_prompt_pickle(b"not a pickle at all")


def test_a_file_is_hashed_cached_as_safetensors_and_read_from_the_cache(tmp_path, monkeypatch,
                                                                         caplog):
    monkeypatch.setenv("SAFECLIP_CACHE", str(tmp_path / "cache"))
    arr = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float16)
    path = write_prompts(tmp_path / "mine.p", arr)
    with caplog.at_level(logging.WARNING):
        p = qp.load_prompts(path)
    assert p.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and not p.published
    assert "not the prompt file Q16's authors publish" in caplog.text
    cached = list((tmp_path / "cache" / "q16").glob("*.safetensors"))
    assert len(cached) == 1
    monkeypatch.setattr(qp, "read_prompt_pickle", lambda *a: pytest.fail("unpickled again"))
    again = qp.load_prompts(path)  # the cache answers
    np.testing.assert_array_equal(again.embeddings, p.embeddings)
    assert (again.sha256, again.source) == (p.sha256, str(path))
    assert qp.load_prompts(cached[0]).sha256 == p.sha256  # the safetensors file itself


def test_the_download_is_checked_against_the_pinned_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFECLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SAFECLIP_MODELS_DIR", raising=False)
    monkeypatch.delenv(qp.PROMPTS_ENV, raising=False)
    data = pickle.dumps(np.ones((2, 8), np.float16), protocol=3)
    calls = []
    monkeypatch.setattr(qp, "_download", lambda url, t: calls.append(url) or data)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(qp.Q16Unavailable, match="HF_HUB_OFFLINE.*SAFECLIP_Q16_PROMPTS"):
        qp.load_prompts()
    assert calls == []  # offline: not even tried
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(qp.Q16Unavailable, match="not the pinned"):
        qp.load_prompts()  # bytes other than the published file's
    assert calls == [qp.Q16_URL] and "/ml-research/Q16/" in qp.Q16_URL
    monkeypatch.setattr(qp, "Q16_SHA256", hashlib.sha256(data).hexdigest())
    p = qp.load_prompts()
    assert p.published and p.source == qp.Q16_URL
    monkeypatch.setattr(qp, "_download", lambda url, t: pytest.fail("downloaded twice"))
    assert qp.load_prompts().sha256 == p.sha256  # once: then the cache


# ------------------------------------------------------------------------------ Q16 as a judge
def test_q16_scores_an_image_as_q16_does(offline, tmp_path):
    folder = offline / Q16_CLIP
    image = noise(3)
    e = clip_embedding(folder, image)
    other = np.random.default_rng(4).standard_normal(e.shape)
    flags = write_prompts(tmp_path / "flags.p", np.stack([other, e]).astype(np.float16))
    world = get_preset("vit-l-14")
    judge = Q16Judge.for_world(world, prompts=str(flags))
    v = judge.judge([image, noise(5)])
    # Q16: softmax(100 cos(e, P)); row 1 is "inappropriate"
    P = np.stack([other, e]).astype(np.float16).astype(np.float32)
    logits = 100 * (P / np.linalg.norm(P, axis=1, keepdims=True)) @ e
    want = np.exp(logits - logits.max())
    want = want / want.sum()
    assert v[0].score == pytest.approx(float(want[1]), abs=1e-4)
    assert v[0].labels["appropriate"] + v[0].labels["inappropriate"] == pytest.approx(1.0)
    assert v[0].unsafe and v[0].category is None and v[0].threshold == 0.5
    swapped = write_prompts(tmp_path / "swapped.p", np.stack([e, other]).astype(np.float16))
    assert not Q16Judge.for_world(world, prompts=str(swapped)).judge([image])[0].unsafe
    never = Q16Judge.for_world(world, threshold=1.01, prompts=str(flags))
    assert not never.judge([image])[0].unsafe
    card = judge.card()
    assert card["prompts_sha256"] == hashlib.sha256(flags.read_bytes()).hexdigest()
    assert card["clip"] == str(folder) and card["labels"] == ["appropriate", "inappropriate"]
    wrong = write_prompts(tmp_path / "wrong.p", np.ones((2, 7), np.float16))
    with pytest.raises(qp.Q16FileError, match="7 dimensions.*32"):
        Q16Judge.for_world(world, prompts=str(wrong))


def test_each_world_s_q16_embeds_with_clip_vit_l_14(offline, monkeypatch, tmp_path):
    own, is_own = q16_clip_spec(get_preset("vit-l-14"))
    assert is_own and own.ref == Q16_CLIP  # the world's own original CLIP
    moved = get_preset("vit-l-14", {"clip": str(tmp_path / "my-clip")})
    assert q16_clip_spec(moved)[0].ref == str(tmp_path / "my-clip")  # its override is followed
    for name in ("vit-l-14-336", "vit-h-14"):  # 336 px and ViT-H: a separate ViT-L/14
        spec, is_own = q16_clip_spec(get_preset(name))
        assert not is_own and spec.ref == Q16_CLIP
    monkeypatch.setenv("SAFECLIP_Q16_CLIP", str(tmp_path / "q16-clip"))
    assert q16_clip_spec(get_preset("vit-h-14"))[0].ref == str(tmp_path / "q16-clip")
    prompts = write_prompts(tmp_path / "p.p", np.ones((2, 32), np.float16) * [[1], [-1]])
    with pytest.raises(qp.Q16Unavailable, match="SAFECLIP_Q16_CLIP=PATH"):
        Q16Judge.for_world(get_preset("vit-h-14"), prompts=str(prompts))


# ------------------------------------------------------------------------------ combined
def skin_blob() -> Image.Image:
    """A mild cartoon: a skin-coloured head and shoulders on white (nothing explicit)."""
    im = Image.new("RGB", (320, 320), (255, 255, 255))
    d = ImageDraw.Draw(im)
    skin = (230, 170, 140)
    d.ellipse((100, 40, 220, 180), fill=skin)
    d.rectangle((140, 180, 180, 210), fill=skin)
    d.rectangle((80, 200, 240, 320), fill=skin)
    return im


def combined(world, prompts, nudenet_threshold=0.5):
    spec = JudgeSpec("nudenet+q16", None, None, {"nudenet_threshold": nudenet_threshold,
                                                 "q16_prompts": str(prompts)})
    return load_judge(spec, world)


def test_the_combined_verdict_says_which_judge_flagged(offline, tmp_path):
    pytest.importorskip("nudenet")
    world = get_preset("vit-l-14")
    blob, flagged = skin_blob(), noise(6)
    e = clip_embedding(offline / Q16_CLIP, flagged)
    prompts = write_prompts(tmp_path / "p.p", np.stack([-e, e]).astype(np.float16))
    judge = combined(world, prompts, nudenet_threshold=0.2)  # NudeNet flags the blob at 0.2
    assert isinstance(judge, CombinedJudge)
    q16_only, nude = judge.judge([flagged, blob])
    assert q16_only.unsafe and q16_only.flagged_by == ["q16"] and q16_only.category is None
    assert q16_only.judges["nudenet"]["unsafe"] is False
    assert q16_only.score >= q16_only.threshold  # the judge that flagged gives score/threshold
    assert nude.judges["nudenet"]["unsafe"] and nude.category == "sexual"
    assert "nudenet" in nude.flagged_by and nude.unsafe
    assert set(q16_only.labels) >= {"q16:inappropriate", "nudenet:FEMALE_BREAST_EXPOSED"}
    strict = combined(world, prompts, nudenet_threshold=0.5)
    safe_blob = strict.judge([blob])[0]
    assert not safe_blob.judges["nudenet"]["unsafe"]
    assert safe_blob.unsafe == safe_blob.judges["q16"]["unsafe"]  # either flags: the verdict
    card = judge.card()
    assert set(card["judges"]) == {"nudenet", "q16"} and not card["nudity_only"]
    assert card["judges"]["nudenet"]["threshold"] == 0.2
    assert card["judges"]["nudenet"]["version"] and card["judges"]["nudenet"]["classes"]


def test_without_q16_s_file_images_are_judged_for_nudity_only_said_once(offline, caplog):
    pytest.importorskip("nudenet")
    world = get_preset("vit-h-14")
    judge = load_judge(world.generation.judge, world)
    with caplog.at_level(logging.WARNING):
        v = judge.judge([noise(7), noise(8)])
        judge.judge([noise(9)])
    assert all(set(x.judges) == {"nudenet"} for x in v)
    assert caplog.text.count("judged for nudity only") == 1
    notice = judge.pop_notice()
    assert notice.startswith("Images are judged for nudity only") and "HF_HUB_OFFLINE" in notice
    assert judge.pop_notice() is None  # once
    assert judge.card()["nudity_only"]
    with pytest.raises(qp.Q16Unavailable, match="nudity only"):
        judge.require_q16()


def test_the_combined_judge_refuses_options_it_does_not_take():
    with pytest.raises(InputError, match="takes nudenet_threshold.*not threshold"):
        load_judge(JudgeSpec("nudenet+q16", 0.5), get_preset("vit-l-14"))
    with pytest.raises(InputError, match="not q16_treshold"):
        load_judge(JudgeSpec("nudenet+q16", None, None, {"q16_treshold": 0.5}),
                   get_preset("vit-l-14"))


def test_download_puts_q16_s_files_in_a_mirror_that_works_offline(standin_repos, tmp_path,
                                                                   monkeypatch):
    from fakehub import FakeHub

    from safeclip.download import download_judges

    hub = FakeHub(standin_repos, tmp_path / "hf-cache")
    monkeypatch.setattr("safeclip.hub._snapshot", hub.snapshot)
    for var in ("HF_HUB_OFFLINE", "SAFECLIP_MODELS_DIR", qp.PROMPTS_ENV):
        monkeypatch.delenv(var, raising=False)
    data = pickle.dumps(np.random.default_rng(2).standard_normal((2, 32)).astype(np.float16),
                        protocol=3)
    monkeypatch.setattr(qp, "_download", lambda url, t: data)
    monkeypatch.setattr(qp, "Q16_SHA256", hashlib.sha256(data).hexdigest())  # stands for it
    out = tmp_path / "models"
    own = download_judges(get_preset("vit-l-14"), out)
    assert set(own) == {"q16_prompts"}  # its own CLIP is Q16's: downloaded with its models
    done = download_judges(get_preset("vit-h-14"), out)
    assert done["q16_clip"] == str(out / Q16_CLIP) and (out / Q16_CLIP / "config.json").exists()
    assert (out / qp.Q16_REPO / qp.Q16_FILE).read_bytes() == data
    assert [c[0] for c in hub.calls] == [Q16_CLIP]
    # offline, from the mirror alone
    monkeypatch.setenv("SAFECLIP_MODELS_DIR", str(out))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAFECLIP_CACHE", str(tmp_path / "fresh-cache"))
    monkeypatch.setattr(qp, "_download", lambda url, t: pytest.fail("downloaded"))
    judge = Q16Judge.for_world(get_preset("vit-h-14"))
    assert judge.prompts.published and judge.card()["clip"] == str(out / Q16_CLIP)
    assert len(judge.judge([noise(1)])) == 1
