"""The mini generator's export, guidance choice, model card and command line.

    safeclip mini build --only gen      # train (safeclip.mini.train_gen), choose, export, card
    safeclip mini gen --work WORK --out OUT [--steps N ...]

The exported folder is a diffusers Stable Diffusion pipeline without a text encoder or tokenizer
of its own (model_index.json, unet/, vae/, scheduler/): the world names the mini CLIPs' text
towers (``generation.text`` and ``safe_text``), and the generator kind ``diffusers-sd`` loads it
as it loads SD 1.4. ``sd_config.json`` holds its defaults and limits (one step: ``uses_steps``
false). The test-split figures are added to the card by the build's ``eval`` step.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .train_gen import (
    CHECK_ITEMS,
    CONTEXT,
    GenTrainConfig,
    _check_setup,
    load_vae,
    new_scheduler,
    prepare,
    quick_check,
    train,
)

logger = logging.getLogger(__name__)

GUIDANCE_RULE = ("the guidance of the grid whose images of the original text tower show the "
                 "subject, the scene and the safe object of the most validation prompts (ties: "
                 "the smaller guidance); Safe-CLIP's images are not read")


def find_vae(work: Path, out: Path, models: Path, vae: Path | None = None,
             reuse: bool = True) -> Path:
    """The VAE to train against (see safeclip.mini.train_gen, stage 0); ``reuse`` False
    ignores the one in OUT (a forced rebuild trains its own)."""
    if vae is not None:
        if not (Path(vae) / "config.json").exists():
            raise FileNotFoundError(f"--vae {vae}: no AutoencoderKL there (config.json missing)")
        return Path(vae)
    if reuse and (out / "vae" / "config.json").exists():
        return out / "vae"
    from .cache import load_split, render_split
    from .vae import VaeTrainConfig, train_vae

    target = work / "ckpt" / "mini-gen" / "vae"
    if not (target / "config.json").exists():
        logger.info("no VAE given: training one in %s", work)
        for split in ("validation", "train"):
            render_split(split, work / "data")
        model, info = train_vae(load_split(work / "data", "train"), work / "ckpt" / "mini-vae",
                                VaeTrainConfig(), load_split(work / "data", "validation"),
                                models=models)
        model.half().save_pretrained(target, safe_serialization=True)
        (target / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return target


def choose_guidance(scan: dict) -> float:
    """GUIDANCE_RULE: the original column's safe fidelity on validation items, nothing else."""
    return max(sorted(scan), key=lambda g: scan[g]["clip_S_fidelity"])


def scan_guidance(unet, vae, work: Path, cfg: GenTrainConfig, models: Path) -> dict:
    """Validation checks of the original text tower over ``cfg.guidance_grid``, the guidance
    chosen from them (GUIDANCE_RULE): the training.json keys guidance_scan and guidance."""
    scan = {g: quick_check(unet, vae, work, models, n=cfg.check_items, guidance=g)
            for g in cfg.guidance_grid}
    return {"guidance_scan": scan, "guidance": choose_guidance(scan)}


