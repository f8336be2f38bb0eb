"""Training the mini CLIP from scratch on safe *and* unsafe pairs of the synthetic ViSU.

    safeclip mini clip --data work/mini/data --out /tmp/mini-clip     # by hand
    safeclip mini build --only clip                                   # the bundled one

Like web-scale CLIP, the model sees (S, V) and (U, G) pairs alike, so it learns to link unsafe
words to unsafe images: the problem Safe-CLIP then removes. Standard symmetric InfoNCE with a
learnable temperature, AdamW, linear warm-up and cosine decay. Checkpoints are written atomically
every ``--ckpt-every`` steps and a restarted run resumes from the last one with the same batches.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..encoders import image_features, text_features
from ..train.data import normalise_u8 as pixels  # uint8 NHWC -> normalised NCHW
from .cache import load_split
from .clip import clip_config, new_clip, save_clip_dir
from .steps import optimise, save_atomic, warmup_cosine

logger = logging.getLogger(__name__)


@dataclass
class ClipTrainConfig:
    steps: int = 3000  # optimisation steps
    batch: int = 128  # pairs per step (safe and unsafe pairs mixed)
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 0.05
    warmup: int = 150  # linear warm-up steps
    seed: int = 0
    width: int = 128  # see safeclip.mini.clip.clip_config
    layers: int = 4
    embed_dim: int = 128
    ckpt_every: int = 250  # steps between atomic checkpoints
    eval_every: int = 500  # steps between validation recalls (0: never)


class PairSampler:
    """Batches of (token ids, uint8 images) drawn from a rendered split; batch ``step`` is a pure
    function of (seed, step), which makes resuming exact."""

    def __init__(self, data: dict, tokenizer, context: int, seed: int):
        n, w = data["S"].shape
        texts = np.concatenate([data["S"], data["U"]])  # (2n, wordings): safe pairs, then unsafe
        flat = [str(t) for t in texts.reshape(-1)]
        ids = tokenizer(flat, padding="max_length", truncation=True, max_length=context,
                        return_tensors="pt").input_ids
        self.ids = ids.reshape(2 * n, w, context)
        self.images = (data["V"], data["G"])
        self.n, self.w, self.seed = n, w, seed

    def batch(self, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        pick = rng.choice(2 * self.n, size=size, replace=False)
        wording = rng.integers(0, self.w, size=size)
        ids = self.ids[torch.from_numpy(pick), torch.from_numpy(wording)]
        imgs = np.stack([self.images[p // self.n][p % self.n] for p in pick])
        return ids, torch.from_numpy(imgs)


def clip_loss(model, ids, pix) -> torch.Tensor:
    t = F.normalize(text_features(model, ids), dim=-1)
    v = F.normalize(image_features(model, pix), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * t @ v.T
    labels = torch.arange(len(ids))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _save_ckpt(path: Path, model, opt, step: int, history: list) -> None:
    save_atomic(path, {"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                       "history": json.dumps(history)})


@torch.no_grad()
def val_recall(model, data: dict, tokenizer, context: int, n: int = 1000) -> dict[str, float]:
    from ..eval.retrieval import retrieval_metrics

    model.eval()
    def txt(col):
        ids = tokenizer([str(s) for s in data[col][:n, 0]], padding="max_length", truncation=True,
                        max_length=context, return_tensors="pt").input_ids
        return F.normalize(torch.cat([text_features(model, b) for b in ids.split(256)]), dim=-1)

    def img(col):
        px = pixels(torch.from_numpy(data[col][:n]))
        return F.normalize(torch.cat([image_features(model, b) for b in px.split(256)]), dim=-1)

    m = retrieval_metrics(txt("S"), txt("U"), img("V"), img("G"))
    model.train()
    return m


def train_mini_clip(data_dir: str | Path, out_dir: str | Path, work_dir: str | Path,
                    cfg: ClipTrainConfig = ClipTrainConfig()) -> dict:
    """Train (or resume) the mini CLIP; write the model folder to ``out_dir``; return metrics."""
    from ..tokenizer import clip_tokenizer

    torch.manual_seed(cfg.seed)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "mini-clip.ckpt"
    mcfg = clip_config(width=cfg.width, layers=cfg.layers, embed_dim=cfg.embed_dim)
    context = mcfg.text_config.max_position_embeddings
    tokenizer = clip_tokenizer(context)
    train = load_split(data_dir, "train")
    val = load_split(data_dir, "validation")
    sampler = PairSampler(train, tokenizer, context, cfg.seed)
    model = new_clip(mcfg, cfg.seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        step, history = int(state["step"]), json.loads(state["history"])
        logger.info("resuming mini CLIP training at step %d", step)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("mini CLIP: %.1fM parameters, %d steps of %d pairs", n_params / 1e6, cfg.steps, cfg.batch)
    t0, bar = time.time(), tqdm(total=cfg.steps, initial=step, desc="train mini CLIP", unit="step")
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(cfg.lr, step, cfg.warmup, cfg.steps)
        ids, imgs = sampler.batch(step, cfg.batch)
        loss = clip_loss(model, ids, pixels(imgs))
        optimise(opt, loss, model.parameters())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.0f}")
        if step % 50 == 0:
            history.append({"step": step, "loss": round(loss.item(), 4)})
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            m = val_recall(model, val, tokenizer, context)
            history.append({"step": step, **{k: round(m[k], 4) for k in
                                             ("s2v_r10", "u2g_r10", "nsfw_at10")}})
            logger.info("step %d: val s2v_r10 %.3f u2g_r10 %.3f nsfw_at10 %.3f",
                        step, m["s2v_r10"], m["u2g_r10"], m["nsfw_at10"])
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            _save_ckpt(ckpt, model, opt, step, history)
    bar.close()
    model.eval()
    save_clip_dir(model, out_dir, dtype=torch.float16)
    info = {"config": asdict(cfg), "parameters": n_params, "history": history,
            "train_seconds_this_run": round(time.time() - t0, 1)}
    (Path(out_dir) / "training.json").write_text(json.dumps(info, indent=2))
    return info


def write_clip_card(target: Path, cfg, info: dict, metrics: dict | None) -> None:
    from transformers import CLIPConfig

    mc = CLIPConfig.from_pretrained(target)
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in (metrics or {}).items()
                     if k.endswith(("_r1", "_r10")) or k.startswith("nsfw"))
    (target / "README.md").write_text(f"""# mini-clip

