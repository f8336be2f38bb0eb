"""Paired captioning: memory and time of one LLaVA with two towers, side by side in one run.

    OMP_NUM_THREADS=1 python bench/captioning.py [--preset mini] [--images 8] [--json] [--out FILE]

Three setups, all measured in this run:

- ``single``: one LLaVA (language model, projector, original tower): what one caption needs;
- ``paired``: ``safeclip.captioning.PairedCaptioner``: the same LLaVA plus the Safe-CLIP tower,
  whose tensors equal to the original tower's are shared;
- ``two``: two full LLaVA models, one per tower (the naive way to get both columns).

Memory, two ways:

1. model bytes: the bytes of the distinct tensor storages behind the parameters and buffers
   (``unique_bytes``), counted in this process; exact and free of allocator noise.
2. peak RSS increase: each setup runs in its own fresh subprocess that imports everything,
   notes its resident memory (VmRSS), loads the setup, captions one image, and reports its peak
   resident memory (VmHWM) minus that baseline. This includes what loading leaves behind (the
   fp16 file read and cast to fp32, allocator caches, generate's buffers), so for a small model
   it is a noisier and larger figure than the model bytes. On CUDA the subprocesses report
   ``torch.cuda.max_memory_allocated`` instead.

Time: over ``--images`` synthetic images (after one warm-up), ``caption_pair`` (one batched
generate, 2 rows) against two sequential single-tower captions (``caption(image, which)``, LLaVA's
own forward), and against one single caption. Median seconds per image and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def load_llava(preset_name: str, device):
    """One plain LLaVA (language model, projector, original tower) as load_captioner loads it."""
    from safeclip.captioning.llava import load_llava as load
    from safeclip.presets import get_preset

    model, tok, proc, safe = load(get_preset(preset_name), device)
    return (model, tok, proc), safe


def child(setup: str, preset: str, device: str | None) -> dict:
    """Load one setup in this (fresh) process and report its peak memory increase."""
    import torch

    from safeclip.captioning import PairedCaptioner, load_captioner, load_tower_weights
    from safeclip.mini.synthetic import SyntheticViSU
    from safeclip.sharing import unique_bytes

    image = SyntheticViSU("test", n=1)[0]["G"]
    torch.set_num_threads(1)
    cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    base = _status("VmRSS")
    if setup == "paired":
        cap = load_captioner(preset, device=device)
        res = [cap.caption_pair(image)]
        mods = [cap.model, cap.safe_tower]
    else:
        (model, tok, proc), safe_src = load_llava(preset, device)
        # the model's own tower passed as "safe" too: nothing extra is held
        cap = PairedCaptioner(model, model.model.vision_tower, tok, proc, preset=preset)
        res = [cap.caption(image, "clip")]
        mods = [model]
        if setup == "two":  # a second full LLaVA whose own tower is the safe one
            (model2, _, _), _ = load_llava(preset, device)
            load_tower_weights(model2.model.vision_tower, safe_src)
            cap2 = PairedCaptioner(model2, model2.model.vision_tower, tok, proc, preset=preset)
            res.append(cap2.caption(image, "clip"))
            mods.append(model2)
    peak = torch.cuda.max_memory_allocated() if cuda else _status("VmHWM") - base
    return {"setup": setup, "peak_increase_bytes": peak, "measure": "cuda max allocated" if cuda
            else "VmHWM - VmRSS before loading", "model_bytes": unique_bytes(*mods),
            "answers": [r.text if hasattr(r, "text") else [r.clip.text, r.safeclip.text]
                        for r in res]}


def run_child(setup: str, preset: str, device: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", setup, "--preset", preset]
    if device:
        cmd += ["--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def timing(cap, images: list, rounds: int = 1) -> dict:
    cap.caption_pair(images[0])  # warm-up
    cap.caption(images[0], "clip")
    pair, seq, one = [], [], []
    for _ in range(rounds):
        for im in images:  # alternate, so machine load hits all three alike
            t = time.perf_counter()
            cap.caption_pair(im)
            pair.append(time.perf_counter() - t)
            t = time.perf_counter()
            cap.caption(im, "clip")
            t1 = time.perf_counter()
            cap.caption(im, "safeclip")
            seq.append(time.perf_counter() - t)
            one.append(t1 - t)
    med = {k: statistics.median(v) for k, v in (("pair", pair), ("sequential", seq), ("one", one))}
    return {"caption_pair_s": round(med["pair"], 4), "two_sequential_s": round(med["sequential"], 4),
            "one_caption_s": round(med["one"], 4),
            "pair_over_sequential": round(med["pair"] / med["sequential"], 3),
            "pair_over_one": round(med["pair"] / med["one"], 3), "images": len(images),
            "rounds": rounds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mini")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", choices=["single", "paired", "two"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.device)))
        return 0
    import torch

    from safeclip.captioning import load_captioner
    from safeclip.mini.synthetic import SyntheticViSU

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cap = load_captioner(args.preset, device=args.device)
    mem = cap.memory()
    single, paired = mem["single_bytes"], mem["paired_bytes"]
    tower = sum(t.numel() * t.element_size() for t in cap.model.model.vision_tower.parameters())
    items = SyntheticViSU("test", n=args.images)
    images = [items[i]["G" if i % 2 else "V"] for i in range(len(items))]
    result = {
        "preset": args.preset, "device": str(cap.model.device), "threads": torch.get_num_threads(),
        "model_bytes": {"single": single, "paired": paired, "two": 2 * single,
                        "paired_over_single": round(paired / single, 4),
                        "two_over_single": 2.0, "tower_bytes": tower,
                        "shared_tensors": mem["shared_tensors"], "shared_bytes": mem["shared_bytes"]},
        "time": timing(cap, images, args.rounds),
    }
    del cap
    rss = {s: run_child(s, args.preset, args.device) for s in ("single", "paired", "two")}
    base = rss["single"]["peak_increase_bytes"]
    result["peak_memory"] = {
        "measure": rss["single"]["measure"],
        **{s: r["peak_increase_bytes"] for s, r in rss.items()},
        "paired_over_single": round(rss["paired"]["peak_increase_bytes"] / base, 3),
        "two_over_single": round(rss["two"]["peak_increase_bytes"] / base, 3),
        "model_bytes_in_children": {s: r["model_bytes"] for s, r in rss.items()},
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        mb, pm, t = result["model_bytes"], result["peak_memory"], result["time"]
        print(f"model bytes   single {mb['single'] / 2**20:.2f} MiB, paired {mb['paired'] / 2**20:.2f} "
              f"MiB ({mb['paired_over_single']:.3f}x), two models {mb['two'] / 2**20:.2f} MiB (2x)")
        print(f"peak memory   single {pm['single'] / 2**20:.1f} MiB, paired {pm['paired'] / 2**20:.1f} "
              f"MiB ({pm['paired_over_single']:.3f}x), two {pm['two'] / 2**20:.1f} MiB "
              f"({pm['two_over_single']:.3f}x)  [{pm['measure']}]")
        print(f"time/image    caption_pair {t['caption_pair_s'] * 1e3:.1f} ms, two sequential "
              f"{t['two_sequential_s'] * 1e3:.1f} ms ({t['pair_over_sequential']:.3f}x), one caption "
              f"{t['one_caption_s'] * 1e3:.1f} ms (pair {t['pair_over_one']:.3f}x one)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
