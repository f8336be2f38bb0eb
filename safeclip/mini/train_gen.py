"""Training the mini generator: a Stable Diffusion of the 64 px mini world that denoises in one step.

    safeclip mini build --only gen                       # train and export assets/models/mini-gen
    safeclip mini gen --work WORK --out OUT [--steps N ...]   # by hand

A diffusers ``UNet2DConditionModel`` cross-attends to the last hidden state of *every* token of
the original mini CLIP's text tower: the tensor ``StableDiffusionPipeline`` passes to its UNet.
It works in the latent space of a small frozen ``AutoencoderKL`` (safeclip.mini.vae: 64 px <->
16 x 16 x 16). Only the original text tower is used in training; Safe-CLIP's is dropped in
unchanged at inference, as in the paper.

One step: the UNet predicts the clean latent (``prediction_type="sample"``) from pure noise at
t = 999, and a DDIM scheduler with trailing spacing and alpha 1 after the last step returns that
prediction. So the bundled folder runs through the real pipeline code (safeclip.generation.paired:
noise drawn as the pipeline draws it, classifier-free guidance on the prediction, the VAE decode).
A many-step DDPM of this size trained here earlier drew the requested object for 7% of safe
prompts after 46 minutes (denoising learns objects last), which is why the step is one.

Training regresses the clean latent; each item's noise is the best of K draws (IMLE-style: with
a single draw the best guess is the mean of the possible pictures, a faint object on both sides);
the latent cells where an item's safe and unsafe images differ (the object) weigh more; 10% of
captions are replaced by "" so that guidance has an unconditional prediction; EMA weights are
exported. Stages, resumable from atomic checkpoints under WORK/ckpt/mini-gen:

0. vae      ``--vae DIR``, else OUT/vae when it exists, else a VAE trained in WORK (safeclip.mini.vae)
1. data     the training items' V and G latents (encoded once) and their captions' token ids
2. train    as above; touch WORK/ckpt/mini-gen/STOP to end early (checkpoint first)
3. export   (safeclip.mini.gen_export) the pipeline folder, the guidance chosen on validation
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
from tqdm.auto import tqdm

from .steps import optimise, save_atomic, warmup_cosine

logger = logging.getLogger(__name__)

CONTEXT = 32  # the mini CLIPs' context length (tokens)
TIMESTEP = 999  # the one step: pure noise in, clean latent out
CHECK_ITEMS = 128  # validation items of the checks during training


@dataclass
class GenTrainConfig:
    seed: int = 0
    items: int = 30000  # training items (each gives (S, V) and (U, G))
    channels: tuple = (32, 64, 96)  # UNet block widths (16 -> 8 -> 4 latent px)
    steps: int = 2000  # at step 1000 of a 3000-step run: fidelity 0.94, unsafe objects 0.77
    batch: int = 64
    lr: float = 1.5e-3
    warmup: int = 100
    candidates: int = 4  # K: noise draws per item, the best one is trained on (IMLE-style)
    uncond_prob: float = 0.1  # captions replaced by "" (classifier-free guidance)
    object_weight: float = 8.0  # loss weight of the latent cells around the object
    ema_decay: float = 0.995
    ckpt_every: int = 250
    check_every: int = 500  # steps between judge checks on validation items (0: never)
    check_items: int = 256  # validation items of the checks and of the guidance scan
    guidance: float = 1.5  # used by the checks during training
    guidance_grid: tuple = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # the exported default is chosen here


def new_unet(cfg: GenTrainConfig, latent_channels: int, cross_dim: int):
    """A small UNet2DConditionModel: a plain block at 16 px, cross-attention at 8 and 4 px."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(cfg.seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(cfg.channels), layers_per_block=1,
        cross_attention_dim=cross_dim, attention_head_dim=32, norm_num_groups=16)


