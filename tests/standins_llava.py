"""``llava-hf/llava-1.5-7b-hf`` stand-in: a tiny LlavaForConditionalGeneration in the Hub's layout.

The vision tower is openai/clip-vit-large-patch14-336's stand-in tower (same weights, 24 layers,
336 px, patch 14: 576 patch tokens + CLS); the language model is a 32-layer Llama of width 16 with
the real vocabulary size (32064); weights are fp16 like the real checkpoint, stored in the legacy
key layout (``language_model.model.*``, ``language_model.lm_head.weight``,
``vision_tower.vision_model.*``, ``multi_modal_projector.linear_{1,2}.*``) in three shards with a
``model.safetensors.index.json``. The tokenizer is a byte-fallback BPE (``tokenizer.json``) of 32000
entries (specials, the 256 byte tokens, characters, a few words, then filler) plus ``<image>`` =
32000 and ``<pad>`` = 32001.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from standins_clip import L336, clip_state
from standins_common import seeded_tensor, write_clip_preprocessor, write_json, write_stubs

SEED = 41
N_SHARDS = 3
IMAGE_TOKEN, PAD_TOKEN = 32000, 32001
_WORDS = (
    "USER",
    "ASSISTANT",
    "Describe",
    "the",
    "image",
    "photo",
    "picture",
    "What",
    "is",
    "in",
    "this",
    "of",
    "a",
    "cat",
    "dog",
    "and",
    "with",
    "on",
    "person",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}"
    "{{ item['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def llava_config() -> dict:
    v = L336
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": IMAGE_TOKEN,
        "model_type": "llava",
        "pad_token_id": PAD_TOKEN,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 16,
            "intermediate_size": 48,
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "num_attention_heads": 2,
            "num_hidden_layers": 32,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": 32064,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": {
            "hidden_size": v.vision_width,
            "image_size": v.image_size,
            "intermediate_size": 4 * v.vision_width,
            "model_type": "clip_vision_model",
            "num_attention_heads": v.heads,
            "num_hidden_layers": v.vision_layers,
            "patch_size": v.patch,
            "projection_dim": v.proj,
            "vocab_size": 32000,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": 32064,
    }


def to_legacy(key: str) -> str:
    """transformers-5 key of LlavaForConditionalGeneration -> the Hub checkpoint's key."""
    for new, old in (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if key.startswith(new):
            return old + key[len(new) :]
    raise KeyError(key)


@lru_cache(maxsize=1)
def llava_state() -> dict:
    """Legacy-keyed fp32 weights (fp16-exact values); the vision tower is L336's vision tower."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig.from_dict(llava_config()))
    vision = clip_state("L336")
    out = {}
    for key, t in model.state_dict(keep_vars=True).items():
        old = to_legacy(key)
        if old.startswith("vision_tower."):
            out[old] = vision[old[len("vision_tower.") :]]  # vision_model.* of the -336 CLIP
        else:
            out[old] = seeded_tensor(old, t.shape, SEED)
    return dict(sorted(out.items()))


def _write_shards(d: Path, state: dict) -> None:
    from safetensors.torch import save_file

    sd = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
    total = sum(t.numel() * t.element_size() for t in sd.values())
    shards, current, size = [], [], 0
    for k, t in sd.items():  # sorted keys, split into N_SHARDS runs of about equal size
        current.append(k)
        size += t.numel() * t.element_size()
        if size >= total * (len(shards) + 1) / N_SHARDS and len(shards) < N_SHARDS - 1:
            shards.append(current)
            current = []
    shards.append(current)
    weight_map = {}
    for i, keys in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{N_SHARDS:05d}.safetensors"
        save_file({k: sd[k] for k in keys}, str(d / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    write_json(
        d / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )


def _vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁"] + [chr(c) for c in range(33, 127)]
    merges = []
    for word in _WORDS:
        for piece in ("▁" + word, word):
            for i in range(2, len(piece) + 1):
                left, right = piece[: i - 1], piece[i - 1]
                if piece[:i] not in tokens:
                    merges.append((left, right))
                    tokens.append(piece[:i])
    tokens += [f"<filler_{i}>" for i in range(32000 - len(tokens))]
    return {t: i for i, t in enumerate(tokens)}, merges


def tokenizer_json() -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab, merges = _vocab()
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")
        ]
    )
    return tok.to_str()


def _token_entry(content: str, special: bool = True) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        **({"special": special} if special is not None else {}),
    }


def write_llava(d: Path, repo_id: str) -> None:
    write_stubs(d, repo_id)
    write_json(d / "config.json", llava_config())
    _write_shards(d, llava_state())
    write_json(
        d / "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": PAD_TOKEN,
            "transformers_version": "4.36.0.dev0",
        },
    )
    (d / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    specials = {0: "<unk>", 1: "<s>", 2: "</s>", IMAGE_TOKEN: "<image>", PAD_TOKEN: "<pad>"}
    write_json(
        d / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {str(i): _token_entry(t) for i, t in specials.items()},
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": False,
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": "<pad>",
            "padding_side": "left",
            "processor_class": "LlavaProcessor",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "trust_remote_code": False,
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        },
    )
    write_json(
        d / "special_tokens_map.json",
        {
            "bos_token": _token_entry("<s>", None),
            "eos_token": _token_entry("</s>", None),
            "pad_token": _token_entry("<pad>", None),
            "unk_token": _token_entry("<unk>", None),
        },
    )
    write_json(d / "added_tokens.json", {"<image>": IMAGE_TOKEN, "<pad>": PAD_TOKEN})
    write_json(d / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    write_clip_preprocessor(d, L336.image_size, legacy=False, processor_class="LlavaProcessor")
    write_json(
        d / "processor_config.json",
        {
            "image_token": "<image>",
            "num_additional_image_tokens": 1,
            "patch_size": L336.patch,
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": "default",
        },
    )


def read_index(d: Path) -> dict:
    return json.loads((d / "model.safetensors.index.json").read_text())
