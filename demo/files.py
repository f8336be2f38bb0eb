"""Images handed to gradio as files: generated images by content, gallery thumbnails once.

    >>> to_file(image)                          # a generated image, named by its content
    >>> thumbnail(studio, hit, blurred=True)    # a gallery item, made on first use, then reused
    >>> warm_thumbnails(studio)                 # the rest, in the background, once per gallery

A gallery item's thumbnail (enlarged for display when small, and its blurred twin) is written
once, atomically, named by the gallery's checksum and the item, and every later response
hands gradio the same file: no image is re-encoded per search. Files are written under a
temporary name and renamed, so a client still downloading one never reads it half written.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from safeclip.images import blur

DISPLAY = 192  # px: small images (the mini world's 64 px) are enlarged, nearest neighbour
OUTPUTS = Path(tempfile.gettempdir()) / "safeclip-ui"  # generated images, by content
MAX_OUTPUTS = 5000  # generated files kept there
THUMBS = OUTPUTS / "thumbs"  # gallery thumbnails: a gradio static path (see serve_thumbnails)


def show(image: Image.Image, flagged: bool, reveal: bool) -> Image.Image:
    image = image.convert("RGB")
    if max(image.size) < DISPLAY:
        scale = DISPLAY // max(image.size)
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return blur(image) if flagged and not reveal else image


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _webp(image: Image.Image, lossless: bool = False) -> bytes:
    buf = io.BytesIO()
    if lossless:  # method 0: the fastest encoder, exact pixels (5x faster than lossy q90 here)
        image.save(buf, format="WEBP", lossless=True, method=0)
    else:
        image.save(buf, format="WEBP", quality=90)
    return buf.getvalue()


def to_file(image: Image.Image) -> str:
    """A generated image as a file named by its content (see the module docstring)."""
    data = _webp(image)
    path = OUTPUTS / f"{hashlib.sha1(data).hexdigest()}.webp"
    if not path.exists():
        _write(path, data)
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


def serve_thumbnails() -> None:
    """Let gradio serve the thumbnails folder as it stands. Without this, each response's files
    are checked against the allowed paths, hashed and copied into gradio's cache on the server's
    event loop (about 100 ms for three columns of ten, during which the server answers nothing
    else). gradio then tests each returned file against every static path in turn (two path
    resolutions each), so the folder goes first in its list. The folder holds only the files
    ``thumbnail`` writes."""
    import gradio as gr

    THUMBS.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([THUMBS])
    try:  # gradio keeps the static paths in one list, checked in order
        from gradio.data_classes import _StaticFiles

        paths = _StaticFiles.all_paths
        mine = paths.pop(len(paths) - 1 - paths[::-1].index(THUMBS.resolve()))
        paths.insert(0, mine)
    except (ImportError, AttributeError, ValueError):  # another gradio: correct, a little slower
        pass


THUMB_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{40}\.(plain|blur)\.webp")
SERVED_MAX = 4096  # thumbnails kept in memory by ThumbnailServer


class ThumbnailServer:
    """ASGI middleware that answers the page's requests for thumbnails itself: from memory,
    marked immutable (a thumbnail's name changes with the gallery's checksum, so a browser
    never needs to ask again), before Gradio's router, file checks and thread hop (about 5 ms
    a file here). Only names ``thumbnail`` makes, directly under ``THUMBS``, are answered; every
    other request, and any thumbnail it cannot read, goes on to Gradio. (Thumbnails are served
    without Gradio's login check: the app has no login; add one here if it ever gets one.)

        >>> demo.launch(app_kwargs=thumbnail_app_kwargs())
    """

    def __init__(self, app, folder: Path | None = None):
        self.app = app
        self.folder = folder or THUMBS
        # the URL holds the path as ``thumbnail`` returned it (not resolved: /tmp may be a link)
        self.prefixes = tuple({f"/gradio_api/file={p}/"
                               for p in (self.folder, self.folder.resolve())})
        self.cache: OrderedDict[str, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def read(self, name: str) -> bytes | None:
        with self.lock:
            data = self.cache.get(name)
            if data is not None:
                self.cache.move_to_end(name)
                return data
        try:
            data = (self.folder / name).read_bytes()
        except OSError:
            return None
        with self.lock:
            self.cache[name] = data
            while len(self.cache) > SERVED_MAX:
                self.cache.popitem(last=False)
        return data

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        prefix = next((p for p in self.prefixes if path.startswith(p)), None)
        if prefix and scope.get("method") in ("GET", "HEAD"):
            name = path[len(prefix):]
            data = self.read(name) if THUMB_NAME.fullmatch(name) else None
            if data is not None:
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"image/webp"),
                    (b"content-length", str(len(data)).encode()),
                    (b"cache-control", b"public, max-age=31536000, immutable")]})
                await send({"type": "http.response.body",
                            "body": b"" if scope["method"] == "HEAD" else data})
                return
        await self.app(scope, receive, send)


def thumbnail_app_kwargs() -> dict:
    """``launch(app_kwargs=...)`` that puts ThumbnailServer in front of Gradio's routes."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(ThumbnailServer)]}


def thumbnail(studio, hit, blurred: bool) -> str:
    """The display file of a gallery image hit, plain or blurred (made once, then reused)."""
    gallery = studio.gallery()
    key = hashlib.sha1(hit.id.encode()).hexdigest()
    tag = gallery.manifest["checksum"].split(":")[-1][:16]  # files are per gallery version
    path = THUMBS / f"{tag}-{key}.{'blur' if blurred else 'plain'}.webp"
    if not path.exists():  # plain: lossless (exact pixels); blurred: lossy, it has no detail
        _write(path, _webp(show(studio.image_of(hit), blurred, reveal=False),
                           lossless=not blurred))
    return str(path)


WARM_MAX = 20000  # gallery items whose default thumbnail is made in the background
_warming: set[str] = set()
_warm_lock = threading.Lock()


def warm_thumbnails(studio, limit: int = WARM_MAX) -> threading.Thread | None:
    """Make the default thumbnail (blurred when unsafe) of the gallery's first ``limit`` image
    items in a background thread, once per gallery: a search then hands over files that exist
    instead of encoding them while the user waits (about 2 ms each here). Started by the first
    search, not at start-up, so the first answer does not wait for it."""
    gallery = studio.gallery()
    tag = gallery.manifest["checksum"]
    with _warm_lock:
        if tag in _warming:
            return None
        _warming.add(tag)

    from safeclip.retrieval.gallery import Hit

    def run():
        try:
            for row in gallery.items[:limit]:
                hit = Hit(0, row["id"], 0.0, "image", row.get("unsafe"), meta=row)
                thumbnail(studio, hit, blurred=bool(row.get("unsafe")))
        except Exception:  # noqa: BLE001 - best effort: a search makes what is missing
            logging.getLogger(__name__).exception("thumbnail warm-up stopped")

    thread = threading.Thread(target=run, name="thumbnail-warm-up", daemon=True)
    thread.start()
    return thread
