"""Judges: the committed mini judge on fresh renders, odd image modes, NudeNet, thresholds."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from safeclip.images import to_rgb
from safeclip.mini import MODELS
from safeclip.mini.judge import MiniJudge
from safeclip.mini.synthetic import SAFE_OBJECTS, UNSAFE_OBJECTS, make_quad
from safeclip.presets import JudgeSpec
from safeclip.safety import I2P_CATEGORIES, LEXICON, Judge, LexiconJudge, Verdict, blur, get_judge
from safeclip.safety.nudenet import NudeNetJudge

MINI_JUDGE_DIR = MODELS / "mini-judge"
needs_judge = pytest.mark.skipif(
    not (MINI_JUDGE_DIR / "model.safetensors").exists(),
    reason="no mini judge: safeclip mini build --only judge",
)


@pytest.fixture(scope="module")
def mini():
    return MiniJudge.from_pretrained(MINI_JUDGE_DIR)


@pytest.fixture(scope="module")
def fresh_quads():
    # seeds outside every split's seed sequence ([SPLIT_SEED, index]) and the judge's ranges
    return [make_quad([99, i]) for i in range(64)]


@needs_judge
def test_mini_judge_flags_unsafe_and_passes_safe(mini, fresh_quads):
    safe = mini.judge([q["V"] for q in fresh_quads])
    unsafe = mini.judge([q["G"] for q in fresh_quads])
    assert all(isinstance(v, Verdict) for v in safe + unsafe)
    ok_safe = sum(not v.unsafe and v.category is None for v in safe)
    ok_unsafe = sum(v.unsafe and v.category == q["category"] for v, q in zip(unsafe, fresh_quads))
    assert ok_safe >= 0.9 * len(safe), ok_safe
    assert ok_unsafe >= 0.9 * len(unsafe), ok_unsafe
    # the strongest label is the object actually drawn
    scores = mini.scores([q["G"] for q in fresh_quads])
    top = [mini.config.labels[i] for i in scores.argmax(1)]
    hits = sum(t == q["tags"]["unsafe_object"] for t, q in zip(top, fresh_quads))
    assert hits >= 0.9 * len(fresh_quads)
    v = unsafe[0]
    assert set(v.labels) == set(SAFE_OBJECTS) | set(UNSAFE_OBJECTS)
    assert 0.0 <= v.score <= 1.0 and v.threshold == mini.threshold


@needs_judge
def test_both_mini_judges_read_subject_scene_and_colour_and_agree(mini, fresh_quads):
    """What safe_fidelity checks: the subject, the scene and the object. The second judge is
    another architecture trained on other items from another seed: on fresh renders the two
    give the same reading."""
    second = MiniJudge.from_pretrained(MODELS / "mini-judge-b")
    assert second.config.norm == "group" and second.config.widths != mini.config.widths
    images = [q[k] for q in fresh_quads for k in ("V", "G")]
    tags = [q["tags"] for q in fresh_quads for _ in "VG"]
    for judge in (mini, second):
        d = judge.describe(images)
        for head in ("subject", "scene", "colour"):
            assert np.mean([x[head] == t[head] for x, t in zip(d, tags)]) >= 0.95, head
            assert all(0.0 < x[f"{head}_p"] <= 1.0 for x in d)
        objects = [t["safe_object"] if i % 2 == 0 else t["unsafe_object"]
                   for i, t in enumerate(tags)]
        assert np.mean([o in x["objects"] for x, o in zip(d, objects)]) >= 0.95
    a, b = mini.describe(images), second.describe(images)
    assert np.mean([x["objects"] == y["objects"] for x, y in zip(a, b)]) >= 0.9


@needs_judge
def test_a_rejittered_safe_image_keeps_its_meaning_but_not_its_pixels(mini, fresh_quads):
    """bench/unaligned.py's safe images: what the caption says (subject, scene, colour, object
    and its side) stays, the pixels of the pair's shared content do not."""
    from safeclip.mini.render import render_rejittered

    quads = fresh_quads[:32]
    moved = [render_rejittered(q["tags"], q["tags"]["safe_object"]) for q in quads]
    assert all(np.array_equal(np.asarray(m), np.asarray(render_rejittered(q["tags"],
               q["tags"]["safe_object"]))) for m, q in zip(moved[:4], quads))  # deterministic
    same = [np.mean(np.asarray(m) == np.asarray(q["V"])) for m, q in zip(moved, quads)]
    assert max(same) < 0.5, max(same)  # the aligned V shares ~0.9 of its pixels with G
    read = [(x["subject"], x["scene"], x["colour"]) == (t["subject"], t["scene"], t["colour"])
            and t["safe_object"] in x["objects"]
            for x, t in zip(mini.describe(moved), (q["tags"] for q in quads))]
    assert np.mean(read) >= 0.9, np.mean(read)
    for m, q in zip(moved, quads):  # the object stays on its side
        diff = np.abs(np.asarray(m).astype(int) - np.asarray(render_rejittered(
            q["tags"], q["tags"]["unsafe_object"])).astype(int)).max(-1) > 0
        cols = np.nonzero(diff.any(axis=0))[0]
        assert (cols.max() < 30) if q["tags"]["position"] == "left" else (cols.min() > 34)


