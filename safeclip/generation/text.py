"""Text encoders for the generators: which hidden states the UNet cross-attends to.

Real presets use a plain transformers ``CLIPTextModel`` (Stable Diffusion's own choice: the last
hidden states of every token). The mini generator uses ``EndOfTextCLIPTextModel``: the same
weights and the same forward pass, but every position *before* the end-of-text token carries the
end-of-text state. Why: Safe-CLIP's objective acts on the pooled embedding, which is read at the
end-of-text token; the states of the earlier tokens (a causal prefix of the prompt) are only moved
as a side effect. Measured on the mini models with a linear probe fitted on the original encoder
(`safeclip.mini.train_sd` model card): the safe encoder's states of unsafe prompts read as unsafe
for 73% of the prompts at the pre-end-of-text positions and 6% from the end-of-text token on.

    >>> from safeclip.generation.text import load_text_encoder
    >>> enc = load_text_encoder("assets/models/mini-clip", mode="eot")   # a CLIPTextModel subclass
"""
from __future__ import annotations

import torch
from transformers import CLIPTextModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

MODES = ("all", "eot")  # all: stock SD conditioning; eot: end-of-text states everywhere


class EndOfTextCLIPTextModel(CLIPTextModel):
    """A CLIPTextModel whose ``last_hidden_state`` holds, at each position before the first
    end-of-text token, that token's state (positions from it on are unchanged)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids, **kwargs)
        h = out.last_hidden_state
        eos_id = self.config.eos_token_id
        is_eos = input_ids == eos_id
        # first end-of-text position per row (rows without one: the last position)
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1),
                            torch.full_like(input_ids[:, 0], input_ids.shape[1] - 1))
        pos = torch.arange(h.shape[1], device=h.device)[None, :]
        eot = h[torch.arange(h.shape[0], device=h.device), first][:, None, :]
        h = torch.where((pos < first[:, None])[..., None], eot, h)
        return BaseModelOutputWithPooling(last_hidden_state=h, pooler_output=out.pooler_output,
                                          hidden_states=out.hidden_states,
                                          attentions=out.attentions)


def text_encoder_class(mode: str = "all") -> type[CLIPTextModel]:
    if mode not in MODES:
        raise ValueError(f"text conditioning mode must be one of {MODES}, not {mode!r}")
    return EndOfTextCLIPTextModel if mode == "eot" else CLIPTextModel


def load_text_encoder(path, mode: str = "all", dtype=torch.float32) -> CLIPTextModel:
    """The text tower of a CLIP folder (a full CLIPModel or a CLIPTextModel checkpoint), in
    ``dtype``, frozen. A CLIPModel folder is loaded whole and its text tower copied strictly (a
    CLIPTextModel does not pick the text weights out of a CLIPModel checkpoint by itself)."""
    from transformers import AutoConfig, CLIPModel

    cls = text_encoder_class(mode)
    config = AutoConfig.from_pretrained(str(path))
    if getattr(config, "model_type", "") == "clip":
        full = CLIPModel.from_pretrained(str(path), dtype=torch.float32)
        model = cls(full.config.text_config)
        model.load_state_dict(full.text_model.state_dict(), strict=True)
        del full
    else:
        model = cls.from_pretrained(str(path), dtype=torch.float32)
    return model.to(dtype).eval().requires_grad_(False)
