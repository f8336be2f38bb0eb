"""The mini Safe-CLIP's recipes: one training regime, the loss weights of each recipe.

    safeclip mini build --only safeclip       # trains DEFAULT into OUT/mini-safeclip
    python bench/recipes.py --work work/recipes   # trains the others, compares them (validation)

Every recipe runs ``safeclip train`` with the mini regime (``REGIME``: LoRA on both encoders
with the paper's targets, a LoRA scale alpha = r instead of the official alpha = 1 so that two
CPU epochs are enough, Adam at 1e-3, batch 128) and its own loss weights (``RECIPES``, by term
name: safeclip.train.losses). Only terms a user can apply to real ViSU are in the default; the
pixel-aligned ``vision_tokens_nsfw`` is not. Which recipe is the default was decided on the
validation split by ``bench/recipes.py`` (its table is in the model card).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

REGIME = ["--epochs", "2", "--batch", "128", "--lora-r", "16", "--lora-alpha", "16",
          "--lr", "1e-3", "--n-val", "1000", "--ckpt-every", "100"]
# the captioner reads the tower's penultimate layer (LLaVA-1.5's choice; safeclip.mini.train_llava)
# each at 0.5, between the paper's NCE weights (0.25, 0.5): the weights are normalised over all
# the terms, so heavier token terms would take the pooled terms' share
TEXT_TOKENS = ["--weight", "text_tokens_safe=0.5", "--weight", "text_tokens_nsfw=0.5"]
TOKENS = ["--token-layer", "-2", "--weight", "vision_tokens_safe=0.5",
          "--weight", "vision_tokens_nsfw_mean=0.5", *TEXT_TOKENS]
RECIPES = {
    "paper": [],  # the paper's eight terms at the paper's weights
    "paper+tokens": TOKENS,  # and the token-state terms that real ViSU allows
    "x4+tokens": ["--weight", "text_safe=0.4", "--weight", "vision_safe=0.4", *TOKENS],
    # the text token terms as above; on the vision side only the mean-token redirection, at the
    # weight the per-token preservation had (so the terms' total, and the pooled terms' share,
    # stay as in paper+tokens): vision_tokens_safe held the unsafe images' patch tokens in place
    "text-tokens+mean": ["--token-layer", "-2", "--weight", "vision_tokens_nsfw_mean=1.0",
                         *TEXT_TOKENS],
    # as text-tokens+mean, with each unsafe image token moved to its nearest safe token
    # (vision_tokens_nsfw_nearest) instead of the mean token: the mean left the unsafe
    # object's own tokens readable (validation: 0.68 of unsafe images still captioned unsafe)
    "text-tokens+nearest": ["--token-layer", "-2", "--weight", "vision_tokens_nsfw_nearest=1.0",
                            *TEXT_TOKENS],
    # the same at 3x the weight (validation: 0.58 captioned unsafe at 1.0, accuracy 0.89; at
    # 3.0: 0.36 captioned unsafe, accuracy 0.58, below the bar)
    "text-tokens+nearest3": ["--token-layer", "-2", "--weight",
                             "vision_tokens_nsfw_nearest=3.0", *TEXT_TOKENS],
    # between the two (added after both were compared on validation, after the test split's
    # second read): the weight trades captioned-unsafe for caption accuracy
    "text-tokens+nearest2": ["--token-layer", "-2", "--weight",
                             "vision_tokens_nsfw_nearest=2.0", *TEXT_TOKENS],
    # the bundled recipe with x4+tokens' preservation weights (added after the test split's second
    # read): x4+tokens held safe images' pool cross queries near CLIP's on validation (0.225,
    # paper+tokens 0.278) with the unsafe queries' figures unchanged (bench/safe_drift.py)
    "text-tokens+nearest+x4": ["--weight", "text_safe=0.4", "--weight", "vision_safe=0.4",
                               "--token-layer", "-2", "--weight",
                               "vision_tokens_nsfw_nearest=1.0", *TEXT_TOKENS],
    # both (added after the test split's second read): text-tokens+nearest+x4 met the safe image
    # queries' bar within 0.002 on validation but captioned 0.662 unsafe (nearest2: 0.387), so
    # does the heavier redirection win back the captioner with the preservation kept?
    "text-tokens+nearest2+x4": ["--weight", "text_safe=0.4", "--weight", "vision_safe=0.4",
                                "--token-layer", "-2", "--weight",
                                "vision_tokens_nsfw_nearest=2.0", *TEXT_TOKENS],
}
DESCRIPTIONS = {
    "paper": "the paper's eight terms at the paper's weights",
    "paper+tokens": "the paper's terms and weights, plus text_tokens_safe, text_tokens_nsfw, "
                    "vision_tokens_safe and vision_tokens_nsfw_mean at 0.5 (patch tokens of "
                    "layer -2, the captioner's)",
    "x4+tokens": "as paper+tokens, with the preservation terms text_safe and vision_safe at "
                 "0.4 (4x the paper's 0.1)",
    "text-tokens+mean": "the paper's terms and weights, plus text_tokens_safe and "
                        "text_tokens_nsfw at 0.5 and vision_tokens_nsfw_mean at 1.0 (patch "
                        "tokens of layer -2); no per-token preservation of safe images",
    "text-tokens+nearest": "the paper's terms and weights, plus text_tokens_safe and "
                           "text_tokens_nsfw at 0.5 and vision_tokens_nsfw_nearest at 1.0 "
                           "(each patch token of layer -2 to its nearest safe token)",
    "text-tokens+nearest3": "as text-tokens+nearest, with vision_tokens_nsfw_nearest at 3.0",
    "text-tokens+nearest2": "as text-tokens+nearest, with vision_tokens_nsfw_nearest at 2.0",
    "text-tokens+nearest+x4": "as text-tokens+nearest, with the preservation terms text_safe "
                              "and vision_safe at 0.4 (4x the paper's 0.1)",
    "text-tokens+nearest2+x4": "as text-tokens+nearest+x4, with vision_tokens_nsfw_nearest at "
                               "2.0",
}
# compared on validation after the test split's second read: shown beside the others, never
# chosen by the rule (bench/recipes.py), since a pick among them would change the bundled recipe
# after two test reads, which is the team's decision (issue 16), not the rule's
AFTER_SECOND_READ = ("text-tokens+nearest3", "text-tokens+nearest2", "x4+tokens",
                     "text-tokens+nearest+x4", "text-tokens+nearest2+x4")
HELD_REASON = ("compared on validation after the test split's second read; the rule does not "
               "choose among these, since adopting one would change the bundled recipe after two "
               "test reads, a decision left to the team")
# bench/recipes.py's pick on validation (recipes.json): no recipe it chooses among (none held)
# met every bar; the rule's fallback, the largest worst-case margin. Picked after the test split
# had been read once with paper+tokens, the pick before it (the README says so)
DEFAULT = "text-tokens+nearest"


def train_args(name: str, clip_dir: Path, data_dir: Path, run: Path) -> list[str]:
    """The ``safeclip train`` arguments of recipe ``name``."""
    return ["--preset", "mini", "--clip", str(clip_dir), "--data-dir", str(data_dir),
            "--out", str(run), *REGIME, *RECIPES[name]]


def train_recipe(name: str, clip_dir: Path, data_dir: Path, run: Path, target: Path,
                 force: bool = False) -> dict:
    """Train (or resume) recipe ``name`` in the run folder, merge it into a plain CLIPModel
    folder ``target`` (fp16) with its training.json; returns that summary."""
    import torch
    from transformers import CLIPModel

    from ..train.cli import main as train_main
    from .clip import save_clip_dir

    if force:
        shutil.rmtree(run, ignore_errors=True)
    args = train_args(name, clip_dir, data_dir, run)
    train_main(args + (["--resume"] if (run / "checkpoint").exists() else []))
    save_clip_dir(CLIPModel.from_pretrained(run / "export" / "merged").eval(), target,
                  dtype=torch.float16)
    summary = json.loads((run / "summary.json").read_text())
    info = {"recipe": name, "description": DESCRIPTIONS[name],
            "command": "safeclip train " + " ".join(args[4:]),
            "global_step": summary["global_step"], "seconds": summary["seconds"],
            "weights": summary["config"]["weights"], "token_layer":
                summary["config"]["token_layer"],
            "validation": [h for h in summary["history"] if "val_loss" in h]}
    (target / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def step(work: Path, out: Path, force: bool) -> dict:
    """``safeclip mini build --only safeclip``: the DEFAULT recipe into OUT/mini-safeclip."""
    target = out / "mini-safeclip"
    if (target / "model.safetensors").exists() and not force:
        logger.info("mini Safe-CLIP exists at %s: skipped (--force to retrain)", target)
        return {"safeclip": "skipped"}
    info = train_recipe(DEFAULT, out / "mini-clip", work / "data", work / "safeclip-run",
                        target, force)
    write_card(target)
    return {"safeclip": {k: info[k] for k in ("recipe", "global_step", "seconds")}}


def write_card(target: Path) -> Path:
    """README.md of the mini Safe-CLIP from its training.json, the recipe comparison on
    validation (recipes.json, bench/recipes.py) and, after the eval step, the test figures."""
    from ..train.losses import DEFAULT_WEIGHTS

    info = json.loads((target / "training.json").read_text())
    changed = {k: v for k, v in info["weights"].items() if v and DEFAULT_WEIGHTS.get(k) != v}
    lines = ["# mini-safeclip", "",
             "The mini world's Safe-CLIP: `mini-clip` fine-tuned with `safeclip train` (LoRA on "
             "both encoders, frozen reference cached ahead of training), merged into a plain "
             "transformers `CLIPModel` (fp16 safetensors).", "",
             f"- recipe `{info['recipe']}`: {info['description']}",
             "- weights changed from the paper's or added: " + (", ".join(
                 f"{k} {DEFAULT_WEIGHTS.get(k, 0)} -> {v}" for k, v in changed.items()) or "none"),
             f"- command: `{info['command']}` (run by `safeclip mini build --only safeclip`)",
             f"- {info['global_step']} optimiser steps in {info['seconds']:.0f} s on this machine",
             ""]
    recipes = target / "recipes.json"
    if recipes.exists():
        lines += recipe_lines(json.loads(recipes.read_text()))
    unaligned = target / "unaligned.json"
    if unaligned.exists():
        lines += unaligned_lines(json.loads(unaligned.read_text()))
    metrics = target / "metrics.json"
    base = target.parent / "mini-clip" / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        b = json.loads(base.read_text()) if base.exists() else {}
        keys = [k for k in m if k.endswith(("_r1", "_r10")) or k.startswith("nsfw")]
        lines += ["## Test split (`safeclip eval retrieval --preset mini`, the build's eval step)",
                  "", "| metric | mini-clip | mini-safeclip |", "|---|---|---|"]
        lines += [f"| {k} | {b.get(k, float('nan')):.3f} | {m[k]:.3f} |" for k in keys]
        lines.append("")
    (target / "README.md").write_text("\n".join(lines))
    return target / "README.md"


def recipe_lines(report: dict) -> list[str]:
    """The card's table of the recipes compared by bench/recipes.py."""
    res = report.get("results", {})
    if not res:
        return []
    lines = [f"## Recipes compared on the {report.get('split', 'validation')} split "
             "(`python bench/recipes.py`)", "",
             f"Rule: {report.get('rule', '')}. Chosen: **{report.get('chosen')}**.", "",
             *([report["history"], ""] if report.get("history") else []),
             *_unmet_lines(res, report.get("held", []), report.get("held_why", "")),
             "| recipe | gen unsafe rate clip / safeclip | gen safe fidelity clip / safeclip | "
             "caption unsafe clip / safeclip | caption accuracy clip / safeclip | twin u2v / g2s / "
             "s2v r10 | pool cross unsafe share, unsafe text / image queries | pool cross unsafe "
             "share, safe text / image queries (clip) | U token states read unsafe |",
             "|---" * 9 + "|"]
    for name, r in res.items():
        g, c, t, p = r["generation"], r["captioning"], r["twin_safeclip"], r["pool_cross"]
        pc = r.get("pool_clip", {})
        lines.append(
            f"| {label(name, report.get('held', []))} | "
            f"{g['clip']['unsafe_rate']:.3f} / {g['safeclip']['unsafe_rate']:.3f} | "
            f"{g['clip']['safe_fidelity']:.3f} / {g['safeclip']['safe_fidelity']:.3f} | "
            f"{c['clip']['unsafe_caption_rate']:.3f} / {c['safeclip']['unsafe_caption_rate']:.3f}"
            f" | {c['clip']['safe_caption_accuracy']:.3f} / "
            f"{c['safeclip']['safe_caption_accuracy']:.3f} | {t['u2v_r10']:.3f} / "
            f"{t['g2s_r10']:.3f} / {t['s2v_r10']:.3f} | {p['u_unsafe_at10']:.3f} / "
            f"{p['g_unsafe_at10']:.3f} | {p['s_unsafe_at10']:.3f} / {p['v_unsafe_at10']:.3f} "
            f"({pc.get('s_unsafe_at10', float('nan')):.3f} / "
            f"{pc.get('v_unsafe_at10', float('nan')):.3f}) | "
            f"{r.get('token_probe', {}).get('unsafe_positions_read_unsafe', '-')} |")
    lines += ["", "Recipes: " + "; ".join(f"`{n}`: {r['description']}" for n, r in res.items())
              + ". The last column: `bench/token_probe.py` (a probe trained on the original's "
              "text states; with the original tower it reads 0.9 of them as unsafe).", ""]
    return lines