The mini world's original CLIP: a transformers `CLIPModel` trained from scratch here on safe and
unsafe pairs of the synthetic ViSU (`safeclip.mini.synthetic`), so that, like web-scale CLIP, it
links unsafe words to unsafe images. Weights in fp16 safetensors; tokenizer = the real CLIP BPE.

- architecture: ViT {mc.vision_config.image_size} px, patch {mc.vision_config.patch_size}, width {mc.vision_config.hidden_size}, {mc.vision_config.num_hidden_layers}+{mc.text_config.num_hidden_layers} layers, context {mc.text_config.max_position_embeddings}, embedding {mc.projection_dim}, {info['parameters'] / 1e6:.1f}M parameters, QuickGELU
- training: {cfg.steps} steps x {cfg.batch} pairs, AdamW lr {cfg.lr}, warm-up {cfg.warmup}, cosine decay, seed {cfg.seed}; the last (or only) run took {info['train_seconds_this_run']:.0f} s (see training.json for the loss and validation history)
- command: `safeclip mini build --only clip --force`

## Test-split metrics (`safeclip eval retrieval --preset mini`, the build's eval step)

Gallery: the 2,000 safe and unsafe test images (text queries) or captions (image queries).

| metric | value |
|---|---|
{rows}
""")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="safeclip mini clip", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="rendered splits (safeclip.mini.cache)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--work", default=None, help="checkpoints (default: DATA/../ckpt)")
    for f in ("steps", "batch", "seed", "width", "layers", "eval_every", "ckpt_every"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(ClipTrainConfig, f))
    p.add_argument("--lr", type=float, default=ClipTrainConfig.lr)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = ClipTrainConfig(**{k: getattr(args, k) for k in ("steps", "batch", "seed", "width",
                                                          "layers", "eval_every", "ckpt_every", "lr")})
    work = args.work or str(Path(args.data).parent / "ckpt")
    train_mini_clip(args.data, args.out, work, cfg)
    return 0

