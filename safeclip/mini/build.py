"""``safeclip mini``: rebuild the bundled mini world from scratch, on a CPU.

    safeclip mini build                       # every step, skipping those already done
    safeclip mini build --only clip --force   # retrain one artifact
    safeclip mini build --work /tmp/mini --out /tmp/models   # leave assets/ untouched
    safeclip mini rescan                      # the generator's guidance, for a new Safe-CLIP
    safeclip mini judge | clip | gen | llava  # one trainer by hand (its own flags)

Steps, in order (each resumable, each skipped when its artifact exists unless ``--force``):

  data    render the synthetic ViSU splits (train 50k, validation 1k, test 1k) as arrays
  judge   train the mini judge (which objects an image shows)       -> OUT/mini-judge
  clip    train the mini CLIP on safe and unsafe pairs              -> OUT/mini-clip
  safeclip  fine-tune the mini CLIP into the mini Safe-CLIP (LoRA)  -> OUT/mini-safeclip
  gen     train the mini generator (an embedding decoder and its VAE)   -> OUT/mini-gen
  llava   train the mini LLaVA (projector, language model) on the mini CLIP tower -> OUT/mini-llava

Every step logs to WORK/build.log as well as the terminal, and the build ends with the test-split
metrics written into each model folder (``metrics.json``) and its model card (``README.md``).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from . import MODELS, WORLD

logger = logging.getLogger(__name__)

STEPS = ("data", "judge", "clip", "safeclip", "gen", "llava")  # in this order
DEFAULT_STEPS = STEPS  # the bundled artifacts
DEFAULT_WORK = Path("work") / "mini"


def step_data(work: Path, out: Path, force: bool) -> dict:
    from .cache import render_split

    if force:
        shutil.rmtree(work / "data", ignore_errors=True)
    for split in ("validation", "test", "train"):
        render_split(split, work / "data")
    return {"data": str(work / "data")}


def step_judge(work: Path, out: Path, force: bool) -> dict:
    from .judge import train_judge

    return {"judge": train_judge(out / "mini-judge", force=force)}


def step_clip(work: Path, out: Path, force: bool) -> dict:
    from .train_clip import ClipTrainConfig, train_mini_clip

    target = out / "mini-clip"
    if (target / "model.safetensors").exists() and not force:
        logger.info("mini CLIP exists at %s: skipped (--force to retrain)", target)
        return {"clip": "skipped"}
    if force:
        (work / "ckpt" / "mini-clip.ckpt").unlink(missing_ok=True)
    cfg = ClipTrainConfig()
    info = train_mini_clip(work / "data", target, work / "ckpt", cfg)
    metrics = evaluate_model_dir(target)
    write_clip_card(target, cfg, info, metrics)
    return {"clip": metrics}


def evaluate_model_dir(model_dir: Path, split: str = "test") -> dict:
    """Test-split retrieval metrics of a CLIP folder, written beside it as metrics.json."""
    from ..encoders import load_clip_folder
    from ..eval.retrieval import evaluate_encoder
    from .synthetic import SyntheticViSU

    metrics = evaluate_encoder(load_clip_folder(model_dir, device="cpu"), SyntheticViSU(split))
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    (model_dir / "metrics.json").write_text(json.dumps({"split": split, **metrics}, indent=2))
    return metrics


def write_clip_card(target: Path, cfg, info: dict, metrics: dict) -> None:
    from transformers import CLIPConfig

    mc = CLIPConfig.from_pretrained(target)
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics.items()
                     if k.endswith(("_r1", "_r10")) or k.startswith("nsfw"))
    (target / "README.md").write_text(f"""# mini-clip

The mini world's original CLIP: a transformers `CLIPModel` trained from scratch here on safe and
unsafe pairs of the synthetic ViSU (`safeclip.mini.synthetic`), so that, like web-scale CLIP, it
links unsafe words to unsafe images. Weights in fp16 safetensors; tokenizer = the real CLIP BPE.

- architecture: ViT {mc.vision_config.image_size} px, patch {mc.vision_config.patch_size}, width {mc.vision_config.hidden_size}, {mc.vision_config.num_hidden_layers}+{mc.text_config.num_hidden_layers} layers, context {mc.text_config.max_position_embeddings}, embedding {mc.projection_dim}, {info['parameters'] / 1e6:.1f}M parameters, QuickGELU
- training: {cfg.steps} steps x {cfg.batch} pairs, AdamW lr {cfg.lr}, warm-up {cfg.warmup}, cosine decay, seed {cfg.seed}; the last (or only) run took {info['train_seconds_this_run']:.0f} s (see training.json for the loss and validation history)
- command: `safeclip mini build --only clip --force`

## Test-split metrics (`safeclip eval retrieval --preset mini`)

Gallery: the 2,000 safe and unsafe test images (text queries) or captions (image queries).