def new_scheduler():
    """DDIM that returns the UNet's clean-latent prediction after one step from t = 999."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                         beta_start=0.00085, beta_end=0.012, prediction_type="sample",
                         timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False,
                         steps_offset=1)


def load_vae(vae_dir: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(vae_dir).float().eval().requires_grad_(False)


def load_tokenizer(clip_dir: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=CONTEXT)


# ---------------------------------------------------------------------------------------- data
@torch.no_grad()
def prepare(work: Path, cfg: GenTrainConfig, vae_dir: Path, clip_dir: Path) -> dict:
    """Latents (2, n, C, 16, 16), object masks (n, 16, 16) and caption token ids (2, n, W, 32)
    of the first ``cfg.items`` training items, cached under WORK/ckpt/mini-gen."""
    from .cache import load_split, render_split

    ckpt = work / "ckpt" / "mini-gen"
    ckpt.mkdir(parents=True, exist_ok=True)
    path = ckpt / f"data_{cfg.items}.npz"
    if path.exists():
        d = np.load(path)
        return {k: d[k] for k in d.files}
    t0 = time.time()
    if not (work / "data" / "train" / "meta.json").exists():  # a full render is reused as it is
        render_split("train", work / "data", n=cfg.items)
    train = load_split(work / "data", "train")
    n = min(cfg.items, len(train["V"]))
    vae = load_vae(vae_dir)
    sf = vae.config.scaling_factor
    lat = np.zeros((2, n, vae.config.latent_channels, 16, 16), dtype=np.float16)
    for row, col in enumerate(("V", "G")):
        for i in tqdm(range(0, n, 256), desc=f"encode {col}", unit="batch"):
            x = torch.from_numpy(train[col][i:min(i + 256, n)]).permute(0, 3, 1, 2)
            x = x.float() / 127.5 - 1
            lat[row, i:i + len(x)] = (vae.encode(x).latent_dist.mean * sf).numpy()
    diff = np.abs(train["V"][:n].astype(np.int16) - train["G"][:n].astype(np.int16)).max(-1) > 0
    mask = F.max_pool2d(torch.from_numpy(diff).float()[:, None], 4, 4)[:, 0]
    tok = load_tokenizer(clip_dir)
    w = train["S"].shape[1]
    ids = np.stack([tok([str(t) for t in train[col][:n].reshape(-1)], padding="max_length",
                        truncation=True, max_length=CONTEXT, return_tensors="np").input_ids
                    .reshape(n, w, CONTEXT).astype(np.int32) for col in ("S", "U")])
    data = {"latents": lat, "mask": mask.numpy().astype(np.uint8), "ids": ids}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps({"seconds": round(time.time() - t0, 1)}))
    return data


# ------------------------------------------------------------------------------------ sampling
def pipeline_noise(seeds, channels: int, size: int = 16) -> torch.Tensor:
    """The initial latents StableDiffusionPipeline draws for each seed (a CPU generator seeded
    with it, one image per call), stacked."""
    from diffusers.utils.torch_utils import randn_tensor

    return torch.cat([randn_tensor((1, channels, size, size),
                                   generator=torch.Generator("cpu").manual_seed(int(s)))
                      for s in seeds])


@torch.no_grad()
def one_step(unet, scheduler, noise, cond, uncond, guidance: float) -> torch.Tensor:
    """Latents of one denoising step, batched, as the paired pipeline computes them per image:
    guidance on the prediction when guidance > 1, then the scheduler's step."""
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    x = scheduler.scale_model_input(noise, t)
    if guidance > 1.0:
        both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        u, c = both.chunk(2)
        out = u + guidance * (c - u)
    else:
        out = unet(x, t, encoder_hidden_states=cond).sample
    return scheduler.step(out, t, noise).prev_sample


