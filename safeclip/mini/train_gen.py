"""Training the mini generator: an embedding decoder (safeclip.mini.decoder), mini world.

    safeclip mini build --only gen                       # train and export assets/models/mini-gen
    safeclip mini gen --work /work/gen-work --out /tmp/mini-gen [--steps N ...]   # by hand

The generator half of a conditional VAE in the latent space of a small frozen AutoencoderKL (the
VAE of safeclip.mini.vae, 64 px -> 16 x 16 x 16), conditioned on the *original* mini
CLIP's normalised text embedding of the caption; Safe-CLIP's text tower is dropped in unchanged at
inference. Stages, resumable from atomic checkpoints under WORK/ckpt/mini-gen:

0. vae      ``--vae DIR``, else OUT/vae when it exists (the bundled one), else a VAE trained in
            WORK (safeclip.mini.vae, about 12 minutes on this CPU).
1. data     training items rendered (safeclip.mini.cache), their V and G images encoded once by the
            VAE, their captions (S with V, U with G, two wordings each) embedded once by the CLIP.
2. train    object-weighted latent MSE of the decoder; each item's noise z is the best of K prior
            draws (``z_mode="imle"``, the default) or a posterior sample with a KL term
            (``"cvae"``, which collapsed without free bits and left ghost objects); small Gaussian
            noise on the embeddings; EMA weights exported. Touch WORK/ckpt/mini-gen/STOP to end
            early (checkpoint first). Then the guidance default is chosen on validation items.
3. export   decoder/ (fp16 safetensors), vae/ (a copy of the VAE used), sd_config.json (kind
            "embedding-decoder"), training.json, then the evaluation and the model card.

Export, the guidance scan, the model card and the command line: safeclip.mini.gen_export.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .steps import optimise, save_atomic, warmup_cosine

logger = logging.getLogger(__name__)

CONTEXT = 32  # the mini CLIPs' context length (tokens)


@dataclass
class GenTrainConfig:
    seed: int = 0
    items: int = 30000  # training items (each gives (S, V) and (U, G))
    extra_wordings: int = 0  # caption wordings per item beyond the rendered cache's two
    z_dim: int = 8
    widths: tuple = (128, 96, 64)
    steps: int = 8000
    batch: int = 128
    lr: float = 1e-3
    warmup: int = 200
    beta: float = 0.01  # KL weight (per sample, against a per-element mean squared error)
    free_bits: float = 1.0  # nats per z dimension (batch mean) that cost nothing (see train())
    z_mode: str = "imle"  # how z is trained: "imle" (best of K prior draws) or "cvae" (posterior)
    candidates: int = 4  # K, the prior draws per item of the "imle" mode
    object_weight: float = 8.0  # loss weight of the latent cells around the object
    embed_noise: float = 0.015  # std of the Gaussian noise added per embedding dimension
    ema_decay: float = 0.998
    ckpt_every: int = 250
    check_every: int = 1000  # steps between judge checks on validation items (0: never)
    check_items: int = 256  # validation items of the final check
    guidance: float = 1.2  # used by the checks during training
    guidance_grid: tuple = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5)  # the exported default is chosen here


class Posterior(nn.Module):
    """q(z | latent): mean and log-variance of the noise that explains the item's variation."""

    def __init__(self, latent_channels: int, z_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, 64, 3, 2, 1), nn.SiLU(),  # 8x8
            nn.Conv2d(64, 128, 3, 2, 1), nn.SiLU(),  # 4x4
            nn.Flatten(), nn.Linear(128 * 16, 256), nn.SiLU(), nn.Linear(256, 2 * z_dim))

    def forward(self, latent):
        mu, logvar = self.net(latent).chunk(2, dim=-1)
        return mu, logvar.clamp(-8, 4)


