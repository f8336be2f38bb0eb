"""``safeclip train``: fine-tune a world's original CLIP into a Safe-CLIP.

    safeclip train --preset mini --out runs/mini                      # the mini world's data
    safeclip train --preset vit-l-14 --data visu --visu-text aimagelab/ViSU-Text \\
        --coco-root /data/coco --unsafe-root /data/visu-unsafe --out runs/vitl
    safeclip train ... --mode text          # the 4 terms that need no unsafe image
    safeclip train ... --resume             # continue a killed run where it stopped
    accelerate launch --num_processes 4 -m safeclip.train.cli --preset vit-l-14 ...

The run folder holds checkpoints, the reference cache, ``summary.json`` and, at the end,
``export/`` (adapter, merged CLIPModel, diffusers text encoder, open_clip weights).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..cli import add_common_args, overrides, setup_logging
from ..errors import InputError, StudioError
from .lora import DEFAULT_TARGETS, LoraSettings
from .losses import DEFAULT_WEIGHTS, TERMS
from .trainer import TrainConfig

logger = logging.getLogger(__name__)


def parse_weights(items: list[str] | None) -> dict[str, float]:
    weights = dict(DEFAULT_WEIGHTS)
    for item in items or []:
        name, _, value = item.partition("=")
        if name not in TERMS or not value:
            raise InputError(f"--weight takes NAME=VALUE with NAME one of {', '.join(TERMS)}; got {item!r}")
        weights[name] = float(value)
    return weights


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safeclip train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, capability="retrieval")
    d = TrainConfig(out="")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--data", default=None, metavar="KIND",
                   help="training data kind (default: the world's: visu for real worlds)")
    p.add_argument("--data-dir", default=None,
                   help="where a world's own training data is rendered or cached "
                        "(default: work/WORLD/data)")
    p.add_argument("--n-train", type=int, default=None, help="use only the first N training items")
    p.add_argument("--n-val", type=int, default=None, help="use only the first N validation items")
    p.add_argument("--visu-text", default="aimagelab/ViSU-Text", help="Hub id or local copy")
    p.add_argument("--coco-root", default=None)
    p.add_argument("--unsafe-root", default=None)
    p.add_argument("--mode", choices=["full", "text"], default=d.mode)
    p.add_argument("--weight", action="append", metavar="NAME=VALUE", help="loss weight by name")
    p.add_argument("--optimizer", choices=["adam", "adamw"], default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--batch", type=int, default=d.batch, help="global batch per optimiser step")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--early-stop", choices=["loss", "recall"], default=d.early_stop)
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--report-to", choices=["none", "tensorboard", "wandb"], default="none")
    p.add_argument("--lora-r", type=int, default=LoraSettings.r)
    p.add_argument("--lora-alpha", type=float, default=LoraSettings.alpha)
    p.add_argument("--lora-dropout", type=float, default=LoraSettings.dropout)
    p.add_argument("--lora-targets", nargs="+", default=list(DEFAULT_TARGETS))
    p.add_argument("--token-layer", type=int, default=d.token_layer,
                   help="hidden layer of the patch tokens that the vision_tokens_* terms read "
                        "(-1: the last; LLaVA-1.5 reads -2)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    p.add_argument("--no-export", action="store_true")
    return p


def config_from_args(args) -> TrainConfig:
    return TrainConfig(
        out=args.out, mode=args.mode, weights=parse_weights(args.weight),
        lora=LoraSettings(args.lora_r, args.lora_alpha, args.lora_dropout, tuple(args.lora_targets)),
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, batch=args.batch,
        grad_accum=args.grad_accum, epochs=args.epochs, max_steps=args.max_steps,
        patience=args.patience, early_stop=args.early_stop, mixed_precision=args.mixed_precision,
        ckpt_every=args.ckpt_every, seed=args.seed, report_to=args.report_to, cpu=args.cpu,
        token_layer=args.token_layer)


def load_base(world):
    """The world's original CLIP as a float32 transformers CLIPModel, its tokenizer, processor."""
    import torch

    from ..encoders import load_transformers_clip

    spec = world.retrieval.clip
    if (spec.kind or "transformers") != "transformers":
        raise StudioError(f"training needs a transformers CLIP; the original CLIP of world "
                          f"{world.name!r} is {spec.kind} (convert it to a CLIPModel folder and "
                          "pass --clip)")
    enc = load_transformers_clip(spec, world, torch.device("cpu"), torch.float32)
    return enc.model.train(), enc.tokenizer, enc.processor, enc.context_length


def build_sources(args, world, tokenizer, processor, context, need):
    """(train, validation) of the data kind ``--data`` or the world's (``safeclip.kinds``
    table ``train_data``)."""
    from ..kinds import resolve

    kind = args.data or world.retrieval.train_data
    if kind is None:
        raise StudioError(f"world {world.name!r} names no training data; pass --data visu")
    if args.data_dir is None:
        args.data_dir = str(Path("work") / world.name / "data")
    return resolve("train_data", kind, world)(args, tokenizer, processor, context, need)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from ..presets import get_preset
    from .trainer import load_adapter_weights, train

    cfg = config_from_args(args)
    world = get_preset(args.preset, overrides(args))
    clip, tokenizer, processor, context = load_base(world)
    need = ("S", "U", "V", "G") if cfg.mode == "full" else ("S", "U", "V")
    train_src, val_src = build_sources(args, world, tokenizer, processor, context, need)
    peft_model, summary = train(cfg, clip, train_src, val_src, resume=args.resume)
    from accelerate import PartialState
    if not args.no_export and PartialState().is_main_process:
        from .export import export_all
        best = Path(cfg.out) / "best_adapter.safetensors"
        if best.exists():
            load_adapter_weights(peft_model, best)
        paths = export_all(peft_model, Path(cfg.out) / "export")
        summary["export"] = {k: str(v) for k, v in paths.items()}
        print(json.dumps({k: summary[k] for k in ("global_step", "seconds", "export")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