| metric | value |
|---|---|
{rows}
""")


# the mini Safe-CLIP's training recipe: the paper's objective and LoRA targets; a larger LoRA
# scale (alpha = r) than the official alpha=1, so that a few CPU epochs are enough; preservation
# (text_safe, vision_safe) 4x the paper's weight, and the patch-token terms, so that the mini
# generator and captioner, built on the original towers, read Safe-CLIP's safe inputs as theirs
# (issues 6 and 7; measured against the paper's weights in the model card)
SAFECLIP_ARGS = ["--epochs", "2", "--batch", "128", "--lora-r", "16", "--lora-alpha", "16",
                 "--lr", "1e-3", "--n-val", "1000", "--ckpt-every", "100",
                 "--weight", "text_safe=0.4", "--weight", "vision_safe=0.4",
                 "--weight", "vision_tokens_safe=1.0", "--weight", "vision_tokens_nsfw=1.0"]


def step_safeclip(work: Path, out: Path, force: bool) -> dict:
    from ..train.cli import main as train_main

    target, run = out / "mini-safeclip", work / "safeclip-run"
    if (target / "model.safetensors").exists() and not force:
        logger.info("mini Safe-CLIP exists at %s: skipped (--force to retrain)", target)
        return {"safeclip": "skipped"}
    if force:
        shutil.rmtree(run, ignore_errors=True)
    args = ["--preset", WORLD, "--clip", str(out / "mini-clip"), "--data-dir", str(work / "data"),
            "--out", str(run), *SAFECLIP_ARGS]
    train_main(args + (["--resume"] if (run / "checkpoint").exists() else []))
    merged = run / "export" / "merged"
    from transformers import CLIPModel

    from .clip import save_clip_dir
    save_clip_dir(CLIPModel.from_pretrained(merged).eval(), target, dtype=__import__("torch").float16)
    metrics = evaluate_model_dir(target)
    summary = json.loads((run / "summary.json").read_text())
    write_safeclip_card(target, args, summary, metrics)
    return {"safeclip": metrics, "train_seconds": summary["seconds"]}


def write_safeclip_card(target: Path, args: list[str], summary: dict, metrics: dict,
                        notes: str = "") -> None:
    from ..train.losses import DEFAULT_WEIGHTS

    base = json.loads((target.parent / "mini-clip" / "metrics.json").read_text()) \
        if (target.parent / "mini-clip" / "metrics.json").exists() else {}
    keys = [k for k in metrics if k.endswith(("_r1", "_r10")) or k.startswith("nsfw")]
    rows = "\n".join(f"| {k} | {base.get(k, float('nan')):.3f} | {metrics[k]:.3f} |" for k in keys)
    weights = summary.get("config", {}).get("weights", DEFAULT_WEIGHTS)
    changed = {k: v for k, v in weights.items() if v and DEFAULT_WEIGHTS.get(k) != v}
    objective = ("the paper's eight-term objective with its default weights" if not changed else
                 "the paper's eight terms, with these weights changed from the paper's defaults "
                 "or added: " + ", ".join(f"{k} {DEFAULT_WEIGHTS.get(k, 0)} -> {v}"
                                          for k, v in changed.items()))
    (target / "README.md").write_text(f"""# mini-safeclip

The mini world's Safe-CLIP: `mini-clip` fine-tuned with `safeclip train` (LoRA on both
encoders, {objective}; frozen reference cached ahead of training), then merged into a plain
transformers `CLIPModel` (fp16 safetensors).

- command: `safeclip train --preset mini --clip assets/models/mini-clip {' '.join(args[6:])}`
  (run by `safeclip mini build --only safeclip`)
- {summary['global_step']} optimiser steps in {summary['seconds']:.0f} s on this machine
{notes}
## Test-split metrics (`safeclip eval retrieval --preset mini`)

| metric | mini-clip | mini-safeclip |
|---|---|---|
{rows}
""")


def step_gen(work: Path, out: Path, force: bool) -> dict:
    from .gen_export import build_step  # the mini generator

    return build_step(work, out, force)


def step_llava(work: Path, out: Path, force: bool) -> dict:
    from .train_llava import build_step  # the mini captioner (issue 7)

    return build_step(work, out, force)


RUNNERS = {"data": step_data, "judge": step_judge, "clip": step_clip, "safeclip": step_safeclip,
           "gen": step_gen, "llava": step_llava}


def build(work: Path = DEFAULT_WORK, out: Path = MODELS, only=None, force: bool = False) -> dict:
    work, out = Path(work), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(work / "build.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("safeclip").addHandler(handler)
    steps = list(only or DEFAULT_STEPS)
    if "data" not in steps and any(s in steps for s in ("clip", "safeclip", "gen", "llava")):
        steps.insert(0, "data")  # training needs the rendered data (a no-op when present)
    report, t_all = {}, time.time()
    try:
        for name in STEPS:
            if name not in steps:
                continue
            t0 = time.time()
            logger.info("== step %s ==", name)
            result = RUNNERS[name](work, out, force and name in (only or DEFAULT_STEPS))
            report[name] = {"seconds": round(time.time() - t0, 1), **result}
            logger.info("step %s done in %.0f s", name, time.time() - t0)
    finally:
        logging.getLogger("safeclip").removeHandler(handler)
    report["total_seconds"] = round(time.time() - t_all, 1)
    (work / "build_report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def build_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="safeclip mini build", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="data and checkpoints")
    p.add_argument("--out", type=Path, default=MODELS, help="where the models go")
    p.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    p.add_argument("--force", action="store_true", help="redo the chosen steps from scratch")
    args = p.parse_args(argv)
    from ..cli import setup_logging
    setup_logging("INFO")
    report = build(args.work, args.out, args.only, args.force)
    print(json.dumps(report, indent=2, default=str))
    return 0


SUBCOMMANDS = {
    "build": ("safeclip.mini.build:build_main", "rebuild the bundled models (every step, resumable)"),
    "rescan": ("safeclip.mini.gen_export:rescan_main",
               "re-choose the generator's guidance for the Safe-CLIP beside it, re-evaluate"),
    "judge": ("safeclip.mini.train_judge:main", "train the mini judge by hand"),
    "clip": ("safeclip.mini.train_clip:main", "train the mini CLIP by hand"),
    "gen": ("safeclip.mini.gen_export:main", "train the mini generator by hand"),
    "llava": ("safeclip.mini.train_llava:main", "train the mini captioner by hand"),
}


def main(argv=None) -> int:
    from ..cli import dispatch

    return dispatch(argv, SUBCOMMANDS, "safeclip mini", __doc__)
