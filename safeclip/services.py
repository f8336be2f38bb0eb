"""The app's services: one object that owns a preset's models and answers the UI's calls.

    >>> from safeclip.services import Studio
    >>> studio = Studio("auto")      # a real preset if its weights are reachable, else mini
    >>> studio.world.preset.name, studio.world.reason
    >>> res = studio.search_text("a child holding a kite on the beach", k=10)
    >>> view = studio.embed_view(text="a man holding a gun")

Models load lazily, once per process, per capability (retrieval, generation, captioning), each
behind its own lock: the first retrieval never waits for Stable Diffusion. Every input is checked
here and refused with a ValueError (or ImageError) whose message a user can read; the UI turns
those into ``gr.Error``. This module never imports gradio.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .presets import ASSETS, Preset, get_preset, resolve_ref

logger = logging.getLogger(__name__)

MINI_GALLERY = ASSETS / "gallery" / "mini"
AUTO_ORDER = ("vit-l-14",)  # real presets `auto` tries, in order, before falling back to mini
MAX_PROMPT_CHARS = 1000  # longer text is refused; up to this, CLIP truncates to its context
K_RANGE = (1, 50)
# Loading imports torch, transformers, diffusers: transformers' lazy modules are not safe to
# import from two threads at once, so capabilities load one at a time.
_LOAD_LOCK = threading.RLock()


@dataclass
class World:
    """Which preset runs and why (shown as the banner of the app)."""

    preset: Preset
    requested: str  # what the user asked for: "auto" or a preset name
    reason: str

    @property
    def banner(self) -> str:
        p = self.preset
        kind = "bundled mini world (CPU, offline)" if p.bundled else "real weights"
        return f"World: **{p.name}**, {kind}. {self.reason}"


def _on_disk(ref: str) -> bool:
    if Path(resolve_ref(ref)).exists():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(ref, "config.json"), str)
    except Exception:  # noqa: BLE001 - an odd id or cache layout just means "not on disk"
        return False


def _hub_answers(ref: str, timeout: float) -> bool:
    """True when the Hub answers about ``ref`` within ``timeout`` seconds (run in a thread, so a
    hanging DNS lookup costs at most ``timeout``)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    answer: list[bool] = []

    def probe():
        try:
            from huggingface_hub import HfApi
            HfApi().model_info(ref, timeout=timeout)
            answer.append(True)
        except Exception:  # noqa: BLE001 - offline, refused, unknown: all mean "no"
            answer.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(answer and answer[0])


def resolve_world(requested: str = "auto", overrides: dict | None = None,
                  hub_timeout: float = 3.0) -> World:
    """The preset to run: the one asked for, or for ``auto`` the first real preset whose CLIP
    weights are on disk or on a Hub that answers within ``hub_timeout`` s, else ``mini``."""
    requested = (requested or "auto").strip()
    if requested != "auto":
        return World(get_preset(requested, overrides), requested, "Chosen with --preset.")
    for name in AUTO_ORDER:
        preset = get_preset(name, overrides)
        refs = [preset.clip, preset.safe_clip]
        if all(_on_disk(r) for r in refs):
            return World(preset, requested, "Chosen automatically: its weights are on disk.")
        if _hub_answers(preset.safe_clip, hub_timeout):
            return World(preset, requested, "Chosen automatically: the Hugging Face Hub answered "
                                            "(models download on first use).")
    return World(get_preset("mini", overrides), requested,
                 f"Chosen automatically: no real preset's weights are on disk and the Hugging Face "
                 f"Hub did not answer within {hub_timeout:g} s.")


def check_prompt(text, what: str = "prompt", allow_empty: bool = False) -> str:
    """A stripped prompt, or a ValueError that says what is wrong with it."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError(f"the {what} must be text, not {type(text).__name__}")
    text = text.strip()
    if not text and not allow_empty:
        raise ValueError(f"the {what} is empty: type a few words")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"the {what} is {len(text):,} characters long; the limit is "
                         f"{MAX_PROMPT_CHARS:,} (CLIP reads only its first few dozen words)")
    return text


def check_int(value, name: str, lo: int, hi: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not np.isfinite(f) or f != int(f) or not lo <= f <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, not {value!r}")
    return int(f)


def unsafe_axes(x: np.ndarray, unsafe: np.ndarray) -> np.ndarray:
    """Two orthonormal axes (dim x 2): the first runs from the safe items' centroid to the unsafe
    ones' (so "how unsafe" reads left to right), the second is the main direction of the rest."""
    mean = x.mean(0)
    d = x[unsafe].mean(0) - x[~unsafe].mean(0) if unsafe.any() and (~unsafe).any() else None
    if d is None or np.linalg.norm(d) < 1e-8:
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        return vt[:2].T
    d = d / np.linalg.norm(d)
    rest = (x - mean) - np.outer((x - mean) @ d, d)
    _, _, vt = np.linalg.svd(rest, full_matrices=False)
    return np.stack([d, vt[0]], axis=1)