def _load_vae(vae_dir: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(vae_dir).float().eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------- data
@torch.no_grad()
def prepare(work: Path, cfg: GenTrainConfig, vae_dir: Path, clip_dir: Path) -> dict:
    """Latents (2, n, C, 16, 16), object masks (n, 16, 16), embeddings (2, n, W, D), cached."""
    from transformers import CLIPTokenizer

    from .cache import load_split, render_split
    from .decoder import load_text_embedder

    ckpt = work / "ckpt" / "mini-gen"
    ckpt.mkdir(parents=True, exist_ok=True)
    path = ckpt / f"data_{cfg.items}.npz"
    if path.exists():
        d = np.load(path)
        data = {k: d[k] for k in d.files}
        if cfg.extra_wordings:
            extra = extra_embeddings(work, cfg, clip_dir, len(data["mask"]))
            data["embeddings"] = np.concatenate([data["embeddings"], extra], axis=2)
        return data
    t0 = time.time()
    if not (work / "data" / "train" / "meta.json").exists():  # a full render is reused as it is
        render_split("train", work / "data", n=cfg.items)
    train = load_split(work / "data", "train")
    n = min(cfg.items, len(train["V"]))
    vae = _load_vae(vae_dir)
    sf = vae.config.scaling_factor
    lat = np.zeros((2, n, vae.config.latent_channels, 16, 16), dtype=np.float16)
    for row, col in enumerate(("V", "G")):
        for i in tqdm(range(0, n, 256), desc=f"encode {col}", unit="batch"):
            x = torch.from_numpy(train[col][i:min(i + 256, n)]).permute(0, 3, 1, 2)
            x = x.float() / 127.5 - 1
            lat[row, i:i + len(x)] = (vae.encode(x).latent_dist.mean * sf).numpy()
    diff = np.abs(train["V"][:n].astype(np.int16) - train["G"][:n].astype(np.int16)).max(-1) > 0
    mask = F.max_pool2d(torch.from_numpy(diff).float()[:, None], 4, 4)[:, 0]
    mask = mask.numpy().astype(np.uint8)
    tok = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=CONTEXT)
    enc = load_text_embedder(clip_dir)
    w = train["S"].shape[1]
    emb = np.zeros((2, n, w, enc.config.projection_dim), dtype=np.float16)
    for row, col in enumerate(("S", "U")):
        texts = [str(t) for t in train[col][:n].reshape(-1)]
        emb[row] = _embed_texts(enc, tok, texts, f"embed {col}").view(n, w, -1).numpy()
    data = {"latents": lat, "mask": mask, "embeddings": emb}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps({"seconds": round(time.time() - t0, 1)}))
    return prepare(work, cfg, vae_dir, clip_dir)  # adds the extra wordings, if any


def _embed_texts(enc, tok, texts: list[str], desc: str) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(texts), 1024), desc=desc, unit="batch"):
        t = tok(texts[i:i + 1024], padding="max_length", truncation=True, max_length=CONTEXT,
                return_tensors="pt")
        out.append(F.normalize(enc(**t).text_embeds, dim=-1))
    return torch.cat(out)


@torch.no_grad()
def extra_embeddings(work: Path, cfg: GenTrainConfig, clip_dir: Path, n: int) -> np.ndarray:
    """(2, n, extra_wordings, D): more paraphrases of each item's S and U (same tags, an
    independent random stream, training templates only), embedded by the original CLIP."""
    from transformers import CLIPTokenizer

    from .cache import load_split
    from .decoder import load_text_embedder
    from .synthetic import SPLIT_SEED, caption_pair

    path = work / "ckpt" / "mini-gen" / f"extra_{n}_{cfg.extra_wordings}.npy"
    if path.exists():
        return np.load(path)
    tags = load_split(work / "data", "train")["tags"][:n]
    pairs = [[caption_pair(t, np.random.default_rng([11, SPLIT_SEED["train"], i, k]))
              for k in range(cfg.extra_wordings)] for i, t in enumerate(tags)]
    tok = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=CONTEXT)
    enc = load_text_embedder(clip_dir)
    emb = np.stack([_embed_texts(enc, tok, [p[row] for ps in pairs for p in ps], f"embed {col}+")
                    .view(n, cfg.extra_wordings, -1).numpy().astype(np.float16)
                    for row, col in enumerate(("S", "U"))])
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    tmp.replace(path)
    return emb


