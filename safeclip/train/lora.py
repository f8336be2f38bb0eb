"""LoRA on both CLIP encoders, through peft.

    >>> from safeclip.train.lora import LoraSettings, add_lora
    >>> model = add_lora(clip_model, LoraSettings())     # the paper's defaults
    >>> with model.disable_adapter(): ...                 # the frozen original, same object

Defaults are the official code's: r=16, alpha=1, dropout 0.1 on the attention key/value and output
projections, the MLP and the patch embedding of both towers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError

DEFAULT_TARGETS = ("k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding")


@dataclass
class LoraSettings:
    r: int = 16  # rank of the update
    alpha: float = 1.0  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.1  # dropout on the LoRA branch input
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS)  # module names, both towers

    def __post_init__(self):
        if self.r < 1:
            raise InputError(f"LoRA rank must be >= 1, not {self.r}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"LoRA dropout must be in [0, 1), not {self.dropout}")
        self.targets = tuple(self.targets)


def add_lora(model, settings: LoraSettings = LoraSettings()):
    """Wrap a transformers ``CLIPModel`` with LoRA adapters; only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets), bias="none")
    return get_peft_model(model, config)


def trainable_state(model) -> dict:
    """The trainable (adapter) tensors of a peft model, by name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