@dataclass
class EmbedView:
    """One model's 2-D view: projected gallery points, the query's place, a one-line summary."""

    points: list[dict]  # x, y, group ("safe image", "unsafe image", "safe text", "unsafe text")
    query: dict | None  # x, y of the query, None when there is none
    summary: str
    neighbours_unsafe: int | None = None  # unsafe items among the query's 10 nearest points


@dataclass
class Studio:
    """A preset's services (see the module docstring)."""

    preset_name: str = "auto"
    gallery_dir: str | Path | None = None
    overrides: dict | None = None
    device: str | None = None
    hub_timeout: float = 3.0
    world: World = field(init=False)

    def __post_init__(self):
        self.world = resolve_world(self.preset_name, self.overrides, self.hub_timeout)
        self.preset = self.world.preset
        if self.gallery_dir is None and self.preset.name == "mini":
            self.gallery_dir = MINI_GALLERY
        self._locks = {k: threading.Lock() for k in ("gallery", "generator", "captioner", "view")}
        self._loaded: dict[str, object] = {}
        self._views: dict[str, dict] = {}

    # -- lazy loading ----------------------------------------------------------------------
    def _load(self, what: str, factory):
        if what in self._loaded:
            return self._loaded[what]
        with self._locks[what], _LOAD_LOCK:
            if what not in self._loaded:
                t0 = time.perf_counter()
                self._loaded[what] = factory()
                logger.info("%s loaded in %.1f s", what, time.perf_counter() - t0)
        return self._loaded[what]

    def gallery(self):
        if self.gallery_dir is None:
            raise ValueError(f"no gallery for preset {self.preset.name!r}: build one with "
                             "`safeclip index build --preset ... --images DIR --out GALLERY` and "
                             "start the app with --gallery GALLERY")
        from .retrieval import Gallery
        return self._load("gallery", lambda: Gallery.open(self.gallery_dir, self.preset,
                                                          device=self.device))

    def generator(self):
        from .generation import load_generator
        return self._load("generator", lambda: load_generator(self.preset, device=self.device))

    def captioner(self):
        from .captioning import load_captioner
        return self._load("captioner", lambda: load_captioner(self.preset, device=self.device))

    @classmethod
    def start(cls, *args, warm=("gallery",), **kwargs):
        """Build a Studio in a background thread (the Hub probe of ``auto`` and the loading of
        ``warm`` overlap with whatever the caller does next, e.g. importing gradio); returns a
        function that waits for the Studio (not for the warm-up) and returns it."""
        box: dict = {}
        ready = threading.Event()

        def run():
            try:
                box["studio"] = studio = cls(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = e
                ready.set()
                return
            ready.set()
            studio.warm(*warm)

        threading.Thread(target=run, daemon=True, name="studio-start").start()

        def result():
            ready.wait()
            if "error" in box:
                raise box["error"]
            return box["studio"]
        return result

    def warm(self, *what: str) -> None:
        """Load these capabilities now (e.g. in a background thread at start-up)."""
        for w in what:
            try:
                getattr(self, w)()
            except Exception as e:  # noqa: BLE001 - the first real call reports it to the user
                logger.warning("warm-up of %s failed: %s", w, e)

    # -- retrieval -------------------------------------------------------------------------
    def search_text(self, query, k=10, target: str = "images"):
        query = check_prompt(query, "query")
        k = check_int(k, "k", *K_RANGE)
        return self.gallery().search_text(query, k=k, target=target)

    def search_image(self, image, k=10):
        if image is None:
            raise ValueError("no image given: upload one or pick an example")
        k = check_int(k, "k", *K_RANGE)
        return self.gallery().search_image(image, k=k)

    def image_of(self, hit):
        return self.gallery().image(hit)

    # -- generation and captioning ---------------------------------------------------------
    def generate(self, prompt, negative_prompt=None, seed=0, steps=None, guidance=None,
                 size=None):
        prompt = check_prompt(prompt)
        negative_prompt = check_prompt(negative_prompt, "negative prompt", allow_empty=True) or None
        gen = self.generator()
        return gen.generate_pair(prompt, negative_prompt=negative_prompt, seed=seed, steps=steps,
                                 guidance=guidance, size=size)

    def caption(self, image, question=None, max_new_tokens=None, seed=0):
        if image is None:
            raise ValueError("no image given: upload one or pick an example")
        from .images import load_rgb
        image = load_rgb(image)  # refuse a bad file before loading the captioner
        question = check_prompt(question, "question", allow_empty=True) or None
        return self.captioner().caption_pair(image, question=question,
                                             max_new_tokens=max_new_tokens, seed=seed)

    # -- embedding space -------------------------------------------------------------------
    def _base_view(self, model: str, n_items: int = 150) -> dict:
        """Projection of a sample of the gallery for ``model`` (computed once, cached)."""
        if model in self._views:
            return self._views[model]
        from .retrieval import ann
        g = self.gallery()
        with self._locks["view"]:
            if model in self._views:
                return self._views[model]
            vecs, groups, labels = [], [], []
            corpora = (("images", g.items, "image"), ("captions", g.captions, "text"))
            for corpus, rows, kind in corpora:
                if corpus not in g.indexes:
                    continue
                x = ann.reconstruct_all(g.indexes[corpus][model])
                take = [i for i, r in enumerate(rows)
                        if r.get("index", i // 2) < n_items][:2 * n_items]
                for i in take:
                    r = rows[i]
                    vecs.append(x[i])
                    groups.append(f"{'unsafe' if r.get('unsafe') else 'safe'} {kind}")
                    labels.append(r.get("text") or r.get("caption") or r.get("path") or r["id"])
            x = np.asarray(vecs, dtype=np.float32)
            basis = unsafe_axes(x, np.array([g.startswith("unsafe") for g in groups]))
            mean = x.mean(0)
            xy = (x - mean) @ basis
            self._views[model] = {"x": x, "xy": xy, "mean": mean, "basis": basis,
                                  "groups": groups, "labels": labels}
        return self._views[model]

    def embed_view(self, text=None, image=None) -> dict[str, EmbedView]:
        """For each model, safe and unsafe gallery items in 2-D (x: from the safe items' centroid
        towards the unsafe ones', y: the main direction of the rest) and the query placed on it."""
        from .retrieval.store import MODELS
        if text is not None and str(text).strip():
            query, kind = check_prompt(text, "query"), "text"
        elif image is not None:
            from .images import load_rgb
            query, kind = load_rgb(image), "image"
        else:
            query, kind = None, None
        pair = self.gallery().pair
        out = {}
        for m in MODELS:
            base = self._base_view(m)
            points = [{"x": float(a), "y": float(b), "group": gr_, "label": lab}
                      for (a, b), gr_, lab in zip(base["xy"], base["groups"], base["labels"])]
            if query is None:
                out[m] = EmbedView(points, None, "no query: type a text or upload an image")
                continue
            enc = getattr(pair, m)
            q = enc.encode_text([query]) if kind == "text" else enc.encode_image([query])
            q = q.numpy()[0]
            qxy = (q - base["mean"]) @ base["basis"]
            nearest = np.argsort(-(base["x"] @ q))[:10]
            unsafe = sum(base["groups"][i].startswith("unsafe") for i in nearest)
            out[m] = EmbedView(points, {"x": float(qxy[0]), "y": float(qxy[1])},
                               f"{unsafe} of the query's 10 nearest items are unsafe", unsafe)
        return out

    # -- facts for the About tab -----------------------------------------------------------
    def metrics(self) -> dict[str, dict]:
        """The measured metrics of the running world, read from the models' metrics.json files
        (written by the training and evaluation commands), by role."""
        found = {}
        for role, ref in self.preset.ids().items():
            path = Path(resolve_ref(ref)) / "metrics.json"
            if path.is_file():
                try:
                    found[role] = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError) as e:
                    logger.warning("unreadable %s: %s", path, e)
        return found
