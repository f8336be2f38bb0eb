"""Train the mini world's judge (safeclip.mini.judge.MiniJudge) on images rendered on the fly.

    safeclip mini judge --out assets/models/mini-judge          # a few minutes, 2 cores
    safeclip mini judge --out assets/models/mini-judge-b --second   # the independent second judge
    safeclip mini judge --out /tmp/judge --steps 100 --json     # quick smoke run

    >>> from safeclip.mini.train_judge import train_judge
    >>> metrics = train_judge("assets/models/mini-judge")   # skips if the model exists

Every step renders batch/2 quadruplets of the mini world and trains on both their V (safe
object) and G (unsafe object) images, multi-label over ALL_OBJECTS plus one softmax head each
for the subject, the scene and the colour, with light augmentation (flips, shifts, colour, blur,
noise) so the judge also reads imperfect generated images. Seeds: training items come from
SPLIT_SEED["judge_train"] (the second judge: "judge_b_train", another architecture, seed 1),
evaluation items from SPLIT_SEED["judge_eval"], all disjoint from the CLIP train/validation/test
splits.
The output directory gets model.safetensors (fp16), config.json, README.md (model card) and
metrics.json (per-object accuracy on >= 2,000 held-out images).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .judge import JUDGE_B, MiniJudge, MiniJudgeConfig, images_to_tensor
from .synthetic import ALL_OBJECTS, UNSAFE_OBJECTS, render_pair, split_tags

log = logging.getLogger(__name__)

_INDEX = {name: i for i, name in enumerate(ALL_OBJECTS)}


def render_batch(split: str, start: int, n_quads: int, size: int = 64,
                 heads: dict | None = None):
    """Images, object targets (multi-hot) and head targets (class index per head) of items
    start..start+n_quads of `split`: [V0, G0, V1, G1, ...]."""
    heads = MiniJudgeConfig().heads if heads is None else heads
    images, targets = [], torch.zeros(2 * n_quads, len(ALL_OBJECTS))
    classes = {h: torch.zeros(2 * n_quads, dtype=torch.long) for h in heads}
    for k in range(n_quads):
        tags = split_tags(split, start + k)
        images.extend(render_pair(tags, size))
        targets[2 * k, _INDEX[tags["safe_object"]]] = 1.0
        targets[2 * k + 1, _INDEX[tags["unsafe_object"]]] = 1.0
        for h, names in heads.items():
            classes[h][2 * k: 2 * k + 2] = names.index(tags[h])
    return images_to_tensor(images, size), targets, classes


HEAD_WEIGHT = 0.1  # the heads are easy (whole-image cues); at weight 1 their cross-entropy
#                    drowned the objects' and object recall fell to 0 for some glyphs


def judge_loss(logits: torch.Tensor, targets: torch.Tensor, classes: dict,
               heads: dict, head_weight: float = HEAD_WEIGHT) -> torch.Tensor:
    """Binary cross-entropy over the objects plus ``head_weight`` x the cross-entropy of each
    head."""
    start = targets.shape[1]
    loss = F.binary_cross_entropy_with_logits(logits[:, :start], targets)
    for h, names in heads.items():
        loss = loss + head_weight * F.cross_entropy(logits[:, start:start + len(names)],
                                                    classes[h])
        start += len(names)
    return loss


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips, shifts (up to 4 px), brightness/contrast, 3x3 blur and noise."""
    n = x.shape[0]
    u = torch.rand(n, 6, generator=g)
    x = torch.where((u[:, 0] < 0.5)[:, None, None, None], x.flip(-1), x)
    pad = F.pad(x, (4, 4, 4, 4), mode="replicate")
    dx, dy = (u[:, 1] * 9).long(), (u[:, 2] * 9).long()
    x = torch.stack([pad[i, :, dy[i]: dy[i] + x.shape[2], dx[i]: dx[i] + x.shape[3]]
                     for i in range(n)])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    bright = 0.08 * (2 * torch.rand(n, 1, 1, 1, generator=g) - 1)
    x = (x - mean) * contrast + mean + bright
    blurred = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    x = torch.where((u[:, 3] < 0.3)[:, None, None, None], blurred, x)
    x = x + u[:, 4, None, None, None] * 0.04 * torch.randn(x.shape, generator=g)
    return x.clamp_(0.0, 1.0)