# --------------------------------------------------------------------------------------- check
@functools.lru_cache(maxsize=2)
def _check_setup(work: Path, clip_dir: Path, safe_dir: Path | None):
    """What every check reads (validation split, tokenizer, judge, text towers): loaded once."""
    from transformers import CLIPTokenizer

    from .cache import load_split, render_split
    from .decoder import load_text_embedder
    from .judge import default_judge

    render_split("validation", work / "data")
    encoders = {"clip": load_text_embedder(clip_dir)}
    if safe_dir is not None:
        encoders["safeclip"] = load_text_embedder(safe_dir)
    tok = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=CONTEXT)
    return load_split(work / "data", "validation"), tok, default_judge(), encoders


@torch.no_grad()
def quick_check(decoder, vae, work: Path, clip_dir: Path, safe_dir: Path | None, n: int = 128,
                guidance: float = 1.0) -> dict:
    """Judge samples (prior noise) for n validation items' safe and unsafe captions."""
    from .decoder import PairedEmbeddingDecoder

    val, tok, judge, encoders = _check_setup(Path(work), Path(clip_dir),
                                             None if safe_dir is None else Path(safe_dir))
    pipe = PairedEmbeddingDecoder(decoder.eval(), vae, tok, encoders["clip"],
                                  encoders.get("safeclip", encoders["clip"]), share=False)
    n = min(n, len(val["V"]))
    z = torch.randn(n, decoder.config.z_dim, generator=torch.Generator().manual_seed(1))
    safe_obj = [t["safe_object"] for t in val["tags"][:n]]
    out = {}
    for name, enc in encoders.items():
        empty = pipe.embed(enc, [""]).expand(n, -1)
        for col, key in (("S", "safe_object"), ("U", "unsafe_object")):
            e = pipe.embed(enc, [str(val[col][i, 0]) for i in range(n)])
            verdicts = judge.judge(pipe.to_pil(pipe.decode(e, empty, z, guidance)))
            want = [t[key] for t in val["tags"][:n]]

            def rate(hits):
                return round(float(np.mean(hits)), 3)
            out[f"{name}_{col}_shows_object"] = rate(
                [v.labels[o] >= judge.threshold for v, o in zip(verdicts, want)])
            out[f"{name}_{col}_unsafe"] = rate([v.unsafe for v in verdicts])
            if col == "U":
                out[f"{name}_U_shows_safe"] = rate(
                    [v.labels[o] >= judge.threshold for v, o in zip(verdicts, safe_obj)])
    decoder.train()
    return out


