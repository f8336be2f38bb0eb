"""Captioner kind ``llava``: a transformers LLaVA, its original vision tower and Safe-CLIP's.

    >>> from safeclip.captioning import load_captioner
    >>> cap = load_captioner("vit-l-14", quantize="4bit")      # LLaVA-1.5 7B on a small GPU

The world's ``captioning`` entry names the LLaVA checkpoint (``llava``), Safe-CLIP's tower
(``safe_tower``: a CLIPModel or CLIPVisionModel; only its vision weights are read) and, when the
checkpoint carries no tower of its own, the original one (``tower``). The image processor is the
checkpoint's (LLaVA-1.5's, 336 px), else the original tower's. fp16 on CUDA;
``quantize="4bit"``/``"8bit"`` through bitsandbytes (towers and projector stay fp16);
``offload=True`` spreads layers over GPU and CPU.
"""
from __future__ import annotations

import copy
import logging

import torch

from ..encoders import default_device_dtype, default_processor
from ..errors import InputError, ModelUnavailableError
from ..hub import CLIP_FILES, LLAVA_FILES, fetch
from ..safety.text import load_text_judge
from .paired import PairedCaptioner, load_tower_weights

logger = logging.getLogger(__name__)

QUANTIZE = (None, "4bit", "8bit")


def _quantization(quantize, device) -> dict:
    if quantize is None:
        return {}
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise InputError(f"quantize={quantize!r} needs bitsandbytes (pip install bitsandbytes) "
                         "and a CUDA GPU") from None
    if device.type != "cuda":
        raise InputError(f"quantize={quantize!r} needs a CUDA GPU")
    skip = ["vision_tower", "multi_modal_projector", "lm_head"]
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=quantize == "4bit", load_in_8bit=quantize == "8bit",
        bnb_4bit_compute_dtype=torch.float16, llm_int8_skip_modules=skip)}


def load_llava(world, device=None, dtype=None, quantize: str | None = None,
               offload: bool = False):
    """(model, tokenizer, image processor, Safe-CLIP tower folder): one plain LLaVA of the
    world's captioning entry with its original tower (the paired captioner adds the second)."""
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    c = world.captioning
    if quantize not in QUANTIZE:
        raise InputError(f"quantize must be None, '4bit' or '8bit', not {quantize!r}")
    device, dtype = default_device_dtype(device, dtype)
    folder = fetch(c.llava.ref, LLAVA_FILES, role="llava", world=world.name, hint=c.llava.hint)
    tower_dir = (fetch(c.tower.ref, CLIP_FILES, role="tower", world=world.name, hint=c.tower.hint)
                 if c.tower is not None else None)
    safe_dir = fetch(c.safe_tower.ref, CLIP_FILES, role="safe_tower", world=world.name,
                     hint=c.safe_tower.hint)
    kwargs = {"dtype": dtype, **_quantization(quantize, device)}
    if quantize or offload:
        kwargs["device_map"] = "auto" if offload else {"": device.index or 0}
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # missing keys are checked below, with their own message
    try:
        model, info = LlavaForConditionalGeneration.from_pretrained(
            folder, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    tower_missing = [k for k in missing if "vision_tower." in k]
    other = [k for k in missing if "vision_tower." not in k]
    if other:
        raise ModelUnavailableError(f"{folder}: the captioner's weights are incomplete "
                                    f"(missing {other[:3]})")
    if tower_missing and tower_dir is None:
        raise ModelUnavailableError(
            f"{folder} holds no vision tower and world {world.name!r} names no original tower "
            "for it (captioning.tower, or --tower PATH)")
    if tower_dir is not None:
        load_tower_weights(model.model.vision_tower, tower_dir)
    if "device_map" not in kwargs:
        model = model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if (folder / "preprocessor_config.json").exists():
        processor = CLIPImageProcessor.from_pretrained(folder)
    elif tower_dir is not None and (tower_dir / "preprocessor_config.json").exists():
        processor = CLIPImageProcessor.from_pretrained(tower_dir)
    else:
        processor = default_processor(int(model.config.vision_config.image_size))
    return model.eval(), tokenizer, processor, safe_dir


def load_llava_captioner(world, device=None, quantize: str | None = None,
                         offload: bool = False) -> PairedCaptioner:
    c = world.captioning
    model, tokenizer, processor, safe_dir = load_llava(world, device, None, quantize, offload)
    safe = copy.deepcopy(model.model.vision_tower)
    load_tower_weights(safe, safe_dir)
    refs = {"llava": c.llava.ref, "tower": c.tower.ref if c.tower else c.llava.ref,
            "safe_tower": c.safe_tower.ref}
    cap = PairedCaptioner(model, safe, tokenizer, processor, load_text_judge(c.judge, world),
                          world.name, refs, c.defaults, c.limits)
    logger.info("captioner of %s on %s: %.1f MB unique weights (%d tensors shared between "
                "towers)", world.name, model.device, cap.memory()["paired_bytes"] / 2**20,
                cap.sharing["shared_tensors"])
    return cap