@torch.no_grad()
def decode(vae, latents: torch.Tensor):
    """PIL images of latents, as the pipeline's image processor makes them."""
    from PIL import Image

    x = vae.decode(latents / vae.config.scaling_factor).sample
    arr = ((x / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


# --------------------------------------------------------------------------------------- check
@functools.lru_cache(maxsize=2)
def _check_setup(work: Path, models: Path, safe_dir: Path | None):
    """What every check reads (validation split, tokenizer, judge, text towers): loaded once."""
    from ..generation.text import load_text_encoder
    from .cache import load_split, render_split
    from .judge import default_judge

    if not (work / "data" / "validation" / "meta.json").exists():
        render_split("validation", work / "data")
    encoders = {"clip": load_text_encoder(models / "mini-clip")}
    if safe_dir is not None:
        encoders["safeclip"] = load_text_encoder(safe_dir)
    return (load_split(work / "data", "validation"), load_tokenizer(models / "mini-clip"),
            default_judge(models=models), encoders)


@torch.no_grad()
def quick_check(unet, vae, work: Path, models: Path, safe_dir: Path | None = None,
                n: int = 128, guidance: float = 1.0, batch: int = 64) -> dict:
    """Judge one sample (the pipeline's noise of seed i) per validation item i < n, for its safe
    and unsafe caption, with the original text tower (and Safe-CLIP's when ``safe_dir``):
    ``<model>_S_fidelity`` (subject, scene and safe object right), ``<model>_S_shows_object``,
    ``<model>_U_shows_object`` (the unsafe object asked for), ``<model>_U_unsafe`` (any)."""
    from .eval_generation import decide, rate

    val, tok, judge, encoders = _check_setup(Path(work), Path(models),
                                             None if safe_dir is None else Path(safe_dir))
    unet = unet.eval()
    n = min(n, len(val["V"]))
    sched = new_scheduler()
    tags = val["tags"][:n]
    noise = pipeline_noise(range(n), unet.config.in_channels)
    ids_empty = tok([""], padding="max_length", max_length=CONTEXT, return_tensors="pt").input_ids
    out, unsafe = {}, set(judge.config.unsafe)
    for name, enc in encoders.items():
        empty = enc(ids_empty)[0]
        for col in ("S", "U"):
            ids = tok([str(val[col][i, 0]) for i in range(n)], padding="max_length",
                      truncation=True, max_length=CONTEXT, return_tensors="pt").input_ids
            images = []
            for s in range(0, n, batch):
                cond = enc(ids[s:s + batch])[0]
                lat = one_step(unet, sched, noise[s:s + batch], cond,
                               empty.expand(len(cond), -1, -1), guidance)
                images += decode(vae, lat)
            reads = [decide(d, t, unsafe) for d, t in zip(judge.describe(images), tags)]
            if col == "S":
                out[f"{name}_S_fidelity"] = rate([x["fidelity"] for x in reads])
                out[f"{name}_S_shows_object"] = rate([x["shows_safe"] for x in reads])
            else:
                out[f"{name}_U_shows_object"] = rate([x["shows_unsafe"] for x in reads])
                out[f"{name}_U_unsafe"] = rate([x["flagged"] for x in reads])
    unet.train()
    return out


# --------------------------------------------------------------------------------------- train
def train(work: Path, cfg: GenTrainConfig, data: dict, vae, clip_dir: Path, models: Path):
    """Train (or resume) the UNet; returns (EMA UNet, info)."""
    from ..generation.text import load_text_encoder

    ckpt_dir = work / "ckpt" / "mini-gen"
    lat_c = data["latents"].shape[2]
    text = load_text_encoder(clip_dir)
    unet = new_unet(cfg, lat_c, text.config.hidden_size).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-4)
    ckpt, step, history, seconds = ckpt_dir / "unet.ckpt", 0, [], 0.0
    if ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        unet.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["optim"])
        step, history = int(st["step"]), json.loads(st["history"])
        seconds = float(st.get("seconds", 0.0))
        logger.info("resuming the UNet at step %d", step)
    n_params = sum(p.numel() for p in unet.parameters())
    logger.info("mini-gen UNet: %.2fM parameters, %d steps of %d", n_params / 1e6, cfg.steps,
                cfg.batch)
    lat, mask, ids = data["latents"], data["mask"], torch.from_numpy(data["ids"].astype(np.int64))
    n, w = ids.shape[1], ids.shape[2]
    tok = load_tokenizer(clip_dir)
    empty = tok([""], padding="max_length", max_length=CONTEXT, return_tensors="pt").input_ids[0]
    t = torch.full((cfg.batch,), TIMESTEP, dtype=torch.long)

    def save():
        save_atomic(ckpt, {"model": unet.state_dict(), "ema": ema.state_dict(),
                           "optim": opt.state_dict(), "step": step,
                           "seconds": seconds + time.time() - t0, "history": json.dumps(history)})

    def weighted_error(pred, target, weight):  # per item: object-weighted mean squared error
        return (((pred - target) ** 2).mean(-3) * weight).mean((-2, -1))

    t0, stop = time.time(), ckpt_dir / "STOP"
    bar = tqdm(total=cfg.steps, initial=step, desc="train mini-gen UNet", unit="step")
    while step < cfg.steps and not stop.exists():
        rng = np.random.default_rng([cfg.seed, 31, step])  # batch `step` is a function of it
        row, item = rng.integers(0, 2, cfg.batch), rng.integers(0, n, cfg.batch)
        wording = rng.integers(0, w, cfg.batch)
        target = torch.from_numpy(lat[row, item].astype(np.float32))
        batch_ids = ids[torch.from_numpy(row), torch.from_numpy(item), torch.from_numpy(wording)]
        batch_ids[torch.from_numpy(rng.random(cfg.batch) < cfg.uncond_prob)] = empty
        weight = 1.0 + (cfg.object_weight - 1.0) * torch.from_numpy(mask[item].astype(np.float32))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        zs = torch.randn((cfg.candidates, *target.shape), generator=gen)
        for grp in opt.param_groups:
            grp["lr"] = warmup_cosine(cfg.lr, step, cfg.warmup, cfg.steps, floor=0.05)
        with torch.no_grad():
            cond = text(batch_ids)[0]
            if cfg.candidates > 1:
                cand = unet(zs.flatten(0, 1), t.repeat(cfg.candidates),
                            encoder_hidden_states=cond.repeat(cfg.candidates, 1, 1)).sample
                err = weighted_error(cand.view(cfg.candidates, *target.shape), target, weight)
                z = zs[err.argmin(0), torch.arange(cfg.batch)]
            else:
                z = zs[0]
        loss = weighted_error(unet(z, t, encoder_hidden_states=cond).sample, target,
                              weight).mean()
        optimise(opt, loss, unet.parameters())
        step += 1
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(pm, 1 - decay)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0:
            history.append({"step": step, "loss": round(loss.item(), 5)})
            logger.info("step %d loss %.5f (%.0f s)", step, loss.item(), time.time() - t0)
        if cfg.check_every and step % cfg.check_every == 0:
            m = quick_check(ema, vae, work, models, n=CHECK_ITEMS, guidance=cfg.guidance)
            history.append({"step": step, **m})
            logger.info("step %d check %s", step, m)
        if step % cfg.ckpt_every == 0:
            save()
    bar.close()
    save()
    return ema, {"unet_parameters": n_params, "steps": step,
                 "seconds_this_run": round(time.time() - t0, 1),
                 "train_seconds_total": round(seconds + time.time() - t0, 1), "history": history}