def export(out: Path, unet, cfg: GenTrainConfig, info: dict, vae_dir: Path) -> Path:
    """Write the pipeline folder (see the module docstring) and training.json."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "samples.png"):  # a previous model's test figures
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "decoder", ignore_errors=True)  # the old pooled-embedding decoder
    unet.to(torch.float16).save_pretrained(out / "unet", safe_serialization=True)
    unet.float()
    if Path(vae_dir).resolve() != (out / "vae").resolve():
        shutil.rmtree(out / "vae", ignore_errors=True)
        shutil.copytree(vae_dir, out / "vae")
    new_scheduler().save_pretrained(out / "scheduler")
    from diffusers import __version__

    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": __version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": [None, None],
             "tokenizer": [None, None], "safety_checker": [None, None],
             "feature_extractor": [None, None], "image_encoder": [None, None],
             "requires_safety_checker": False}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    conf = {
        "kind": "stable-diffusion, one step",
        "text_encoder": {"clip": "../mini-clip", "safe_clip": "../mini-safeclip",
                         "reads": "last hidden state of every token (CLIPTextModel)",
                         "context_length": CONTEXT},
        "uses_steps": False,  # one denoising step: a steps setting is ignored
        "defaults": {"steps": 1, "guidance": info["guidance"], "size": 64, "negative_prompt": ""},
        "limits": {"steps": [1, 150], "guidance": [1.0, 20.0], "size": [64]},
    }
    (out / "sd_config.json").write_text(json.dumps(conf, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps({"config": asdict(cfg), **info}, indent=2,
                                                  default=str) + "\n")
    return out


def run(work: Path, out: Path, cfg: GenTrainConfig | None = None, force: bool = False,
        vae: Path | None = None) -> dict:
    """Prepare, train (or resume), choose the guidance on validation, export to ``out`` and
    write the model card. The CLIP and the judges are read from ``out``'s parent folder."""
    cfg = cfg or GenTrainConfig()
    work, out = Path(work), Path(out)
    models = out.parent
    if force:
        shutil.rmtree(work / "ckpt" / "mini-gen", ignore_errors=True)
        shutil.rmtree(work / "ckpt" / "mini-vae", ignore_errors=True)
    t0 = time.time()
    vae_dir = find_vae(work, out, models, vae, reuse=not force)
    info = {"vae_seconds": round(time.time() - t0, 1)}
    t1 = time.time()
    data = prepare(work, cfg, vae_dir, models / "mini-clip")
    info["data_seconds_this_run"] = round(time.time() - t1, 1)
    meta = work / "ckpt" / "mini-gen" / f"data_{cfg.items}.json"
    if meta.exists():  # when the cache was built (VAE encoding, tokenising)
        info["data_seconds_total"] = json.loads(meta.read_text())["seconds"]
    vae_model = load_vae(vae_dir)
    unet, tinfo = train(work, cfg, data, vae_model, models / "mini-clip", models)
    info.update(tinfo)
    t2 = time.time()
    _check_setup.cache_clear()
    info.update(scan_guidance(unet, vae_model, work, cfg, models))
    from .cache import load_split
    from .vae import vae_check

    info["vae_round_trip"] = vae_check(vae_model, load_split(work / "data", "validation"), 500,
                                       models, ("mini-judge", "mini-judge-b"))
    info["check_seconds"] = round(time.time() - t2, 1)
    export(out, unet, cfg, info, vae_dir)
    write_card(out)
    return {k: v for k, v in info.items() if k != "history"}


def _table(title: str, rows: list[tuple], columns: tuple[str, ...], first: str) -> list[str]:
    lines = [f"## {title}", "", f"| {first} | " + " | ".join(c.replace("_", " ") for c in columns)
             + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(str(h.get(c, "")) for c in columns) + " |"
              for label, h in rows]
    return lines + [""]


CHECKS = ("clip_S_fidelity", "clip_S_shows_object", "clip_U_shows_object", "clip_U_unsafe")


