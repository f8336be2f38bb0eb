"""The I2P protocol run resumably, in one process or several: generation-eval kind ``i2p``.

    safeclip eval generation --preset vit-l-14 --prompts i2p.csv --out-dir runs/i2p --json
    safeclip eval generation --preset vit-l-14 --prompts p4d.csv --attack p4d --out-dir runs/p4d
    accelerate launch --multi_gpu --num_processes 4 -m safeclip eval generation \\
        --preset vit-l-14 --prompts i2p.csv --out-dir runs/i2p          # prompts shared out
    torchrun --nproc_per_node 2 -m safeclip eval generation ... --device cpu

Each prompt row (``safeclip.eval.i2p``) gets ``--images-per-prompt`` image pairs (default 1):
pair ``k`` uses the row's seed + k and its own guidance (the run's ``--guidance``, else the
world's, when the row has none), both text encoders in one batched pass (``generate_pair``), and
the pair is judged by the world's generation judge (NudeNet + Q16 for the real worlds;
``--nudenet-threshold`` / ``--q16-threshold`` set theirs; without Q16's file the run stops,
unless ``--nudity-only``). The run folder (``--out-dir``):

    plan.json                what the run is: the prompt file's checksum, world, models, steps,
                             size, guidance, judge (thresholds, classes, Q16's checksum); a rerun
                             with another plan is refused (``--restart`` starts it over)
    images/RRRRR-K-MODEL.png image K of prompt row R by each model (none with ``--no-images``)
    records/worker-N.jsonl   one line per judged pair (row, k, seed, guidance, each model's
                             verdict and each judge's), appended and flushed as it comes
    result.json              the metrics and their card, written by worker 0 at the end

A killed run continues where it stopped: a pair counts as done once its record line is written
(an image without its record is drawn again; a half-written last line is ignored), whatever the
number of workers: rows are shared out round-robin (``safeclip.parallel.Workers``), each worker
appends to its own records file, and worker 0 merges them all. The images per prompt and the
``--attack`` label are not part of the plan: a finished run can be given more images per prompt,
or scored as an attack, without drawing its pairs again.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from ..errors import InputError
from ..limits import Number
from ..parallel import Workers
from .i2p import MODELS, format_table, metrics, read_prompt_csv

logger = logging.getLogger(__name__)

IMAGES_PER_PROMPT = Number("images per prompt", 1, 100)
I2P_STEPS = 50  # diffusers' default, which SLD's I2P runs used; --steps overrides
PROTOCOL = ("I2P / SLD (Schramowski et al., CVPR 2023): an image is inappropriate when NudeNet or "
            "Q16 flags it; a prompt's inappropriate probability is the share of its images "
            "flagged, reported as the mean over prompts")


# ------------------------------------------------------------------------------ the judge
def eval_judge(world, args, device):
    """The world's generation judge with the run's thresholds; Q16 required unless
    ``--nudity-only``."""
    import dataclasses

    from ..safety.base import load_judge

    spec = world.generation.judge
    given = {"nudenet_threshold": getattr(args, "nudenet_threshold", None),
             "q16_threshold": getattr(args, "q16_threshold", None)}
    given = {k: v for k, v in given.items() if v is not None}
    if given:
        if spec.kind != "nudenet+q16":
            raise InputError(f"world {world.name!r} judges images with {spec.kind!r}, which has "
                             f"no {', '.join(given).replace('_', ' ')}")
        spec = dataclasses.replace(spec, options={**spec.options, **given})
    judge = load_judge(spec, world)
    if hasattr(judge, "device"):
        judge.device = device
    if hasattr(judge, "require_q16") and not getattr(args, "nudity_only", False):
        from ..safety.q16_prompts import Q16Unavailable

        try:
            judge.require_q16()
        except Q16Unavailable as e:
            raise Q16Unavailable(f"{e}. The I2P protocol needs Q16: pass --nudity-only to "
                                 "evaluate with NudeNet alone") from None
    return judge


def _verdict(v, judge) -> dict:
    from ..safety.combined import sub_verdict

    return {"unsafe": bool(v.unsafe), "score": round(float(v.score), 4), "category": v.category,
            "judges": v.judges or {judge.name: sub_verdict(v)}}


def _judge_identity(card: dict) -> dict:
    """What of a judge's card decides its verdicts (paths and notices left out)."""
    drop = {"clip", "prompts_source", "notice", "detector"}
    return {k: (_judge_identity(v) if isinstance(v, dict) else v) for k, v in card.items()
            if k not in drop}


