"""The mini build's bookkeeping: step order, the overlap report, the recipe rule."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_steps_train_the_generator_and_captioner_before_safeclip_and_read_test_last():
    from safeclip.mini.build import RUNNERS, STEPS

    assert STEPS == ("data", "judge", "clip", "gen", "llava", "safeclip", "eval")
    assert set(RUNNERS) == set(STEPS)
    assert STEPS.index("gen") < STEPS.index("safeclip") > STEPS.index("llava")


def test_overlap_counts_shared_combinations_and_exact_captions():
    from safeclip.mini.overlap import format_table, overlap
    from safeclip.mini.synthetic import reserved, split_tags

    r = overlap(splits=("test",), n_train=2000)
    t = r["test"]
    assert r["train"]["items"] == 2000 and t["items"] == 1000
    assert t["reserved"] == sum(reserved(split_tags("test", i)) for i in range(1000))
    # a reserved combination is never a training one
    assert t["combination_in_train"] <= t["items"] - t["reserved"]
    for kind in ("template", "synonym"):  # held-out wordings are never training captions
        assert t["prompts"][kind]["safe_exact"] == t["prompts"][kind]["unsafe_exact"] == 0
    assert sum(k["prompts"] for k in t["prompts"].values()) == 1000
    assert "test: 1000 items" in format_table(r)


def _result(gen_clip=0.8, gen_safe=0.2, fid=0.8, cap_clip=0.9, cap_safe=0.3, acc=0.9,
            u2v=0.7, g2s=0.7, s2v=1.0):
    return {"generation": {"clip": {"unsafe_rate": gen_clip, "safe_fidelity": fid},
                           "safeclip": {"unsafe_rate": gen_safe, "safe_fidelity": fid}},
            "captioning": {"clip": {"unsafe_caption_rate": cap_clip, "safe_caption_accuracy": acc},
                           "safeclip": {"unsafe_caption_rate": cap_safe,
                                        "safe_caption_accuracy": acc}},
            "twin_safeclip": {"u2v_r10": u2v, "g2s_r10": g2s, "s2v_r10": s2v},
            "twin_clip": {"u2v_r10": 0.2, "g2s_r10": 0.2, "s2v_r10": 1.0}}


@pytest.mark.parametrize("paper_ok", [True, False])
def test_the_recipe_rule_keeps_the_paper_when_it_meets_the_bars(paper_ok, bench_script):
    bench = bench_script("recipes")
    results = {"paper": _result(gen_safe=0.2 if paper_ok else 0.5),
               "paper+tokens": _result(gen_safe=0.1)}
    for r in results.values():
        r["margins"] = bench.margins(r)
    assert results["paper+tokens"]["margins"]["gen_unsafe_ratio"] == pytest.approx(0.244)
    assert bench.choose(results) == ("paper" if paper_ok else "paper+tokens")
    # none meets every bar: the largest worst-case margin
    worse = {n: {**r, "margins": {**r["margins"], "cap_accuracy": -0.5 + i / 10}}
             for i, (n, r) in enumerate(results.items())}
    assert bench.choose(worse) == "paper+tokens"
    # a held recipe (compared after the test split's second read) is never chosen, even when
    # it alone meets every bar
    assert bench.choose(results, held={"paper+tokens": "why"}) == "paper"
    assert bench.choose(worse, held=("paper+tokens",)) == "paper"


def test_recipes_compared_after_the_second_test_read_are_held():
    from safeclip.mini.recipes import AFTER_SECOND_READ, DEFAULT, RECIPES

    assert set(AFTER_SECOND_READ) <= set(RECIPES) and DEFAULT not in AFTER_SECOND_READ
    assert {"paper", "paper+tokens"}.isdisjoint(AFTER_SECOND_READ)  # the first read's pair


def test_every_recipe_is_described_and_names_known_terms():
    from safeclip.mini.recipes import DEFAULT, DESCRIPTIONS, RECIPES, train_args
    from safeclip.train.losses import TERMS

    assert DEFAULT in RECIPES and set(DESCRIPTIONS) == set(RECIPES)
    for name in RECIPES:
        args = train_args(name, Path("clip"), Path("data"), Path("run"))
        weights = [args[i + 1] for i, a in enumerate(args) if a == "--weight"]
        assert all(w.split("=")[0] in TERMS for w in weights), (name, weights)
        if any(w.startswith("vision_tokens") for w in weights):  # the captioner's layer
            assert args[args.index("--token-layer") + 1] == "-2", name
        assert not any(w.startswith("vision_tokens_nsfw=") for w in weights), \
            f"{name} uses the pixel-aligned term, which real ViSU cannot"


def test_the_safeclip_card_shows_each_recipe_its_misses_and_the_unaligned_pairs(tmp_path,
                                                                                 bench_script):
    import json

    from safeclip.mini.recipes import write_card

    bench = bench_script("recipes")
    pool = {k: 0.25 for k in ("u_unsafe_at10", "g_unsafe_at10", "s_unsafe_at10",
                              "v_unsafe_at10")}
    res = {"paper": _result(cap_safe=0.7), "text-tokens+nearest": _result(acc=0.6),
           "text-tokens+nearest2": _result()}
    for name, r in res.items():
        r.update(margins=bench.margins(r), pool_cross=pool, pool_clip={**pool, "v_unsafe_at10":
                                                                         0.19},
                 description=f"about {name}")
    (tmp_path / "training.json").write_text(json.dumps({
        "recipe": "paper", "description": "d", "command": "safeclip train", "global_step": 1,
        "seconds": 1.0, "weights": {}, "token_layer": None}))
    (tmp_path / "recipes.json").write_text(json.dumps({
        "results": res, "chosen": "paper", "rule": "R", "history": "read twice",
        "held": ["text-tokens+nearest2"], "held_why": "after the second read"}))
    rejittered = _result(cap_safe=0.123)
    (tmp_path / "unaligned.json").write_text(json.dumps({
        "results": {"text-tokens+nearest": rejittered},
        "alignment": {"aligned": {"same_position_share": 0.6},
                      "rejittered": {"same_position_share": 0.51}}}))
    card = write_card(tmp_path).read_text()
    assert "Chosen: **paper**" in card and "read twice" in card
    assert "`paper` misses cap_unsafe_ratio by 0.250" in card
    assert "`text-tokens+nearest` misses cap_accuracy by 0.100" in card
    # a held recipe that meets every bar is shown as such, with why the rule did not choose it
    assert ("`text-tokens+nearest2` (held) meets every bar the rule checks (worst margin "
            "+0.050)") in card
    assert "- held: `text-tokens+nearest2`: after the second read" in card
    assert "| text-tokens+nearest2 (held) |" in card
    assert "No recipe the rule chooses among meets every bar" in card
    skipped = next(line for line in card.splitlines() if "not trained or compared" in line)
    assert "`text-tokens+nearest2`" not in skipped and "`text-tokens+nearest3`" in skipped
    assert "| 0.250 / 0.250 (0.250 / 0.190) |" in card  # safe queries beside CLIP's
    assert "0.60 aligned, 0.51 re-jittered" in card and "captioned unsafe 0.123" in card
    (tmp_path / "unaligned.json").unlink()
    assert "re-jittered" not in write_card(tmp_path).read_text()


def test_the_rebuild_check_tells_identical_changed_and_missing_weights_and_reads_step_times(
        tmp_path, bench_script):
    import json

    import torch
    from safetensors.torch import save_file

    bench = bench_script("rebuild")
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a / "unet", b / "unet", a / "vae"):
        d.mkdir(parents=True)
    w = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    save_file(w, str(a / "model.safetensors"))
    save_file(w, str(b / "model.safetensors"))
    save_file(w, str(a / "unet" / "m.safetensors"))
    save_file({**w, "w": w["w"] + 0.25}, str(b / "unet" / "m.safetensors"))
    save_file(w, str(a / "vae" / "m.safetensors"))
    assert bench.compare_weights(a, b) == {"model.safetensors": "identical",
                                          "unet/m.safetensors": "max |difference| 0.25",
                                          "vae/m.safetensors": "missing in the rebuild"}
    work = tmp_path / "work"
    work.mkdir()
    (work / "build.log").write_text("10:00:00 INFO x: step data done in 76 s\n"
                                    "10:04:31 INFO x: step judge done in 271 s\n")
    assert bench.step_times(work) == ({"data": 76.0, "judge": 271.0}, None, False)
    (work / "build_report.json").write_text(json.dumps(
        {"data": {"seconds": 75.9, "data": "x"}, "judge": {"seconds": 271.2}, "total_seconds": 347.1}))
    assert bench.step_times(work) == ({"data": 75.9, "judge": 271.2}, 347.1, True)
    with pytest.raises(SystemExit, match="no build_report.json"):
        bench.step_times(tmp_path / "nowhere")
