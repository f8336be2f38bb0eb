"""The app module builds its UI without launching (``gradio app.py`` reload needs ``demo``)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_app_module_exposes_a_blocks_demo(monkeypatch):
    import gradio as gr

    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    sys.modules.pop("app", None)
    app = importlib.import_module("app")
    assert isinstance(app.demo, gr.Blocks)
    assert app.parse_args(["--preset", "vit-l-14", "--port", "9000"]).port == 9000


def test_library_does_not_import_gradio():
    for path in (ROOT / "safeclip").rglob("*.py"):
        text = path.read_text()
        assert "import gradio" not in text and "from gradio" not in text, path
