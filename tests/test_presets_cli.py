"""Presets registry and the ``safeclip`` command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from safeclip.cli import main
from safeclip.presets import get_preset, list_presets


def test_four_presets_with_their_models():
    assert list_presets() == ["mini", "vit-h-14", "vit-l-14", "vit-l-14-336"]
    assert get_preset("vit-l-14").safe_clip == "aimagelab/safeclip_vit-l_14"
    assert get_preset("vit-l-14").sd == "CompVis/stable-diffusion-v1-4"
    assert get_preset("vit-l-14-336").llava == "llava-hf/llava-1.5-7b-hf"
    h = get_preset("vit-h-14")
    assert h.backend == "open_clip" and h.safe_sd == "aimagelab/safeclip_sd_20"
    assert "quickgelu" in h.safe_open_clip_arch
    assert get_preset("mini").bundled


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match="vit-l-14"):
        get_preset("vit-b-32")


def test_overrides_explicit_beat_environment(monkeypatch):
    monkeypatch.setenv("SAFECLIP_CLIP", "/env/clip")
    assert get_preset("vit-l-14").clip == "/env/clip"
    assert get_preset("vit-l-14", {"clip": "/flag/clip"}).clip == "/flag/clip"
    assert get_preset("vit-l-14", use_env=False).clip == "openai/clip-vit-large-patch14"


def test_cli_presets_table_and_json(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in list_presets():
        assert name in out
    assert main(["presets", "--json", "--safe-clip", "/my/copy"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(list_presets())
    assert all(r["safe_clip"] == "/my/copy" for r in rows)


def test_cli_unknown_command_fails_cleanly(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_import_safeclip_imports_neither_gradio_nor_torch():
    code = "import sys, safeclip, safeclip.presets, safeclip.cli; print('gradio' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_console_script_is_installed():
    out = subprocess.run(["safeclip", "presets"], capture_output=True, text=True)
    assert out.returncode == 0 and "vit-h-14" in out.stdout
