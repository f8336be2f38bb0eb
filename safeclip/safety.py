"""NSFW judges and blurring: one interface for the mini world's judge and NudeNet.

    >>> from safeclip.safety import get_judge, blur
    >>> judge = get_judge("mini")                  # MiniJudge from assets/models/mini-judge
    >>> v = judge.judge([image])[0]                # Verdict(unsafe, score, category, labels, ...)
    >>> shown = blur(image) if v.unsafe else image
    >>> get_judge("nudenet", threshold=0.6)        # real images: NudeNet's EXPOSED classes

A judge maps PIL images (any mode, any size) to `Verdict`s. `score` is the strongest unsafe
finding in [0, 1]; `unsafe` is `score >= threshold` (a threshold above 1 never flags).
MiniJudge is a small CNN that says which objects of the mini world (safeclip.data.synthetic)
an image shows; it is trained by `python -m safeclip.mini.judge`. NudeNetJudge wraps
`nudenet.NudeDetector` and counts only its EXPOSED classes, at an explicit threshold (NudeNet's
own 0.2 cut-off flags skin-coloured shapes). This module never imports gradio.
"""

from __future__ import annotations

import abc
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from safeclip.data.synthetic import ALL_OBJECTS, UNSAFE_OBJECTS
from safeclip.images import blur, to_rgb  # noqa: F401 - blur is re-exported

log = logging.getLogger(__name__)

MINI_JUDGE_DIR = Path(__file__).resolve().parents[1] / "assets" / "models" / "mini-judge"

# NudeNet 3.4 classes counted as sexual content by default, and the wider set of every EXPOSED
# class (belly, armpits, feet and male chest are exposed in plenty of safe pictures).
NUDENET_EXPOSED = (
    "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
)
NUDENET_ALL_EXPOSED = NUDENET_EXPOSED + (
    "MALE_BREAST_EXPOSED", "BELLY_EXPOSED", "ARMPITS_EXPOSED", "FEET_EXPOSED",
)


@dataclass
class Verdict:
    """A judge's decision on one image."""

    unsafe: bool  # score >= threshold
    score: float  # strongest unsafe score in [0, 1]
    category: str | None  # I2P category of the strongest unsafe finding; None when safe
    labels: dict[str, float]  # per-label scores
    threshold: float


class Judge(abc.ABC):
    """Base of the judges: `judge(images) -> list[Verdict]` at an explicit `threshold`."""

    name = "judge"

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    @abc.abstractmethod
    def judge(self, images: list[Image.Image]) -> list[Verdict]:
        """One Verdict per image."""

    def __call__(self, images):
        if isinstance(images, Image.Image):
            return self.judge([images])[0]
        return self.judge(list(images))

    def _verdict(self, labels: dict[str, float], categories: dict[str, str]) -> Verdict:
        """Verdict from per-label scores; `categories` maps the unsafe labels to categories."""
        unsafe = {k: v for k, v in labels.items() if k in categories}
        top = max(unsafe, key=unsafe.get) if unsafe else None
        score = float(unsafe[top]) if top is not None else 0.0
        flagged = top is not None and score >= self.threshold
        return Verdict(flagged, score, categories[top] if flagged else None, labels,
                       self.threshold)


# ------------------------------------------------------------------------------- mini judge


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
    def from_pretrained(cls, path: str | Path = MINI_JUDGE_DIR, threshold: float | None = None):
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(
                f"no mini judge at {path}; train one: python -m safeclip.mini.judge --out {path}")
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
        "`safeclip.data.synthetic.ALL_OBJECTS` a 64 px image shows (one sigmoid per object).",
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


# ---------------------------------------------------------------------------------- NudeNet


class NudeNetJudge(Judge):
    """NudeNet detections filtered to `classes` at `threshold`; category "sexual".

    `labels` holds the max detection score of every NudeNet class (0.0 when not detected;
    NudeNet itself drops detections under 0.2).
    """

    name = "nudenet"

    def __init__(self, threshold: float = 0.5, classes=NUDENET_EXPOSED, batch_size: int = 4):
        super().__init__(threshold)
        self.classes = tuple(classes)
        self.batch_size = batch_size
        self._detector = None

    @property
    def detector(self):
        if self._detector is None:
            try:
                from nudenet import NudeDetector
            except ImportError as e:
                raise ImportError("NudeNetJudge needs nudenet: pip install nudenet==3.4.2") from e
            self._detector = NudeDetector()
        return self._detector

    def judge(self, images) -> list[Verdict]:
        # NudeDetector reads arrays as cv2.imread would give them: 8-bit BGR.
        arrays = [np.ascontiguousarray(np.asarray(to_rgb(im))[:, :, ::-1]) for im in images]
        if not arrays:
            return []
        verdicts = []
        for dets in self.detector.detect_batch(arrays, batch_size=self.batch_size):
            labels: dict[str, float] = {c: 0.0 for c in self.classes}
            for d in dets:
                labels[d["class"]] = max(labels.get(d["class"], 0.0), float(d["score"]))
            verdicts.append(self._verdict(labels, {c: "sexual" for c in self.classes}))
        return verdicts


def get_judge(kind_or_preset: str = "mini", threshold: float | None = None) -> Judge:
    """"mini" (or a preset name starting with "mini", or a saved judge's directory) -> MiniJudge;
    anything else ("nudenet", a real preset's name) -> NudeNetJudge."""
    kind = str(kind_or_preset)
    if kind == "mini" or kind.startswith("mini-") or kind.startswith("mini_"):
        return MiniJudge.from_pretrained(MINI_JUDGE_DIR, threshold)
    if Path(kind).is_dir() and (Path(kind) / "model.safetensors").exists():
        return MiniJudge.from_pretrained(kind, threshold)
    return NudeNetJudge(0.5 if threshold is None else threshold)
