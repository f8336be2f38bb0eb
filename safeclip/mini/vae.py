"""The mini world's image autoencoder: a small diffusers ``AutoencoderKL`` (64 px <-> 16 x 16 x
16 latents) that the mini generator decodes through, trained here on the rendered scenes.

    >>> from safeclip.mini.vae import VaeTrainConfig, train_vae
    >>> vae, info = train_vae(train_split, ckpt_dir, VaeTrainConfig(), validation_split)

Loss: L1 + L2 reconstruction with the object regions (where an item's V and G differ) weighted
up, a tiny KL (SD-style), and feature matching on the mini judge's convolutional trunk
(LPIPS-style, with the world's own CNN instead of ImageNet's VGG). Resumable from an atomic
checkpoint; the scaling factor is set to 1 / std of the latents at the end.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .steps import optimise, save_atomic, warmup_cosine

logger = logging.getLogger(__name__)


@dataclass
class VaeTrainConfig:
    seed: int = 0
    vae_channels: tuple = (16, 32, 64)  # block widths; 3 blocks: 64 px -> 16 x 16 latents
    vae_steps: int = 1600  # reconstruction steps
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl: float = 1e-6  # weight of the KL term (SD-style tiny KL)
    latent_channels: int = 16  # 4 (SD's) lost the small objects' shapes at this VAE size
    vae_object_weight: float = 10.0  # loss weight of the object regions (small, the point)
    vae_perceptual: float = 1.0  # weight of the feature-matching (LPIPS-style) loss
    ckpt_every: int = 200


def new_vae(cfg: VaeTrainConfig):
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(cfg.vae_channels), layers_per_block=1,
                         latent_channels=cfg.latent_channels, norm_num_groups=8, sample_size=64)


def _to_pm1(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _judge_features(models=None):
    """The mini judge's convolutional trunk, frozen: the feature extractor of a perceptual loss
    (LPIPS-style feature matching with the mini world's own CNN instead of ImageNet's VGG)."""
    from .judge import default_judge

    return default_judge(models=models).net.features.eval().requires_grad_(False)


def _feature_loss(trunk, r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of every ReLU output of ``trunk`` on r and x (both in [-1, 1])."""
    loss, a, b = 0.0, ((r + 1) / 2 - 0.5) / 0.25, ((x + 1) / 2 - 0.5) / 0.25
    for layer in trunk:
        a, b = layer(a), layer(b).detach()
        if isinstance(layer, torch.nn.ReLU):
            loss = loss + F.mse_loss(a, b)
    return loss


def train_vae(train: dict, ckpt_dir: Path, cfg: VaeTrainConfig, val: dict | None = None,
              models=None):
    """Train (or resume) the VAE; ``models``: the folder of the mini judge that the perceptual
    loss and the checks read (default: the bundled one)."""
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
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
    feats = _judge_features(models) if cfg.vae_perceptual else None
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="train mini VAE", unit="step")
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
            logger.info("vae step %d check %s", step, vae_check(vae.eval(), val, 128, models))
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
def vae_check(vae, data: dict, n: int = 256, models=None,
              judges: tuple[str, ...] = ("mini-judge",)) -> dict:
    """How well each judge still reads images after a VAE round trip (the first n items of a
    rendered split): the object's recall, the subject's and the scene's accuracy, per image kind
    (V: safe object, G: unsafe object), and the reconstruction's mean squared error."""
    from PIL import Image

    from .judge import default_judge

    out = {}
    for col, key in (("V", "safe_object"), ("G", "unsafe_object")):
        x = _to_pm1(data[col][:n])
        r = torch.cat([vae.decode(vae.encode(b).latent_dist.mean).sample for b in x.split(64)])
        u8 = ((r.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        images = [Image.fromarray(a) for a in u8]
        tags = data["tags"][:n]
        for name in judges:
            desc = default_judge(models=models, name=name).describe(images)
            tag = "" if name == "mini-judge" else name.removeprefix("mini-judge-") + "_"
            out[f"{tag}{col}_object_recall"] = round(float(np.mean(
                [t[key] in d["objects"] for d, t in zip(desc, tags)])), 4)
            for head in ("subject", "scene"):
                out[f"{tag}{col}_{head}_accuracy"] = round(float(np.mean(
                    [d[head] == t[head] for d, t in zip(desc, tags)])), 4)
        out[f"{col}_mse"] = round(float(F.mse_loss(r, x)), 5)
    return out
