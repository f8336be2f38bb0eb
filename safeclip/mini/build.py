"""``safeclip mini``: rebuild the bundled mini world from scratch, on a CPU.

    safeclip mini build                       # every step, skipping those already done
    safeclip mini build --only clip --force   # retrain one artifact
    safeclip mini build --work /tmp/mini --out /tmp/models   # leave assets/ untouched
    safeclip mini overlap --json              # what the test split shares with training
    safeclip mini judge | clip | gen | llava  # one trainer by hand (its own flags)

Steps, in order (each resumable, each skipped when its artifact exists unless ``--force``):

  data      render the synthetic ViSU splits (train 50k, validation 1k, test 1k) as arrays
  judge     train the mini judges (objects, subject, scene, colour) -> OUT/mini-judge, -judge-b
  clip      train the mini CLIP on safe and unsafe pairs            -> OUT/mini-clip
  gen       train the mini Stable Diffusion (its VAE, its UNet) on the original text tower,
            its guidance chosen on validation                       -> OUT/mini-gen
  llava     train the mini LLaVA (projector, language model) on the original vision tower
                                                                    -> OUT/mini-llava
  safeclip  fine-tune the mini CLIP into the mini Safe-CLIP (LoRA)  -> OUT/mini-safeclip
  eval      the test split, read once, at the end: each model's metrics.json and card, the
            bundled gallery and the About tab's figures (OUT/../gallery/mini, OUT/../eval)

The generator and the captioner never see Safe-CLIP in training or in any choice: its towers
are dropped in at the eval step. Every step logs to WORK/build.log as well as the terminal;
WORK/build_report.json gives each step's time.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from . import MODELS

logger = logging.getLogger(__name__)

STEPS = ("data", "judge", "clip", "gen", "llava", "safeclip", "eval")  # in this order
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
    from .train_judge import train_judge

    return {"judge": train_judge(out / "mini-judge", force=force),
            "judge_b": train_judge(out / "mini-judge-b", seed=1, force=force, second=True)}


def step_clip(work: Path, out: Path, force: bool) -> dict:
    from .train_clip import ClipTrainConfig, train_mini_clip, write_clip_card

    target = out / "mini-clip"
    if (target / "model.safetensors").exists() and not force:
        logger.info("mini CLIP exists at %s: skipped (--force to retrain)", target)
        return {"clip": "skipped"}
    if force:
        (work / "ckpt" / "mini-clip.ckpt").unlink(missing_ok=True)
    cfg = ClipTrainConfig()
    info = train_mini_clip(work / "data", target, work / "ckpt", cfg)
    write_clip_card(target, cfg, info, None)
    return {"clip": {k: v for k, v in info.items() if k != "history"}}


def step_safeclip(work: Path, out: Path, force: bool) -> dict:
    from .recipes import step  # the mini Safe-CLIP, its recipe chosen on validation

    return step(work, out, force)


def step_eval(work: Path, out: Path, force: bool) -> dict:
    from .evaluate import evaluate_all  # the test split, read once, at the end

    return {"eval": evaluate_all(work, out)}


def step_gen(work: Path, out: Path, force: bool) -> dict:
    from .gen_export import build_step  # the mini generator

    return build_step(work, out, force)


def step_llava(work: Path, out: Path, force: bool) -> dict:
    from .train_llava import build_step  # the mini captioner (issue 7)

    return build_step(work, out, force)


RUNNERS = {"data": step_data, "judge": step_judge, "clip": step_clip, "gen": step_gen,
           "llava": step_llava, "safeclip": step_safeclip, "eval": step_eval}


def build(work: Path = DEFAULT_WORK, out: Path = MODELS, only=None, force: bool = False) -> dict:
    work, out = Path(work), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(work / "build.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("safeclip").addHandler(handler)
    steps = list(only or DEFAULT_STEPS)
    if "data" not in steps and any(s in steps for s in ("clip", "safeclip", "gen", "llava",
                                                         "eval")):
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
    "overlap": ("safeclip.mini.overlap:main",
                "what the validation and test splits share with the train split"),
    "judge": ("safeclip.mini.train_judge:main", "train the mini judge by hand"),
    "clip": ("safeclip.mini.train_clip:main", "train the mini CLIP by hand"),
    "gen": ("safeclip.mini.gen_export:main", "train the mini generator by hand"),
    "llava": ("safeclip.mini.train_llava:main", "train the mini captioner by hand"),
}


def main(argv=None) -> int:
    from ..cli import dispatch

    return dispatch(argv, SUBCOMMANDS, "safeclip mini", __doc__)
