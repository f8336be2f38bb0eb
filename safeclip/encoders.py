"""A world's two retrieval CLIPs (original and Safe-CLIP) behind one small encoding interface.

    >>> from safeclip.encoders import load_clip_pair, load_clip_folder
    >>> pair = load_clip_pair("mini")                  # or "vit-l-14", a Preset, overrides...
    >>> t = pair.clip.encode_text(["a dog on the beach"])          # (1, D), L2-normalised, CPU
    >>> v = pair.safeclip.encode_image([PIL.Image.open("x.png")])  # any mode, any size
    >>> enc = load_clip_folder("runs/x/export/merged")             # one CLIPModel folder

Two kinds share the interface (``safeclip.kinds`` table ``clip``): ``transformers`` (a
``CLIPModel`` folder) and ``open_clip`` (an open_clip state dict, ``open_clip_model.safetensors``
or ``open_clip_pytorch_model.bin`` loaded with ``weights_only=True``, with its
``open_clip_config.json`` or a named architecture). Embeddings come back as float32 CPU tensors,
whatever the model's device and dtype, ready for faiss or numpy.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from PIL import Image

from .errors import ModelUnavailableError, StudioError
from .hub import CLIP_FILES, OPEN_CLIP_FILES, fetch
from .images import to_rgb
from .presets import ModelSpec, Preset, get_preset
from .weights import load_state_dict

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def default_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """cuda + fp16 when there is a GPU, else mps + fp32, else cpu + fp32 (explicit values win)."""
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}[dtype]
    return device, dtype


@dataclass
class ClipEncoder:
    """One CLIP model with batched, no-grad, normalised encoding of texts and images."""

    name: str  # "clip" or "safeclip"
    ref: str  # where it was loaded from
    backend: str
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    context_length: int
    image_size: int

    @property
    def embed_dim(self) -> int:
        m = self.model
        return int(m.config.projection_dim if self.backend == "transformers" else m.text_projection.shape[1])

    # -- text ---------------------------------------------------------------------------------
    def _check_texts(self, texts) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        lengths = self.token_lengths(texts)
        too_long = [i for i, n in enumerate(lengths) if n > self.context_length]
        if too_long:
            logger.warning("%d prompt(s) longer than the %d-token context were truncated "
                           "(first: %d tokens)", len(too_long), self.context_length,
                           lengths[too_long[0]])
        return texts

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 256) -> torch.Tensor:
        texts = self._check_texts(texts)
        out = [self._text_batch(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        return _normalise(torch.cat(out) if out else torch.empty(0, 0))

    @torch.no_grad()
    def encode_image(self, images: Sequence[Image.Image] | Image.Image,
                     batch_size: int = 128) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        images = [to_rgb(im) for im in images]
        out = [self._image_batch(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return _normalise(torch.cat(out) if out else torch.empty(0, 0))

    # backends fill these in
    def token_lengths(self, texts: list[str]) -> list[int]: raise NotImplementedError
    def _text_batch(self, texts: list[str]) -> torch.Tensor: raise NotImplementedError
    def _image_batch(self, images: list[Image.Image]) -> torch.Tensor: raise NotImplementedError


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float().cpu()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) if x.numel() else x


def text_features(model, input_ids, attention_mask=None) -> torch.Tensor:
    """Projected (unnormalised) text features of a transformers CLIPModel, any version."""
    out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def image_features(model, pixel_values) -> torch.Tensor:
    """Projected (unnormalised) image features of a transformers CLIPModel, any version."""
    out = model.get_image_features(pixel_values=pixel_values)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFClipEncoder(ClipEncoder):
    """A transformers ``CLIPModel`` directory (what ``save_pretrained`` writes)."""

    def __init__(self, name, ref, model, tokenizer, processor, device, dtype, context_length):
        super().__init__(name, ref, "transformers", model, device, dtype, context_length,
                         int(model.config.vision_config.image_size))
        self.tokenizer = tokenizer
        self.processor = processor
        # a fast tokenizer switches its padding/truncation state per call: one caller at a time
        # (the app encodes from several threads; concurrent calls can fail "Already borrowed")
        self._tokenizer_lock = threading.Lock()

    def token_lengths(self, texts):
        with self._tokenizer_lock:
            ids = self.tokenizer(texts, truncation=False, verbose=False).input_ids
        return [len(i) for i in ids]

    def _text_batch(self, texts):
        with self._tokenizer_lock:
            tok = self.tokenizer(texts, padding="max_length", truncation=True,
                                 max_length=self.context_length, return_tensors="pt")
        return text_features(self.model, tok.input_ids.to(self.device),
                             tok.attention_mask.to(self.device))

    def _image_batch(self, images):
        pix = self.processor(images=images, return_tensors="pt").pixel_values
        return image_features(self.model, pix.to(self.device, self.dtype))


class OpenClipEncoder(ClipEncoder):
    """An open_clip model (weights from a ``.bin`` / ``.safetensors`` state dict)."""

    def __init__(self, name, ref, model, tokenizer, preprocess, device, dtype, context_length,
                 image_size):
        super().__init__(name, ref, "open_clip", model, device, dtype, context_length, image_size)
        self.tokenizer = tokenizer
        self.preprocess = preprocess

    def token_lengths(self, texts):
        return [len(self.tokenizer.encode(t)) + 2 for t in texts]  # + start and end tokens

    def _text_batch(self, texts):
        ids = self.tokenizer(texts, context_length=self.context_length)
        return self.model.encode_text(ids.to(self.device))

    def _image_batch(self, images):
        pix = torch.stack([self.preprocess(im) for im in images])
        return self.model.encode_image(pix.to(self.device, self.dtype))


class ClipPair(NamedTuple):
    clip: ClipEncoder  # the original model
    safeclip: ClipEncoder  # the Safe-CLIP model


# ---------------------------------------------------------------------------------------------
def load_clip(preset: str | Preset, role: str = "clip", device=None, dtype=None,
              overrides: dict | None = None) -> ClipEncoder:
    """Load one retrieval model of a world: ``role`` is "clip" (original) or "safe_clip"."""
    from .kinds import resolve

    world = get_preset(preset, overrides)
    if role not in ("clip", "safe_clip"):
        raise ValueError(f"role must be 'clip' or 'safe_clip', not {role!r}")
    if world.retrieval is None:
        raise StudioError(f"world {world.name!r} has no retrieval models")
    spec = getattr(world.retrieval, role)
    device, dtype = default_device_dtype(device, dtype)
    enc = resolve("clip", spec.kind or "transformers", world)(spec, world, device, dtype)
    logger.info("loaded %s (%s) from %s on %s/%s", enc.name, enc.backend, enc.ref, device, dtype)
    return enc


def load_clip_pair(preset: str | Preset, device=None, dtype=None,
                   overrides: dict | None = None) -> ClipPair:
    """The original CLIP and the Safe-CLIP of a world, ready to encode."""
    return ClipPair(load_clip(preset, "clip", device, dtype, overrides),
                    load_clip(preset, "safe_clip", device, dtype, overrides))


def load_clip_folder(path, name: str = "clip", device=None, dtype=None) -> "HFClipEncoder":
    """One transformers CLIPModel folder, outside any world (training outputs, benchmarks)."""
    from types import SimpleNamespace

    device, dtype = default_device_dtype(device, dtype)
    role = "clip" if name == "clip" else "safe_clip"
    return load_transformers_clip(ModelSpec(role, str(path), "transformers"),
                                  SimpleNamespace(name="(folder)"), device, dtype)


def _name(role: str) -> str:
    return "clip" if role == "clip" else "safeclip"


def load_transformers_clip(spec: ModelSpec, world, device, dtype) -> HFClipEncoder:
    """kind ``transformers``: a CLIPModel folder (tokenizer and image processor when present,
    else the offline CLIP tokenizer and OpenAI preprocessing at the model's size)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = fetch(spec.ref, CLIP_FILES, role=spec.role, world=world.name, hint=spec.hint)
    model = CLIPModel.from_pretrained(path, dtype=dtype).to(device).eval()
    ctx = int(model.config.text_config.max_position_embeddings)
    if (path / "vocab.json").exists() or (path / "tokenizer.json").exists():
        tokenizer = CLIPTokenizer.from_pretrained(path, model_max_length=ctx)
    else:
        from .tokenizer import clip_tokenizer
        tokenizer = clip_tokenizer(ctx)
    if (path / "preprocessor_config.json").exists():
        processor = CLIPImageProcessor.from_pretrained(path)
    else:
        processor = default_processor(int(model.config.vision_config.image_size))
    return HFClipEncoder(_name(spec.role), str(path), model, tokenizer, processor, device, dtype,
                         ctx)


def default_processor(size: int):
    """OpenAI CLIP preprocessing at ``size`` px (for checkpoints that ship none)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))


def _open_clip_files(spec: ModelSpec, world) -> tuple[Path, dict | None]:
    """(weights file, open_clip_config.json contents or None) for a file, folder or Hub id."""
    path = fetch(spec.ref, OPEN_CLIP_FILES, role=spec.role, world=world.name, hint=spec.hint)
    folder = path.parent if path.is_file() else path
    weights = path if path.is_file() else next(
        (path / f for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
         if (path / f).exists()))
    cfg_file = folder / "open_clip_config.json"
    return weights, (json.loads(cfg_file.read_text()) if cfg_file.exists() else None)


def load_open_clip(spec: ModelSpec, world, device, dtype) -> OpenClipEncoder:
    """kind ``open_clip``: weights with their open_clip_config.json, or a named architecture
    (``arch`` of the world's model entry)."""
    try:
        import open_clip
    except ImportError:
        raise ModelUnavailableError(f"world {world.name!r} needs open_clip for its {spec.role}: "
                                    "pip install open_clip_torch") from None
    weights, cfg = _open_clip_files(spec, world)
    if cfg is not None:  # a self-describing folder (what `safeclip export` and the Hub write)
        mc = dict(cfg["model_cfg"])
        model = open_clip.model.CLIP(**mc)
        ctx = int(mc["text_cfg"].get("context_length", 77))
        size = mc["vision_cfg"].get("image_size", 224)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    else:
        if not spec.arch:
            raise ModelUnavailableError(
                f"{weights} ({spec.role} of world {world.name!r}) has no open_clip_config.json "
                "and the world names no architecture (arch) for it")
        model = open_clip.create_model(spec.arch, pretrained=None)
        ctx = int(model.context_length)
        size = model.visual.image_size
        tokenizer = open_clip.get_tokenizer(spec.arch)
    missing, unexpected = model.load_state_dict(load_state_dict(weights), strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise ModelUnavailableError(f"{weights}: weights do not fit the open_clip model "
                                    f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    size = size[0] if isinstance(size, (list, tuple)) else int(size)
    pre = (cfg or {}).get("preprocess_cfg", {})
    preprocess = open_clip.image_transform(size, is_train=False,
                                           mean=tuple(pre.get("mean", OPENAI_MEAN)),
                                           std=tuple(pre.get("std", OPENAI_STD)))
    model = model.to(device=device, dtype=dtype).eval()
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        raise ModelUnavailableError(f"open_clip architecture {spec.arch!r} uses a tokenizer this "
                                    "loader does not support offline")
    return OpenClipEncoder(_name(spec.role), str(weights), model, tokenizer, preprocess, device,
                           dtype, ctx, size)
