"""Time of the I2P protocol's paired pass on one device, and what all of I2P costs from it.

    python bench/i2p_timing.py --preset vit-l-14 --json          # a GPU: SD 1.4, 512 px, 50 steps
    python bench/i2p_timing.py --size 256 --steps 2 --pairs 2 --warmup 1 --device cpu   # a smoke
        run on the stand-ins (tests/test_i2p.py), which says nothing about real timings

What is measured, on the world's paired generator (one Stable Diffusion, both text encoders, one
batched denoising loop; what ``safeclip eval generation --prompts i2p.csv`` runs per pair):

- ``generation``: wall time of one pair (the original's image and Safe-CLIP's), synchronised on
  CUDA, median of ``--pairs`` timed pairs after ``--warmup`` untimed ones; ``per_image`` is half
  of it (each prompt gives one image per text encoder);
- ``judging``: NudeNet + Q16 on the pair's two images (the world's judge), median likewise;
- peak GPU memory of the process (CUDA only).

From these: ``i2p`` extrapolates to I2P's 4,703 prompts x ``--images-per-prompt``:
``hours = prompts x images x (generation + judging) / 3600`` on one device, and that divided by
G for ``--gpus G`` (the run shares prompts out by row; start-up and uneven tails left out).
Nothing is printed that this run did not measure: read the device line before quoting a figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

I2P_PROMPTS = 4703  # AIML-TUDA/i2p
PROMPTS = ["a dog with a ball in the park", "a red car in the street", "a cup of tea on a table",
           "a child holding a kite on the beach"]


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, n: int, warmup: int, device) -> tuple[list[float], list]:
    """(seconds of each of ``n`` calls of ``fn(i)`` after ``warmup`` untimed ones, outputs)."""
    out = []
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(warmup, warmup + n):
        _sync(device)
        t0 = time.perf_counter()
        out.append(fn(i))
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


def main(argv=None) -> int:
    import torch

    from safeclip.generation import load_generator
    from safeclip.presets import get_preset
    from safeclip.safety.base import NoJudge, load_judge

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="vit-l-14")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50, help="the I2P runs' default")
    p.add_argument("--guidance", type=float, default=7.0, help="I2P's most common guidance")
    p.add_argument("--pairs", type=int, default=5, help="timed pairs")
    p.add_argument("--warmup", type=int, default=1, help="untimed pairs first")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--gpus", type=int, nargs="*", default=[1, 4, 8])
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    world = get_preset(args.preset)
    t0 = time.perf_counter()
    gen = load_generator(world, device=args.device, cache=False)
    load_s = time.perf_counter() - t0
    device = gen.paired.device
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    none = NoJudge(2.0)

    def pair(i):
        return gen.generate_pair(PROMPTS[i % len(PROMPTS)], seed=i, steps=args.steps,
                                 guidance=args.guidance, size=args.size, progress=False,
                                 judge=none)

    gen_times, results = timed(pair, args.pairs, args.warmup, device)
    judge = load_judge(world.generation.judge, world)
    judge_times, _ = timed(lambda i: judge.judge([results[i % len(results)].clip.image,
                                                  results[i % len(results)].safeclip.image]),
                           args.pairs, 1, device)  # the first call loads NudeNet and Q16
    g, j = statistics.median(gen_times), statistics.median(judge_times)
    pairs = I2P_PROMPTS * args.images_per_prompt
    card = judge.card()
    result = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else None,
        "dtype": str(gen.paired.pipe.unet.dtype), "preset": world.name,
        "models": {"sd": world.generation.sd.ref, "safe_text": world.generation.safe_text.ref},
        "size": args.size, "steps": args.steps, "guidance": args.guidance,
        "scheduler": gen.paired.sampler, "load_seconds": round(load_s, 1),
        "timed_pairs": args.pairs, "warmup_pairs": args.warmup,
        "generation": {"seconds_per_pair": round(g, 4), "seconds_per_image": round(g / 2, 4),
                       "all_pairs": [round(t, 4) for t in gen_times]},
        "judging": {"seconds_per_pair": round(j, 4), "judge": card.get("name"),
                    "nudity_only": card.get("nudity_only", False)},
        "peak_gpu_memory_gb": (round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                               if str(device).startswith("cuda") else None),
        "i2p": {"prompts": I2P_PROMPTS, "images_per_prompt": args.images_per_prompt,
                "pairs": pairs,
                "hours": {str(n): round(pairs * (g + j) / 3600 / n, 2) for n in args.gpus}},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['device']} {result['gpu'] or ''} {result['dtype']}: {args.size} px, "
              f"{args.steps} steps, {gen.paired.sampler}")
        print(f"  pair {g:.3f} s (per image {g / 2:.3f} s), judging {j:.3f} s per pair")
        for n, h in result["i2p"]["hours"].items():
            print(f"  all of I2P ({pairs} pairs) on {n} device(s): {h} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
