"""Event handlers: turn the services' results into what the two columns show.

Each handler takes the UI's inputs, calls ``safeclip.services.Studio`` and returns component
values. Flagged images are blurred unless ``reveal`` is ticked; the raw results are kept in a
``gr.State`` so that ticking the box re-renders without recomputing. Errors a user can fix come
back as ``gr.Error`` with the services' message; the app keeps serving.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import re
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from safeclip.errors import StudioError
from safeclip.images import blur

logger = logging.getLogger(__name__)

COLUMNS = ("clip", "safeclip")
DISPLAY = 192  # px: mini images (64 px) are enlarged for display, nearest neighbour
OUTPUTS = Path(tempfile.gettempdir()) / "safeclip-ui"  # images handed to gradio, by content
MAX_OUTPUTS = 5000  # files kept there


def guard(fn):
    """A ``StudioError`` (bad input, a missing model, a gallery still building) becomes a
    readable ``gr.Error``; anything else is a bug: logged with its traceback and reported in one
    line. Either way the app keeps serving."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except StudioError as e:
            raise gr.Error(readable(e)) from e
        except Exception as e:  # noqa: BLE001 - never let one call take the app down
            logger.exception("%s failed", fn.__name__)
            raise gr.Error(f"internal error ({type(e).__name__}): {readable(e)}") from e
    return wrapper


def readable(e: Exception) -> str:
    """The message of ``e`` without server-side folders (uploads live in temporary paths)."""
    text = str(e).strip("'\"") or type(e).__name__
    return re.sub(r"(?<![\w:/])(/[^\s/:]+)+/([^\s/:]+)", r"\2", text)


def gpu(fn, seconds: int = 60):
    """``spaces.GPU(duration=seconds)`` on Hugging Face ZeroGPU Spaces (the world's data says
    how long one call of a capability may hold the GPU); a no-op elsewhere."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=int(seconds))(fn)


def gallery_status(studio):
    """The gallery's status line, and whether its timer keeps ticking."""
    line = studio.gallery_status()
    return line or "", gr.Timer(active=line is not None and "No gallery" not in line)


def show(image: Image.Image, flagged: bool, reveal: bool) -> Image.Image:
    image = image.convert("RGB")
    if max(image.size) < DISPLAY:
        scale = DISPLAY // max(image.size)
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return blur(image) if flagged and not reveal else image


def to_file(image: Image.Image) -> str:
    """The image as a file named by its content, written atomically (temporary name, then
    rename). Returned to gradio as a path, it is copied to gradio's cache atomically too. A PIL
    image would be re-encoded into the same content-named cache file by every response, and a
    client still downloading that file from an earlier response could read it half rewritten
    (seen in the 40-client load test: "Too little data for declared Content-Length")."""
    buf = io.BytesIO()
    image.save(buf, format="WEBP", quality=90)
    data = buf.getvalue()
    path = OUTPUTS / f"{hashlib.sha1(data).hexdigest()}.webp"
    if not path.exists():
        OUTPUTS.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=OUTPUTS, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        _prune(OUTPUTS)
    return str(path)


