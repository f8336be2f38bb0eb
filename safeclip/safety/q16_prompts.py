"""Q16's learned prompt embeddings: found, checked, read without unpickling, cached as safetensors.

    >>> from safeclip.safety.q16_prompts import load_prompts
    >>> p = load_prompts()                # Q16Prompts: embeddings (2, 768) float32, sha256, source
    >>> p.embeddings[1]                   # the "inappropriate" prompt (row 0: "non inappropriate")

Q16 (Schramowski et al., FAccT 2022) publishes the prompts it tuned for CLIP ViT-L/14 as a pickle
of one numpy array: ``data/ViT-L-14/prompts.p`` in github.com/ml-research/Q16 (3,231 bytes,
float16, shape (2, 768); its inference code labels row 0 "non inappropriate" and row 1
"inappropriate"). The file is looked for, first found wins:

1. a path given explicitly (the judge's ``q16_prompts`` option or ``SAFECLIP_Q16_PROMPTS``): a
   ``.p`` pickle, or a ``.safetensors`` file this module wrote;
2. the cache, ``$SAFECLIP_CACHE/q16/prompts-<sha256>.safetensors`` (default ``~/.cache/safeclip``),
   written the first time a pickle is read;
3. a mirror: ``$SAFECLIP_MODELS_DIR/ml-research/Q16/data/ViT-L-14/prompts.p`` (what
   ``safeclip download --preset W --out DIR`` writes);
4. a download from the authors' repository at a pinned commit (``Q16_URL``), refused unless its
   SHA-256 is ``Q16_SHA256``; skipped when ``HF_HUB_OFFLINE`` is set.

A pickle is never unpickled as such: ``read_prompt_pickle`` resolves only the few numpy names
that an array's pickle uses (``_reconstruct``, ``ndarray``, ``dtype``, ``_frombuffer``,
``_codecs.encode``), each wrapped to accept only numeric arrays, and refuses every other global
with ``Q16FileError`` before anything is called: a pickle whose ``__reduce__`` names
``os.system`` fails and runs nothing. The SHA-256 of the file read is recorded with the
embeddings (and in every metric card); a file other than the published one is accepted with a
warning (your own prompts), never silently.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelUnavailableError

logger = logging.getLogger(__name__)

Q16_REPO = "ml-research/Q16"
Q16_COMMIT = "33de788767bbe33cf77a5f6df931cd86c71f294f"  # main on 2024-05-22; the file: 2022-04-28
Q16_FILE = "data/ViT-L-14/prompts.p"
Q16_URL = f"https://raw.githubusercontent.com/{Q16_REPO}/{Q16_COMMIT}/{Q16_FILE}"
Q16_SHA256 = "9b6c411824c2f64e0f847aa3c9f2b15b8e3a6c75e0efd82f2f672670c97ccad5"
Q16_LABELS = ("appropriate", "inappropriate")  # rows of the file (Q16: "non inappropriate", ...)
PROMPTS_ENV = "SAFECLIP_Q16_PROMPTS"
MAX_BYTES = 1 << 20  # the published file has 3,231 bytes; a megabyte is no prompt file
DOWNLOAD_TIMEOUT = 15.0  # seconds


class Q16FileError(InputError):
    """A prompt file that is not an array of Q16 prompts (or would run code when unpickled)."""


class Q16Unavailable(ModelUnavailableError):
    """Q16's prompt file (or its CLIP) is neither on disk nor downloadable."""


@dataclass(frozen=True)
class Q16Prompts:
    embeddings: np.ndarray  # (2, D) float32: row 0 appropriate, row 1 inappropriate
    sha256: str  # of the pickle they were read from
    source: str  # the path or URL of that pickle

    @property
    def published(self) -> bool:
        """Whether these are the prompts Q16's authors publish (the pinned checksum)."""
        return self.sha256 == Q16_SHA256