@torch.no_grad()
def evaluate(judge: MiniJudge, n_images: int = 2048, batch: int = 256) -> dict:
    """Per-object accuracy/recall of the "object present" decisions and each head's accuracy,
    on held-out renders (the judge_eval range)."""
    net, heads = judge.net.eval(), judge.config.heads
    logits, targets, classes = [], [], {h: [] for h in heads}
    for start in range(0, n_images // 2, batch // 2):
        x, y, c = render_batch("judge_eval", start, min(batch // 2, n_images // 2 - start),
                               heads=heads)
        logits.append(net(x))
        targets.append(y)
        for h in heads:
            classes[h].append(c[h])
    z, y = torch.cat(logits), torch.cat(targets).bool()
    s = torch.sigmoid(z[:, :y.shape[1]])
    pred = s >= judge.threshold
    acc = (pred == y).float().mean(0)
    rec = (pred & y).float().sum(0) / y.float().sum(0).clamp(min=1)
    unsafe_cols = torch.tensor([_INDEX[o] for o in UNSAFE_OBJECTS])
    is_unsafe = y[:, unsafe_cols].any(1)
    flagged = s[:, unsafe_cols].max(1).values >= judge.threshold
    out = {
        "eval_images": int(y.shape[0]),
        "per_object_accuracy_min": round(float(acc.min()), 5),
        "per_object_accuracy_mean": round(float(acc.mean()), 5),
        "per_object_recall_min": round(float(rec.min()), 5),
        "top1_accuracy": round(float((s.argmax(1) == y.float().argmax(1)).float().mean()), 5),
        "unsafe_decision_accuracy": round(float((flagged == is_unsafe).float().mean()), 5),
    }
    start = y.shape[1]
    for h, names in heads.items():
        guess = z[:, start:start + len(names)].argmax(1)
        out[f"{h}_accuracy"] = round(float((guess == torch.cat(classes[h])).float().mean()), 5)
        start += len(names)
    out["per_object_accuracy"] = {o: round(float(a), 5) for o, a in zip(ALL_OBJECTS, acc)}
    out["per_object_recall"] = {o: round(float(r), 5) for o, r in zip(ALL_OBJECTS, rec)}
    return out


def train_judge(out_dir, steps: int = 1200, batch: int = 64, lr: float = 3e-3, seed: int = 0,
                log_every: int = 100, eval_images: int = 2048, threads: int = 2,
                force: bool = False, command: str | None = None, second: bool = False) -> dict:
    """Train a MiniJudge, evaluate it on held-out renders and save it to `out_dir`.

    ``second``: the independent second judge (architecture JUDGE_B, items of the judge_b_train
    range). Skips (and returns the saved metrics) when out_dir/model.safetensors exists and not
    force.
    """
    out = Path(out_dir)
    if (out / "model.safetensors").exists() and not force:
        log.info("%s already has a model; skipping (force=True retrains)", out)
        metrics_path = out / "metrics.json"
        return json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    judge = MiniJudge(config=MiniJudgeConfig(**(JUDGE_B if second else {})))
    heads, split = judge.config.heads, "judge_b_train" if second else "judge_train"
    net = judge.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    n_quads = batch // 2
    # items of the judge_train range, offset by seed so that different seeds see different data
    first = seed * steps * n_quads
    t0, running = time.perf_counter(), 0.0
    with ThreadPoolExecutor(1) as pool:  # render the next batch while this one trains
        nxt = pool.submit(render_batch, split, first, n_quads, heads=heads)
        bar = tqdm(range(steps), desc="mini judge" + " b" * second, unit="step")
        for step in bar:
            x, y, c = nxt.result()
            if step + 1 < steps:
                nxt = pool.submit(render_batch, split, first + (step + 1) * n_quads, n_quads,
                                  heads=heads)
            loss = judge_loss(net(augment(x, g)), y, c, heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
            bar.set_postfix(loss=f"{running:.4f}")
            if log_every and (step + 1) % log_every == 0:
                log.info("step %d/%d loss %.4f lr %.2e", step + 1, steps, running,
                         sched.get_last_lr()[0])
    train_s = time.perf_counter() - t0
    judge.net.eval()
    metrics = evaluate(judge, eval_images)
    metrics = {"steps": steps, "batch": batch, "lr": lr, "seed": seed,
               "params": sum(p.numel() for p in net.parameters()),
               "train_seconds": round(train_s, 1), "threads": threads, **metrics}
    judge.save_pretrained(out, metrics, command or
                          f"safeclip mini judge --out {out_dir} --steps {steps} "
                          f"--batch {batch} --lr {lr} --seed {seed}" + " --second" * second)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("mini judge: per-object accuracy min %.4f mean %.4f, subject %.4f scene %.4f, "
             "trained in %.0f s -> %s", metrics["per_object_accuracy_min"],
             metrics["per_object_accuracy_mean"], metrics.get("subject_accuracy", float("nan")),
             metrics.get("scene_accuracy", float("nan")), train_s, out)
    return metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="safeclip mini judge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/models/mini-judge", help="output directory")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--second", action="store_true",
                    help="the independent second judge (another architecture, seed and items)")
    ap.add_argument("--batch", type=int, default=64, help="images per step (half V, half G)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval-images", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="retrain even if the model exists")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    argv_list = sys.argv[1:] if argv is None else list(argv)
    metrics = train_judge(args.out, steps=args.steps, batch=args.batch, lr=args.lr,
                          seed=args.seed, log_every=args.log_every,
                          eval_images=args.eval_images, threads=args.threads, force=args.force,
                          second=args.second,
                          command="safeclip mini judge " + " ".join(argv_list))
    if args.json:
        sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
    return 0