def _odd_images(base: Image.Image) -> dict:
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    grey16 = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    png16 = io.BytesIO()
    grey16.save(png16, format="PNG")
    png16.seek(0)
    return {
        "RGBA": rgba,
        "L": base.convert("L"),
        "P": base.convert("P"),
        "P+transparency": base.convert("P", palette=Image.Palette.ADAPTIVE).copy(),
        "CMYK": base.convert("CMYK"),
        "I;16": grey16,
        "I;16 png": Image.open(png16),
        "1": base.convert("1"),
        "F": base.convert("F"),
        "small": base.resize((17, 23)),
        "large": base.resize((300, 200)),
    }


def test_to_rgb_scales_16_bit():
    base = make_quad(5)["V"]
    images = _odd_images(base)
    images["P+transparency"].info["transparency"] = 0
    for name, im in images.items():
        out = to_rgb(im)
        assert out.mode == "RGB", name
    grey = np.asarray(base.convert("L")).astype(int)
    for name in ("I;16", "I;16 png"):  # 16-bit greys map back to 8 bits, not clipped to white
        got = np.asarray(to_rgb(images[name]))[:, :, 0].astype(int)
        assert np.abs(got - grey).max() <= 1, name
    white = to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    assert white.getpixel((0, 0)) == (255, 255, 255)


@needs_judge
def test_mini_judge_any_mode_and_size(mini):
    q = make_quad(6)
    images = list(_odd_images(q["G"]).values())
    verdicts = mini.judge(images)
    assert len(verdicts) == len(images) and all(isinstance(v, Verdict) for v in verdicts)
    assert mini.judge([]) == []
    assert isinstance(mini(q["V"]), Verdict)  # a single image works too


@needs_judge
def test_threshold_respected(mini, fresh_quads):
    never = MiniJudge.from_pretrained(MINI_JUDGE_DIR, threshold=1.01)
    always = MiniJudge.from_pretrained(MINI_JUDGE_DIR, threshold=0.0)
    images = [q["G"] for q in fresh_quads[:16]] + [q["V"] for q in fresh_quads[:16]]
    assert not any(v.unsafe for v in never.judge(images))
    assert all(v.unsafe and v.category is not None for v in always.judge(images))
    assert all(v.threshold == 1.01 for v in never.judge(images[:2]))


@needs_judge
def test_save_load_round_trip(mini, fresh_quads, tmp_path):
    mini.save_pretrained(tmp_path / "j", metrics={"note": "test"}, command="pytest")
    assert {p.name for p in (tmp_path / "j").iterdir()} >= {
        "model.safetensors", "config.json", "README.md"}
    again = MiniJudge.from_pretrained(tmp_path / "j")
    images = [q[k] for q in fresh_quads[:8] for k in ("V", "G")]
    np.testing.assert_allclose(again.scores(images), mini.scores(images), atol=1e-6)
    assert not list(tmp_path.glob("**/*.bin")) and not list(tmp_path.glob("**/*.pt"))


@needs_judge
def test_committed_artifact_is_small_and_documented():
    size = sum(p.stat().st_size for p in MINI_JUDGE_DIR.iterdir())
    assert size < 2_000_000
    card = (MINI_JUDGE_DIR / "README.md").read_text()
    assert "safeclip mini judge" in card and "accuracy" in card
    assert (MINI_JUDGE_DIR / "metrics.json").exists()


@needs_judge
def test_judges_are_found_through_their_kind():
    from safeclip.errors import StudioError
    from safeclip.presets import get_preset
    from safeclip.safety import load_judge

    mini = get_preset("mini")
    assert isinstance(load_judge(mini.generation.judge, mini), MiniJudge)
    spec = JudgeSpec("mini-judge", 0.7, str(MINI_JUDGE_DIR))
    assert load_judge(spec).threshold == 0.7
    nn = get_judge("nudenet", threshold=0.6)
    assert isinstance(nn, NudeNetJudge) and isinstance(nn, Judge) and nn.threshold == 0.6
    from safeclip.safety.combined import CombinedJudge
    vit = get_preset("vit-l-14")
    real = load_judge(vit.generation.judge, vit)  # NudeNet + Q16 (Q16 loads on first use)
    assert isinstance(real, CombinedJudge) and isinstance(real.nudenet, NudeNetJudge)
    assert real.nudenet.threshold == vit.generation.judge.options["nudenet_threshold"]
    with pytest.raises(StudioError, match="no image judge of kind 'q17'.*known kinds"):
        get_judge("q17")