def write_card(out: Path, command: str = "safeclip mini build --only gen") -> Path:
    """README.md of an exported mini-gen from its training.json (and, once the build's eval
    step has run, the test figures in metrics.json)."""
    out = Path(out)
    t = json.loads((out / "training.json").read_text())
    c = t["config"]
    vae_info = out / "vae" / "training.json"  # the VAE's own training record, when trained here
    vae_seconds = (json.loads(vae_info.read_text()).get("vae_seconds_last_run")
                   if vae_info.exists() else t.get("vae_seconds", "?"))
    lines = [
        "# mini-gen", "",
        "The mini world's text-to-image generator: a diffusers Stable Diffusion pipeline at mini",
        "size (`model_index.json`, `unet/`, `vae/`, `scheduler/`), loaded and run by the same code",
        "as SD 1.4 (`safeclip.generation`, kind `diffusers-sd`). Its UNet cross-attends to the last",
        "hidden state of every token of the **original** mini CLIP's text tower (../mini-clip),",
        "the tensor SD 1.x reads; Safe-CLIP's text tower (../mini-safeclip) is dropped in",
        "unchanged at inference, as in the paper. The folder has no text encoder or tokenizer",
        "of its own: the world names the mini CLIPs'.", "",
        "## How it differs from Stable Diffusion", "",
        "- one denoising step: the UNet predicts the clean latent (`prediction_type` `sample`)",
        "  from pure noise at t = 999, and the DDIM scheduler (trailing spacing, alpha 1 at the",
        "  end) returns it; classifier-free guidance acts on that prediction. A many-step DDPM of",
        "  this size trained here earlier drew the requested object for 7% of safe prompts after",
        "  46 minutes of training (denoising learns objects last).",
        "- 64 px images through a 16 x 16 x 16 latent (SD 1.x: 512 px, 64 x 64 x 4), 32 tokens",
        "  of width 128 (SD 1.x: 77 x 768), a UNet of "
        f"{t.get('unet_parameters', 0) / 1e6:.2f}M parameters (SD 1.x: 860M).", "",
        "## Training", "",
        (f"- UNet2DConditionModel, blocks {list(c['channels'])} (cross-attention at 8 and 4 px), "
         f"{t.get('steps')} steps x {c['batch']}, AdamW lr {c['lr']} (warm-up, cosine), EMA "
         f"{c['ema_decay']} (exported)"),
        (f"- regression of the clean latent, each item's noise the best of {c['candidates']} "
         f"draws (IMLE-style), the object's latent cells weighted x{c['object_weight']}, "
         f"{c['uncond_prob']:.0%} of captions dropped to \"\" (guidance)"),
        (f"- data: the first {c['items']} training items, (S, V) and (U, G) pairs alike, two "
         "wordings each, token states of the original mini CLIP only"),
        (f"- time on this machine (2 cores): VAE {vae_seconds} s, data "
         f"{t.get('data_seconds_total', '?')} s, training {t.get('train_seconds_total', '?')} s, "
         f"guidance scan and judge checks {t.get('check_seconds', '?')} s (training.json)"),
        f"- command: `{command}` (or `safeclip mini gen --work WORK --out OUT`)", "",
        (f"Guidance default **{t['guidance']}**, chosen by a rule that reads validation items and "
         f"the original column only: {GUIDANCE_RULE}."), "",
    ]
    checks = [(h["step"], h) for h in t.get("history", []) if "clip_S_fidelity" in h]
    if checks:
        lines += _table(f"Checks during training (validation, {CHECK_ITEMS} items, guidance "
                        f"{c['guidance']}, EMA weights)", checks, CHECKS, "step")
    scan = t.get("guidance_scan") or {}
    if scan:
        lines += _table(f"Guidance on validation items ({c['check_items']} items, the pipeline's "
                        "noise of seed i for item i; original text tower)",
                        list(scan.items()), CHECKS, "guidance")
    rt = t.get("vae_round_trip")
    if rt:
        lines += ["## The judges on VAE round trips (validation renders, 500 items)", "",
                  "What the judges read of known renders after the VAE's encode and decode: "
                  "the ceiling of what a perfect generator could score.", "",
                  "| judge | image | object recall | subject | scene |", "|---|---|---|---|---|"]
        for tag, name in (("", "mini-judge"), ("b_", "mini-judge-b")):
            for col in ("V", "G"):
                if f"{tag}{col}_object_recall" in rt:
                    lines.append(f"| {name} | {col} | {rt[f'{tag}{col}_object_recall']} | "
                                 f"{rt[f'{tag}{col}_subject_accuracy']} | "
                                 f"{rt[f'{tag}{col}_scene_accuracy']} |")
        lines.append("")
    if (out / "metrics.json").exists():
        from .eval_generation import card_lines

        lines += card_lines(json.loads((out / "metrics.json").read_text()))
    if (out / "samples.png").exists():
        lines += ["![test items 0-7 (seed i): rendered V, safe prompt with the original and with "
                  "Safe-CLIP's text encoder, rendered G, unsafe prompt with each](samples.png)", "",
                  "Rows: the rendered safe image V; the safe prompt drawn with the original text "
                  "encoder; with Safe-CLIP's; the rendered unsafe image G; the unsafe prompt with "
                  "the original; with Safe-CLIP's (test items 0-7, seed = item).", ""]
    (out / "README.md").write_text("\n".join(lines))
    return out / "README.md"


def build_step(work: Path, out: Path, force: bool) -> dict:
    """``safeclip mini build --only gen``: train and export OUT/mini-gen unless it exists."""
    target = Path(out) / "mini-gen"
    if (target / "unet" / "config.json").exists() and not force:
        logger.info("mini-gen exists at %s: skipped (--force to retrain)", target)
        return {"gen": "skipped"}
    return {"gen": run(work, target, force=force)}


def main(argv=None) -> int:
    """``safeclip mini gen``: train by hand."""
    from . import MODELS

    p = argparse.ArgumentParser(prog="safeclip mini gen", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("work") / "mini", help="data/ and ckpt/")
    p.add_argument("--out", type=Path, default=MODELS / "mini-gen")
    p.add_argument("--force", action="store_true", help="start over (delete checkpoints)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vae", type=Path, default=None, help="AutoencoderKL folder to train against")
    for f in ("steps", "batch", "items", "check_every", "check_items", "candidates"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(GenTrainConfig, f))
    for f in ("lr", "object_weight", "guidance", "uncond_prob"):
        p.add_argument("--" + f.replace("_", "-"), type=float, default=getattr(GenTrainConfig, f))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cfg = GenTrainConfig(**{f: getattr(args, f) for f in (
        "steps", "batch", "items", "check_every", "check_items", "candidates", "lr",
        "object_weight", "guidance", "uncond_prob")})
    print(json.dumps(run(args.work, args.out, cfg, args.force, vae=args.vae), indent=2,
                     default=str))
    return 0
