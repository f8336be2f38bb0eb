"""The Gradio interface. UI only: every model call goes through ``safeclip`` services.

The tabs of the full app (retrieval, generation, captioning, embedding space) arrive with their
services; until then the page shows which world is running and the presets.
"""
from __future__ import annotations

import gradio as gr

from safeclip.presets import ROLES, get_preset, list_presets

WARNING = ("**Content warning.** This demo studies how models react to unsafe (NSFW) concepts. "
           "Images judged unsafe are blurred by default.")


def presets_table() -> list[list[str]]:
    rows = []
    for name in list_presets():
        p = get_preset(name)
        rows.append([p.name, p.backend, *[str(getattr(p, r) or "-") for r in ROLES]])
    return rows


def build_ui(preset_name: str = "mini") -> gr.Blocks:
    preset = get_preset(preset_name)
    with gr.Blocks(title="Safe-CLIP Studio") as demo:
        gr.Markdown(f"# Safe-CLIP Studio\nWorld: **{preset.name}** — {preset.description}")
        gr.Markdown(WARNING)
        with gr.Tab("About"):
            gr.Markdown("Safe-CLIP (Poppi et al., ECCV 2024) fine-tunes CLIP so that NSFW text "
                        "and images stop landing in unsafe regions of its embedding space. "
                        "[Paper](https://arxiv.org/abs/2311.16254)")
            gr.Dataframe(value=presets_table(), headers=["preset", "backend", *ROLES],
                         interactive=False, label="Presets")
    return demo