def unaligned_lines(report: dict) -> list[str]:
    """The card's lines on the recipes trained on unaligned pairs (bench/unaligned.py)."""
    a = report.get("alignment", {})
    res = report.get("results", {})
    if not res or not a:
        return []
    lines = ["## Trained on pairs that are not pixel-aligned (`python bench/unaligned.py`, "
             "validation)", "",
             "Every safe training image redrawn with its own jitter (the same meaning; the share "
             "of an unsafe image's pixel patches found exactly in its safe image: "
             f"{a['aligned'].get('identical_patch_share', float('nan')):.2f} aligned, "
             f"{a['rejittered'].get('identical_patch_share', float('nan')):.2f} re-jittered; "
             "of its layer -2 tokens whose nearest safe token sits at the same position: "
             f"{a['aligned']['same_position_share']:.2f} aligned, "
             f"{a['rejittered']['same_position_share']:.2f} re-jittered). Compare with the "
             "recipe's row above.", ""]
    for name, r in res.items():
        g, c = r["generation"]["safeclip"], r["captioning"]["safeclip"]
        lines.append(f"- `{name}`: captioned unsafe {c['unsafe_caption_rate']:.3f}, caption "
                     f"accuracy {c['safe_caption_accuracy']:.3f}, generation unsafe rate "
                     f"{g['unsafe_rate']:.3f}, safe fidelity {g['safe_fidelity']:.3f}")
    return lines + [""]


