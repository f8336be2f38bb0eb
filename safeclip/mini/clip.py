"""Small transformers ``CLIPModel``s: the mini world's architecture and the tests' tiny models.

    >>> from safeclip.mini.clip import clip_config, new_clip, save_clip_dir
    >>> model = new_clip(clip_config(), seed=0)          # ~8M parameters, 64 px, 32 tokens
    >>> save_clip_dir(model, "out/mini-clip")            # same layout as a Hub CLIP checkpoint

A saved folder holds ``config.json``, ``model.safetensors``, the CLIP BPE tokenizer files and
``preprocessor_config.json``: it loads with ``CLIPModel.from_pretrained`` and with
``safeclip.encoders.load_clip`` exactly like ``openai/clip-vit-large-patch14``
(``safeclip.convert.save_clip_dir``).
"""
from __future__ import annotations

import torch

from ..convert import save_clip_dir  # noqa: F401 - re-exported: the mini models are saved so


def clip_config(width: int = 128,  # hidden size of both towers
                layers: int = 4,  # transformer layers per tower
                heads: int = 4,  # attention heads per layer
                image_size: int = 64,  # input resolution (pixels)
                patch: int = 8,  # patch size: 64 px / 8 = 8x8 tokens + CLS
                context: int = 32,  # text tokens, start and end included
                embed_dim: int = 128,  # joint embedding size
                act: str = "quick_gelu"):  # activation, as OpenAI CLIP
    from transformers import CLIPConfig

    common = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                  num_attention_heads=heads, hidden_act=act)
    return CLIPConfig(
        text_config=dict(common, max_position_embeddings=context, vocab_size=49408,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(common, image_size=image_size, patch_size=patch),
        projection_dim=embed_dim)


def new_clip(config, seed: int = 0):
    """A freshly initialised ``CLIPModel`` (seeded, so the same seed gives the same weights)."""
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config).eval()
