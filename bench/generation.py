"""Paired generation vs stock pipelines, measured side by side in one run (mini preset by default).

    OMP_NUM_THREADS=1 python bench/generation.py [--preset mini] [--steps 20] [--repeats 3] [--json]

What is measured (and printed as one JSON object with ratios):

- model memory: bytes of the distinct tensor storages (parameters and buffers) of (a) one stock
  pipeline (UNet + VAE + original text encoder; the mini world's generator is one too), (b) the
  paired pipeline (the same + Safe-CLIP's text encoder, whose
  tensors equal to the original's are shared), (c) two stock pipelines;
- peak RSS increase: each configuration loads and generates once in its own fresh subprocess;
  the figure is ru_maxrss minus the RSS after imports (so the Python / torch runtime, which
  dominates for the mini models, is left out; it still includes allocator slack and activations);
- time: CPU time (process_time) and wall time of ``generate_pair`` vs two sequential stock
  generations with the same settings (median of --repeats); on CUDA also vs one stock generation
  (wall time, synchronised). Ratios < 1 mean the paired run is cheaper.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

PROMPT = "a red dog holding a kite in the park"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def parts(gen) -> tuple[list, torch.nn.Module, torch.nn.Module]:
    """(the image model's modules, the original text encoder, the safe one)."""
    pp = gen.paired
    return [pp.pipe.unet, pp.pipe.vae], pp.pipe.text_encoder, pp.safe_text_encoder


def stock_pipe(gen, text_encoder):
    from diffusers import StableDiffusionPipeline

    p = gen.paired.pipe
    pipe = StableDiffusionPipeline(vae=p.vae, unet=p.unet, scheduler=p.scheduler, tokenizer=p.tokenizer,
                                   text_encoder=text_encoder, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def child(config: str, preset: str, steps: int) -> dict:
    """Load one configuration from disk in this (fresh) process and generate once."""
    import copy

    import diffusers  # noqa: F401  the libraries' own import cost is left out of the figure
    from diffusers import StableDiffusionPipeline  # noqa: F401
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer  # noqa: F401

    from safeclip.generation import load_generator

    base = rss_bytes()
    gen = load_generator(preset, cache=False)
    size = gen.defaults["size"]
    if config == "paired":
        gen.generate_pair(PROMPT, steps=steps, progress=False)
    else:
        (model, vae), te_o, te_s = parts(gen)
        pipes = [stock_pipe(gen, te_o)]
        if config == "two":  # a second, independent copy of everything
            pipes.append(stock_pipe(gen, copy.deepcopy(te_s)))
            pipes[1].unet, pipes[1].vae = copy.deepcopy(model), copy.deepcopy(vae)
        del gen, model, vae, te_o, te_s
        for pipe in pipes:
            pipe(PROMPT, num_inference_steps=steps, height=size, width=size,
                 generator=torch.Generator().manual_seed(0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_rss_increase": peak - base}


def run_child(config: str, preset: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", config, "--preset", preset,
                          "--steps", str(steps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mini")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.steps)))
        return 0

    from safeclip.generation import load_generator
    from safeclip.sharing import unique_bytes as unique_storage_bytes

    gen = load_generator(args.preset, cache=False)
    if not gen.uses_steps:  # a one-step generator (the mini SD): its own step count
        args.steps = gen.defaults["steps"]
    image_parts, te_o, te_s = parts(gen)
    single_b = unique_storage_bytes(*image_parts, te_o)
    paired_b = unique_storage_bytes(*image_parts, te_o, te_s)
    te_s_alone = sum(t.numel() * t.element_size() for t in list(te_s.parameters()) + list(te_s.buffers()))
    two_b = 2 * unique_storage_bytes(*image_parts) + unique_storage_bytes(te_o) + te_s_alone
    device = gen.paired.device
    report = {"preset": args.preset, "generator": gen.paired.sampler, "device": str(device),
              "threads": torch.get_num_threads(),
              "steps": args.steps, "size": gen.defaults["size"], "guidance": gen.defaults["guidance"],
              "model_bytes": {"single": single_b, "paired": paired_b, "two_stock": two_b,
                              "paired_over_single": round(paired_b / single_b, 3),
                              "two_stock_over_single": round(two_b / single_b, 3)}}
    rss = {c: run_child(c, args.preset, args.steps)["peak_rss_increase"] for c in ("single", "paired", "two")}
    report["peak_rss_increase_bytes"] = {**rss,
                                         "paired_over_single": round(rss["paired"] / rss["single"], 3),
                                         "two_stock_over_single": round(rss["two"] / rss["single"], 3)}

    stock_o, stock_s = stock_pipe(gen, te_o), stock_pipe(gen, te_s)
    size, g = gen.defaults["size"], gen.defaults["guidance"]
    cuda = device.type == "cuda"

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - w, time.process_time() - c

    def one(pp):
        return pp(PROMPT, num_inference_steps=args.steps, guidance_scale=g, height=size, width=size,
                  generator=torch.Generator().manual_seed(0))

    runs = {"pair": lambda: gen.generate_pair(PROMPT, steps=args.steps, guidance=g, progress=False),
            "two_stock": lambda: (one(stock_o), one(stock_s)), "one_stock": lambda: one(stock_o)}
    for fn in runs.values():  # warm-up
        fn()
    times = {k: [timed(fn) for _ in range(args.repeats)] for k, fn in runs.items()}
    med = {k: {"wall_s": round(statistics.median(t[0] for t in v), 4),
               "cpu_s": round(statistics.median(t[1] for t in v), 4)} for k, v in times.items()}
    report["time"] = {**med,
                      "pair_over_two_stock_cpu": round(med["pair"]["cpu_s"] / med["two_stock"]["cpu_s"], 3),
                      "pair_over_two_stock_wall": round(med["pair"]["wall_s"] / med["two_stock"]["wall_s"], 3),
                      "pair_over_one_stock_wall": round(med["pair"]["wall_s"] / med["one_stock"]["wall_s"], 3),
                      "note": "generate_pair includes judging both images; stock runs do not"}
    report["bars"] = {"memory_paired_le_1.15x_single": report["model_bytes"]["paired_over_single"] <= 1.15}
    if cuda:
        report["bars"]["gpu_time_pair_le_1.3x_one_stock"] = report["time"]["pair_over_one_stock_wall"] <= 1.3
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
