"""Training throughput: ``safeclip train``'s step against the straightforward loop.

    python bench/train_throughput.py [--steps 15] [--batch 128] [--model assets/models/mini-clip] [--profile]

The straightforward loop is the way the official code is structured: a second, frozen copy of the
model recomputes the reference embeddings of S and V at every step, and the tuned model encodes
S, U, V and G in four separate calls. ``safeclip train`` reads the reference from a cache built
once before training, encodes S+U and V+G in one call each, and runs each tower's last layer for
the pooled token only (``safeclip.train.pooled``). A third loop, ``safeclip train`` without that
last-layer saving, shows what each part gives. Same mini model, same LoRA initialisation, same
batches; the first-step losses must agree to 1e-5. The loops take turns step by step (the order
rotates), so all see the same machine load; the ratio of samples per second is printed, with the
one-off cost of the reference cache and the step at which it has paid for itself.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safeclip.encoders import image_features, text_features  # noqa: E402
from safeclip.mini.cache import load_split, render_split  # noqa: E402
from safeclip.tokenizer import clip_tokenizer  # noqa: E402
from safeclip.train.data import ArrayQuads  # noqa: E402
from safeclip.train.lora import LoraSettings, add_lora  # noqa: E402
from safeclip.train.losses import SafeClipLoss  # noqa: E402
from safeclip.train.trainer import DualEncoder, batch_plan, epoch_order, reference_embeddings  # noqa: E402


def load_model(path):
    from transformers import CLIPModel
    return CLIPModel.from_pretrained(path, dtype=torch.float32).train()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="assets/models/mini-clip")
    p.add_argument("--data", default="work/bench/data")
    p.add_argument("--n", type=int, default=2048, help="training items rendered for the bench")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="also print where one of our steps spends its time (torch.profiler)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    render_split("train", args.data, n=args.n, chunk=args.n)
    data = load_split(args.data, "train")
    src = ArrayQuads(data, clip_tokenizer(32), 32)
    loss_fn = SafeClipLoss()
    lora = LoraSettings(dropout=0.0)  # identical computations in both loops

    # ours: cached reference, batched encoder
    base = load_model(args.model)
    t0 = time.perf_counter()
    cache = reference_embeddings(base, src, ("S", "V"), desc="reference cache")
    cache_seconds = time.perf_counter() - t0
    full_base = copy.deepcopy(base)
    torch.manual_seed(1)
    ours = DualEncoder(add_lora(base, lora)).train()
    opt_ours = torch.optim.Adam([q for q in ours.parameters() if q.requires_grad], lr=1e-3)
    torch.manual_seed(1)
    ours_full = DualEncoder(add_lora(full_base, lora), pooled=False).train()
    opt_full = torch.optim.Adam([q for q in ours_full.parameters() if q.requires_grad], lr=1e-3)

    # straightforward: a frozen copy recomputes the reference each step; four encoder calls
    plain_base = load_model(args.model)
    ref_model = copy.deepcopy(plain_base).eval().requires_grad_(False)
    torch.manual_seed(1)
    plain = add_lora(plain_base, lora).train()
    opt_plain = torch.optim.Adam([q for q in plain.parameters() if q.requires_grad], lr=1e-3)

    order = epoch_order(0, 0, src.n)

    def cached_step(model, opt):
        def step(b, idx, wording):
            ref = {"S": cache["S"][torch.as_tensor(idx), torch.as_tensor(wording)],
                   "V": cache["V"][torch.as_tensor(idx)]}
            out = loss_fn(model(b), ref)
            opt.zero_grad()
            out["total"].backward()
            opt.step()
            return out["total"].item()
        return step

    step_ours, step_full = cached_step(ours, opt_ours), cached_step(ours_full, opt_full)

    ref_times = []

    def step_plain(b, idx, wording):
        t = time.perf_counter()
        with torch.no_grad():
            ref = {"S": text_features(ref_model, b["S"]), "V": image_features(ref_model, b["V"])}
        ref_times.append(time.perf_counter() - t)
        ft = {"S": text_features(plain, b["S"]), "U": text_features(plain, b["U"]),
              "V": image_features(plain, b["V"]), "G": image_features(plain, b["G"])}
        out = loss_fn(ft, ref)
        opt_plain.zero_grad()
        out["total"].backward()
        opt_plain.step()
        return out["total"].item()

    times = {"ours": [], "ours_full_last_layer": [], "plain": []}
    loops = [("ours", step_ours), ("ours_full_last_layer", step_full), ("plain", step_plain)]
    first, losses = {}, {}
    for s in range(args.warmup + args.steps):
        idx, wording = batch_plan(0, 0, s % (src.n // args.batch), order, args.batch, src.n_wordings)
        b = src.get(idx, wording)
        for name, fn in loops[s % 3:] + loops[:s % 3]:
            t = time.perf_counter()
            loss = fn(b, idx, wording)
            if s >= args.warmup:
                times[name].append(time.perf_counter() - t)
            first.setdefault(name, loss)
            losses.setdefault(name, []).append(loss)
    diff = max(abs(first[k] - first["plain"]) for k in first)
    if diff > 1e-5:
        print(f"first-step losses differ by {diff:.2e}: the loops do not compute the same thing")
        return 1
    sps = {k: args.batch / float(np.median(v)) for k, v in times.items()}
    # Amdahl: what caching the reference can give at most is the plain step without its
    # reference forward; anything above that ratio must come from the tuned model's own step
    t_plain = float(np.median(times["plain"]))
    t_ref = float(np.median(ref_times[args.warmup:]))
    saved_per_step = float(np.median(times["plain"]) - np.median(times["ours"]))
    result = {
        "batch": args.batch, "steps": args.steps, "first_step_loss": first["ours"],
        "first_step_loss_diff": diff,
        # the loops apply the same updates, so their losses stay together step after step
        "max_loss_diff_over_steps": max(abs(a - b) for k in ("ours", "ours_full_last_layer")
                                        for a, b in zip(losses[k], losses["plain"])),
        "samples_per_s": {k: round(v, 1) for k, v in sps.items()},
        "ratio": round(sps["ours"] / sps["plain"], 2),
        "ratio_without_pooled_last_layer": round(sps["ours_full_last_layer"] / sps["plain"], 2),
        "reference_cache_s": round(cache_seconds, 1), "cache_items": src.n,
        "cache_pays_off_after_steps": (round(cache_seconds / saved_per_step)
                                       if saved_per_step > 0 else None),
        "threads": torch.get_num_threads(),
        "reference_share_of_plain_step": round(t_ref / t_plain, 3),
        "ceiling_from_caching": round(t_plain / (t_plain - t_ref), 2),
    }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        idx, wording = batch_plan(0, 0, 0, order, args.batch, src.n_wordings)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step_ours(src.get(idx, wording), idx, wording)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"safeclip train: {sps['ours']:.1f} samples/s, straightforward loop: "
              f"{sps['plain']:.1f} samples/s -> ratio {result['ratio']:.2f}x\n"
              f"Same computation: first-step loss {first['ours']:.6f} (diff {diff:.1e}), "
              f"largest loss difference over all steps {result['max_loss_diff_over_steps']:.1e}."
              f"\nReference cache: {cache_seconds:.1f} s for {src.n} items.\n"
              f"Without the pooled last layer: {sps['ours_full_last_layer']:.1f} samples/s -> "
              f"{result['ratio_without_pooled_last_layer']:.2f}x. The reference forward is "
              f"{t_ref / t_plain:.0%} of a straightforward step, so caching it alone can give at "
              f"most {result['ceiling_from_caching']:.2f}x.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