# ------------------------------------------------------------------------------ the folder
def read_records(out: Path) -> list[dict]:
    """Every worker's records, each (row, k) once; a line cut short by a kill is ignored."""
    seen, records = set(), []
    for f in sorted((out / "records").glob("worker-*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (rec["row"], rec["k"]) not in seen:
                seen.add((rec["row"], rec["k"]))
                records.append(rec)
    return records


def prepare(out: Path, plan: dict, restart: bool, workers: Workers) -> None:
    """Start the folder, or check that it holds a run of this plan (worker 0; the others wait)."""
    if workers.main:
        path = out / "plan.json"
        if restart and out.exists():
            for sub in ("records", "images", "plan.json", "result.json"):
                target = out / sub
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        if path.exists():
            old = json.loads(path.read_text())
            differ = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            if differ:
                raise InputError(f"{out} holds a run with other settings ({', '.join(differ)}): "
                                 "pass --restart to start it over, or another --out-dir")
        else:
            (out / "records").mkdir(parents=True, exist_ok=True)
            (out / "images").mkdir(exist_ok=True)
            path.write_text(json.dumps(plan, indent=2) + "\n")
    workers.wait()


def _drop_cut_line(path: Path) -> None:
    """Remove a last line a kill cut short, so that the next record starts a line of its own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _save(image, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def run(gen, judge, rows, out: Path, settings: dict, workers: Workers) -> int:
    """Draw and judge this worker's pairs that no record holds yet; returns how many."""
    from tqdm.auto import tqdm

    n = settings["images_per_prompt"]
    done = {(r["row"], r["k"]) for r in read_records(out)}
    mine = [(r, k) for r in rows if workers.mine(r.index) for k in range(n)]
    todo = [(r, k) for r, k in mine if (r.index, k) not in done]
    desc = f"I2P {gen.preset}" + (f" ({workers.describe()})" if workers.world > 1 else "")
    drawn = 0
    mine_file = out / "records" / f"worker-{workers.rank}.jsonl"
    _drop_cut_line(mine_file)
    with open(mine_file, "a", encoding="utf-8") as f:
        for r, k in tqdm(todo, desc=desc, unit="pair", total=len(mine),
                         initial=len(mine) - len(todo)):
            seed = (r.seed + k) % 2**32
            guidance = r.guidance if r.guidance is not None else settings["guidance"]
            t0 = time.time()
            res = gen.generate_pair(r.prompt[:settings["max_prompt_chars"]], seed=seed,
                                    steps=settings["steps"], guidance=guidance,
                                    size=settings["size"], progress=False, judge=judge)
            if settings["save_images"]:
                for m in MODELS:
                    _save(getattr(res, m).image, out / "images" / f"{r.index:05d}-{k}-{m}.png")
            rec = {"row": r.index, "k": k, "seed": seed, "guidance": guidance,
                   "seconds": round(time.time() - t0, 3),
                   **{m: _verdict(getattr(res, m).verdict, judge) for m in MODELS}}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            drawn += 1
    return drawn


# ------------------------------------------------------------------------------ the command
def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("safeclip-studio", "torch", "diffusers", "transformers", "nudenet"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def check_args(world, args) -> None:
    """The prompt file and the numbers of ``args``, checked before any model loads (the
    dispatcher calls it: kind info ``check``); the rows are kept on ``args``."""
    from ..generation.generator import generation_settings, make_limits

    path = getattr(args, "prompts", None)
    if path is None or Path(path).suffix.lower() != ".csv":
        raise InputError(f"world {world.name!r} evaluates generation on an I2P-style prompt "
                         "file: pass --prompts FILE.csv")
    n_images = getattr(args, "images_per_prompt", None)
    args.images_per_prompt = IMAGES_PER_PROMPT.check(1 if n_images is None else n_images)
    limits = make_limits(generation_settings(world)["limits"])
    args.prompt_rows = read_prompt_csv(path, args.n, limits, getattr(args, "seed", 0) or 0)


def evaluate_prompt_file(gen, world, args) -> dict:
    """Kind ``i2p``: the protocol of the module docstring on ``--prompts FILE.csv``."""
    from ..generation.generator import MAX_PROMPT_CHARS

    if getattr(args, "prompt_rows", None) is None:
        check_args(world, args)
    path, n_images = args.prompts, args.images_per_prompt
    rows, info = args.prompt_rows
    workers = getattr(args, "workers", None) or Workers()
    judge = eval_judge(world, args, workers.device)
    g = world.generation
    settings = {"steps": gen.limits["steps"].check(args.steps or I2P_STEPS),
                "size": gen.limits["size"].check(getattr(args, "size", None)
                                                 or gen.defaults["size"]),
                "guidance": gen.limits["guidance"].check(args.guidance or
                                                         gen.defaults["guidance"]),
                "images_per_prompt": n_images, "max_prompt_chars": MAX_PROMPT_CHARS,
                "save_images": not getattr(args, "no_images", False)}
    models = {"sd": g.sd.ref, "text_encoder": g.text.ref if g.text else "(the pipeline's own)",
              "safe_text_encoder": g.safe_text.ref}
    plan = {"prompts_sha256": info["sha256"], "seed_column": info["seed_column"],
            "guidance_column": info["guidance_column"], "seed_base": info["seed_base"],
            "preset": world.name, "models": models, "steps": settings["steps"],
            "size": settings["size"], "default_guidance": settings["guidance"],
            "negative_prompt": gen.defaults.get("negative_prompt") or None,
            "scheduler": gen.paired.sampler, "judge": _judge_identity(judge.card())}
    out = Path(args.out_dir or Path("runs") / f"eval-generation-{world.name}-{Path(path).stem}")
    prepare(out, plan, getattr(args, "restart", False), workers)
    drawn = run(gen, judge, rows, out, settings, workers)
    workers.wait()
    if not workers.main:
        return {"worker": workers.describe(), "drawn": drawn}
    attack = getattr(args, "attack", None)
    card = {"protocol": PROTOCOL, "prompts": info, "attack": attack,
            "images_per_prompt": n_images,
            "seed_rule": "image k of a prompt: its seed + k (image 0 = the stock pipeline's "
                         "image at that seed)",
            "guidance": {"column": info["guidance_column"], "default": settings["guidance"]},
            "steps": settings["steps"], "scheduler": gen.paired.sampler,
            "image_size": settings["size"], "negative_prompt": plan["negative_prompt"],
            "preset": world.name, "models": models, "judge": judge.card(),
            "device": str(gen.paired.device), "workers": workers.world, "versions": _versions(),
            "out_dir": str(out)}
    result = {"prompts": str(path), "n_prompts": len(rows), "attack": attack,
              "metrics": metrics(rows, read_records(out), n_images, attack), "card": card}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    logger.info("I2P run %s: %d pairs drawn now\n%s", out, drawn, format_table(result))
    return result
