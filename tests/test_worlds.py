"""Worlds as data: the four worlds as the paper pairs the models, overrides and links, the kind
tables, a world of one's own, and the ``safeclip`` command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from safeclip.cli import main
from safeclip.errors import InputError
from safeclip.presets import ROLES, get_preset, list_presets, read_world


def test_four_worlds_pair_the_models_as_the_paper_does():
    assert list_presets() == ["mini", "vit-h-14", "vit-l-14", "vit-l-14-336"]
    lo = get_preset("vit-l-14", use_env=False)
    assert lo.ids() == {"clip": "openai/clip-vit-large-patch14",
                        "safe_clip": "aimagelab/safeclip_vit-l_14",
                        "sd": "CompVis/stable-diffusion-v1-4",
                        "safe_sd": "aimagelab/safeclip_vit-l_14",  # Safe-CLIP's text model
                        "llava": "llava-hf/llava-1.5-7b-hf",
                        "safe_tower": "aimagelab/safeclip_vit-l_14_336"}
    assert lo.captioning.tower is None  # LLaVA-1.5's own tower is the original 336 px CLIP
    lo336 = get_preset("vit-l-14-336", use_env=False)
    assert lo336.captioning.safe_tower.ref == lo336.retrieval.safe_clip.ref
    assert lo336.generation.safe_text.ref == "aimagelab/safeclip_vit-l_14"  # SD 1.4: L/14 text
    h = get_preset("vit-h-14", use_env=False)
    assert (h.retrieval.clip.kind, h.retrieval.clip.arch) == ("open_clip", "ViT-H-14")
    assert h.retrieval.safe_clip.kind == "transformers"  # a gelu CLIPModel, not QuickGELU
    assert h.generation.sd.ref == "stabilityai/stable-diffusion-2"
    assert h.generation.safe_text.ref == "aimagelab/safeclip_sd_20"
    assert h.generation.defaults["size"] == 768
    mini = get_preset("mini", use_env=False)
    assert mini.offline and mini.plugin == "safeclip.mini"
    for w in map(get_preset, list_presets()):
        assert w.capabilities() == ["retrieval", "generation", "captioning"], w.name


def test_every_kind_a_world_names_has_a_handler():
    from safeclip.kinds import entry

    for w in map(get_preset, list_presets()):
        r, g, c = w.retrieval, w.generation, w.captioning
        for spec in (r.clip, r.safe_clip):
            entry("clip", spec.kind or "transformers", w)
        entry("image_judge", r.image_judge.kind, w)
        entry("text_judge", r.text_judge.kind, w)
        entry("generator", g.kind, w)
        entry("image_judge", g.judge.kind, w)
        entry("captioner", c.kind, w)
        entry("text_judge", c.judge.kind, w)
        for table, kind in (("retrieval_eval", r.eval), ("generation_eval", g.eval),
                            ("captioning_eval", c.eval), ("train_data", r.train_data)):
            if kind:
                entry(table, kind, w)


def test_unknown_world_lists_the_known_ones():
    with pytest.raises(InputError, match="vit-l-14"):
        get_preset("vit-b-32")
    with pytest.raises(InputError, match="unknown model role"):
        get_preset("mini", {"clipp": "/x"})


def test_overrides_explicit_beat_environment(monkeypatch):
    monkeypatch.setenv("SAFECLIP_CLIP", "/env/clip")
    assert get_preset("vit-l-14").clip == "/env/clip"
    assert get_preset("vit-l-14", {"clip": "/flag/clip"}).clip == "/flag/clip"
    assert get_preset("vit-l-14", use_env=False).clip == "openai/clip-vit-large-patch14"


def test_links_follow_the_role_they_name():
    mini = get_preset("mini", {"clip": "/my/clip", "safe_clip": "/my/safe"})
    assert mini.generation.text.ref == mini.captioning.tower.ref == "/my/clip"
    assert mini.generation.safe_text.ref == mini.captioning.safe_tower.ref == "/my/safe"
    assert mini.generation.text.kind == "transformers"  # the linked model's kind
    lo = get_preset("vit-l-14", {"safe_clip": "/my/safe"})
    assert lo.generation.safe_text.ref == "/my/safe"
    assert lo.captioning.safe_tower.ref == "aimagelab/safeclip_vit-l_14_336"  # its own role
    own = get_preset("vit-l-14", {"safe_sd": "/my/text", "tower": "/my/tower"})
    assert own.generation.safe_text.ref == "/my/text" and own.retrieval.safe_clip.ref != "/my/text"
    assert own.captioning.tower.ref == "/my/tower"  # an optional role can be given
    assert set(ROLES) >= set(get_preset("mini").ids())


def test_a_world_of_ones_own_is_data(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text('''
name = "mine"
description = "retrieval only"
[retrieval]
clip = { ref = "/models/a", kind = "transformers" }
safe_clip = "/models/b"
image_size = 32
embed_dim = 24
''')
    monkeypatch.setenv("SAFECLIP_WORLDS", str(tmp_path))
    assert "mine" in list_presets()
    w = get_preset("mine")
    assert w.capabilities() == ["retrieval"] and w.generation is None
    assert w.retrieval.safe_clip.ref == "/models/b"
    with pytest.raises(Exception, match="has no generation"):
        from safeclip.generation import load_generator
        load_generator(w)
    (tmp_path / "dup.toml").write_text('name = "mini"\ndescription = "again"\n')
    with pytest.raises(ValueError, match="defined twice"):
        list_presets()


def test_relative_paths_of_a_world_file_are_against_its_root(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "w.toml"
    f.write_text('name = "w"\ndescription = "d"\nroot = ".."\n[retrieval]\n'
                 'clip = "./models/clip"\nsafe_clip = "org/name"\nimage_size = 1\nembed_dim = 1\n'
                 'gallery = "galleries/g"\n')
    w = read_world(f)
    assert w.retrieval.clip.ref == str(tmp_path / "models" / "clip")
    assert w.retrieval.safe_clip.ref == "org/name"  # a Hub id stays one
    assert w.retrieval.gallery == str(tmp_path / "galleries" / "g")


def test_cli_presets_table_and_json(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in list_presets():
        assert name in out
    assert main(["presets", "--json", "--safe-clip", "/my/copy"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(list_presets())
    assert all(r["models"]["safe_clip"] == "/my/copy" for r in rows)
    mini = next(r for r in rows if r["name"] == "mini")
    assert mini["models"]["safe_sd"] == "/my/copy" and mini["kinds"]["generation"] == "diffusers-sd"


def test_cli_unknown_command_fails_cleanly(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "mini" in capsys.readouterr().out  # the plug-in's verb is listed


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["search", "--preset", "vit-l-14", "--index", str(tmp_path),
                 "--text", "a dog"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("safeclip search: error:") and "Traceback" not in err


def test_import_safeclip_imports_neither_gradio_nor_torch():
    code = ("import sys, safeclip; safeclip.list_presets(); safeclip.get_preset('mini'); "
            "import safeclip.cli, safeclip.services, safeclip.kinds; "
            "print('gradio' in sys.modules, 'torch' in sys.modules, "
            "sorted(set(safeclip.__all__) - set(dir(safeclip))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "[]"]


def test_console_script_and_module_run():
    out = subprocess.run(["safeclip", "presets"], capture_output=True, text=True)
    assert out.returncode == 0 and "vit-h-14" in out.stdout
    out = subprocess.run([sys.executable, "-m", "safeclip", "presets", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)
