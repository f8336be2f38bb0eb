"""One LLaVA, two vision towers, both answers from one batched greedy ``generate``.

    >>> cap = PairedCaptioner(model, safe_tower, tokenizer, image_processor, world)
    >>> res = cap.caption_pair(image)              # CaptionPair: .clip, .safeclip (Caption)

The language model and the projector are loaded once; the Safe-CLIP tower is a second module
whose parameters that equal the original tower's (Safe-CLIP's LoRA leaves embeddings, norms,
query projections and biases untouched) are the very same tensors. ``caption_pair`` answers with
one batched greedy ``generate`` over two rows that differ only in their image features: same
prompt, no padding, so each row is what ``caption(image, which=...)`` (the plain LLaVA forward
with that tower alone) gives; tests check this on seeded tiny components.

Inputs are checked against ``limits`` (``safeclip.limits``), owned here: an empty or missing
question asks the default one (noted in ``warnings``), a longer one than the limit is refused,
``max_new_tokens`` outside its range is refused. A lock guards the model.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field

import torch

from ..images import load_rgb
from ..limits import SEED, Number, Text
from ..sharing import share_equal_tensors, unique_bytes

logger = logging.getLogger(__name__)

DEFAULT_QUESTION = "Describe the image."
PROMPT = "USER: <image>\n{question} ASSISTANT:"  # LLaVA-1.5's conversation format


@dataclass
class Caption:
    text: str  # the model's answer
    flagged: bool  # the caption judge's verdict on it
    terms: list[str]  # the unsafe terms found
    tokens: int = 0  # new tokens generated
    category: str | None = None  # the I2P category of the first term found


@dataclass
class CaptionPair:
    clip: Caption  # answer with the original vision tower
    safeclip: Caption  # answer with the Safe-CLIP vision tower
    settings: dict  # question, max_new_tokens, seed, decoding, preset
    warnings: list[str] = field(default_factory=list)  # e.g. the question was truncated
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_ids(tokenizer, question: str, n_image_tokens: int, image_token_id: int | None = None) -> list[int]:
    """Token ids of ``PROMPT`` with the <image> placeholder repeated once per image feature."""
    tid = image_token_id if image_token_id is not None else tokenizer.convert_tokens_to_ids("<image>")
    out = []
    for i in tokenizer(PROMPT.format(question=question)).input_ids:
        out.extend([tid] * n_image_tokens if i == tid else [i])
    return out


def load_tower_weights(tower: torch.nn.Module, source) -> None:
    """Load a CLIP's vision weights (a CLIPModel or CLIPVisionModel folder, or a state dict)
    strictly into ``tower`` (a ``CLIPVisionModel``); from a folder only the vision keys are read."""
    from ..weights import read_weights

    sd = source if isinstance(source, dict) else read_weights(source, ("vision_model.",))
    sd = {k: v for k, v in sd.items()
          if k.startswith("vision_model.") and not k.endswith("position_ids")}
    if not any(k.startswith("vision_model.") for k in tower.state_dict()):
        sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}  # a bare transformer
    tower.load_state_dict(sd, strict=True)


class PairedCaptioner:
    """A LLaVA model plus a second (safe) vision tower; see the module docstring."""

    def __init__(self, model, safe_tower, tokenizer, image_processor, judge=None,
                 preset: str = "", refs: dict | None = None, defaults: dict | None = None,
                 limits: dict | None = None, share: bool = True):
        """``judge``: a caption judge (``safeclip.safety.text``; None flags nothing);
        ``defaults``: question, max_new_tokens; ``limits``: max_new_tokens [lo, hi],
        question_chars (the world's data)."""
        from ..safety.text import NoTextJudge

        self.model = model.eval()
        self.safe_tower = safe_tower.eval()
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.preset, self.refs = preset, dict(refs or {})
        self.judge = judge or NoTextJudge()
        self.sharing = (share_equal_tensors(model.model.vision_tower, safe_tower) if share
                        else {"shared_tensors": 0, "shared_bytes": 0, "tensors": 0})
        d, lim = dict(defaults or {}), dict(limits or {})
        self.defaults = {"question": d.get("question", DEFAULT_QUESTION),
                         "max_new_tokens": int(d.get("max_new_tokens", 32))}
        self.limits = {
            "max_new_tokens": Number("max new tokens", *lim.get("max_new_tokens", (1, 256))),
            "question": Text("question", int(lim.get("question_chars", 300)), allow_empty=True,
                             reader="the captioner answers short questions about the image"),
            "seed": SEED}
        self._lock = threading.Lock()
        cfg = model.config
        self.image_token_id = cfg.image_token_id
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    # -- pieces ---------------------------------------------------------------------------
    @property
    def towers(self) -> dict[str, torch.nn.Module]:
        return {"clip": self.model.model.vision_tower, "safeclip": self.safe_tower}

    def memory(self) -> dict:
        """Bytes of unique parameter storage: the whole captioner, and one model without the
        safe tower; plus what sharing saved."""
        return {"paired_bytes": unique_bytes(self.model, self.safe_tower),
                "single_bytes": unique_bytes(self.model), **self.sharing}

    def pixels(self, image) -> torch.Tensor:
        rgb = load_rgb(image)
        pix = self.image_processor(images=rgb, return_tensors="pt").pixel_values
        p = next(self.model.model.vision_tower.parameters())
        return pix.to(p.device, p.dtype)

    def image_features(self, tower, pixel_values) -> torch.Tensor:
        """Projected image features of ``tower`` as LLaVA computes them (feature layer and
        CLS selection of the model's config)."""
        cfg = self.model.config
        hs = tower(pixel_values, output_hidden_states=True).hidden_states
        layers = cfg.vision_feature_layer
        pool = [hs[i] for i in ([layers] if isinstance(layers, int) else layers)]
        if cfg.vision_feature_select_strategy == "default":
            pool = [h[:, 1:] for h in pool]
        return self.model.model.multi_modal_projector(torch.cat(pool, dim=-1))

    def check_inputs(self, question, max_new_tokens) -> tuple[str, int, list[str]]:
        """(question, max_new_tokens, warnings) after defaults and limits."""
        warnings = []
        if question is None:
            question = self.defaults["question"]
        question = " ".join(self.limits["question"].check(question).split())
        if not question:
            question = self.defaults["question"]
            warnings.append(f"empty question: asked the default question {question!r}")
        if max_new_tokens is None:
            max_new_tokens = self.defaults["max_new_tokens"]
        max_new_tokens = self.limits["max_new_tokens"].check(max_new_tokens)
        unk = self.tokenizer.unk_token_id
        if unk is not None and unk in self.tokenizer(question, add_special_tokens=False).input_ids:
            warnings.append("the question has words this model does not know")
        return question, max_new_tokens, warnings

    def _gen_kwargs(self, max_new_tokens):
        return {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1,
                "eos_token_id": self.eos, "pad_token_id": self.pad}

    def _answer(self, ids: torch.Tensor) -> Caption:
        ids = ids.tolist()
        if self.eos in ids:
            ids = ids[:ids.index(self.eos)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text = re.sub(r"\s+([,.;:?!])", r"\1", text).strip()
        v = self.judge(text)
        return Caption(text, v.flagged, v.terms, len(ids), v.category)

    # -- public ---------------------------------------------------------------------------
    def caption_pair(self, image, question: str | None = None, max_new_tokens: int | None = None,
                     seed: int = 0) -> CaptionPair:
        """Both answers from one batched greedy generate (row 0: original tower, row 1: safe)."""
        return self.caption_pairs([image], question, max_new_tokens, seed)[0]

    @torch.no_grad()
    def caption_pairs(self, images: list, question: str | None = None,
                      max_new_tokens: int | None = None, seed: int = 0) -> list[CaptionPair]:
        """``caption_pair`` for several images in one generate (2 rows per image, one prompt)."""
        question, max_new_tokens, warnings = self.check_inputs(question, max_new_tokens)
        seed = self.limits["seed"].check(seed)
        if not images:
            return []
        t0 = time.time()
        with self._lock:
            torch.manual_seed(seed)
            pix = torch.cat([self.pixels(im) for im in images])
            feats = torch.stack([self.image_features(t, pix) for t in self.towers.values()], 1)
            feats = feats.flatten(0, 1)  # rows: image 0 original, image 0 safe, image 1 ...
            ids = torch.tensor([prompt_ids(self.tokenizer, question, feats.shape[1],
                                           self.image_token_id)], device=self.model.device)
            rows = feats.shape[0]
            emb = self.model.get_input_embeddings()(ids).expand(rows, -1, -1).clone()
            emb[:, ids[0] == self.image_token_id] = feats.to(emb.device, emb.dtype)
            mask = torch.ones(rows, ids.shape[1], dtype=torch.long, device=ids.device)
            out = self.model.generate(inputs_embeds=emb, attention_mask=mask,
                                      **self._gen_kwargs(max_new_tokens))
        answers = [self._answer(row) for row in out]
        settings = {"preset": self.preset, "question": question, "max_new_tokens": max_new_tokens,
                    "seed": seed, "decoding": "greedy", "batched": True}
        seconds = round((time.time() - t0) / len(images), 3)
        return [CaptionPair(answers[2 * i], answers[2 * i + 1], dict(settings), list(warnings), seconds)
                for i in range(len(images))]

    @torch.no_grad()
    def caption(self, image, which: str = "clip", question: str | None = None,
                max_new_tokens: int | None = None, seed: int = 0) -> Caption:
        """One answer through LLaVA's own forward with tower ``which`` ("clip"/"safeclip")."""
        if which not in ("clip", "safeclip"):
            raise ValueError(f"which must be 'clip' or 'safeclip', not {which!r}")
        seed = self.limits["seed"].check(seed)
        question, max_new_tokens, _ = self.check_inputs(question, max_new_tokens)
        with self._lock:
            torch.manual_seed(seed)
            pix = self.pixels(image)
            original = self.model.model.vision_tower
            self.model.model.vision_tower = self.towers[which]
            try:
                n = self.image_features(self.towers[which], pix).shape[1]
                ids = torch.tensor([prompt_ids(self.tokenizer, question, n, self.image_token_id)],
                                   device=self.model.device)
                out = self.model.generate(input_ids=ids, pixel_values=pix,
                                          attention_mask=torch.ones_like(ids),
                                          **self._gen_kwargs(max_new_tokens))
            finally:
                self.model.model.vision_tower = original
        return self._answer(out[0, ids.shape[1]:])
