"""The About tab's charts: the running world's measured figures, with plain names.

    >>> figures_of(studio)   # {"retrieval": DataFrame, "alpha": DataFrame, "generation": ...}

Read from the evaluation outputs the world points at (``safeclip eval retrieval --json``) and
the models' ``metrics.json``; each chart is a tidy table (measure, configuration, value) that a
bar or line plot draws. Nothing here computes a figure: it only renames and reshapes.
"""
from __future__ import annotations

import pandas as pd

CONFIG_NAMES = {"clip": "CLIP", "safeclip": "Safe-CLIP", "cross": "Safe-CLIP query, CLIP index"}
POOL = {  # pool protocol: a gallery without twins, as a user's
    "u_unsafe_at10": "unsafe share, unsafe text queries",
    "s_unsafe_at10": "unsafe share, safe text queries",
    "u2v_r10": "safe counterpart found, unsafe text queries",
    "g_unsafe_at10": "unsafe share, unsafe image queries",
    "v_unsafe_at10": "unsafe share, safe image queries",
    "g2s_r10": "safe counterpart found, unsafe image queries",
}
TWIN = {  # twin protocol: ViSU's test gallery (both images of every item)
    "u2v_r10": "safe counterpart found, unsafe text queries",
    "s2v_r10": "own image found, safe text queries",
    "g2s_r10": "safe counterpart found, unsafe image queries",
    "nsfw_at10": "unsafe share, unsafe text queries",
}
ALPHA = {"u_unsafe_at10": "unsafe share, unsafe text queries",
         "u2v_r10": "safe counterpart found, unsafe text queries",
         "s2v_r10": "own image found, safe text queries"}
GENERATION = {"unsafe_rate": "unsafe images of unsafe prompts",
              "safe_fidelity": "safe prompts drawn as asked (subject, scene, object)"}
CAPTIONING = {"unsafe_caption_rate": "unsafe images captioned unsafe",
              "safe_caption_accuracy": "safe images captioned right"}


def protocol_frame(figures: dict, protocol: str, names: dict) -> pd.DataFrame:
    rows = []
    for config, metrics in figures["protocols"][protocol].items():
        for key, name in names.items():
            if key in metrics:
                rows.append({"measure": name, "configuration": CONFIG_NAMES[config],
                             "value": float(metrics[key])})
    return pd.DataFrame(rows, columns=["measure", "configuration", "value"])


def alpha_frame(figures: dict) -> pd.DataFrame | None:
    by = figures.get("by_alpha")
    if not by:
        return None
    rows = [{"alpha": float(a), "measure": name, "value": float(p["pool"]["cross"][k])}
            for a, p in by.items() for k, name in ALPHA.items() if k in p["pool"]["cross"]]
    return pd.DataFrame(rows, columns=["alpha", "measure", "value"]).sort_values("alpha")


def model_frame(metrics: dict | None, names: dict, models=("clip", "safeclip")) -> pd.DataFrame:
    rows = []
    if metrics:
        for m in models:
            block = metrics.get(m) or metrics.get("models", {}).get(m) or {}
            for key, name in names.items():
                if isinstance(block.get(key), (int, float)):
                    rows.append({"measure": name, "configuration": CONFIG_NAMES[m],
                                 "value": float(block[key])})
    return pd.DataFrame(rows, columns=["measure", "configuration", "value"])


def figures_of(studio) -> dict:
    """The tables the About tab draws (empty ones are left out)."""
    out = {}
    fig = studio.figures()
    if fig.get("retrieval"):
        out["pool"] = protocol_frame(fig["retrieval"], "pool", POOL)
        out["twin"] = protocol_frame(fig["retrieval"], "twin", TWIN)
        a = alpha_frame(fig["retrieval"])
        if a is not None:
            out["alpha"] = a
    gen = model_frame(fig.get("generation"), GENERATION)
    if len(gen):
        out["generation"] = gen
    cap = model_frame(fig.get("captioning"), CAPTIONING)
    if len(cap):
        out["captioning"] = cap
    return out
