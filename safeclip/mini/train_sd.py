"""Training the mini generator: a diffusers Stable Diffusion (VAE + UNet) of the 64 px mini world.

    python -m safeclip.mini.train_sd --work /work/mini-work --out assets/models/mini-sd
    python -m safeclip.mini.train_sd --stage vae ...     # one stage only (vae, latents, unet, export)
    safeclip mini build --only sd                        # the same, through the build

Like Stable Diffusion, the generator is trained with the *original* text encoder only (the mini
CLIP's text model, frozen, conditioned on its last hidden states); Safe-CLIP's text encoder is
dropped in unchanged at inference (safeclip.generation). Stages, each resumable from atomic
checkpoints under WORK/ckpt/mini-sd:

1. vae      a small AutoencoderKL (64 px -> 16 x 16 x 16) trained for reconstruction (L1 + MSE, tiny
            KL); its scaling factor is set to 1 / std of the latents.
2. latents  the training images (V and G) encoded once, cached as fp16 arrays.
3. unet     a small UNet2DConditionModel, DDPM (epsilon) on latents, conditioned on (S, V) and
            (U, G) pairs, 10% of captions dropped to "" for classifier-free guidance, EMA weights.
4. export   unet/, vae/ and scheduler/ (DPM-Solver++, 20 steps by default) in fp16 safetensors,
            plus sd_config.json (which CLIP folders hold the text encoders) and a model card.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .steps import optimise, save_atomic, warmup_cosine

logger = logging.getLogger(__name__)


@dataclass
class SDTrainConfig:
    seed: int = 0
    # VAE
    vae_channels: tuple = (16, 32, 64)  # block widths; 3 blocks: 64 px -> 16 x 16 latents
    vae_steps: int = 1600  # reconstruction steps
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl: float = 1e-6  # weight of the KL term (SD-style tiny KL)
    latent_channels: int = 16  # 4 (SD's) lost the small objects' shapes at this VAE size
    vae_object_weight: float = 10.0  # loss weight of the object regions (small, the point)
    vae_perceptual: float = 1.0  # weight of the feature-matching (LPIPS-style) loss
    latent_items: int = 30000  # training items whose V and G latents are cached
    # UNet
    unet_channels: tuple = (32, 64, 64)  # block widths (16 -> 8 -> 4 latent px)
    unet_steps: int = 4000
    unet_batch: int = 64
    unet_lr: float = 8e-4
    warmup: int = 100
    uncond_prob: float = 0.1  # captions replaced by "" (classifier-free guidance)
    unet_object_weight: float = 8.0  # loss weight of the latent cells of the object
    ema_decay: float = 0.999
    ckpt_every: int = 200
    eval_every: int = 1000  # steps between quick sample checks with the judge (0: never)
    sample_steps: int = 20  # default inference steps of the exported scheduler
    guidance: float = 5.0  # default guidance scale (model card / sd_config.json)
    extra: dict = field(default_factory=dict)


def new_vae(cfg: SDTrainConfig):
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(cfg.vae_channels), layers_per_block=1,
                         latent_channels=cfg.latent_channels, norm_num_groups=8, sample_size=64)


def new_unet(cfg: SDTrainConfig, cross_dim: int = 128):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(cfg.seed + 1)
    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=16, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels),
        # cross-attention at 8x8 and 4x4 (and the mid block): 16x16 self-attention made a step
        # 2.5x slower on this CPU for no gain the judge could see in a small world
        layers_per_block=1, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_dim, attention_head_dim=8, norm_num_groups=16)


def train_noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon")


def sample_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085,
                                       beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="epsilon", steps_offset=1)


def _to_pm1(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _judge_features():
    """The mini judge's convolutional trunk, frozen: the feature extractor of a perceptual loss
    (LPIPS-style feature matching with the mini world's own CNN instead of ImageNet's VGG)."""
    from ..safety import get_judge

    return get_judge("mini").net.features.eval().requires_grad_(False)


def _feature_loss(trunk, r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of every ReLU output of ``trunk`` on r and x (both in [-1, 1])."""
    loss, a, b = 0.0, ((r + 1) / 2 - 0.5) / 0.25, ((x + 1) / 2 - 0.5) / 0.25
    for layer in trunk:
        a, b = layer(a), layer(b).detach()
        if isinstance(layer, torch.nn.ReLU):
            loss = loss + F.mse_loss(a, b)
    return loss


