"""Training the mini captioner: a tiny LLaVA whose vision tower is the mini CLIP's.

    safeclip mini llava --data work/mini/data --out /tmp/mini-llava    # by hand
    safeclip mini build --only llava                                   # the bundled one
    safeclip mini build --only llava [--force]        # the same, as a build step

A transformers ``LlavaForConditionalGeneration``: the frozen vision tower of ``mini-clip``, a
two-layer projector and a small Llama language model with a word-level tokenizer, trained with
one thread on the synthetic captions, safe images V -> safe captions S and unsafe images
G -> unsafe captions U (like a web-trained captioner, it names what it sees, unsafe or not).
The Safe-CLIP column needs no retraining: ``safeclip.captioning`` swaps in the vision tower of
``mini-safeclip`` and keeps this projector and language model.

The folder holds config.json (the full ``LlavaConfig``), model.safetensors (projector and
language model in fp16; the vision tower is *not* duplicated there: it is loaded from the
world's CLIP: captioning.tower in safeclip/worlds/mini.toml), the tokenizer and a model card.

The tower layer is chosen as LLaVA-1.5 chooses it: the penultimate layer
(``vision_feature_layer=-2``, CLS dropped). Its reason holds here too: a CLIP's objective reads
the last layer at the class token only, so the last layer's patch outputs are never trained,
while every token of the penultimate layer feeds the class token's last attention. In a 4-layer
tower that layer sits at 3/4 of the depth (LLaVA-1.5's at 23/24). The schedule runs to its end
(no stopping step chosen on any split); checkpoints are atomic every ``--ckpt-every`` steps and
a restarted run resumes. The test-split figures are written by the build's ``eval`` step.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .steps import optimise, save_atomic, warmup_cosine

logger = logging.getLogger(__name__)

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")  # ids 0..4, in this order
QUESTIONS = ("Describe the image.", "Describe this image.", "What is in the picture?",
             "What do you see?", "What is shown here?", "Write a caption for the image.")


@dataclass
class LlavaTrainConfig:
    steps: int = 500  # length of the learning-rate schedule (warm-up, cosine decay)
    stop: int = 0  # stop after this many steps (0: at ``steps``, the default: no stopping step
    #                is chosen; earlier bundled captioners stopped at a step chosen on test)
    batch: int = 48  # image-caption pairs per step (safe and unsafe mixed)
    lr: float = 1e-3  # peak learning rate (projector and language model)
    weight_decay: float = 0.01
    warmup: int = 60
    seed: int = 0
    hidden: int = 256  # language model width
    layers: int = 4  # language model layers
    heads: int = 4
    ffn: int = 1024  # language model MLP width
    ckpt_every: int = 50
    feature_layer: int = -2  # vision_feature_layer: LLaVA-1.5's, the penultimate layer
    select: str = "default"  # vision_feature_select_strategy: "default" drops CLS, "full" keeps it
    feature_noise: float = 0.0  # training only: Gaussian noise on the tower's features, relative
    #                             to their RMS (robustness to a changed tower; 0: off)


# ------------------------------------------------------------------------------ tokenizer
def vocabulary() -> list[str]:
    """Every word the mini world's captions and the training questions can contain."""
    from . import synthetic as sx

    texts = [w for ws in sx.SYNONYMS.values() for w in ws]
    texts += [w for ws in sx.HELDOUT_SYNONYMS.values() for w in ws]
    texts += [re.sub(r"\{[^}]*\}", " ", t) for t in sx.TEMPLATES + sx.HELDOUT_TEMPLATES]
    texts += list(QUESTIONS) + ["USER: ASSISTANT: a an some the"]
    words = set()
    for t in texts:
        words.update(re.findall(r"\w+|[^\w\s]+", t.lower()))
    return list(SPECIALS) + sorted(words)


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` (lower-cased, <s> prepended, <image> special)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def llava_config(tokenizer, clip_dir: str | Path, cfg: LlavaTrainConfig):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig.from_pretrained(clip_dir)
    n_img = (vision.image_size // vision.patch_size) ** 2
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.ffn,
                       num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                       num_key_value_heads=cfg.heads, max_position_embeddings=256,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                       image_seq_length=n_img + (cfg.select == "full"),
                       vision_feature_layer=cfg.feature_layer,
                       vision_feature_select_strategy=cfg.select, projector_hidden_act="gelu")


# ----------------------------------------------------------------------------------- data
class CaptionSampler:
    """Batch ``step`` is a pure function of (seed, step): resuming is exact. Half the pairs
    are (V, S), half (G, U); the question is drawn from QUESTIONS."""

    def __init__(self, data: dict, tokenizer, n_img: int, seed: int):
        from ..captioning import prompt_ids

        self.V, self.G, self.S, self.U = data["V"], data["G"], data["S"], data["U"]
        self.n, self.w = self.S.shape
        self.tok, self.seed = tokenizer, seed
        self.prompts = [prompt_ids(tokenizer, q, n_img) for q in QUESTIONS]

    def batch(self, step: int, size: int):
        from ..train.data import normalise_u8

        rng = np.random.default_rng([self.seed, step])
        idx = rng.choice(self.n, size=size, replace=False)
        unsafe = np.arange(size) % 2 == 1
        wording = rng.integers(0, self.w, size=size)
        qs = rng.integers(0, len(self.prompts), size=size)
        imgs = np.stack([(self.G if u else self.V)[i] for i, u in zip(idx, unsafe)])
        caps = [str((self.U if u else self.S)[i, w]) for i, u, w in zip(idx, unsafe, wording)]
        cap_ids = self.tok(caps, add_special_tokens=False).input_ids
        seqs = [self.prompts[q] + c + [self.tok.eos_token_id] for q, c in zip(qs, cap_ids)]
        length = max(map(len, seqs))
        ids = torch.zeros(size, length, dtype=torch.long)
        labels = torch.full((size, length), -100, dtype=torch.long)
        mask = torch.zeros(size, length, dtype=torch.long)
        for r, (q, s) in enumerate(zip(qs, seqs)):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
            p = len(self.prompts[q])
            labels[r, p:len(s)] = ids[r, p:len(s)]
        return ids, mask, labels, normalise_u8(torch.from_numpy(imgs))


# ------------------------------------------------------------------------------- training
def caption_loss(model, ids, mask, labels, pix, noise: float = 0.0) -> torch.Tensor:
    """LLaVA's own loss; with ``noise``, the tower's selected features get Gaussian noise of
    that many times their RMS before the projector (the tower itself stays frozen)."""
    if not noise:
        return model(input_ids=ids, attention_mask=mask, pixel_values=pix, labels=labels).loss
    cfg = model.config
    with torch.no_grad():
        h = model.model.vision_tower(pix, output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
        h = h[:, 1:] if cfg.vision_feature_select_strategy == "default" else h
        h = h + noise * h.pow(2).mean(-1, keepdim=True).sqrt() * torch.randn_like(h)
    feats = model.model.multi_modal_projector(h)
    emb = model.get_input_embeddings()(ids)
    emb = emb.masked_scatter((ids == cfg.image_token_id)[..., None], feats.to(emb.dtype))
    return model(inputs_embeds=emb, attention_mask=mask, labels=labels).loss


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The projector and language model weights (everything but the vision tower)."""
    return {k: v for k, v in model.state_dict().items() if ".vision_tower." not in f".{k}"}


def train_mini_llava(data_dir, out_dir, work_dir, clip_dir,
                     cfg: LlavaTrainConfig | None = None) -> dict:
    """Train (or resume) the mini captioner; write its folder to ``out_dir``; return a summary."""
    cfg = cfg or LlavaTrainConfig()
    from transformers import LlavaForConditionalGeneration

    from ..captioning import load_tower_weights
    from .cache import load_split

    work, out = Path(work_dir), Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "mini-llava.ckpt"
    tok = build_tokenizer()
    config = llava_config(tok, clip_dir, cfg)
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    load_tower_weights(model.model.vision_tower, clip_dir)
    model.model.vision_tower.requires_grad_(False).eval()
    params = [p for n, p in model.named_parameters() if ".vision_tower." not in f".{n}"]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history, seconds = 0, [], 0.0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optim"])
        step, history = int(state["step"]), json.loads(state["history"])
        seconds = float(state.get("seconds", 0.0))
        logger.info("resuming mini captioner training at step %d", step)
    data = load_split(data_dir, "train")
    sampler = CaptionSampler(data, tok, config.image_seq_length, cfg.seed)
    n_train = sum(p.numel() for p in params)
    logger.info("mini captioner: %.2fM trainable parameters, %d steps of %d pairs",
                n_train / 1e6, cfg.steps, cfg.batch)
    model.model.language_model.train()
    model.model.multi_modal_projector.train()
    t0, t_mark = time.time(), time.time()
    bar = tqdm(total=cfg.stop or cfg.steps, initial=step, desc="train mini captioner", unit="step")
    last = cfg.stop or cfg.steps
    while step < last:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(cfg.lr, step, cfg.warmup, cfg.steps, floor=0.05)
        ids, mask, labels, pix = sampler.batch(step, cfg.batch)
        loss = caption_loss(model, ids, mask, labels, pix, cfg.feature_noise)
        optimise(opt, loss, params)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 10 == 0:
            history.append({"step": step, "loss": round(loss.item(), 4)})
        if step % cfg.ckpt_every == 0 or step == last:
            seconds += time.time() - t_mark
            t_mark = time.time()
            save_atomic(ckpt, {"model": trainable_state(model), "optim": opt.state_dict(),
                               "step": step, "history": json.dumps(history), "seconds": seconds})
            logger.info("step %d: loss %.4f (%.0f s of training)", step, loss.item(), seconds)
    bar.close()
    model.eval()
    save_captioner(model, tok, out, clip_dir)
    info = {"config": asdict(cfg), "trainable_parameters": n_train, "history": history,
            "train_seconds": round(seconds, 1), "this_run_seconds": round(time.time() - t0, 1)}
    (out / "training.json").write_text(json.dumps(info, indent=2))
    return info


def save_captioner(model, tokenizer, out: Path, clip_dir) -> None:
    """config.json, model.safetensors (no vision tower, fp16), tokenizer, captioner.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    tmp = out / "model.tmp.safetensors"
    save_file({k: v.detach().half().contiguous() for k, v in trainable_state(model).items()},
              str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    tokenizer.save_pretrained(out)  # the tower is not stored: the world names it (captioning.tower)


def build_step(work: Path, out: Path, force: bool) -> dict:
    """``safeclip mini build --only llava``: train the mini captioner on the original tower and
    check it on validation items (the original tower only: Safe-CLIP is not read here)."""
    from .cache import render_split

    target = Path(out) / "mini-llava"
    if (target / "model.safetensors").exists() and not force:
        logger.info("mini captioner exists at %s: skipped (--force to retrain)", target)
        return {"llava": "skipped"}
    work = Path(work)
    if force:
        (work / "ckpt" / "mini-llava.ckpt").unlink(missing_ok=True)
    for split in ("validation", "test", "train"):
        render_split(split, work / "data")
    (target / "metrics.json").unlink(missing_ok=True)  # a previous captioner's test figures
    cfg = LlavaTrainConfig()
    info = train_mini_llava(work / "data", target, work / "ckpt", Path(out) / "mini-clip", cfg)
    from . import WORLD
    from .eval_captioning import evaluate_captioning

    models = {"clip": str(Path(out) / "mini-clip"), "safe_clip": str(Path(out) / "mini-clip"),
              "llava": str(target)}
    check = evaluate_captioning(WORLD, "validation", n=300, model_overrides=models, examples=0)
    info["validation_check"] = {"n": check["n"], **check["models"]["clip"]}
    (target / "training.json").write_text(json.dumps(info, indent=2))
    write_card(target)
    return {"llava": info["validation_check"], "train_seconds": info["train_seconds"]}


def write_card(target: Path) -> None:
    """The model card: architecture, training command and time, the validation check and, once
    the build's eval step has run, the test-split metrics (metrics.json)."""
    from transformers import LlavaConfig

    c = LlavaConfig.from_pretrained(target)
    info = json.loads((target / "training.json").read_text())
    t, v, cfg = c.text_config, c.vision_config, info["config"]
    check = info.get("validation_check", {})
    lines = [f"""# mini-llava

The mini world's captioner: a transformers `LlavaForConditionalGeneration` trained here (CPU)
on the synthetic ViSU captions, safe images V -> safe captions S and unsafe images G -> unsafe
captions U. The vision tower is the frozen vision model of `mini-clip` and is *not* stored
here: the mini world names it (`captioning.tower` in safeclip/worlds/mini.toml), and the
Safe-CLIP column swaps in `mini-safeclip`'s vision model, with this very projector and language
model (no retraining).

- language model: Llama, {t.num_hidden_layers} layers, width {t.hidden_size}, MLP {t.intermediate_size}, {t.num_attention_heads} heads, word-level vocabulary of {t.vocab_size} (tokenizer.json)
- vision: CLIP ViT {v.image_size} px, patch {v.patch_size}, width {v.hidden_size}, {v.num_hidden_layers} layers; features of layer {c.vision_feature_layer}, CLS dropped ({c.image_seq_length} image tokens), 2-layer GELU projector
- the layer is LLaVA-1.5's choice, the penultimate one: a CLIP's objective reads the last layer at the class token only, so the last layer's patch outputs are never trained, while every token of the penultimate layer feeds the class token's last attention (here at 3/4 of the depth; LLaVA-1.5's at 23/24)
- {info['trainable_parameters'] / 1e6:.2f}M trained parameters, stored in fp16 (model.safetensors)
- prompt: `USER: <image>\n{{question}} ASSISTANT:`; trained with {len(QUESTIONS)} question wordings
- training: {cfg.get('stop') or cfg['steps']} steps ({'the whole schedule' if not cfg.get('stop') else 'of a ' + str(cfg['steps']) + '-step schedule'}) x {cfg['batch']} pairs (half safe, half unsafe), AdamW lr {cfg['lr']}, warm-up {cfg['warmup']}, cosine decay, seed {cfg['seed']}; {info['train_seconds']:.0f} s of training on this machine; loss history in training.json
- command: `safeclip mini build --only llava --force` (or `safeclip mini llava --data work/mini/data --out assets/models/mini-llava`)
"""]
    if check:
        lines.append(f"Validation check of the original tower ({check['n']} items, greedy): "
                     f"safe caption accuracy {check['safe_caption_accuracy']:.3f}, unsafe caption "
                     f"rate {check['unsafe_caption_rate']:.3f}.\n")
    if (target / "metrics.json").exists():
        from .eval_captioning import card_lines

        lines += card_lines(json.loads((target / "metrics.json").read_text()))
    (target / "README.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="safeclip mini llava", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="rendered splits (safeclip.mini.cache)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--clip", default=None, help="mini CLIP folder (default: assets/models/mini-clip)")
    p.add_argument("--work", default=None, help="checkpoints (default: DATA/../ckpt)")
    for f in ("steps", "stop", "batch", "seed", "hidden", "layers", "heads", "ffn", "warmup", "ckpt_every"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(LlavaTrainConfig, f))
    p.add_argument("--lr", type=float, default=LlavaTrainConfig.lr)
    p.add_argument("--feature-layer", type=int, default=LlavaTrainConfig.feature_layer)
    p.add_argument("--select", choices=["default", "full"], default=LlavaTrainConfig.select)
    p.add_argument("--feature-noise", type=float, default=LlavaTrainConfig.feature_noise)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from . import MODELS

    cfg = LlavaTrainConfig(**{k: getattr(args, k) for k in (
        "steps", "stop", "batch", "seed", "hidden", "layers", "heads", "ffn", "warmup", "ckpt_every",
        "lr", "feature_layer", "select", "feature_noise")})
    work = args.work or str(Path(args.data).parent / "ckpt")
    train_mini_llava(args.data, args.out, work, args.clip or MODELS / "mini-clip", cfg)
    return 0