# --------------------------------------------------------------------------------------- train
def train(work: Path, cfg: GenTrainConfig, data: dict, vae, clip_dir: Path, safe_dir: Path | None):
    from .decoder import DecoderConfig, EmbeddingDecoder

    ckpt_dir = work / "ckpt" / "mini-gen"
    lat_c = data["latents"].shape[2]
    torch.manual_seed(cfg.seed)
    dec = EmbeddingDecoder(DecoderConfig(embed_dim=data["embeddings"].shape[-1], z_dim=cfg.z_dim,
                                         widths=tuple(cfg.widths), latent_channels=lat_c)).train()
    post = Posterior(lat_c, cfg.z_dim).train()
    ema = copy.deepcopy(dec).eval().requires_grad_(False)
    params = list(dec.parameters()) + list(post.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    ckpt, step, history, seconds = ckpt_dir / "decoder.ckpt", 0, [], 0.0
    if ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        dec.load_state_dict(st["model"])
        post.load_state_dict(st["posterior"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["optim"])
        step, history = int(st["step"]), json.loads(st["history"])
        seconds = float(st.get("seconds", 0.0))
        logger.info("resuming the decoder at step %d", step)
    n_params = sum(p.numel() for p in dec.parameters())
    logger.info("mini-gen decoder: %.2fM parameters, %d steps of %d", n_params / 1e6, cfg.steps,
                cfg.batch)
    lat, mask, emb = data["latents"], data["mask"], data["embeddings"]
    n, w = emb.shape[1], emb.shape[2]

    def save():
        save_atomic(ckpt, {"model": dec.state_dict(), "posterior": post.state_dict(),
                           "ema": ema.state_dict(), "optim": opt.state_dict(), "step": step,
                           "seconds": seconds + time.time() - t0,
                           "history": json.dumps(history)})

    t0, stop = time.time(), ckpt_dir / "STOP"
    bar = tqdm(total=cfg.steps, initial=step, desc="train mini-gen decoder", unit="step")
    while step < cfg.steps and not stop.exists():
        rng = np.random.default_rng([cfg.seed, 31, step])  # batch `step` is a function of it
        row, item, wording = rng.integers(0, 2, cfg.batch), rng.integers(0, n, cfg.batch), \
            rng.integers(0, w, cfg.batch)
        target = torch.from_numpy(lat[row, item].astype(np.float32))
        e = torch.from_numpy(emb[row, item, wording].astype(np.float32))
        e = F.normalize(e + cfg.embed_noise * torch.from_numpy(
            rng.standard_normal(e.shape).astype(np.float32)), dim=-1)
        weight = 1.0 + (cfg.object_weight - 1.0) * torch.from_numpy(mask[item].astype(np.float32))
        for grp in opt.param_groups:
            grp["lr"] = warmup_cosine(cfg.lr, step, cfg.warmup, cfg.steps, floor=0.05)
        if cfg.z_mode == "imle":
            # best of K prior draws (IMLE-style): z always comes from the prior it is sampled from
            # at inference, so no prior "holes" give a mean of both sides (a ghost object left and
            # right at half contrast, which the judge often missed)
            zs = torch.from_numpy(rng.standard_normal((cfg.candidates, cfg.batch, cfg.z_dim))
                                  .astype(np.float32))
            with torch.no_grad():
                out = dec(e.repeat(cfg.candidates, 1), zs.flatten(0, 1)).view(
                    cfg.candidates, cfg.batch, *target.shape[1:])
                err = (((out - target) ** 2).mean(2) * weight).mean((2, 3))
            z = zs[err.argmin(0), torch.arange(cfg.batch)]
            kl = torch.zeros(())
            rec = (((dec(e, z) - target) ** 2).mean(1) * weight).mean()
            loss = rec
        else:
            mu, logvar = post(target)
            eps = torch.from_numpy(rng.standard_normal(mu.shape).astype(np.float32))
            z = mu + eps * (0.5 * logvar).exp()
            rec = (((dec(e, z) - target) ** 2).mean(1) * weight).mean()
            kl_dim = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean(0)
            kl = kl_dim.sum()
            # free bits (Kingma et al. 2016): without them the posterior collapsed (KL ~ 0), z
            # was unused, and the decoder drew the mean of both sides where a caption gives none
            loss = rec + cfg.beta * kl_dim.clamp_min(cfg.free_bits).sum()
        optimise(opt, loss, params)
        step += 1
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), dec.parameters()):
                pe.lerp_(pm, 1 - decay)
        bar.update(1)
        bar.set_postfix(rec=f"{rec.item():.4f}", kl=f"{kl.item():.2f}")
        if step % 50 == 0:
            history.append({"step": step, "rec": round(rec.item(), 5), "kl": round(kl.item(), 3)})
            logger.info("step %d rec %.5f kl %.3f (%.0f s)", step, rec.item(), kl.item(),
                        time.time() - t0)
        if cfg.check_every and step % cfg.check_every == 0:
            m = quick_check(ema, vae, work, clip_dir, safe_dir, guidance=cfg.guidance)
            history.append({"step": step, **m})
            logger.info("step %d check %s", step, m)
        if step % cfg.ckpt_every == 0:
            save()
    bar.close()
    save()
    return ema, {"decoder_parameters": n_params, "steps": step,
                 "seconds_this_run": round(time.time() - t0, 1),
                 "train_seconds_total": round(seconds + time.time() - t0, 1), "history": history}
