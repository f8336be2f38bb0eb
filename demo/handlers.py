"""Event handlers of generation and captioning, and what every handler shares (the error
guard, ZeroGPU's wrapper, the gallery's status line); retrieval's are in ``demo.retrieval``.

Each handler takes the UI's inputs, calls ``safeclip.services.Studio`` and returns component
values. Flagged images are blurred unless ``reveal`` is ticked; the raw results are kept in a
``gr.State`` so that ticking the box re-renders without recomputing. Errors a user can fix come
back as ``gr.Error`` with the services' message; the app keeps serving.
"""
from __future__ import annotations

import functools
import logging
import re

import gradio as gr

from safeclip.errors import StudioError

from .files import show, to_file

logger = logging.getLogger(__name__)

COLUMNS = ("clip", "safeclip")  # generation and captioning: one model, two encoders
JUDGES = {"nudenet": "NudeNet", "q16": "Q16"}  # how a verdict names the judges that flagged


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
            by = " and ".join(JUDGES.get(j, j) for j in getattr(v, "flagged_by", []))
            out.append(f"⚠ **judged unsafe**{' by ' + by if by else ''} "
                       f"({v.category or 'unsafe'}, score {v.score:.2f})"
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
