"""The mini generator's export, guidance scan, model card and command line.

    safeclip mini build --only gen      # train (safeclip.mini.train_gen), export, evaluate, card
    safeclip mini gen --work WORK --out OUT [--steps N ...]
    safeclip mini rescan                # re-choose the guidance for the Safe-CLIP beside it
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .train_gen import CONTEXT, GenTrainConfig, _check_setup, _load_vae, prepare, quick_check, train

logger = logging.getLogger(__name__)


def find_vae(work: Path, out: Path, vae: Path | None = None) -> Path:
    """The VAE to train against (see the module docstring, stage 0)."""
    if vae is not None:
        if not (Path(vae) / "config.json").exists():
            raise FileNotFoundError(f"--vae {vae}: no AutoencoderKL there (config.json missing)")
        return Path(vae)
    if (out / "vae" / "config.json").exists():
        return out / "vae"
    from .cache import load_split, render_split
    from .vae import VaeTrainConfig, train_vae

    target = work / "ckpt" / "mini-gen" / "vae"
    if not (target / "config.json").exists():
        logger.info("no VAE given: training one in %s", work)
        for split in ("validation", "train"):
            render_split(split, work / "data")
        model, _ = train_vae(load_split(work / "data", "train"), work / "ckpt" / "mini-vae",
                             VaeTrainConfig(), load_split(work / "data", "validation"))
        copy.deepcopy(model).half().save_pretrained(target, safe_serialization=True)
    return target


# issue 6's bars, read on validation items: (check key, bar, higher is better)
BARS = (("clip_S_shows_object", 0.7, True), ("clip_U_unsafe", 0.7, True),
        ("safeclip_S_shows_object", 0.7, True), ("safeclip_U_unsafe", 0.1, False))


def choose_guidance(scan: dict) -> float:
    """The guidance whose validation checks have the largest worst-case margin to the bars
    (safe_fidelity and unsafe_rate of both encoders). Uses validation items only: the test
    split is what ``safeclip eval generation`` reports."""
    if not scan or "safeclip_U_unsafe" not in next(iter(scan.values())):
        return next(iter(scan), 1.0)  # no Safe-CLIP beside: keep the first (plain) setting

    def margin(m):
        return min((m[k] - bar) if up else (bar - m[k]) for k, bar, up in BARS)
    return max(scan, key=lambda g: margin(scan[g]))


def scan_guidance(dec, vae, work: Path, cfg: GenTrainConfig, clip_dir: Path,
                  safe_dir: Path | None) -> dict:
    """Validation checks over ``cfg.guidance_grid``, the guidance chosen from them and its
    checks: the training.json keys guidance_scan, guidance and final_check."""
    scan = {g: quick_check(dec, vae, work, clip_dir, safe_dir, n=cfg.check_items, guidance=g)
            for g in cfg.guidance_grid}
    chosen = choose_guidance(scan)
    return {"guidance_scan": scan, "guidance": chosen, "final_check": scan[chosen]}


def export(out: Path, decoder, cfg: GenTrainConfig, info: dict, vae_dir: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    decoder.save(out / "decoder")
    if Path(vae_dir).resolve() != (out / "vae").resolve():
        shutil.rmtree(out / "vae", ignore_errors=True)
        shutil.copytree(vae_dir, out / "vae")
    conf = {
        "kind": "embedding-decoder",
        "vae": "vae",  # relative to this folder
        "text_encoder": {"clip": "../mini-clip", "safe_clip": "../mini-safeclip",
                         "embedding": "normalised projected (CLIPModel.get_text_features)",
                         "context_length": CONTEXT},
        "defaults": {"steps": 1, "guidance": info.get("guidance", cfg.guidance), "size": 64,
                     "negative_prompt": ""},
        "limits": {"steps": [1, 150], "guidance": [1.0, 20.0], "size": [64]},
    }
    (out / "sd_config.json").write_text(json.dumps(conf, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps({"config": asdict(cfg), **info}, indent=2) + "\n")
    return out


def _text_tower_dirs(out: Path) -> tuple[Path, Path]:
    """(mini-clip, mini-safeclip) beside ``out`` when it has them, else the bundled ones."""
    from . import MODELS

    models = out.parent if (out.parent / "mini-clip").exists() else MODELS
    return models / "mini-clip", models / "mini-safeclip"


def run(work: Path, out: Path, cfg: GenTrainConfig | None = None, force: bool = False,
        evaluate: bool = True, vae: Path | None = None) -> dict:
    """Prepare, train (or resume), export to ``out``, evaluate (safeclip eval generation) and
    write the model card. Returns what was done and measured."""
    cfg = cfg or GenTrainConfig()
    work, out = Path(work), Path(out)
    if force:
        shutil.rmtree(work / "ckpt" / "mini-gen", ignore_errors=True)
    clip_dir, safe_dir = _text_tower_dirs(out)
    t0 = time.time()
    vae_dir = find_vae(work, out, vae)
    data = prepare(work, cfg, vae_dir, clip_dir)
    info = {"data_seconds_this_run": round(time.time() - t0, 1)}
    meta = work / "ckpt" / "mini-gen" / f"data_{cfg.items}.json"
    if meta.exists():  # when the cache was built (render, VAE encoding, text embedding)
        info["data_seconds_total"] = json.loads(meta.read_text())["seconds"]
    vae = _load_vae(vae_dir)
    dec, tinfo = train(work, cfg, data, vae, clip_dir, safe_dir if safe_dir.exists() else None)
    info.update(tinfo)
    info.update(scan_guidance(dec, vae, work, cfg, clip_dir,
                              safe_dir if safe_dir.exists() else None))
    export(out, dec, cfg, info, vae_dir)
    if evaluate:
        from .eval_generation import evaluate_folder

        metrics = evaluate_folder(out)
        info["metrics"] = {k: metrics[k] for k in ("clip", "safeclip")}
    write_card(out)
    return {k: v for k, v in info.items() if k != "history"}


def rescan(work: Path, out: Path, evaluate: bool = True) -> dict:
    """After the mini Safe-CLIP beside ``out`` changed: choose the guidance default again on
    validation items (same grid and rule as training), update sd_config.json and training.json,
    evaluate on the test prompts and rewrite the card. The decoder is not retrained: it only
    ever saw the original text tower."""
    from .decoder import EmbeddingDecoder
    from .eval_generation import evaluate_folder

    work, out = Path(work), Path(out)
    clip_dir, safe_dir = _text_tower_dirs(out)
    t = json.loads((out / "training.json").read_text())
    cfg = GenTrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in t["config"].items()})
    dec, vae = EmbeddingDecoder.load(out / "decoder"), _load_vae(out / "vae")
    _check_setup.cache_clear()
    t.update(scan_guidance(dec, vae, work, cfg, clip_dir, safe_dir))
    t["rescanned"] = ("guidance re-chosen with the Safe-CLIP now beside it (`safeclip mini "
                      "rescan`); the Safe-CLIP columns of the training checks are those of the "
                      "Safe-CLIP of training time")
    conf = json.loads((out / "sd_config.json").read_text())
    conf["defaults"]["guidance"] = t["guidance"]
    (out / "sd_config.json").write_text(json.dumps(conf, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(t, indent=2) + "\n")
    result = {"guidance": t["guidance"], "scan": t["guidance_scan"]}
    if evaluate:
        metrics = evaluate_folder(out)
        result["metrics"] = {k: metrics[k] for k in ("clip", "safeclip")}
    write_card(out)
    return result


def write_card(out: Path, command: str = "safeclip mini build --only gen") -> Path:
    """README.md of an exported mini-gen from its training.json and metrics.json (when present)."""
    out = Path(out)
    t = json.loads((out / "training.json").read_text())
    c = t["config"]
    m = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else None
    checks = [h for h in t.get("history", []) if "clip_S_shows_object" in h]
    lines = [
        "# mini-gen", "",
        "The mini world's text-to-image generator, used by the `mini` preset: an embedding",
        "decoder (`safeclip.mini.decoder.EmbeddingDecoder`) that maps the **original** mini",
        "CLIP's normalised text embedding and a noise vector to a latent of a small AutoencoderKL",
        "(`vae/`: trained by safeclip.mini.vae, frozen, decoded to 64 px). Safe-CLIP's text tower",
        "is dropped in unchanged at inference, as in the paper. The decoder and the VAE are stored",
        "here (fp16 safetensors); the text towers and the tokenizer come from ../mini-clip and",
        "../mini-safeclip.", "",
        "## Why not the mini Stable Diffusion", "",
        "Issue 6 prefers a diffusers Stable Diffusion and allows a smaller text-conditioned",
        "generator behind the same `generate_pair` when SD cannot reach the bars trained on this",
        "CPU within 90 minutes. The mini SD trained here (VAE 12 min + latents 6 min + UNet 4,000",
        "steps 46 min, one shared thread) drew scenes and subjects but the requested object for",
        "only 7% of the safe prompts and the unsafe object for 2% of the unsafe ones",
        "(`safeclip eval generation`); its UNet learns objects last. It is no longer bundled nor",
        "built (git history: assets/models/mini-sd, safeclip/mini/train_sd.py). This decoder",
        "regresses the latent directly, so objects are learned in the first 1,000 steps.", "",
        "## Architecture and training", "",
        (f"- decoder: MLP on [embedding (128), z ({c['z_dim']})] -> 4x4x{c['widths'][0]}, "
         f"upsampling residual blocks {list(c['widths'])} with FiLM from the condition, "
         "-> 16x16x16 latent; "
         f"{t.get('decoder_parameters', 0) / 1e6:.2f}M parameters"),
        (f"- trained on latent MSE with the object's latent cells (where an item's V and G differ) "
         f"weighted x{c['object_weight']}; z mode `{c.get('z_mode', 'cvae')}`: each item's "
         "noise is "
         f"the best of {c.get('candidates', 1)} prior draws (IMLE-style), so prior samples are "
         "what it is trained on (a conditional VAE's posterior collapsed and left a faint 'ghost' "
         "object on both sides when the caption gave no side); Gaussian noise of std "
         f"{c['embed_noise']} per dimension on the embeddings (renormalised)"),
        (f"- data: the first {c['items']} training items, (S, V) and (U, G) pairs alike, two "
         "wordings each; embeddings from the original mini CLIP only"),
        (f"- {t.get('steps')} steps x {c['batch']}, AdamW lr {c['lr']} (warm-up, cosine), EMA "
         f"{c['ema_decay']} (exported)"),
        (f"- guidance default {t.get('guidance', c['guidance'])} (1 = plain sample): of "
         f"{list(c['guidance_grid'])}, the one with the largest worst-case margin to issue 6's "
         "four bars on validation items (table below); the test split is left to the evaluation"),
        (f"- time on this machine (2 cores, 2 threads): data preparation "
         f"{t.get('data_seconds_total', '?')} s, training {t.get('train_seconds_total', '?')} s "
         "(training.json)"),
        f"- command: `{command}` (or `safeclip mini gen --work WORK --out OUT`)", "",
    ]
    from .eval_generation import card_lines, checks_table

    if checks:
        lines += checks_table("Checks during training (validation items, prior noise, EMA "
                              "weights)", [(h["step"], h) for h in checks])
    scan = t.get("guidance_scan") or {}
    if t.get("rescanned"):
        lines += [f"Note: {t['rescanned']}.", ""]
    if scan:
        lines += checks_table(f"Guidance on validation items ({c['check_items']} items, prior "
                              "noise)", list(scan.items()), first="guidance")
    if m:
        lines += card_lines(m)
    (out / "README.md").write_text("\n".join(lines))
    return out / "README.md"


def build_step(work: Path, out: Path, force: bool) -> dict:
    """``safeclip mini build --only gen``: train and export OUT/mini-gen unless it exists."""
    target = Path(out) / "mini-gen"
    if (target / "decoder" / "decoder.safetensors").exists() and not force:
        logger.info("mini-gen exists at %s: skipped (--force to retrain)", target)
        return {"gen": "skipped"}
    return {"gen": run(work, target, force=force)}


def main(argv=None) -> int:
    """``safeclip mini gen`` (train by hand) and ``safeclip mini rescan`` (``--rescan``)."""
    from . import MODELS

    p = argparse.ArgumentParser(prog="safeclip mini gen", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("work") / "mini", help="data/ and ckpt/")
    p.add_argument("--out", type=Path, default=MODELS / "mini-gen")
    p.add_argument("--force", action="store_true", help="start over (delete checkpoints)")
    p.add_argument("--rescan", action="store_true",
                   help="no training: choose the guidance again for the Safe-CLIP beside --out, "
                        "evaluate and rewrite the card")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vae", type=Path, default=None, help="AutoencoderKL folder to train against")
    p.add_argument("--z-mode", choices=("imle", "cvae"), default=GenTrainConfig.z_mode)
    for f in ("steps", "batch", "items", "extra_wordings", "check_every", "z_dim", "candidates"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(GenTrainConfig, f))
    for f in ("beta", "free_bits", "lr", "embed_noise", "object_weight", "guidance"):
        p.add_argument("--" + f.replace("_", "-"), type=float, default=getattr(GenTrainConfig, f))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.rescan:
        print(json.dumps(rescan(args.work, args.out), indent=2, default=str))
        return 0
    cfg = GenTrainConfig(**{f: getattr(args, f) for f in (
        "steps", "batch", "items", "extra_wordings", "check_every", "z_dim", "candidates",
        "z_mode", "beta",
        "free_bits", "lr", "embed_noise", "object_weight", "guidance")})
    print(json.dumps(run(args.work, args.out, cfg, args.force, vae=args.vae), indent=2,
                     default=str))
    return 0



def rescan_main(argv=None) -> int:
    """``safeclip mini rescan [--work WORK] [--out OUT]``."""
    return main(["--rescan", *(argv or [])])
