"""Run a CLIP tower's last layer for the pooled token alone.

A CLIP embedding reads one position of the last layer's output: the end-of-text token of the text
tower, the class token of the vision tower. Every other position of that layer is computed and
thrown away: its queries, attention output, MLP and their backward. Inside
``pooled_last_layer(clip, tower, positions)`` the tower's last encoder layer computes the keys and
values of all positions (the pooled token attends to them) but the rest for the pooled position
only, and passes the other positions through unchanged. The embedding is the same to float
rounding. On the mini CLIP (4 layers) a training step takes about 0.7x the time
(``bench/train_throughput.py`` prints it); on ViT-L/14 (24 layers) the saving is a few percent.

Only code that reads the pooled embedding may run inside the context (``last_hidden_state`` is
wrong there for every other position). The override is an instance attribute, so module names,
state dicts and peft adapters are untouched, and it is removed on exit.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


def pooled_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Position of each row's pooled token, by transformers' rule for CLIP text: the highest token
    id when the config's eos_token_id is the legacy 2, else the first end-of-text token."""
    if eos_token_id == 2:
        return input_ids.to(torch.int).argmax(-1).long()
    return (input_ids == eos_token_id).int().argmax(-1).long()


def _last_layer(clip, tower: str):
    base = clip.get_base_model() if hasattr(clip, "get_base_model") else clip
    model = base.text_model if tower == "text" else base.vision_model
    return model.encoder.layers[-1]


def _pooled_forward(layer, positions: torch.Tensor, causal: bool):
    attn = layer.self_attn

    def forward(hidden_states, attention_mask=None, **kwargs):
        b, t, _ = hidden_states.shape
        rows = torch.arange(b, device=hidden_states.device)
        pos = positions.to(hidden_states.device)
        x = layer.layer_norm1(hidden_states)
        q = attn.q_proj(x[rows, pos][:, None]).view(b, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
        if isinstance(attention_mask, torch.Tensor):  # (b|1, 1|heads, t, t): the pooled rows
            mrows = rows if attention_mask.shape[0] == b else torch.zeros_like(rows)
            mask = attention_mask[mrows, :, pos][:, :, None]
        elif causal:
            mask = (torch.arange(t, device=pos.device)[None] <= pos[:, None])[:, None, None]
        else:
            mask = None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
        h = hidden_states[rows, pos] + attn.out_proj(out.transpose(1, 2).reshape(b, -1))
        h = h + layer.mlp(layer.layer_norm2(h))
        return hidden_states.index_put((rows, pos), h)

    return forward


@contextmanager
def pooled_last_layer(clip, tower: str, positions: torch.Tensor | None = None):
    """Within the block, ``clip``'s ``tower`` ("text" or "vision") computes its last layer for the
    pooled token only. ``positions``: the pooled position of each row (text; see
    ``pooled_positions``); the vision tower pools position 0."""
    if tower not in ("text", "vision"):
        raise ValueError(f"tower must be 'text' or 'vision', not {tower!r}")
    if tower == "text" and positions is None:
        raise ValueError("the text tower needs the pooled positions")
    layer = _last_layer(clip, tower)
    if "forward" in vars(layer):
        raise RuntimeError("pooled_last_layer is already active on this tower")
    if positions is None:  # the class token, whatever the batch size
        def forward(hidden_states, attention_mask=None, **kwargs):
            pos = torch.zeros(hidden_states.shape[0], dtype=torch.long)
            return _pooled_forward(layer, pos, False)(hidden_states, attention_mask, **kwargs)
    else:
        forward = _pooled_forward(layer, positions, causal=tower == "text")
    layer.forward = forward
    try:
        yield
    finally:
        del layer.forward
