"""Loading a preset's two CLIPs (original and Safe-CLIP) behind one small encoding interface.

    >>> from safeclip.encoders import load_clip_pair
    >>> pair = load_clip_pair("mini")                  # or "vit-l-14", a Preset, overrides...
    >>> t = pair.clip.encode_text(["a dog on the beach"])          # (1, D), L2-normalised, CPU
    >>> v = pair.safeclip.encode_image([PIL.Image.open("x.png")])  # any mode, any size

Two backends share the interface: transformers ``CLIPModel`` directories and open_clip state dicts
(``open_clip_pytorch_model.bin`` loaded with ``weights_only=True``, or safetensors). Embeddings come
back as float32 CPU tensors, whatever the model's device and dtype, ready for faiss or numpy.
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

from .images import to_rgb
from .presets import Preset, get_preset, resolve_ref, ROLES

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ModelUnavailableError(RuntimeError):
    """A model is neither on disk nor downloadable; the message says how to point at a copy."""


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


def unavailable(ref: str, preset: str, role: str, reason: str = "") -> ModelUnavailableError:
    var = ROLES.get(role, "SAFECLIP_CLIP")
    flag = "--" + role.replace("_", "-")
    why = f" ({reason})" if reason else ""
    return ModelUnavailableError(
        f"Model {ref!r} (preset {preset!r}, {role}) is not on disk and could not be fetched from "
        f"the Hugging Face Hub{why}. Download it where you have network and point at the copy with "
        f"{flag} PATH or {var}=PATH, or put it under $SAFECLIP_MODELS_DIR/{ref}. "
        f"The bundled preset 'mini' works offline.")


def fetch(ref: str, preset: str, role: str, files: Sequence[str] | None = None) -> Path:
    """A local folder (or file) for ``ref``: the path itself, a mirror, the HF cache, or the Hub."""
    ref = resolve_ref(ref)
    if Path(ref).exists():
        return Path(ref)
    if ref.startswith(("/", "./", "../", "~")) or Path(ref).suffix in (".bin", ".pt", ".safetensors"):
        raise unavailable(ref, preset, role, "no such file or folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - installed with transformers
        raise unavailable(ref, preset, role, "huggingface_hub is not installed") from None
    patterns = list(files) if files else None
    try:  # the local cache first: no network involved
        return Path(snapshot_download(ref, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached; try the network below
        pass
    try:
        return Path(snapshot_download(ref, allow_patterns=patterns, etag_timeout=10))
    except Exception as e:  # noqa: BLE001 - one readable message instead of a stack of hub errors
        raise unavailable(ref, preset, role, f"{e.__class__.__name__}") from None


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
    """Load one model of a preset: ``role`` is "clip" (original) or "safe_clip"."""
    preset = get_preset(preset, overrides)
    if role not in ("clip", "safe_clip"):
        raise ValueError(f"role must be 'clip' or 'safe_clip', not {role!r}")
    device, dtype = default_device_dtype(device, dtype)
    ref = getattr(preset, role)
    name = "clip" if role == "clip" else "safeclip"
    if preset.bundled and not Path(ref).exists():
        from .mini.placeholder import placeholder_clip_dir
        logger.warning("%s of preset %r is not built yet (%s): using a seeded tiny random "
                       "placeholder model", role, preset.name, ref)
        ref = str(placeholder_clip_dir(preset, seed=0 if role == "clip" else 1))
    if preset.backend == "transformers":
        enc = _load_transformers(name, ref, preset, role, device, dtype)
    elif preset.backend == "open_clip":
        arch = preset.open_clip_arch if role == "clip" else preset.safe_open_clip_arch
        enc = _load_open_clip(name, ref, preset, role, arch, device, dtype)
    else:
        raise ValueError(f"preset {preset.name!r}: unknown backend {preset.backend!r}")
    logger.info("loaded %s (%s) from %s on %s/%s", name, preset.backend, ref, device, dtype)
    return enc


def load_clip_pair(preset: str | Preset, device=None, dtype=None,
                   overrides: dict | None = None) -> ClipPair:
    """The original CLIP and the Safe-CLIP of ``preset``, ready to encode."""
    return ClipPair(load_clip(preset, "clip", device, dtype, overrides),
                    load_clip(preset, "safe_clip", device, dtype, overrides))


def _load_transformers(name, ref, preset, role, device, dtype) -> HFClipEncoder:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = fetch(ref, preset.name, role, files=["*.json", "*.txt", "*.safetensors"])
    if not (path / "config.json").exists():
        raise unavailable(ref, preset.name, role, f"{path} holds no CLIPModel (config.json)")
    if not any(path.glob("*.safetensors")) and not Path(ref).exists():  # .bin-only Hub repos
        path = fetch(ref, preset.name, role, files=["*.json", "*.txt", "pytorch_model.bin"])
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
        size = int(model.config.vision_config.image_size)
        processor = CLIPImageProcessor(size={"shortest_edge": size},
                                       crop_size={"height": size, "width": size},
                                       image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
    return HFClipEncoder(name, str(path), model, tokenizer, processor, device, dtype, ctx)


def _open_clip_files(ref, preset, role) -> tuple[Path, dict | None]:
    """(weights file, open_clip_config.json contents or None) for a file, folder or Hub id."""
    path = fetch(ref, preset.name, role, files=["open_clip_config.json", *OPEN_CLIP_WEIGHTS])
    if path.is_file():
        cfg_file = path.parent / "open_clip_config.json"
        return path, (json.loads(cfg_file.read_text()) if cfg_file.exists() else None)
    weights = next((path / f for f in OPEN_CLIP_WEIGHTS if (path / f).exists()), None)
    if weights is None:
        raise unavailable(ref, preset.name, role, f"{path} holds none of {', '.join(OPEN_CLIP_WEIGHTS)}")
    cfg_file = path / "open_clip_config.json"
    return weights, (json.loads(cfg_file.read_text()) if cfg_file.exists() else None)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file, never unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load_open_clip(name, ref, preset, role, arch, device, dtype) -> OpenClipEncoder:
    try:
        import open_clip
    except ImportError:
        raise ModelUnavailableError("preset %r needs open_clip: pip install open_clip_torch"
                                    % preset.name) from None
    weights, cfg = _open_clip_files(ref, preset, role)
    if cfg is not None:  # a self-describing folder (what `safeclip export` and the Hub write)
        mc = dict(cfg["model_cfg"])
        model = open_clip.model.CLIP(**mc)
        ctx = int(mc["text_cfg"].get("context_length", 77))
        size = mc["vision_cfg"].get("image_size", preset.image_size)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    else:
        if not arch:
            raise ValueError(f"preset {preset.name!r} names no open_clip architecture for {role}")
        model = open_clip.create_model(arch, pretrained=None)
        ctx = int(model.context_length)
        size = preset.image_size
        tokenizer = open_clip.get_tokenizer(arch)
    missing, unexpected = model.load_state_dict(load_state_dict(weights), strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not fit the open_clip model "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    size = size[0] if isinstance(size, (list, tuple)) else int(size)
    pre = (cfg or {}).get("preprocess_cfg", {})
    preprocess = open_clip.image_transform(size, is_train=False,
                                           mean=tuple(pre.get("mean", OPENAI_MEAN)),
                                           std=tuple(pre.get("std", OPENAI_STD)))
    model = model.to(device=device, dtype=dtype).eval()
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        raise ValueError(f"open_clip architecture {arch!r} uses a tokenizer this loader does not "
                         "support offline")
    return OpenClipEncoder(name, str(weights), model, tokenizer, preprocess, device, dtype, ctx, size)
