"""The CLIP BPE tokenizer, built offline.

open_clip ships the original CLIP BPE merges (``bpe_simple_vocab_16e6.txt.gz``). From it we write
the ``vocab.json`` / ``merges.txt`` pair that transformers' ``CLIPTokenizer`` reads; the result has
the Hub tokenizer's 49,408 ids, so a model trained with it speaks the same token language as
``openai/clip-vit-large-patch14``.

    >>> from safeclip.tokenizer import clip_tokenizer
    >>> tok = clip_tokenizer(model_max_length=77)
    >>> tok("a photo of a cat").input_ids      # [49406, 320, 1125, 539, 320, 2368, 49407]
"""
from __future__ import annotations

import gzip
import json
import logging
import os
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2  # merges used by CLIP: vocab = 256 bytes * 2 + merges + 2 specials


def _byte_to_unicode() -> dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters (GPT-2 BPE).

    Order matters: printable bytes first (mapped to themselves), then the others, shifted past 255.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
    return mapping


def _bpe_source() -> Path:
    try:
        from open_clip.tokenizer import default_bpe
    except ImportError as e:  # pragma: no cover - open_clip is a pinned requirement
        raise ImportError("open_clip_torch is needed to build the CLIP tokenizer offline "
                          "(pip install open_clip_torch)") from e
    return Path(default_bpe())


def write_clip_bpe_files(out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (CLIP's BPE) into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_bpe_source()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:_N_MERGES + 1]]
    symbols = list(_byte_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    vocab_path, merges_path = out / "vocab.json", out / "merges.txt"
    _write_atomic(vocab_path, json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    _write_atomic(merges_path, "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_path, merges_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


@lru_cache(maxsize=1)
def _cached_bpe_dir() -> Path:
    root = Path(os.environ.get("SAFECLIP_CACHE", Path.home() / ".cache" / "safeclip"))
    d = root / "clip-bpe"
    if not (d / "vocab.json").exists() or not (d / "merges.txt").exists():
        logger.info("building the CLIP tokenizer files in %s", d)
        write_clip_bpe_files(d)
    return d


def clip_tokenizer(model_max_length: int = 77):
    """A transformers ``CLIPTokenizer`` with the real CLIP vocabulary, built without network.

    ``model_max_length`` must be set: without it diffusers pads prompts to a huge length.
    """
    from transformers import CLIPTokenizer

    d = _cached_bpe_dir()
    return CLIPTokenizer.from_pretrained(str(d), model_max_length=model_max_length)
