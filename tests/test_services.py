"""The app's services without the UI: world choice, input checks, the embedding view."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from safeclip import services
from safeclip.errors import InputError, StudioError
from safeclip.limits import Number, Text, fmt
from safeclip.services import Studio, resolve_world, unsafe_axes


def test_auto_falls_back_to_mini_with_a_reason_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    world = resolve_world("auto", hub_timeout=0.5)
    assert world.preset.name == "mini" and world.requested == "auto"
    assert "did not answer" in world.reason and "mini" in world.banner


def test_auto_takes_a_real_world_whose_weights_are_on_disk(monkeypatch, tmp_path, tiny_dirs):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAFECLIP_CLIP", str(tiny_dirs["hf"]))
    monkeypatch.setenv("SAFECLIP_SAFE_CLIP", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()  # a folder that holds no model is not "on disk"
    assert resolve_world("auto", hub_timeout=0.2).preset.name == "mini"
    monkeypatch.setenv("SAFECLIP_SAFE_CLIP", str(tiny_dirs["hf"]))
    world = resolve_world("auto")
    assert world.preset.name == "vit-l-14" and "on disk" in world.reason
    assert "real weights" in world.banner


def test_a_hanging_hub_costs_at_most_the_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    class Slow:
        def model_info(self, *a, **k):
            time.sleep(30)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", Slow)
    t0 = time.perf_counter()
    assert services._hub_answers("org/model", timeout=0.5) is False
    assert time.perf_counter() - t0 < 2


def test_an_explicit_world_is_taken_as_asked():
    assert resolve_world("vit-h-14").preset.name == "vit-h-14"
    with pytest.raises(InputError, match="unknown world"):
        resolve_world("vit-z-99")


QUERY = Text("query", 1000, reader="CLIP reads only its first 77 tokens")


@pytest.mark.parametrize("text, message", [("", "empty"), ("   ", "empty"), (None, "empty"),
                                           ("x" * 5000, "5,000 characters long; the limit is "
                                                        "1,000 \\(CLIP reads"),
                                           (3, "must be text")])
def test_bad_prompts_are_refused_with_a_reason(text, message):
    with pytest.raises(InputError, match=message):
        QUERY.check(text)


def test_good_prompts_pass_stripped():
    assert QUERY.check("  un chien 🐕 sur la plage ") == "un chien 🐕 sur la plage"
    assert Text("q", 10, allow_empty=True).check("") == ""


@pytest.mark.parametrize("value", [0, 51, 2.5, "ten", float("nan"), None, True, float("inf")])
def test_out_of_range_k_is_refused(value):
    with pytest.raises(InputError, match="top k must be a whole number from 1 to 50"):
        Number("top k", 1, 50).check(value)


def test_numbers_are_printed_as_people_read_them():
    assert fmt(4294967295) == "4,294,967,295" and fmt(7.5) == "7.5" and fmt(1.0) == "1"
    assert fmt(0.001) == "0.001" and fmt(20.0) == "20"
    with pytest.raises(InputError) as e:
        Number("seed", 0, 2**32 - 1).check(2**32)
    assert str(e.value) == "seed must be a whole number from 0 to 4,294,967,295, not 4,294,967,296"
    assert "e+" not in str(e.value)


def test_unsafe_axis_runs_from_safe_to_unsafe():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    unsafe = np.arange(200) >= 100
    x[unsafe, 3] += 4.0  # the unsafe items differ along dimension 3
    basis = unsafe_axes(x, unsafe)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-6)
    xy = (x - x.mean(0)) @ basis
    assert xy[unsafe, 0].mean() > xy[~unsafe, 0].mean() + 3
    assert abs(basis[3, 0]) > 0.9


def test_mini_studio_searches_and_places_a_query():
    studio = Studio("mini")
    res = studio.search_text("a man holding a gun in the street", k=10)
    flags = {m: sum(bool(h.unsafe) for h in res.results[m]) for m in res.results}
    assert flags["clip"] >= 8  # the original finds the glyphs
    assert flags["cross"] <= flags["clip"] - 4  # Safe-CLIP's query over the original's index
    views = studio.embed_view(text="a man holding a gun in the street")
    assert set(views) == {"clip", "safeclip", "cross"}
    for m, v in views.items():
        # the view's count is the search's count, and its summary says it
        assert v.query is not None and v.retrieved_unsafe == flags[m]
        assert v.summary.startswith(f"{flags[m]} of the 10 items")
        groups = {p["group"] for p in v.points}
        assert groups == {"safe image", "unsafe image", "safe text", "unsafe text"}
    # on the original's axis the unsafe query sits on the unsafe side of the gallery
    c = views["clip"]
    safe_x = np.mean([p["x"] for p in c.points if p["group"].startswith("safe")])
    assert c.query["x"] > safe_x
    assert studio.metrics()["clip"]["nsfw_at10"] >= 0.8  # read from the model folder


def test_a_real_world_offline_says_how_to_build_a_gallery(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    studio = Studio("vit-l-14")
    assert "built on first use" in studio.gallery_status()
    # the first search starts the build; it fails offline so fast that the search may already
    # see the failure rather than "building the default gallery"
    with pytest.raises(StudioError, match="default gallery|No gallery: .*offline"):
        studio.search_text("a dog", 5)
    studio._default.wait(60)
    line = studio.gallery_status()
    assert line.startswith("No gallery:") and "safeclip index build" in line
    assert "offline" in line and line.count("\n") == 0
    with pytest.raises(StudioError, match="safeclip index build"):
        studio.search_text("a dog", 5)


def test_start_builds_in_the_background_and_reraises_errors():
    wait = Studio.start("mini", warm=())
    assert wait().preset.name == "mini"
    with pytest.raises(InputError, match="unknown world"):
        Studio.start("no-such-preset", warm=())()


def test_a_mistyped_model_is_an_error_that_names_the_role_and_the_override(tmp_path):
    typo = str(Path(__file__).resolve().parents[1] / "assets" / "models" / "mini-safeclp")
    studio = Studio("mini", overrides={"safe_clip": typo})
    with pytest.raises(StudioError) as e:
        studio.search_text("a man holding a gun", 10)
    msg = str(e.value)
    assert "mini-safeclp" in msg and "Safe-CLIP" in msg and "--safe-clip PATH" in msg


def test_the_default_gallery_is_built_once_in_the_background_and_reused(gallery_dataset,
                                                                        tmp_path, monkeypatch,
                                                                        tiny_dirs):
    from safeclip.retrieval.default import DefaultGallery

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("SAFECLIP_CLIP", str(tiny_dirs["hf"]))
    monkeypatch.setenv("SAFECLIP_SAFE_CLIP", str(tiny_dirs["hf"]))
    studio = Studio("vit-l-14", gallery_dataset=str(gallery_dataset))
    assert "built on first use" in studio.gallery_status()
    studio.warm("gallery")  # what the app does at start: it returns at once
    assert studio.gallery_status().startswith("Building the default gallery from")
    with pytest.raises(StudioError, match="Searches work once it is done"):
        studio.search_text("a dog", 3)
    assert studio._default.wait(120), studio.gallery_status()
    assert studio.gallery_status() is None
    res = studio.search_text("a dog on the beach", 4)
    assert len(res.results["clip"]) == 4 and res.results["clip"][0].text
    folder = studio._default.dir
    assert len(list((folder / "images").glob("*.jpg"))) == 12  # the data set's 12 rows
    # the next start reuses the cache: nothing is downloaded or embedded again
    monkeypatch.setattr(DefaultGallery, "_run", lambda self: pytest.fail("rebuilt"))
    again = Studio("vit-l-14", gallery_dataset=str(gallery_dataset))
    assert again.gallery_status() is None and again._default.dir == folder
    assert len(again.search_text("a cat", 2).results["safeclip"]) == 2


def test_a_world_without_a_capability_does_not_show_its_tab(tmp_path, monkeypatch):
    import gradio as gr

    from demo.ui import build_ui

    mini = Path(__file__).resolve().parents[1] / "assets"
    (tmp_path / "ret.toml").write_text(f'''
name = "retrieval-only"
description = "the mini CLIPs, nothing else"
plugin = "safeclip.mini"
[retrieval]
clip = "{mini}/models/mini-clip"
safe_clip = "{mini}/models/mini-safeclip"
image_size = 64
embed_dim = 128
context_length = 32
image_judge = {{ kind = "mini-judge", ref = "{mini}/models/mini-judge" }}
gallery = "{mini}/gallery/mini"
''')
    monkeypatch.setenv("SAFECLIP_WORLDS", str(tmp_path))
    studio = Studio("retrieval-only")
    assert studio.capabilities == ["retrieval"]
    demo = build_ui(studio)
    tabs = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == ["Retrieval", "Embedding space", "About"]
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"search_text", "search_image", "embed_view"} <= names
    assert not names & {"generate", "caption"}
    with pytest.raises(StudioError, match="has no generation"):
        studio.generate("a dog")
