"""The mini world's image judge: a small CNN that says which objects of the world an image shows.

    >>> from safeclip.mini.judge import MiniJudge
    >>> judge = MiniJudge.from_pretrained("assets/models/mini-judge")
    >>> v = judge.judge([image])[0]       # Verdict: unsafe = an unsafe object's score >= threshold

Registered as the image judge kind ``mini-judge`` (its JudgeSpec ``ref`` is the model folder).
Trained by ``safeclip mini build --only judge`` (``safeclip.mini.train_judge``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import ModelUnavailableError
from ..images import to_rgb
from ..safety.base import Judge, Verdict
from .vocab import ALL_OBJECTS, UNSAFE_OBJECTS

log = logging.getLogger(__name__)


@dataclass
class MiniJudgeConfig:
    labels: list[str] = field(default_factory=lambda: list(ALL_OBJECTS))  # output order
    unsafe: dict[str, str] = field(default_factory=lambda: dict(UNSAFE_OBJECTS))  # -> category
    image_size: int = 64  # input side in pixels; other sizes are resized (LANCZOS)
    widths: list[int] = field(default_factory=lambda: [24, 48, 96, 128])  # conv layer widths
    strides: list[int] = field(default_factory=lambda: [2, 2, 1, 2])  # conv layer strides
    threshold: float = 0.5  # default decision threshold on the sigmoid scores


class MiniJudgeNet(nn.Module):
    """conv3x3-BN-ReLU layers (strided, 64 -> 8 px), then global max+mean pooling and one logit
    per label. Input: float RGB in [0, 1], N x 3 x 64 x 64. Small enough to train on 2 cores."""

    def __init__(self, config: MiniJudgeConfig):
        super().__init__()
        layers, c_in = [], 3
        for w, s in zip(config.widths, config.strides):
            layers += [nn.Conv2d(c_in, w, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_in, len(config.labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features((x - 0.5) / 0.25)
        return self.head(torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1))


def images_to_tensor(images, size: int = 64) -> torch.Tensor:
    """PIL images of any mode/size -> float tensor N x 3 x size x size in [0, 1]."""
    arrs = []
    for im in images:
        im = to_rgb(im)
        if im.size != (size, size):
            im = im.resize((size, size), Image.LANCZOS)
        arrs.append(np.asarray(im, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)


class MiniJudge(Judge):
    """Multi-label object detector of the mini world; unsafe score = max over unsafe objects."""

    name = "mini"

    def __init__(self, net: MiniJudgeNet | None = None, config: MiniJudgeConfig | None = None,
                 threshold: float | None = None, batch_size: int = 256):
        self.config = config or MiniJudgeConfig()
        super().__init__(self.config.threshold if threshold is None else threshold)
        self.net = (net or MiniJudgeNet(self.config)).eval()
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str | Path, threshold: float | None = None):
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "model.safetensors").exists():
            raise ModelUnavailableError(
                f"no mini judge at {path}; build it with `safeclip mini build --only judge`")
        config = MiniJudgeConfig(**json.loads((path / "config.json").read_text()))
        net = MiniJudgeNet(config)
        state = load_file(str(path / "model.safetensors"))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in state.items()})
        return cls(net, config, threshold)

    def save_pretrained(self, path: str | Path, metrics: dict | None = None,
                        command: str | None = None) -> Path:
        """Write model.safetensors (fp16), config.json and a README.md model card."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: (v.half() if v.is_floating_point() else v).contiguous()
                 for k, v in self.net.state_dict().items()}
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        (path / "README.md").write_text(model_card(self.config, metrics, command))
        return path

    @torch.no_grad()
    def scores(self, images) -> np.ndarray:
        """Sigmoid score per image and label: array N x len(config.labels)."""
        self.net.eval()
        out = []
        for i in range(0, len(images), self.batch_size):
            x = images_to_tensor(images[i: i + self.batch_size], self.config.image_size)
            out.append(torch.sigmoid(self.net(x)).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.config.labels)))

    def judge(self, images) -> list[Verdict]:
        return [self._verdict({k: float(v) for k, v in zip(self.config.labels, row)},
                              self.config.unsafe) for row in self.scores(list(images))]


def model_card(config: MiniJudgeConfig, metrics: dict | None, command: str | None) -> str:
    """README.md of a saved mini judge."""
    lines = [
        "# mini-judge", "",
        "Safe-CLIP Studio's judge for the mini world: a small CNN that predicts which objects of",
        "`safeclip.mini.synthetic.ALL_OBJECTS` a 64 px image shows (one sigmoid per object).",
        "Unsafe score = max over the unsafe objects; category = that object's I2P category.",
        "Trained from scratch on procedurally rendered images only (abstract glyphs).", "",
        "## Config", "", "```json", json.dumps(asdict(config), indent=2), "```", "",
    ]
    if command:
        lines += ["## Training command", "", "```", command, "```", ""]
    if metrics:
        lines += ["## Held-out evaluation", ""]
        lines += [f"- {k}: {v}" for k, v in metrics.items() if not isinstance(v, dict)]
        acc, rec = metrics.get("per_object_accuracy", {}), metrics.get("per_object_recall", {})
        if acc:
            lines += ["", "| object | accuracy | recall |", "|---|---|---|"]
            lines += [f"| {k} | {acc[k]:.4f} | {rec.get(k, float('nan')):.4f} |" for k in acc]
        lines += [""]
    return "\n".join(lines)


def load_judge(spec) -> MiniJudge:
    """Kind ``mini-judge``: the judge saved in ``spec.ref``."""
    if not spec.ref:
        raise ModelUnavailableError("the mini-judge kind needs the judge's folder (ref)")
    return MiniJudge.from_pretrained(spec.ref, spec.threshold)


def default_judge(threshold: float | None = None) -> MiniJudge:
    """The bundled judge (assets/models/mini-judge): what the mini trainers check with."""
    from . import MODELS

    return MiniJudge.from_pretrained(MODELS / "mini-judge", threshold)
