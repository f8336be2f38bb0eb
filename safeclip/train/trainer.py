"""Safe-CLIP fine-tuning: LoRA on both encoders, the eight-term objective, any number of processes.

    safeclip train --preset mini --out runs/mini-safeclip              # one process
    accelerate launch --num_processes 8 -m safeclip.train.cli ...      # several GPUs, unchanged
    torchrun --nproc_per_node 2 -m safeclip.train.cli ... --cpu        # two CPU processes (gloo)

How it is built:
- the frozen reference is the original model *before* the adapter is added; its embeddings of the
  safe texts and images are computed once and cached on disk (they never change), so a step only
  runs the model being tuned;
- a step's global batch is a pure function of (seed, epoch, step) and each process takes its
  slice, so 1 and N processes see the same global batches; embeddings are gathered across
  processes with gradients, so contrastive negatives span the global batch and every process
  computes the same loss as a single process would;
- checkpoints (adapter, optimizer, RNG, progress) are written to a temp folder then renamed, every
  ``ckpt_every`` steps and at each epoch end; ``resume=True`` continues from the last one exactly;
- each epoch ends with the validation loss and recall@{1,5,10,20}; training stops early after
  ``patience`` epochs without a better value of ``early_stop`` ("loss" or "recall", the sum).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InputError
from .lora import LoraSettings, add_lora
from .losses import (
    DEFAULT_WEIGHTS,
    MODES,
    TEXT_TOKEN_TERMS,
    TOKEN_TERMS,
    VISION_TOKEN_TERMS,
    SafeClipLoss,
    align_tokens,
    needed_inputs,
)
from .towers import (  # noqa: F401 - DualEncoder and the helpers are imported from here too
    DualEncoder,
    pooled_image_features,
    pooled_text_features,
    trim_padding,
    vision_pooled_and_tokens,
)

logger = logging.getLogger(__name__)
RECALL_KS = (1, 5, 10, 20)


@dataclass
class TrainConfig:
    out: str  # run folder: checkpoints, logs, exports
    mode: str = "full"  # "full" (8 terms) or "text" (the 4 terms without unsafe images)
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))  # by term name
    lora: LoraSettings = field(default_factory=LoraSettings)
    optimizer: str = "adam"  # "adam" or "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch: int = 128  # global batch per optimiser step (all processes, all accumulation steps)
    grad_accum: int = 1  # micro-batches per optimiser step
    epochs: int = 50
    max_steps: int | None = None  # stop after this many optimiser steps (None: epochs decide)
    patience: int = 5  # early stopping: epochs without improvement
    early_stop: str = "loss"  # "loss" (validation loss) or "recall" (validation recall sum)
    mixed_precision: str = "auto"  # "auto" (fp16 on CUDA), "no", "fp16", "bf16"
    ckpt_every: int = 200  # optimiser steps between checkpoints (and one per epoch)
    seed: int = 0
    report_to: str = "none"  # "none", "tensorboard" or "wandb" (imported only when asked)
    cpu: bool = False  # force CPU (e.g. two CPU processes under torchrun)
    token_layer: int = -1  # hidden layer of the patch tokens (vision_tokens_* terms only)
    #                        (the text_tokens_* terms read the last hidden state, as SD does)


# --- the frozen reference, cached -----------------------------------------------------------
@torch.no_grad()
def reference_embeddings(clip, source, keys=("S", "V"), batch: int = 256, device="cpu",
                         desc: str = "reference") -> dict[str, torch.Tensor]:
    """Normalised embeddings of ``keys`` for every item (and wording) of ``source``."""
    clip.eval()
    eos = int(clip.config.text_config.eos_token_id)
    n, w = source.n, source.n_wordings
    out = {k: [] for k in keys}
    starts = range(0, n, batch)
    for s in tqdm(starts, desc=desc, unit="batch", mininterval=2):
        idx = np.arange(s, min(s + batch, n))
        for k in keys:
            if k in ("S", "U"):
                per_w = [source.get(idx, np.full(len(idx), j))[k] for j in range(w)]
                e = torch.stack([pooled_text_features(clip, ids.to(device), eos)
                                 for ids in per_w], 1)
            else:
                pix = source.get(idx, np.zeros(len(idx), int))[k].to(device)
                e = pooled_image_features(clip, pix)
            out[k].append(F.normalize(e.float(), dim=-1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def cached_reference(clip, source, path: Path, keys, accelerator, device) -> dict[str, torch.Tensor]:
    """Load the reference cache at ``path`` or compute it (main process) and share it."""
    from safetensors.torch import load_file, save_file

    if not path.exists() and accelerator.is_main_process:
        ref = reference_embeddings(clip, source, keys, device=device, desc=f"cache {path.stem}")
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in ref.items()}, str(tmp))
        tmp.replace(path)
    accelerator.wait_for_everyone()
    ref = load_file(str(path))
    if any(k not in ref for k in keys) or len(ref[keys[0]]) != source.n:
        raise InputError(f"{path} does not match the data (delete it to rebuild)")
    return ref


# --- batches as a function of (seed, epoch, step) ---------------------------------------------
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_plan(seed, epoch, step, order, size, n_wordings):
    idx = order[step * size:(step + 1) * size]
    wording = np.random.default_rng([seed, epoch, step, 1]).integers(0, n_wordings, len(idx))
    return idx, wording


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x.contiguous()))


# --- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(run: Path, model, optimizer, progress: dict, accelerator) -> None:
    """Write run/checkpoint atomically: everything into checkpoint.tmp, then a rename."""
    from safetensors.torch import save_file

    tmp, final, old = run / "checkpoint.tmp", run / "checkpoint", run / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(torch.get_rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        state = {n: p.detach().cpu().contiguous() for n, p in unwrapped.named_parameters()
                 if p.requires_grad}
        save_file(state, str(tmp / "adapter.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "progress.json").write_text(json.dumps(progress, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(run: Path, model, optimizer, accelerator) -> dict | None:
    from safetensors.torch import load_file

    ck = run / "checkpoint"
    if not (ck / "progress.json").exists():
        old = run / "checkpoint.old"  # killed between the two renames
        if (old / "progress.json").exists():
            ck = old
        else:
            return None
    unwrapped = accelerator.unwrap_model(model)
    state = load_file(str(ck / "adapter.safetensors"))
    params = dict(unwrapped.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
    rng = ck / f"rng_{accelerator.process_index}.pt"
    if rng.exists():
        torch.set_rng_state(torch.load(rng, weights_only=True))
    return json.loads((ck / "progress.json").read_text())


# --- validation ----------------------------------------------------------------------------------
@torch.no_grad()
def validate(enc, val_src, ref_val: dict, loss_fn: SafeClipLoss, batch: int, device) -> dict:
    """Validation loss (mean over batches of the training size) and recall@{1,5,10,20}."""
    from ..eval.retrieval import retrieval_metrics

    enc.eval()
    keys = ("S", "U", "V", "G")
    embs = {k: [] for k in keys}
    for s in range(0, val_src.n, batch):
        idx = np.arange(s, min(s + batch, val_src.n))
        b = {k: v.to(device) for k, v in val_src.get(idx, np.zeros(len(idx), int)).items()}
        for k, v in enc(b, tokens=False).items():
            embs[k].append(F.normalize(v.float(), dim=-1).cpu())
    embs = {k: torch.cat(v) for k, v in embs.items() if v}
    losses = []
    # no gathering (the data is all here); the pooled terms only (no cache of reference tokens)
    pooled = {k: w for k, w in loss_fn.raw_weights.items() if k not in TOKEN_TERMS}
    plain = SafeClipLoss(pooled, loss_fn.mode)
    for s in range(0, val_src.n - batch + 1 if val_src.n >= batch else 1, batch):
        sl = slice(s, s + batch)
        ref = {k: r[sl, 0] if r.dim() == 3 else r[sl] for k, r in ref_val.items()}
        losses.append(plain({k: v[sl] for k, v in embs.items()}, ref)["total"].item())
    out = {"val_loss": float(np.mean(losses))}
    if all(k in embs for k in keys):
        m = retrieval_metrics(embs["S"], embs["U"], embs["V"], embs["G"], ks=RECALL_KS)
        out.update({k: v for k, v in m.items() if k != "n"})
        out["recall_sum"] = sum(m[f"{d}_r{k}"] for d in ("s2v", "v2s", "u2v", "g2s") for k in RECALL_KS)
    else:  # text-only data: safe retrieval and redirection of unsafe text only
        from ..eval.retrieval import _ranks
        idx = torch.arange(len(embs["S"]))
        for d, q in (("s2v", embs["S"]), ("u2v", embs["U"])):
            r = _ranks(q, embs["V"], idx)
            out.update({f"{d}_r{k}": (r < k).float().mean().item() for k in RECALL_KS})
        out["recall_sum"] = sum(out[f"{d}_r{k}"] for d in ("s2v", "u2v") for k in RECALL_KS)
    enc.train()
    return out


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "fp16" if torch.cuda.is_available() and not cfg.cpu else "no"
    log_with = None if cfg.report_to in (None, "none") else cfg.report_to
    return Accelerator(cpu=cfg.cpu, mixed_precision=mp, log_with=log_with, project_dir=cfg.out)


def _optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise InputError(f"optimizer must be 'adam' or 'adamw', not {cfg.optimizer!r}")


def train(cfg: TrainConfig, clip, train_src, val_src=None, resume: bool = False,
          accelerator=None):
    """Fine-tune ``clip`` (a transformers CLIPModel, the original) with LoRA.

    Returns (peft model with the *last* adapter weights, summary with the history and the path
    of the best adapter); ``load_adapter_weights`` puts the best ones in."""
    from safetensors.torch import save_file

    acc = accelerator or make_accelerator(cfg)
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    if cfg.mode not in MODES:
        raise InputError(f"mode must be one of {sorted(MODES)}")
    world, rank = acc.num_processes, acc.process_index
    micro = cfg.batch // cfg.grad_accum
    if cfg.batch % cfg.grad_accum or micro % world:
        raise InputError(f"batch {cfg.batch} must split into {cfg.grad_accum} micro-batches "
                         f"divisible by {world} processes")
    loss_fn = SafeClipLoss(cfg.weights, cfg.mode, gather=gather_with_grad)
    want_tokens = any(t in loss_fn.weights for t in VISION_TOKEN_TERMS)
    want_text_tokens = any(t in loss_fn.weights for t in TEXT_TOKEN_TERMS)
    if all(t in TOKEN_TERMS for t in loss_fn.weights):
        raise InputError("the *_tokens_* terms need a pooled term beside them: validation "
                         "and early stopping read the pooled terms")
    ft_keys, ref_keys = (sorted(k) for k in needed_inputs(loss_fn.weights))
    device = acc.device
    torch.manual_seed(cfg.seed)  # same LoRA init everywhere
    clip.to(device)
    # pooled reference embeddings, cached (S and V: validation reads them); the reference
    # patch tokens come from the model with its adapter disabled, step by step
    cache_keys = tuple(sorted({k for k in ref_keys if not k.endswith("_tokens")} | {"S", "V"}))
    tag = "" if cache_keys == ("S", "V") else "." + "".join(cache_keys)
    ref_train = cached_reference(clip, train_src, run / f"ref_train{tag}.safetensors", cache_keys,
                                 acc, device)
    ref_val = (cached_reference(clip, val_src, run / f"ref_val{tag}.safetensors", cache_keys, acc,
                                device) if val_src is not None else None)
    model = add_lora(clip, cfg.lora)
    enc = DualEncoder(model, token_layer=cfg.token_layer if want_tokens else None,
                      text_tokens=want_text_tokens).train()
    opt = _optimizer(cfg, [p for p in enc.parameters() if p.requires_grad])
    enc, opt = acc.prepare(enc, opt)
    torch.manual_seed(cfg.seed + 1000 * rank)  # dropout streams differ per process
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None,
                "bad_epochs": 0, "history": [], "done": False, "stopped": None}
    if resume:
        loaded = load_checkpoint(run, enc, opt, acc)
        if loaded:
            progress = loaded
            stopped = progress.get("stopped")
            if progress["done"] and (  # a larger budget than the stopped run had: go on
                    (stopped == "max_steps" and (not cfg.max_steps or progress["global_step"] < cfg.max_steps))
                    or (stopped == "epochs" and progress["epoch"] < cfg.epochs)):
                progress["done"] = False
            logger.info("resumed at epoch %d, step %d", progress["epoch"], progress["step_in_epoch"])
    if progress["done"]:
        logger.info("run %s is already finished", run)
    if acc.is_main_process and cfg.report_to not in (None, "none"):
        acc.init_trackers("safeclip", config={k: str(v) for k, v in asdict(cfg).items()})
    steps_per_epoch = train_src.n // micro
    if steps_per_epoch == 0:
        raise InputError(f"{train_src.n} training items are fewer than one batch of {micro}")
    total = cfg.epochs * steps_per_epoch // cfg.grad_accum
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    bar = tqdm(total=total, initial=progress["global_step"], desc="safe-clip", unit="step",
               disable=not acc.is_main_process)
    prior, t0 = float(progress.get("seconds", 0.0)), time.time()  # a resumed run's time counts too

    def clock() -> None:  # training time up to this checkpoint, over every resumption
        progress["seconds"] = round(prior + time.time() - t0, 3)

    while not progress["done"] and progress["epoch"] < cfg.epochs:
        epoch = progress["epoch"]
        order = epoch_order(cfg.seed, epoch, train_src.n)
        while progress["step_in_epoch"] < steps_per_epoch:
            s = progress["step_in_epoch"]
            idx, wording = batch_plan(cfg.seed, epoch, s, order, micro, train_src.n_wordings)
            lo, hi = rank * micro // world, (rank + 1) * micro // world
            idx, wording = idx[lo:hi], wording[lo:hi]
            need = set(ft_keys) | ({"V", "G"} if want_tokens else set()) | (
                {"S", "U"} if want_text_tokens else set())
            batch = {k: v.to(device) for k, v in train_src.get(idx, wording).items() if k in need}
            ref = {}
            for k in ref_keys:
                if k.endswith("_tokens"):  # the reference states come with the forward pass
                    continue
                r = ref_train[k]  # texts: (n, wordings, D); images: (n, D)
                ref[k] = (r[torch.as_tensor(idx), torch.as_tensor(wording)] if r.dim() == 3
                          else r[torch.as_tensor(idx)]).to(device)
            with acc.accumulate(enc), acc.autocast():
                feats = enc(batch)
                for key in ("V_tokens", "S_tokens"):
                    if f"{key}_ref" in feats:
                        ref[key] = feats.pop(f"{key}_ref")
                if "U_align" in loss_fn.ft_inputs:
                    feats["U_align"] = align_tokens(batch["U"], batch["S"])
                out = loss_fn(feats, ref)
                acc.backward(out["total"])
                opt.step()
                opt.zero_grad(set_to_none=True)
            progress["step_in_epoch"] = s + 1
            if acc.sync_gradients:
                progress["global_step"] += 1
                gs = progress["global_step"]
                bar.update(1)
                bar.set_postfix(loss=f"{out['total'].item():.4f}", epoch=epoch)
                record = {"step": gs, "epoch": epoch, "loss": out["total"].item(),
                          **{k: v.item() for k, v in out["terms"].items()}}
                progress["history"].append(record)
                if cfg.report_to not in (None, "none"):
                    acc.log({f"train/{k}": v for k, v in record.items()}, step=gs)
                if gs % cfg.ckpt_every == 0:
                    clock()
                    save_checkpoint(run, enc, opt, progress, acc)
                if cfg.max_steps and gs >= cfg.max_steps:
                    progress["done"], progress["stopped"] = True, "max_steps"
                    break
        # end of epoch (or of max_steps): validate, early stopping, checkpoint
        if val_src is not None:
            v = validate(enc, val_src, ref_val, loss_fn, micro, device)
            score = v["val_loss"] if cfg.early_stop == "loss" else -v["recall_sum"]
            better = progress["best"] is None or score < progress["best"]
            progress["history"].append({"epoch": epoch, "step": progress["global_step"], **v})
            logger.info("epoch %d: val loss %.4f, recall sum %.3f%s", epoch, v["val_loss"],
                        v["recall_sum"], " (best)" if better else "")
            if better:
                progress["best"], progress["bad_epochs"] = score, 0
                if acc.is_main_process:
                    unwrapped = acc.unwrap_model(enc)
                    save_file({n: p.detach().cpu().contiguous() for n, p in unwrapped.named_parameters()
                               if p.requires_grad}, str(run / "best_adapter.safetensors"))
            else:
                progress["bad_epochs"] += 1
                if progress["bad_epochs"] >= cfg.patience:
                    logger.info("early stop: %d epochs without improvement", cfg.patience)
                    progress["done"], progress["stopped"] = True, "early_stop"
            if cfg.report_to not in (None, "none"):
                acc.log({f"val/{k}": x for k, x in v.items()}, step=progress["global_step"])
        if progress["step_in_epoch"] >= steps_per_epoch:
            progress["epoch"] += 1
            progress["step_in_epoch"] = 0
        if not progress["done"] and progress["epoch"] >= cfg.epochs:
            progress["done"], progress["stopped"] = True, "epochs"
        clock()
        save_checkpoint(run, enc, opt, progress, acc)
    bar.close()
    if cfg.report_to not in (None, "none"):
        acc.end_training()
    # seconds: the whole training (the parts before a resumption counted up to their last
    # checkpoint); seconds_this_run: this call's part
    summary = {"config": asdict(cfg), "world_size": world,
               "seconds": round(prior + time.time() - t0, 1),
               "seconds_this_run": round(time.time() - t0, 1),
               "global_step": progress["global_step"], "history": progress["history"],
               "best_adapter": str(run / "best_adapter.safetensors")}
    if acc.is_main_process:
        (run / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return model, summary


def load_adapter_weights(model, path: Path) -> None:
    """Copy saved adapter tensors (names as in the DualEncoder) into a peft model."""
    from safetensors.torch import load_file

    params = {n.removeprefix("clip."): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, value in load_file(str(path)).items():
            params[name.removeprefix("clip.")].copy_(value)