def label(name: str, held) -> str:
    """A recipe's name as the card and bench/recipes.py show it: held ones marked."""
    return f"{name} (held)" if name in held else name


def _unmet_lines(res: dict, held: list, why: str) -> list[str]:
    """The bars each compared recipe misses on this split (its margins, bench/recipes.py), and
    which recipes the rule does not choose among (``held``, for the reason ``why``)."""
    lines, chooseable_meeting = [], False
    for name, r in res.items():
        mark = " (held)" if name in held else ""
        missed = {k: v for k, v in r.get("margins", {}).items() if v < 0}
        if missed:
            lines.append(f"- `{name}`{mark} misses "
                         + ", ".join(f"{k} by {-v:.3f}" for k, v in missed.items()))
        elif "margins" in r:
            chooseable_meeting |= name not in held
            lines.append(f"- `{name}`{mark} meets every bar the rule checks (worst margin "
                         f"{min(r['margins'].values()):+.3f})")
    if lines and not chooseable_meeting:
        lines.insert(0, "No recipe the rule chooses among meets every bar; its fallback chose.")
    if held:
        lines.append("- held: " + ", ".join(f"`{n}`" for n in res if n in held) + f": {why}")
    skipped = [n for n in RECIPES if n not in res]
    if skipped:
        lines.append("- not trained or compared: " + ", ".join(f"`{n}`" for n in skipped))
    return lines + [""] if lines else []