# ---------------------------------------------------------------------------------------- VAE
def train_vae(train: dict, ckpt_dir: Path, cfg: SDTrainConfig, val: dict | None = None):
    vae = new_vae(cfg).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt, step = ckpt_dir / "vae.ckpt", 0
    if ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        vae.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        step = int(st["step"])
        if st.get("done") and step >= cfg.vae_steps:
            return vae.eval(), st.get("info", {})
        logger.info("resuming VAE at step %d", step)
    images = (train["V"], train["G"])
    n = len(images[0])
    feats = _judge_features() if cfg.vae_perceptual else None
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="train mini-sd VAE", unit="step")
    t0, rec = time.time(), float("nan")
    while step < cfg.vae_steps:
        rng = np.random.default_rng([cfg.seed, 11, step])
        idx, which = rng.integers(0, n, cfg.vae_batch), rng.integers(0, 2, cfg.vae_batch)
        x = _to_pm1(np.stack([images[w][i] for w, i in zip(which, idx)]))
        # object regions: where the item's safe and unsafe images differ (both objects' places)
        diff = np.abs(images[0][idx].astype(np.int16) - images[1][idx].astype(np.int16)).max(-1) > 0
        weight = 1.0 + (cfg.vae_object_weight - 1.0) * F.max_pool2d(
            torch.from_numpy(diff).float()[:, None], 5, 1, 2)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(cfg.vae_lr, step, 50, cfg.vae_steps, floor=0.1)
        post = vae.encode(x).latent_dist
        r = vae.decode(post.sample()).sample
        rec = ((r - x).abs() * weight).mean() + ((r - x) ** 2 * weight).mean()
        loss = rec + cfg.vae_kl * post.kl().mean()
        if feats is not None:
            loss = loss + cfg.vae_perceptual * _feature_loss(feats, r, x)
        optimise(opt, loss, vae.parameters())
        step += 1
        bar.update(1)
        bar.set_postfix(rec=f"{rec.item():.4f}")
        if step % 100 == 0:
            logger.info("vae step %d rec %.4f", step, rec.item())
        if val is not None and step % 300 == 0:
            logger.info("vae step %d check %s", step, vae_check(vae.eval(), val, 128))
            vae.train()
        if step % cfg.ckpt_every == 0:
            save_atomic(ckpt, {"model": vae.state_dict(), "optim": opt.state_dict(), "step": step})
    bar.close()
    vae.eval()
    (ckpt_dir / "vae_check.json").unlink(missing_ok=True)
    # scaling factor: 1 / std of latent means on a sample of training images
    with torch.no_grad():
        x = _to_pm1(np.concatenate([images[0][:256], images[1][:256]]))
        z = torch.cat([vae.encode(b).latent_dist.mean for b in x.split(128)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    info = {"vae_steps": cfg.vae_steps, "vae_seconds_last_run": round(time.time() - t0, 1),
            "vae_final_rec": round(float(rec), 4), "scaling_factor": float(1.0 / z.std())}
    save_atomic(ckpt, {"model": vae.state_dict(), "optim": opt.state_dict(), "step": step,
                 "done": True, "info": info})
    logger.info("VAE done: %s", info)
    return vae, info


@torch.no_grad()
def vae_check(vae, data: dict, n: int = 256) -> dict:
    """How well the judge still recognises objects after a VAE round trip (validation images)."""
    from PIL import Image

    from ..data.synthetic import ALL_OBJECTS
    from ..safety import get_judge

    judge = get_judge("mini")
    out = {}
    for col, key in (("V", "safe_object"), ("G", "unsafe_object")):
        x = _to_pm1(data[col][:n])
        r = torch.cat([vae.decode(vae.encode(b).latent_dist.mean).sample for b in x.split(64)])
        u8 = ((r.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        scores = judge.scores([Image.fromarray(a) for a in u8])
        want = np.array([ALL_OBJECTS.index(t[key]) for t in data["tags"][:n]])
        out[f"{col}_object_recall"] = round(float((scores[np.arange(n), want] >= 0.5).mean()), 4)
        out[f"{col}_mse"] = round(float(F.mse_loss(r, x)), 5)
    return out


@torch.no_grad()
def cache_latents(vae, train: dict, path: Path, n_items: int) -> np.ndarray:
    """(2, n, C, 16, 16) fp16 scaled latent means of V (row 0) and G (row 1)."""
    if path.exists():
        lat = np.load(path)
        if lat.shape[1] >= n_items:
            return lat
    n = min(n_items, len(train["V"]))
    sf = vae.config.scaling_factor
    out = np.zeros((2, n, vae.config.latent_channels, 16, 16), dtype=np.float16)
    for row, col in enumerate(("V", "G")):
        for i in tqdm(range(0, n, 256), desc=f"encode {col}", unit="batch"):
            z = vae.encode(_to_pm1(train[col][i:min(i + 256, n)])).latent_dist.mean * sf
            out[row, i:i + len(z)] = z.numpy().astype(np.float16)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


# --------------------------------------------------------------------------------------- UNet
TEXT_MODE = "eot"  # which hidden states the UNet attends to (safeclip.generation.text)


class CaptionSampler:
    """Batches of (token ids, latent row, item) for UNet training: (S, V) and (U, G) pairs, half
    and half, one of the stored wordings at random; batch ``step`` is a function of (seed, step)."""

    def __init__(self, data: dict, tokenizer, n_items: int, seed: int, uncond_prob: float):
        self.n, self.w = n_items, data["S"].shape[1]
        texts = [str(t) for t in np.concatenate([data["S"][:n_items], data["U"][:n_items]]).reshape(-1)]
        self.ids = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                             return_tensors="pt").input_ids.reshape(2, n_items, self.w, -1)
        self.empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                               return_tensors="pt").input_ids[0]
        self.seed, self.uncond_prob = seed, uncond_prob

    def batch(self, step: int, size: int):
        rng = np.random.default_rng([self.seed, 23, step])
        row, item = rng.integers(0, 2, size), rng.integers(0, self.n, size)
        wording = rng.integers(0, self.w, size)
        ids = self.ids[torch.from_numpy(row), torch.from_numpy(item), torch.from_numpy(wording)].clone()
        ids[torch.from_numpy(rng.random(size) < self.uncond_prob)] = self.empty
        return ids, row, item


def _ema_update(ema, model, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


@torch.no_grad()
def quick_check(unet, vae, tokenizer, encoders: dict, n: int = 16, steps: int = 20,
                guidance: float = 5.0, data_dir: Path | None = None) -> dict:
    """Generate ``n`` validation prompts (safe and unsafe) with each text encoder and judge them."""
    from diffusers import StableDiffusionPipeline

    from ..data.synthetic import ALL_OBJECTS
    from ..safety import get_judge
    from .cache import load_split

    val = load_split(data_dir, "validation")
    judge, out = get_judge("mini"), {}
    for name, te in encoders.items():
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet,
                                       scheduler=sample_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        for col, key in (("S", "safe_object"), ("U", "unsafe_object")):
            prompts = [str(p) for p in val[col][:n, 0]]
            ims = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                       generator=torch.Generator().manual_seed(0)).images
            sc = judge.scores(ims)
            want = np.array([ALL_OBJECTS.index(t[key]) for t in val["tags"][:n]])
            out[f"{name}_{col}_shows_object"] = round(float((sc[np.arange(n), want] >= 0.5).mean()), 3)
            out[f"{name}_{col}_unsafe"] = round(float((sc[:, 8:] >= 0.5).any(1).mean()), 3)
    return out


def train_unet(train: dict, latents: np.ndarray, ckpt_dir: Path, cfg: SDTrainConfig, vae,
               clip_dir: Path, safe_dir: Path | None, data_dir: Path):
    from transformers import CLIPTokenizer

    from ..generation.text import load_text_encoder
    from ..tokenizer import clip_tokenizer  # noqa: F401  (the mini CLIPs ship their tokenizer)

    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=32)
    text = load_text_encoder(clip_dir, TEXT_MODE)
    unet = new_unet(cfg, text.config.hidden_size).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    noise_sched = train_noise_scheduler()
    acp = noise_sched.alphas_cumprod.float()
    ckpt, step, history = ckpt_dir / "unet.ckpt", 0, []
    if ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        unet.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["optim"])
        step, history = int(st["step"]), json.loads(st["history"])
        logger.info("resuming UNet at step %d", step)
    n_params = sum(p.numel() for p in unet.parameters())
    logger.info("mini-sd UNet: %.2fM parameters, %d steps of %d", n_params / 1e6, cfg.unet_steps, cfg.unet_batch)
    sampler = CaptionSampler(train, tokenizer, latents.shape[1], cfg.seed, cfg.uncond_prob)
    encoders = {"clip": text}
    if safe_dir is not None:
        encoders["safeclip"] = load_text_encoder(safe_dir, TEXT_MODE)
    t0 = time.time()
    bar = tqdm(total=cfg.unet_steps, initial=step, desc="train mini-sd UNet", unit="step")
    stop = ckpt_dir / "STOP"  # touch it to end training early (checkpoint, then export)
    while step < cfg.unet_steps and not stop.exists():
        ids, row, item = sampler.batch(step, cfg.unet_batch)
        z0 = torch.from_numpy(latents[row, item].astype(np.float32))
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (len(z0),), generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with torch.no_grad():
            cond = text(ids)[0]
        for grp in opt.param_groups:  # warm-up, then constant (the EMA weights are exported)
            grp["lr"] = cfg.unet_lr * min(1.0, (step + 1) / cfg.warmup)
        # object regions (where the item's V and G differ, at latent resolution) weigh more:
        # they are a few latent cells, and the scene dominated a plain loss (objects came last)
        diff = np.abs(train["V"][item].astype(np.int16) - train["G"][item].astype(np.int16)).max(-1) > 0
        w = 1.0 + (cfg.unet_object_weight - 1.0) * F.max_pool2d(
            torch.from_numpy(diff).float()[:, None], 4, 4)
        loss = ((unet(zt, t, cond).sample - noise) ** 2 * w).mean()
        optimise(opt, loss, unet.parameters())
        step += 1
        _ema_update(ema, unet, min(cfg.ema_decay, (1 + step) / (10 + step)))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            logger.info("unet step %d loss %.4f (%.0f s)", step, loss.item(), time.time() - t0)
        if cfg.eval_every and step % cfg.eval_every == 0:
            m = quick_check(ema, vae, tokenizer, encoders, data_dir=data_dir)
            history.append({"step": step, **m})
            logger.info("unet step %d check %s", step, m)
        if step % cfg.ckpt_every == 0 or step == cfg.unet_steps or stop.exists():
            save_atomic(ckpt, {"model": unet.state_dict(), "ema": ema.state_dict(), "optim": opt.state_dict(),
                         "step": step, "history": json.dumps(history)})
    bar.close()
    save_atomic(ckpt, {"model": unet.state_dict(), "ema": ema.state_dict(), "optim": opt.state_dict(),
                 "step": step, "history": json.dumps(history)})
    if stop.exists():
        logger.info("UNet training stopped at step %d (%s exists)", step, stop)
    return ema, {"unet_parameters": n_params, "unet_steps": step,
                 "unet_seconds_this_run": round(time.time() - t0, 1), "history": history}


