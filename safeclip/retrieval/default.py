"""A world's default gallery: built on first use from a small public image-caption data set,
in the background, cached on disk and reused at the next start.

    >>> from safeclip.retrieval.default import DefaultGallery
    >>> d = DefaultGallery(world)              # world.retrieval.gallery_source names the data
    >>> d.start()                              # a background thread; returns at once
    >>> d.status()                             # "Building the default gallery: ... 1,200 of 3,000"
    >>> d.wait(); d.path                       # a gallery folder (safeclip.retrieval.store)

Steps, each resumable: the first ``n`` rows of the data set are streamed (``datasets``, only what
is read is downloaded) and saved as files with a labels file (file, caption); then the folder is
indexed with both models of the world (``build_gallery``: judged by the world's retrieval judge,
batch shards written as they come). The cache folder is named by the data set and the models, so
other models never reuse it. Offline with nothing cached, the status says in one line how to
build a gallery by hand.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from ..errors import NotReadyError, StudioError
from ..limits import fmt

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("SAFECLIP_CACHE", Path.home() / ".cache" / "safeclip"))


def how_to_build(world) -> str:
    return (f"build one with `safeclip index build --preset {world.name} --images DIR --out "
            "GALLERY` and start the app with --gallery GALLERY")


class DefaultGallery:
    """See the module docstring. ``source`` overrides the world's ``gallery_source``."""

    RETRY_AFTER = 60.0  # seconds after a failed build before a search tries again

    def __init__(self, world, source=None, root: Path | None = None):
        self.world = world
        self.source = source or world.retrieval.gallery_source
        if self.source is None:
            raise StudioError(f"world {world.name!r} names no gallery data set; "
                              + how_to_build(world))
        key = json.dumps([self.source.dataset, self.source.split, self.source.n,
                          world.retrieval.clip.ref, world.retrieval.safe_clip.ref])
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        self.dir = (root or cache_root() / "galleries") / f"{world.name}-{digest}"
        self.path = self.dir / "index"
        self._state = "idle"  # idle, downloading, embedding, ready, failed
        self._done = self._total = 0
        self._error: str | None = None
        self._failed_at = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        if (self.path / "manifest.json").is_file():
            self._state = "ready"

    # -- state ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._state == "ready"

    def status(self) -> str | None:
        """One line for the retrieval tab (None once the gallery is ready)."""
        s = self.source
        what = f"{s.dataset} ({s.split}, up to {fmt(s.n)} images)"
        if self._state == "ready":
            return None
        if self._state == "idle":
            return f"The default gallery ({what}) is built on first use."
        if self._state == "downloading":
            return (f"Building the default gallery from {what}: downloading, {fmt(self._done)} "
                    f"of {fmt(self._total)} images. Searches work once it is done.")
        if self._state == "embedding":
            return (f"Building the default gallery from {what}: embedding with both models, "
                    f"{fmt(self._done)} of {fmt(self._total)}. Searches work once it is done.")
        return f"No gallery: {self._error}; {how_to_build(self.world)}."

    def check(self) -> Path:
        """The gallery's folder, or NotReadyError with the status line."""
        if self.ready:
            return self.path
        self.start()
        raise NotReadyError(self.status())

    # -- building ---------------------------------------------------------------------------
    def start(self) -> None:
        """Build in a background thread (a failed build is tried again after RETRY_AFTER s)."""
        with self._lock:
            if self._state in ("ready", "downloading", "embedding"):
                return
            if self._state == "failed" and time.monotonic() - self._failed_at < self.RETRY_AFTER:
                return
            self._state, self._error = "downloading", None
            self._thread = threading.Thread(target=self._run, daemon=True, name="default-gallery")
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    def _progress(self, what: str, done: int, total: int) -> None:
        if what == "images":
            self._state, self._done, self._total = "embedding", done, total

    def _run(self) -> None:
        try:
            images, labels = self._download()
            from .build import build_gallery
            n = len(labels.read_text(encoding="utf-8").splitlines())
            self._state, self._done, self._total = "embedding", 0, n
            build_gallery(self.world, self.path, images=images, labels=labels, judge="auto",
                          overwrite=True, progress=self._progress)
            self._state = "ready"
            logger.info("default gallery of %s ready at %s", self.world.name, self.path)
        except Exception as e:  # noqa: BLE001 - reported in the tab, the app keeps serving
            self._error = _reason(e, self.source.dataset)
            self._failed_at = time.monotonic()
            self._state = "failed"
            logger.warning("default gallery of %s: %s", self.world.name, self._error)

    def _download(self) -> tuple[Path, Path]:
        """Stream the first ``n`` rows into DIR/images/ and DIR/labels.jsonl (resumable)."""
        s = self.source
        images, labels = self.dir / "images", self.dir / "labels.jsonl"
        images.mkdir(parents=True, exist_ok=True)
        done = {json.loads(x)["file"] for x in labels.read_text().splitlines()} \
            if labels.is_file() else set()
        self._total = s.n
        self._done = len(done)
        if len(done) >= s.n or (self.dir / "downloaded").exists():
            return images, labels
        offline = any(os.environ.get(v, "0") not in ("0", "", "false", "False")
                      for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        if offline and not Path(s.dataset).exists():
            raise StudioError(f"the data set {s.dataset} could not be downloaded (offline: "
                              "HF_HUB_OFFLINE is set)")
        try:
            import datasets
        except ImportError:
            raise StudioError("the default gallery needs the `datasets` package "
                              "(pip install datasets)") from None
        ds = datasets.load_dataset(s.dataset, split=s.split, streaming=True)
        image_col = s.image_column or next(
            (k for k, f in (ds.features or {}).items() if type(f).__name__ == "Image"), "image")
        with labels.open("a", encoding="utf-8") as out:
            for i, row in enumerate(ds.take(s.n)):
                name = f"{i:06d}.jpg"
                if name in done:
                    continue
                image = row.get(image_col)
                if image is None:
                    continue
                image.convert("RGB").save(images / name, quality=92)
                cap = _caption(row, s.caption_column)
                out.write(json.dumps({"file": name, "caption": cap}) + "\n")
                out.flush()
                self._done += 1
        (self.dir / "downloaded").write_text("")
        return images, labels


def _caption(row: dict, column: str | None) -> str | None:
    names = [column] if column else ["caption", "captions", "text", "sentence", "sentences"]
    for c in names:
        value = row.get(c)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value:
            return str(value)
    return None


def _reason(e: Exception, dataset: str) -> str:
    text = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    if isinstance(e, StudioError):
        return text
    if "offline" in text.lower() or "connect" in text.lower() or type(e).__name__ in (
            "ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        return f"the data set {dataset} could not be downloaded (offline?)"
    return f"the data set {dataset} could not be read ({type(e).__name__}: {text})"