def _prune(folder: Path, keep: int | None = None) -> None:
    """Keep the folder bounded on a long-running server: past ``keep`` (default MAX_OUTPUTS)
    files, delete the oldest half (gradio has already copied what it served into its cache)."""
    keep = MAX_OUTPUTS if keep is None else keep
    files = list(folder.glob("*.webp"))
    if len(files) <= keep:
        return
    files.sort(key=lambda p: p.stat().st_mtime if p.exists() else 0)
    for p in files[: len(files) // 2]:
        p.unlink(missing_ok=True)


def _flag_text(flagged, category=None, reveal=False, image=True) -> str:
    if not flagged:
        return ""
    what = f"unsafe ({category})" if category else "unsafe"
    return f" · {what}" + ("" if reveal or not image else " · blurred")


def summary_line(k: int, counts: dict[str, int | None]) -> str:
    c, s = (counts[m] if counts[m] is not None else "?" for m in COLUMNS)
    return f"**Unsafe in top {k}: {c} (CLIP) vs {s} (Safe-CLIP)**"


# -- retrieval ---------------------------------------------------------------------------------
def render_text_search(studio, res, reveal: bool):
    galleries = []
    for m in COLUMNS:
        items = []
        for h in res.results[m]:
            img = to_file(show(studio.image_of(h), bool(h.unsafe), reveal))
            label = f"#{h.rank} · {h.score:.3f}{_flag_text(h.unsafe, h.category, reveal)}"
            if h.text:
                label += f" · {h.text}"
            items.append((img, label))
        galleries.append(items)
    counts = {m: sum(bool(h.unsafe) for h in res.results[m]) for m in COLUMNS}
    return galleries[0], galleries[1], summary_line(res.k, counts)


def search_text(studio, query, k, reveal):
    res = studio.search_text(query, k)
    return (*render_text_search(studio, res, reveal), res)


def rerender_text_search(studio, res, reveal):
    if res is None:
        return gr.skip(), gr.skip(), gr.skip()
    return render_text_search(studio, res, reveal)


def search_image(studio, image, k):
    res = studio.search_image(image, k)
    tables = []
    for m in COLUMNS:
        tables.append(pd.DataFrame(
            [[h.rank, round(h.score, 4), h.text or h.id, "⚠ unsafe" if h.unsafe else ""]
             for h in res.results[m]], columns=["rank", "score", "caption", "flag"]))
    counts = {m: sum(bool(h.unsafe) for h in res.results[m]) for m in COLUMNS}
    return tables[0], tables[1], summary_line(res.k, counts)


# -- generation --------------------------------------------------------------------------------
def render_generation(res, reveal: bool):
    out = []
    for m in COLUMNS:
        g = getattr(res, m)
        v = g.verdict
        out.append(to_file(show(g.image, v.unsafe, reveal)))
    for m in COLUMNS:
        v = getattr(res, m).verdict
        if v.unsafe:
            out.append(f"⚠ **judged unsafe** ({v.category or 'unsafe'}, score {v.score:.2f})"
                       + ("" if reveal else " · blurred"))
        else:
            out.append(f"✓ judged safe (score {v.score:.2f})")
    notes = "; ".join(res.warnings) if getattr(res, "warnings", None) else ""
    return (*out, notes)


def generate(studio, prompt, negative_prompt, seed, steps, guidance, reveal):
    res = studio.generate(prompt, negative_prompt or None, seed=seed, steps=steps,
                          guidance=guidance)
    return (*render_generation(res, reveal), res)


def rerender_generation(res, reveal):
    if res is None:
        return (gr.skip(),) * 5
    return render_generation(res, reveal)


# -- captioning --------------------------------------------------------------------------------
def caption(studio, image, question, max_new_tokens):
    res = studio.caption(image, question or None, max_new_tokens=max_new_tokens)
    out = []
    for m in COLUMNS:
        out.append(getattr(res, m).text)
    for m in COLUMNS:
        c = getattr(res, m)
        out.append(f"⚠ **flagged**: {', '.join(c.terms)}" if c.flagged else "✓ no unsafe terms")
    return (*out, "; ".join(res.warnings) if getattr(res, "warnings", None) else "")


# -- embedding space ---------------------------------------------------------------------------
def embed_view(studio, text, image):
    views = studio.embed_view(text=text or None, image=image)
    frames, lines = [], []
    for m in COLUMNS:
        v = views[m]
        rows = list(v.points)
        if v.query:
            rows.append({"x": v.query["x"], "y": v.query["y"], "group": "query",
                         "label": (text or "uploaded image")[:60]})
        frames.append(pd.DataFrame(rows, columns=["x", "y", "group", "label"]))
        lines.append(v.summary)
    return (frames[0], frames[1],
            f"**CLIP:** {lines[0]}. **Safe-CLIP:** {lines[1]}.")