# ------------------------------------------------------------------ reading without unpickling
def _refuse(what: str):
    raise Q16FileError(f"not a Q16 prompt file: {what}")


def _dtype(spec, align=False, copy=True):
    try:
        d = np.dtype(spec) if isinstance(spec, str) else None
    except TypeError:
        d = None
    if d is None or d.kind not in "fiu" or d.hasobject:
        _refuse(f"it asks for a dtype {spec!r}; Q16 prompts are numbers")
    return np.dtype(spec, bool(align), bool(copy))


_NDARRAY = object()  # what "numpy.ndarray" resolves to: a marker for _reconstruct, not callable


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY or tuple(shape) != (0,) or typecode not in (b"b", "b"):
        _refuse("it builds an object other than a plain numpy array")
    return np.ndarray((0,), dtype=np.int8)


def _frombuffer(buf, dtype, shape, order):
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) \
            or order not in ("C", "F") or not all(isinstance(s, int) for s in shape):
        _refuse("its array data is not a plain buffer of numbers")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order)


def _encode(text, encoding="latin1"):  # protocol 2 stores bytes as latin-1 text
    if not isinstance(text, str) or encoding != "latin1":
        _refuse("it encodes something other than array bytes")
    return codecs.encode(text, "latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        found = _ALLOWED.get((module, name))
        if found is None:
            _refuse(f"it asks to import {module}.{name}, which a numpy array never needs (a "
                    f"pickle that imports it can run code; refused, nothing was run)")
        return found

    def persistent_load(self, pid):
        _refuse("it holds a persistent reference")


def read_prompt_pickle(data: bytes, source: str = "the prompt file") -> np.ndarray:
    """The (2, D) float32 array of a Q16 prompt pickle (see the module docstring)."""
    if len(data) > MAX_BYTES:
        raise Q16FileError(f"{source}: {len(data):,} bytes is no Q16 prompt file (the published "
                           "one has 3,231)")
    try:
        obj = _ArrayUnpickler(io.BytesIO(data)).load()
    except Q16FileError as e:
        raise Q16FileError(f"{source}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a broken pickle is a bad file, said in one line
        raise Q16FileError(f"{source}: not a Q16 prompt file: unreadable pickle "
                           f"({type(e).__name__}: {e})") from None
    return check_embeddings(obj, source)


def check_embeddings(obj, source: str) -> np.ndarray:
    if not isinstance(obj, np.ndarray) or obj.dtype.names is not None or obj.dtype.kind != "f":
        raise Q16FileError(f"{source}: not a Q16 prompt file: it holds "
                           f"{type(obj).__name__} {getattr(obj, 'dtype', '')}, not an array of "
                           "floats")
    if obj.ndim != 2 or obj.shape[0] != len(Q16_LABELS) or obj.shape[1] < 1:
        raise Q16FileError(f"{source}: not a Q16 prompt file: shape {obj.shape}, expected "
                           f"({len(Q16_LABELS)}, embedding size)")
    out = np.array(obj, dtype=np.float32)
    if not np.isfinite(out).all() or (np.linalg.norm(out, axis=1) == 0).any():
        raise Q16FileError(f"{source}: not a Q16 prompt file: a prompt is zero or not finite")
    return out


# ------------------------------------------------------------------------------ the cache
def cache_dir() -> Path:
    return Path(os.environ.get("SAFECLIP_CACHE", Path.home() / ".cache" / "safeclip")) / "q16"


def _cached(sha256: str) -> Path:
    return cache_dir() / f"prompts-{sha256[:16]}.safetensors"


def save_cached(p: Q16Prompts) -> Path:
    from safetensors.numpy import save_file

    path = _cached(p.sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({"prompts": p.embeddings}, str(tmp),
              metadata={"sha256": p.sha256, "source": p.source, "labels": ",".join(Q16_LABELS)})
    tmp.replace(path)
    return path


def read_cached(path: Path) -> Q16Prompts:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            emb = f.get_tensor("prompts")
    except Exception as e:  # noqa: BLE001
        raise Q16FileError(f"{path}: not a Q16 prompt cache ({type(e).__name__}: {e})") from None
    if "sha256" not in meta:
        raise Q16FileError(f"{path}: a safetensors file without the sha256 of its source")
    return Q16Prompts(check_embeddings(emb, str(path)), meta["sha256"],
                      meta.get("source", str(path)))


# ------------------------------------------------------------------------------ finding it
def from_pickle(data: bytes, source: str) -> Q16Prompts:
    sha = hashlib.sha256(data).hexdigest()
    p = Q16Prompts(read_prompt_pickle(data, source), sha, source)
    if not p.published:
        logger.warning("%s is not the prompt file Q16's authors publish (sha256 %s, expected %s):"
                       " using it as given", source, sha[:12], Q16_SHA256[:12])
    try:
        save_cached(p)
    except OSError as e:  # a read-only cache costs a re-read, nothing more
        logger.warning("could not cache Q16's prompts: %s", e)
    return p


def read_path(path: str | Path) -> Q16Prompts:
    path = Path(path).expanduser()
    if not path.is_file():
        raise Q16FileError(f"Q16 prompt file {path} does not exist")
    if path.suffix == ".safetensors":
        return read_cached(path)
    data = path.read_bytes()
    cached = _cached(hashlib.sha256(data).hexdigest())
    if cached.is_file():
        return read_cached(cached)
    return from_pickle(data, str(path))


def mirror_path() -> Path | None:
    root = os.environ.get("SAFECLIP_MODELS_DIR")
    return Path(root) / Q16_REPO / Q16_FILE if root else None


def _download(url: str, timeout: float) -> bytes:
    """The bytes at ``url`` (a seam for tests)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a pinned https URL
        return r.read(MAX_BYTES + 1)


def published_bytes() -> bytes:
    """The bytes of Q16's published file: from the mirror, else downloaded; refused unless their
    SHA-256 is the pinned one."""
    mirror = mirror_path()
    if mirror is not None and mirror.is_file():
        data, where = mirror.read_bytes(), str(mirror)
    elif os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise Q16Unavailable(f"Q16's prompt file is not on disk and HF_HUB_OFFLINE is set; "
                             f"{HOW_TO_GET}")
    else:
        try:
            data, where = _download(Q16_URL, DOWNLOAD_TIMEOUT), Q16_URL
        except Exception as e:  # noqa: BLE001 - offline, refused, timed out: one message
            raise Q16Unavailable(f"Q16's prompt file is not on disk and could not be downloaded"
                                 f" ({type(e).__name__}); {HOW_TO_GET}") from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != Q16_SHA256:
        raise Q16Unavailable(f"the file at {where} has sha256 {sha}, not the pinned "
                             f"{Q16_SHA256}: refused")
    return data


def download() -> Q16Prompts:
    """Q16's published file, checked against its pinned SHA-256, cached as safetensors."""
    return from_pickle(published_bytes(), Q16_URL)


HOW_TO_GET = (f"get {Q16_FILE} from github.com/{Q16_REPO} and pass its path "
              f"({PROMPTS_ENV}=PATH, or the judge's q16_prompts option), or run `safeclip "
              f"download --preset WORLD --out DIR` where there is network and set "
              f"SAFECLIP_MODELS_DIR=DIR")


def load_prompts(path: str | Path | None = None) -> Q16Prompts:
    """Q16's prompts from ``path``, ``SAFECLIP_Q16_PROMPTS``, the cache, a mirror or the
    authors' repository, in that order (see the module docstring)."""
    path = path or os.environ.get(PROMPTS_ENV)
    if path:
        return read_path(path)
    cached = _cached(Q16_SHA256)
    if cached.is_file():
        return read_cached(cached)
    mirror = mirror_path()
    if mirror is not None and mirror.is_file():
        return read_path(mirror)
    return download()
