"""The app's services: one object that owns a world's models and answers the UI's calls.

    >>> from safeclip.services import Studio
    >>> studio = Studio("auto")      # a real world if its weights are reachable, else the offline one
    >>> studio.world.preset.name, studio.world.reason, studio.capabilities
    >>> res = studio.search_text("a child holding a kite on the beach", k=10)
    >>> view = studio.embed_view(text="a man holding a gun")

Models load lazily, once per process, per capability (retrieval, generation, captioning), each
behind its own lock: the first retrieval never waits for Stable Diffusion. Each input is checked
once, by the object that owns its limits (``Studio.limits`` for retrieval, the generator's and
the captioner's own), and refused with a ``safeclip.errors.StudioError`` whose message a user can
read; the UI turns those into ``gr.Error``. This module never imports gradio or torch at import.
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

from .errors import StudioError
from .limits import Number
from .presets import Preset, auto_order, default_preset, get_preset, resolve_ref

logger = logging.getLogger(__name__)

# Loading imports torch, transformers, diffusers: transformers' lazy modules are not safe to
# import from two threads at once, so capabilities load one at a time.
_LOAD_LOCK = threading.RLock()


@dataclass
class World:
    """Which world runs and why (shown as the banner of the app)."""

    preset: Preset
    requested: str  # what the user asked for: "auto" or a world's name
    reason: str

    @property
    def banner(self) -> str:
        p = self.preset
        kind = "models bundled with the code (CPU, offline)" if p.offline else "real weights"
        return f"World: **{p.name}**, {kind}. {self.reason}"


def _on_disk(spec) -> bool:
    from .hub import CLIP_FILES, OPEN_CLIP_FILES, on_disk

    try:
        return on_disk(spec.ref, OPEN_CLIP_FILES if spec.kind == "open_clip" else CLIP_FILES)
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
    """The world to run: the one asked for, or for ``auto`` the first world marked ``try``
    whose retrieval models are on disk or on a Hub that answers within ``hub_timeout`` s, else
    the offline world."""
    requested = (requested or "auto").strip()
    if requested != "auto":
        return World(get_preset(requested, overrides), requested, "Chosen with --preset.")
    for name in auto_order():
        world = get_preset(name, overrides)
        r = world.retrieval
        if r is not None and all(_on_disk(m) for m in (r.clip, r.safe_clip)):
            return World(world, requested, "Chosen automatically: its weights are on disk.")
        if r is not None and _hub_answers(r.safe_clip.ref, hub_timeout):
            return World(world, requested, "Chosen automatically: the Hugging Face Hub answered "
                                           "(models download on first use).")
    fallback = default_preset()
    return World(get_preset(fallback, overrides), requested,
                 f"Chosen automatically: no real world's weights are on disk and the Hugging Face "
                 f"Hub did not answer within {hub_timeout:g} s.")


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
    """One configuration's 2-D view: the projected gallery it searches, the query's place, and
    a one-line summary of what it retrieves."""

    points: list[dict]  # x, y, group ("safe image", "unsafe image", "safe text", "unsafe text")
    query: dict | None  # x, y of the query, None when there is none
    summary: str
    retrieved_unsafe: int | None = None  # unsafe items among the 10 it retrieves


@dataclass
class Studio:
    """A world's services (see the module docstring)."""

    preset_name: str = "auto"
    gallery_dir: str | Path | None = None  # replaces the world's gallery
    overrides: dict | None = None
    device: str | None = None
    hub_timeout: float = 3.0
    gallery_dataset: str | None = None  # replaces the data set of the world's default gallery
    world: World = field(init=False)

    def __post_init__(self):
        self.world = resolve_world(self.preset_name, self.overrides, self.hub_timeout)
        self.preset = self.world.preset
        self.capabilities = self.preset.capabilities()
        from .retrieval.gallery import LIMITS

        r = self.preset.retrieval
        self.limits = LIMITS  # the gallery's own: the widgets show what it checks
        self._default = None
        if r is not None and self.gallery_dir is None:
            if r.gallery:
                self.gallery_dir = r.gallery
            elif r.gallery_source is not None:
                import dataclasses

                from .retrieval.default import DefaultGallery
                src = r.gallery_source
                if self.gallery_dataset or os.environ.get("SAFECLIP_GALLERY_DATASET"):
                    src = dataclasses.replace(src, dataset=self.gallery_dataset
                                              or os.environ["SAFECLIP_GALLERY_DATASET"])
                self._default = DefaultGallery(self.preset, src)
        self._locks = {k: threading.Lock() for k in ("gallery", "generator", "captioner", "view")}
        self._loaded: dict[str, object] = {}
        self._views: dict[str, dict] = {}

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def _need(self, capability: str) -> None:
        if not self.has(capability):
            raise StudioError(f"world {self.preset.name!r} has no {capability}")

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

    def gallery_status(self) -> str | None:
        """One line for the retrieval tab while there is no gallery to search (else None)."""
        if not self.has("retrieval"):
            return None
        if self._default is not None:
            return self._default.status()
        if self.gallery_dir is None:
            from .retrieval.default import how_to_build
            return f"No gallery for world {self.preset.name!r}: {how_to_build(self.preset)}."
        return None

    def gallery(self):
        self._need("retrieval")
        if "gallery" in self._loaded:
            return self._loaded["gallery"]
        folder = self.gallery_dir
        if folder is None and self._default is not None:
            folder = self._default.check()  # NotReadyError with the progress while it builds
        if folder is None:
            raise StudioError(self.gallery_status())
        from .retrieval import Gallery
        return self._load("gallery", lambda: Gallery.open(folder, self.preset,
                                                          device=self.device))

    def generator(self):
        self._need("generation")
        from .generation import load_generator
        return self._load("generator", lambda: load_generator(self.preset, device=self.device))

    def captioner(self):
        self._need("captioning")
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
        """Load these capabilities now (e.g. in a background thread at start-up); the default
        gallery starts building here."""
        for w in what:
            if w == "gallery" and self._default is not None and not self._default.ready:
                self._default.start()
                continue
            if {"gallery": "retrieval", "generator": "generation",
                    "captioner": "captioning"}.get(w) not in self.capabilities:
                continue
            try:
                getattr(self, w)()
            except Exception as e:  # noqa: BLE001 - the first real call reports it to the user
                logger.warning("warm-up of %s failed: %s", w, e)

    # -- retrieval -------------------------------------------------------------------------
    def search_text(self, query, k=10, target: str = "images", alpha=None, beta=0.0):
        """Every configuration's ranking (the gallery checks the inputs; ``alpha`` dials the
        cross column's Safe-CLIP query, ``beta`` steers every query)."""
        return self.gallery().search_text(query, k=k, target=target, alpha=alpha, beta=beta)

    def search_image(self, image, k=10, alpha=None, beta=0.0):
        from .images import load_rgb
        image = load_rgb(image)  # refuse a bad file before loading any model
        return self.gallery().search_image(image, k=k, alpha=alpha, beta=beta)

    @property
    def dial(self) -> bool:
        """Whether the strength dial applies: two retrieval models of one kind."""
        r = self.preset.retrieval
        return r is not None and (r.clip.kind or "transformers") == (r.safe_clip.kind
                                                                    or "transformers")

    def image_of(self, hit):
        return self.gallery().image(hit)

    # -- generation and captioning ---------------------------------------------------------
    def generate(self, prompt, negative_prompt=None, seed=0, steps=None, guidance=None,
                 size=None):
        return self.generator().generate_pair(prompt, negative_prompt=negative_prompt, seed=seed,
                                              steps=steps, guidance=guidance, size=size)

    def caption(self, image, question=None, max_new_tokens=None, seed=0):
        from .images import load_rgb
        image = load_rgb(image)  # refuse a bad file before loading the captioner
        return self.captioner().caption_pair(image, question=question,
                                             max_new_tokens=max_new_tokens, seed=seed)

    # -- settings the UI shows before any model loads --------------------------------------
    def generation_settings(self) -> dict:
        from .generation.generator import generation_settings, make_limits

        s = generation_settings(self.preset)
        return {**s, "limits": make_limits(s["limits"])}

    def captioning_settings(self) -> dict:
        c = self.preset.captioning
        lim = c.limits.get("max_new_tokens", (1, 256))
        return {"defaults": dict(c.defaults),
                "limits": {"max_new_tokens": Number("max new tokens", *lim)}}

    def example_images(self) -> list[str]:
        """The world's example images for the captioning tab (safe images first)."""
        c = self.preset.captioning
        if c is None or not c.examples or not Path(c.examples).is_dir():
            return []
        files = [p for p in Path(c.examples).iterdir()
                 if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]
        return [str(p) for p in sorted(files, key=lambda p: (p.stem[-1] != "V", p.name))]

    # -- embedding space -------------------------------------------------------------------
    def _base_view(self, model: str, n_items: int = 150) -> dict:
        """Projection of a sample of ``model``'s gallery index (computed once, cached)."""
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
                if model not in g.indexes.get(corpus, {}):
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

    def embed_view(self, text=None, image=None, alpha=None) -> dict[str, EmbedView]:
        """For each configuration, the gallery that configuration searches in 2-D (x: from the
        safe items' centroid towards the unsafe ones', y: the main direction of the rest), its
        query placed on it, and how many of the 10 items it would retrieve are unsafe."""
        from .retrieval.gallery import PLAN
        if text is not None and str(text).strip():
            query, kind = self.limits["query"].check(text), "text"
        elif image is not None:
            from .images import load_rgb
            query, kind = load_rgb(image), "image"
        else:
            query, kind = None, None
        g = self.gallery()
        if query is not None:  # each query encoder runs once: for the search and the drawing
            encode = ((lambda e, q: e.encode_text(q)) if kind == "text"
                      else (lambda e, q: e.encode_image(q)))
            vectors = g.query_vectors(encode, [query], g.configs, alpha)
            hits = g.search_vectors(vectors, 10, "images" if kind == "text"
                                    else g.image_target())[0]
        out = {}
        for c in g.configs:
            base = self._base_view(PLAN[c][1])
            points = [{"x": float(a), "y": float(b), "group": gr_, "label": lab}
                      for (a, b), gr_, lab in zip(base["xy"], base["groups"], base["labels"])]
            if query is None:
                out[c] = EmbedView(points, None, "no query: type a text or upload an image")
                continue
            qxy = (vectors[c][0] - base["mean"]) @ base["basis"]
            unsafe = sum(bool(h.unsafe) for h in hits[c])
            out[c] = EmbedView(points, {"x": float(qxy[0]), "y": float(qxy[1])},
                               f"{unsafe} of the 10 items it retrieves are unsafe", unsafe)
        return out

    # -- facts for the About tab -----------------------------------------------------------
    def figures(self) -> dict:
        """The world's measured figures: the retrieval evaluation its data names (``safeclip
        eval retrieval --json``), the generator's and the captioner's metrics.json."""
        out = {}
        r = self.preset.retrieval
        if r is not None and r.figures and Path(r.figures).is_file():
            out["retrieval"] = json.loads(Path(r.figures).read_text())
        m = self.metrics()
        out["generation"], out["captioning"] = m.get("sd"), m.get("llava")
        return out

    def metrics(self) -> dict[str, dict]:
        """The measured metrics of the running world, read from the models' metrics.json files
        (written by the training and evaluation commands), by role."""
        found = {}
        for role, ref in self.preset.ids().items():
            path = Path(resolve_ref(ref)) / "metrics.json"
            if path.is_file() and role not in found:
                try:
                    found[role] = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError) as e:
                    logger.warning("unreadable %s: %s", path, e)
        return found
