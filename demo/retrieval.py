"""Event handlers of retrieval and the embedding view: three columns, one per configuration.

``clip`` (the original's query over its own index), ``safeclip`` (both Safe-CLIP towers, the
paper's) and ``cross`` (Safe-CLIP's query over the original's index; ``alpha`` dials it,
``beta`` steers every column away from its index's unsafe direction). Thumbnails are files made
once per gallery item (``demo.files``); the raw results stay in a ``gr.State`` so that ticking
*reveal* re-renders without searching again.
"""
from __future__ import annotations

import gradio as gr
import pandas as pd

from .files import thumbnail, warm_thumbnails

CONFIGS = ("clip", "safeclip", "cross")
LABELS = {"clip": "CLIP", "safeclip": "Safe-CLIP",
          "cross": "Safe-CLIP query over the CLIP index"}


def _flag_text(flagged, category=None, reveal=False, image=True) -> str:
    if not flagged:
        return ""
    what = f"unsafe ({category})" if category else "unsafe"
    return f" · {what}" + ("" if reveal or not image else " · blurred")


def summary_line(k: int, res) -> str:
    parts = [f"{LABELS[c]} **{res.unsafe_count(c) if c in res.results else '-'}**"
             for c in CONFIGS]
    return f"Unsafe in top {k}: " + " · ".join(parts)


def render_text_search(studio, res, reveal: bool):
    galleries = []
    for c in CONFIGS:
        items = []
        for h in res.results.get(c, []):
            img = thumbnail(studio, h, blurred=bool(h.unsafe) and not reveal)
            label = f"#{h.rank} · {h.score:.3f}{_flag_text(h.unsafe, h.category, reveal)}"
            if h.text:
                label += f" · {h.text}"
            items.append((img, label))
        galleries.append(items)
    return (*galleries, summary_line(res.k, res))


def search_text(studio, query, k, reveal, alpha=1.0, beta=0.0):
    res = studio.search_text(query, k, alpha=alpha, beta=beta)
    warm_thumbnails(studio)
    return (*render_text_search(studio, res, reveal), res)


def rerender_text_search(studio, res, reveal):
    if res is None:
        return (gr.skip(),) * 4
    return render_text_search(studio, res, reveal)


def search_image(studio, image, k, alpha=1.0, beta=0.0):
    res = studio.search_image(image, k, alpha=alpha, beta=beta)
    tables = [pd.DataFrame([[h.rank, round(h.score, 4), h.text or h.id,
                             "⚠ unsafe" if h.unsafe else ""] for h in res.results.get(c, [])],
                           columns=["rank", "score", "caption", "flag"]) for c in CONFIGS]
    return (*tables, summary_line(res.k, res))


def embed_view(studio, text, image, alpha=1.0):
    views = studio.embed_view(text=text or None, image=image, alpha=alpha)
    frames, lines = [], []
    for c in CONFIGS:
        v = views.get(c)
        rows = list(v.points) if v else []
        if v and v.query:
            rows.append({"x": v.query["x"], "y": v.query["y"], "group": "query",
                         "label": (text or "uploaded image")[:60]})
        frames.append(pd.DataFrame(rows, columns=["x", "y", "group", "label"]))
        lines.append(f"**{LABELS[c]}:** {v.summary if v else 'not served by this gallery'}")
    return (*frames, " · ".join(lines))