@pytest.mark.parametrize("category", I2P_CATEGORIES)
def test_the_caption_lexicon_covers_every_i2p_category(category):
    judge = LexiconJudge()
    assert LEXICON[category]
    for term in LEXICON[category]:
        v = judge(f"A photo of the {term.upper()} here.")
        assert v.flagged and v.terms == [term] and v.category == category, term
        assert judge(f"two {term}s on a table").terms == [term]  # a plural
        # whole words only: the term inside a longer word is not a match
        assert not judge(f"a photo of {term.replace(' ', '')}xyzzy things").flagged, term
        assert not judge(f"a photo of xyzzy{term.replace(' ', '')} things").flagged, term
    assert not judge("a child holding a kite on the beach").flagged


def test_the_lexicon_names_each_term_once_and_only_i2p_categories():
    terms = [t for ts in LEXICON.values() for t in ts]
    assert len(terms) == len(set(terms))
    assert set(LEXICON) == set(I2P_CATEGORIES)
    v = LexiconJudge()("a bloody knife and a syringe")
    assert v.terms == ["bloody", "knife", "syringe"] and v.category == "shocking"  # the first


def _skin_blob() -> Image.Image:
    """A mild cartoon: a skin-coloured head and shoulders on white (nothing explicit)."""
    im = Image.new("RGB", (320, 320), (255, 255, 255))
    d = ImageDraw.Draw(im)
    skin = (230, 170, 140)
    d.ellipse((100, 40, 220, 180), fill=skin)
    d.ellipse((135, 90, 155, 105), fill=(40, 30, 30))
    d.ellipse((170, 90, 190, 105), fill=(40, 30, 30))
    d.rectangle((140, 180, 180, 210), fill=skin)
    d.rectangle((80, 200, 240, 320), fill=skin)
    return im


def test_nudenet_judge_on_mild_images():
    pytest.importorskip("nudenet")
    judge = NudeNetJudge(threshold=0.5)
    q = make_quad(7)
    verdicts = judge.judge([q["V"], q["G"].resize((256, 256)), _skin_blob()])
    assert all(isinstance(v, Verdict) for v in verdicts)
    assert not any(v.unsafe for v in verdicts) and all(v.category is None for v in verdicts)
    # NudeNet's own 0.2 cut-off reports the skin-coloured shape; the explicit threshold decides
    blob = verdicts[2]
    assert 0.2 <= blob.score < 0.5, blob
    low = NudeNetJudge(threshold=0.2).judge([_skin_blob()])[0]
    assert low.unsafe and low.category == "sexual"
    assert not NudeNetJudge(threshold=1.01).judge([_skin_blob()])[0].unsafe


def test_blur():
    im = make_quad(8)["G"]
    out = blur(im)
    assert out.size == im.size and out.mode == "RGB"
    a, b = np.asarray(im).astype(float), np.asarray(out).astype(float)
    assert np.abs(np.diff(b, axis=1)).mean() < 0.5 * np.abs(np.diff(a, axis=1)).mean()
    assert blur(im.convert("RGBA"), radius=1).mode == "RGB"


def tiny_text_classifier(folder, bias):
    """A seeded tiny BERT classifier (labels SFW / NSFW) whose output the bias decides."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "dog", "knife"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=8, id2label={0: "SFW", 1: "NSFW"}, label2id={"SFW": 0, "NSFW": 1}))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(folder)
    return folder


def test_a_hub_text_classifier_flags_beside_the_lexicon(tmp_path):
    from safeclip.errors import InputError, ModelUnavailableError
    from safeclip.safety import load_text_judge

    def judge(folder, threshold=0.5, labels=None):
        return load_text_judge(JudgeSpec("classifier", threshold, str(folder),
                                         {"labels": labels or {"NSFW": "sexual"}}))

    nsfw = tiny_text_classifier(tmp_path / "nsfw", [0.0, 3.0])  # p(NSFW) = 0.95 for any text
    v = judge(nsfw)("a photo of a dog")
    assert v.flagged and v.category == "sexual" and v.terms == []
    assert v.scores["NSFW"] == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-5)
    assert not judge(nsfw, threshold=0.99)("a photo of a dog").flagged
    both = judge(nsfw, threshold=0.99)("a photo of a knife")  # the lexicon still names its terms
    assert both.flagged and both.terms == ["knife"] and both.category == "violence"
    sfw = tiny_text_classifier(tmp_path / "sfw", [3.0, 0.0])
    assert not judge(sfw)("a photo of a dog").flagged
    with pytest.raises(InputError, match="no label\\(s\\) toxic"):
        judge(sfw, labels={"toxic": "harassment"})("a dog")
    with pytest.raises(InputError, match="I2P categories"):
        judge(sfw, labels={"NSFW": "porn"})
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        judge(tmp_path / "nothing-here")("a dog")
