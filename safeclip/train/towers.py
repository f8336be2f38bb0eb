"""The tuned model's forward passes for the trainer: both towers on a batch, pooled embeddings
exact and cheap, token states when a loss term reads them.

    >>> enc = DualEncoder(peft_clip, token_layer=-2, text_tokens=True)
    >>> feats = enc({"S": s_ids, "U": u_ids, "V": v_pix, "G": g_pix})
    >>> feats["S"], feats["U_tokens"], feats["V_tokens_ref"]

``trim_padding`` and ``safeclip.train.pooled`` make the pooled embeddings cheaper without
changing them; the token states (``*_tokens``) and their frozen references (``*_tokens_ref``,
adapter disabled, no gradient) are what the ``*_tokens_*`` terms of safeclip.train.losses read.
"""
from __future__ import annotations

import torch

from ..encoders import image_features, text_features
from .pooled import pooled_last_layer, pooled_positions


def trim_padding(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Drop the columns after the last end-of-text token of the batch. Exact for CLIP's text
    tower, whose causal attention makes each position (the pooled end-of-text one included)
    depend only on the tokens before it; captions of ~15 tokens padded to 77 cost 5x less."""
    is_eos = input_ids == eos_token_id
    if not bool(is_eos.any(1).all()):
        return input_ids  # a row without its end token (truncated oddly): leave the batch alone
    keep = int(is_eos.int().argmax(1).max()) + 1
    return input_ids[:, :keep]


class DualEncoder(torch.nn.Module):
    """Runs the tuned model on a batch: texts S+U in one call (padding trimmed to the batch's
    longest caption), images V+G in one call, each tower's last layer for its pooled token only.

    A module of its own so that DistributedDataParallel wraps its ``forward``."""

    def __init__(self, clip, pooled: bool = True, token_layer: int | None = None,
                 text_tokens: bool = False):
        super().__init__()
        self.clip = clip
        self.eos_token_id = int(clip.config.text_config.eos_token_id)
        self.pooled = pooled  # last layer for the pooled token only (exact; False for benches)
        self.token_layer = token_layer  # also return patch tokens (vision_tokens_* terms)
        self.text_tokens = text_tokens  # also return text token states (text_tokens_* terms)

    def forward(self, batch: dict[str, torch.Tensor], tokens: bool = True
                ) -> dict[str, torch.Tensor]:
        """Pooled features of S, U, V, G (those in ``batch``). With ``token_layer`` set and
        ``tokens``: also "V_tokens", "G_tokens" (tuned) and "V_tokens_ref" (the frozen original's:
        adapter disabled, no gradient); with ``text_tokens`` and ``tokens``: "S_tokens",
        "U_tokens" (every position's last hidden state) and "S_tokens_ref"."""
        if tokens and self.token_layer is not None and any(k in batch for k in ("V", "G")):
            return self._with_tokens(batch)
        if tokens and self.text_tokens and any(k in batch for k in ("S", "U")):
            out = self._text_with_tokens(batch)
            images = {k: v for k, v in batch.items() if k in ("V", "G")}
            return {**out, **(self.forward(images, tokens=False) if images else {})}
        out = {}
        texts = [k for k in ("S", "U") if k in batch]
        if texts:
            ids = torch.cat([batch[k] for k in texts])
            feats = (pooled_text_features(self.clip, ids, self.eos_token_id) if self.pooled
                     else text_features(self.clip, trim_padding(ids, self.eos_token_id)))
            out.update(zip(texts, feats.split([len(batch[k]) for k in texts])))
        images = [k for k in ("V", "G") if k in batch]
        if images:
            pix = torch.cat([batch[k] for k in images])
            feats = pooled_image_features(self.clip, pix) if self.pooled else image_features(
                self.clip, pix)
            out.update(zip(images, feats.split([len(batch[k]) for k in images])))
        return out

    def _text_with_tokens(self, batch):
        """One full text pass (every position, no trimming: padding included, as SD reads it):
        the pooled features and the token states of S and U, and S's reference states."""
        base = self.clip.get_base_model() if hasattr(self.clip, "get_base_model") else self.clip
        texts = [k for k in ("S", "U") if k in batch]
        sizes = [len(batch[k]) for k in texts]
        run = base.text_model(input_ids=torch.cat([batch[k] for k in texts]))
        out = dict(zip(texts, base.text_projection(run.pooler_output).split(sizes)))
        out.update(zip([f"{k}_tokens" for k in texts], run.last_hidden_state.split(sizes)))
        if "S" in batch:
            with torch.no_grad(), self.clip.disable_adapter():
                out["S_tokens_ref"] = base.text_model(input_ids=batch["S"]).last_hidden_state
        return out

    def _with_tokens(self, batch):
        texts = {k: v for k, v in batch.items() if k in ("S", "U")}
        out = self.forward(texts, tokens=True) if texts else {}
        images = [k for k in ("V", "G") if k in batch]
        pix = torch.cat([batch[k] for k in images])
        pooled, toks = vision_pooled_and_tokens(self.clip, pix, self.token_layer)
        sizes = [len(batch[k]) for k in images]
        out.update(zip(images, pooled.split(sizes)))
        out.update(zip([f"{k}_tokens" for k in images], toks.split(sizes)))
        if "V" in batch:
            with torch.no_grad(), self.clip.disable_adapter():
                out["V_tokens_ref"] = vision_pooled_and_tokens(
                    self.clip, batch["V"], self.token_layer)[1]
        return out


def vision_pooled_and_tokens(clip, pixel_values, layer: int):
    """(projected pooled features, patch tokens of hidden layer ``layer`` without the class
    token) of a transformers CLIPModel (or a peft model around one), from one vision pass."""
    base = clip.get_base_model() if hasattr(clip, "get_base_model") else clip
    out = base.vision_model(pixel_values=pixel_values, output_hidden_states=True)
    return base.visual_projection(out.pooler_output), out.hidden_states[layer][:, 1:]


def pooled_text_features(clip, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """``text_features`` with the padding trimmed and the last layer run for the pooled token
    only (both exact; see ``trim_padding`` and ``safeclip.train.pooled``)."""
    ids = trim_padding(input_ids, eos_token_id)
    with pooled_last_layer(clip, "text", pooled_positions(ids, eos_token_id)):
        return text_features(clip, ids)


def pooled_image_features(clip, pixel_values: torch.Tensor) -> torch.Tensor:
    """``image_features`` with the last layer run for the class token only."""
    with pooled_last_layer(clip, "vision"):
        return image_features(clip, pixel_values)