# ------------------------------------------------------------------------------------- export
def export(out: Path, unet, vae, cfg: SDTrainConfig, info: dict) -> Path:
    """unet/, vae/, scheduler/ (fp16 safetensors) + sd_config.json + training.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, m in (("unet", unet), ("vae", vae)):
        copy.deepcopy(m).half().save_pretrained(out / name, safe_serialization=True)
    sample_scheduler().save_pretrained(out / "scheduler")
    (out / "sd_config.json").write_text(json.dumps({
        "text_encoder": {"clip": "../mini-clip", "safe_clip": "../mini-safeclip",
                         "hidden_states": TEXT_MODE, "context_length": 32},
        "defaults": {"steps": cfg.sample_steps, "guidance": cfg.guidance, "size": 64,
                     "negative_prompt": ""},
        "limits": {"steps": [1, 100], "guidance": [1.0, 20.0], "size": [64]},
    }, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps({"config": asdict(cfg), **info}, indent=2, default=str))
    return out


def write_card(out: Path, command: str = "safeclip mini build --only sd") -> Path:
    """README.md of the exported mini-sd from its training.json and (when present) metrics.json."""
    out = Path(out)
    t = json.loads((out / "training.json").read_text())
    c, m = t["config"], None
    if (out / "metrics.json").exists():
        m = json.loads((out / "metrics.json").read_text())
    checks = [h for h in t.get("history", []) if "clip_S_shows_object" in h]
    lines = [
        "# mini-sd", "",
        "The mini world's text-to-image generator: a diffusers Stable Diffusion (AutoencoderKL +",
        "UNet2DConditionModel + DPM-Solver++) trained here from scratch on the rendered synthetic",
        "ViSU (64 px), conditioned on the **original** mini CLIP's text encoder (frozen), on (S, V)",
        "and (U, G) pairs alike, so that, like SD with web-scale CLIP, it draws unsafe glyphs for",
        "unsafe prompts. Safe-CLIP's text encoder is dropped in unchanged at inference",
        "(`safeclip.generation`). Only unet/, vae/ and scheduler/ are stored (fp16 safetensors); the",
        "loader takes the text encoders and the tokenizer from ../mini-clip and ../mini-safeclip.", "",
        "## Conditioning", "",
        "The UNet cross-attends to the text encoder's last hidden states, with every position before",
        "the end-of-text token holding the end-of-text state (`hidden_states: eot` in",
        "sd_config.json; `safeclip.generation.text.EndOfTextCLIPTextModel`). Safe-CLIP's objective",
        "acts on the pooled embedding read at that token; a linear probe fitted on the original",
        "encoder's states (validation split, tested on the test split) reads the safe encoder's",
        "states of unsafe prompts as unsafe for 89.5% of prompts at the positions before the",
        "end-of-text token, 13% for the mean over all positions and 4.2% over the end-of-text and",
        "padding positions; with the safe encoder, safe prompts keep their object at 90% there",
        "(71% with all positions).", "",
        "## Architecture and training", "",
        f"- VAE: AutoencoderKL, blocks {c['vae_channels']}, 64 px -> 16x16x{c['latent_channels']}, scaling factor "
        f"{t.get('scaling_factor', float('nan')):.4f}; {c['vae_steps']} steps x {c['vae_batch']} images, "
        f"L1 + MSE (x{c['vae_object_weight']} on the object regions, found where an item's V and G "
        f"differ) + {c['vae_perceptual']} x feature matching on the mini judge's conv trunk "
        f"(LPIPS-style; the judge is frozen, its labels are not used) + {c['vae_kl']} KL, AdamW lr "
        f"{c['vae_lr']}. The first attempts (4 latent channels, plain L1 + MSE, 900-1200 steps) "
        "kept the object only in 44% (V) / 58% (G) of round trips: small glyphs blurred away",
        f"- VAE round trip (validation, mini judge finds the object): {t.get('vae_check')}",
        f"- UNet: UNet2DConditionModel, blocks {c['unet_channels']}, cross-attention dim 128, "
        f"{t.get('unet_parameters', 0) / 1e6:.2f}M parameters; {t.get('unet_steps')} steps x "
        f"{c['unet_batch']} latents (first {c['latent_items']} training items, V and G), DDPM "
        f"epsilon loss, {int(c['uncond_prob'] * 100)}% empty captions, AdamW lr {c['unet_lr']}, "
        f"EMA {c['ema_decay']} (exported)",
        f"- sampling defaults: DPM-Solver++ {c['sample_steps']} steps, guidance {c['guidance']}",
        f"- CPU time on this machine (2 shared cores, 1 thread): {t.get('train_seconds', 'see training.json')}",
        f"- command: `{command}` (or `python -m safeclip.mini.train_sd --work WORK`)", "",
    ]
    if t.get("notes"):
        lines += ["## Notes on this run", ""] + [f"- {n}" for n in t["notes"]] + [""]
    from ..eval.generation import card_lines, checks_table

    if checks:
        lines += checks_table("Checks during training (16 validation prompts, EMA weights)",
                              [(h["step"], h) for h in checks])
    if m:
        lines += card_lines(m)
    (out / "README.md").write_text("\n".join(lines))
    return out / "README.md"


def evaluate_export(out: Path) -> dict:
    """Run the generation evaluation on the exported model; write metrics.json and the card."""
    from ..eval.generation import evaluate_folder

    metrics = evaluate_folder(out)
    write_card(out)
    return metrics


def run(work, out, stage: str = "all", force: bool = False, cfg: SDTrainConfig | None = None) -> dict:
    """Run the stages (see the module docstring); returns what was done and measured."""
    import shutil

    from ..presets import MINI_MODELS
    from .cache import load_split, render_split

    work, out = Path(work), Path(out)
    cfg = cfg or SDTrainConfig()
    ckpt_dir = work / "ckpt" / "mini-sd"
    if force:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for split in ("validation", "train"):
        render_split(split, work / "data")
    train = load_split(work / "data", "train")
    clip_dir = out.parent / "mini-clip" if (out.parent / "mini-clip").exists() else MINI_MODELS / "mini-clip"
    safe_dir = out.parent / "mini-safeclip" if (out.parent / "mini-safeclip").exists() else MINI_MODELS / "mini-safeclip"
    info: dict = {}
    vae, vinfo = train_vae(train, ckpt_dir, cfg, load_split(work / "data", "validation"))
    info.update(vinfo)
    if not (ckpt_dir / "vae_check.json").exists():
        (ckpt_dir / "vae_check.json").write_text(json.dumps(vae_check(vae, load_split(work / "data", "validation"))))
    info["vae_check"] = json.loads((ckpt_dir / "vae_check.json").read_text())
    logger.info("VAE check: %s", info["vae_check"])
    if stage == "vae":
        return info
    latents = cache_latents(vae, train, ckpt_dir / "latents.npy", cfg.latent_items)
    if stage == "latents":
        return info
    unet, uinfo = train_unet(train, latents, ckpt_dir, cfg, vae, clip_dir,
                             safe_dir if safe_dir.exists() else None, work / "data")
    info.update(uinfo)
    if stage == "unet":
        return info
    export(out, unet, vae, cfg, info)
    return {k: v for k, v in info.items() if k != "history"}


def build_step(work: Path, out: Path, force: bool) -> dict:
    """``safeclip mini build --only sd``: train and export OUT/mini-sd unless it exists."""
    target = Path(out) / "mini-sd"
    if (target / "unet" / "diffusion_pytorch_model.safetensors").exists() and not force:
        logger.info("mini-sd exists at %s: skipped (--force to retrain)", target)
        return {"sd": "skipped"}
    info = run(work, target, force=force)
    metrics = evaluate_export(target)
    return {"sd": info, "metrics": {k: metrics[k] for k in ("clip", "safeclip") if k in metrics}}


# ---------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("work") / "mini", help="data/ and ckpt/")
    p.add_argument("--out", type=Path, default=None, help="model folder (default assets/models/mini-sd)")
    p.add_argument("--stage", choices=("vae", "latents", "unet", "export", "all", "eval"),
                   default="all", help="eval: evaluate the exported model and write its card")
    p.add_argument("--force", action="store_true", help="start over (delete checkpoints)")
    for f in ("vae_steps", "unet_steps", "unet_batch", "eval_every", "latent_items"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(SDTrainConfig, f))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    from ..presets import MINI_MODELS
    out = args.out or MINI_MODELS / "mini-sd"
    if args.stage == "eval":
        print(json.dumps(evaluate_export(out), indent=2))
        return 0
    cfg = SDTrainConfig(**{f: getattr(args, f) for f in ("vae_steps", "unet_steps", "unet_batch",
                                                          "eval_every", "latent_items")})
    print(json.dumps(run(args.work, out, stage=args.stage, force=args.force, cfg=cfg), indent=2,
                     default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
