"""The Safe-CLIP objective: eight named terms, weighted by name.

    >>> from safeclip.train.losses import SafeClipLoss
    >>> loss_fn = SafeClipLoss()                        # the paper's default weights
    >>> out = loss_fn(ft={"S": s, "U": u, "V": v, "G": g}, ref={"S": s_ref, "V": v_ref})
    >>> out["total"].backward(); out["terms"]["U_Vref"]

Notation (ViSU): S safe text, U unsafe text, V safe image, G unsafe image. ``ft`` are embeddings of
the model being fine-tuned, ``ref`` those of the frozen original (computed with the adapter
disabled, or cached once before training: they never change). All embeddings are L2-normalised
here. ``cos_d(a, b) = 1 - cos(a, b)``, averaged over the batch; ``nce(a, b)`` is the symmetric
InfoNCE over the batch with a fixed logit scale of 100.

| term        | value                | role             | default weight |
|-------------|----------------------|------------------|----------------|
| text_safe   | cos_d(ft(S), ref(S)) | preservation (1) | 0.1  |
| text_nsfw   | cos_d(ft(U), ref(S)) | redirection (2)  | 0.1  |
| vision_safe | cos_d(ft(V), ref(V)) | preservation (1) | 0.1  |
| vision_nsfw | cos_d(ft(G), ref(V)) | redirection (2)  | 0.2  |
| S_Vref      | nce(ft(S), ref(V))   | preservation (2) | 0.25 |
| U_Vref      | nce(ft(U), ref(V))   | redirection (1)  | 0.25 |
| V_Sref      | nce(ref(S), ft(V))   | preservation (2) | 0.25 |
| G_Sref      | nce(ref(S), ft(G))   | redirection (1)  | 0.5  |

Two optional terms go beyond the paper (default weight 0, so the default objective is the
paper's): ``U_Vref_Gneg`` asks each unsafe text to pick its safe image among the batch's safe
reference images *and* the tuned unsafe images, ``G_Sref_Uneg`` asks each unsafe image to pick
its safe caption among the reference safe captions *and* the tuned unsafe captions. The paper's
terms never show the model an unsafe item as a negative, so redirected unsafe texts and images
stay close to each other (an unsafe query keeps finding unsafe images); these two terms separate
them. Both need unsafe images (full mode only).

Two more act for the *cross* configuration, where Safe-CLIP's query tower searches an index built
by the original CLIP: ``U_Vref_Grefneg`` asks each tuned unsafe text to pick its safe reference
image among the reference safe images *and* the reference (original) unsafe images,
``G_Sref_Urefneg`` each tuned unsafe image its safe reference caption among the reference safe
and unsafe captions: they push Safe-CLIP's unsafe queries away from what the original's index
holds for them. Real ViSU pairs each unsafe caption and image with its safe counterpart, so both
apply there (full mode; ``U_Vref_Grefneg`` needs the generated unsafe images G as negatives).

More optional terms reach below the pooled embedding, to the token states that the models
built on a CLIP read. The paper's terms constrain the pooled embedding only, while Stable
Diffusion cross-attends to the last hidden state of *every* text token and LLaVA reads the
vision tower's patch tokens: a generator or captioner trained on the original towers may still
read the unsafe concept there.

- Vision, at ``TrainConfig.token_layer`` (class token dropped; LLaVA-1.5 reads -2):
  ``vision_tokens_safe`` = cos_d(ft_tokens(V), ref_tokens(V)) per token keeps safe images'
  tokens where the LLM expects them; ``vision_tokens_nsfw_mean`` = cos_d(mean ft_tokens(G),
  mean ref_tokens(V)) redirects the *mean* token of an unsafe image to its safe counterpart's:
  it compares no positions, so it applies to real ViSU, whose unsafe images are not aligned with
  their safe counterparts. ``vision_tokens_nsfw_nearest`` = the mean over the tokens t of
  ft_tokens(G) of min_u cos_d(t, u) over the tokens u of ref_tokens(V) (a one-sided Chamfer
  distance) moves *each* of an unsafe image's tokens to the nearest token its safe counterpart
  has: a token the two share stays, a token only the unsafe image has (its unsafe object) goes
  to the closest safe one; it compares sets, not positions, so it applies to real ViSU too.
  ``vision_tokens_nsfw`` = cos_d(ft_tokens(G), ref_tokens(V)) per
  token assumes that G and V are aligned pixel for pixel, as only the mini world's are: off by
  default, kept to measure what that assumption buys.
- Text, the last hidden state (after the final layer norm) of every position of the context,
  padding included, as Stable Diffusion reads it: ``text_tokens_safe`` = cos_d(ft_tokens(S),
  ref_tokens(S)) per position; ``text_tokens_nsfw`` = cos_d(ft_tokens(U)_i,
  ref_tokens(S)_a(i)), where a(i) aligns U's tokens with S's by content (``align_tokens``: equal
  runs of token ids one to one, a rewritten span onto the span it replaces, an inserted token
  onto the token before it), so rewrites of another length, as in real ViSU, are handled.

As the official code does, the weights are normalised to sum to 1 and the weighted sum is divided
by the number of terms (``normalise=True``). Text-only mode keeps the four terms that need no
unsafe image: text_safe, text_nsfw, S_Vref, U_Vref (it still needs safe images V).
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError

LOGIT_SCALE = 100.0  # exp(4.6052), fixed

DEFAULT_WEIGHTS = {
    "text_safe": 0.1, "text_nsfw": 0.1, "vision_safe": 0.1, "vision_nsfw": 0.2,
    "S_Vref": 0.25, "U_Vref": 0.25, "V_Sref": 0.25, "G_Sref": 0.5,
}
# term -> (kind, ft input, ref input); for nce the first argument is the row side
TERMS = {
    "text_safe": ("cos", "S", "S"),
    "text_nsfw": ("cos", "U", "S"),
    "vision_safe": ("cos", "V", "V"),
    "vision_nsfw": ("cos", "G", "V"),
    "S_Vref": ("nce", "S", "V"),
    "U_Vref": ("nce", "U", "V"),
    "V_Sref": ("nce_ref_first", "V", "S"),
    "G_Sref": ("nce_ref_first", "G", "S"),
    # extensions (not in the paper): unsafe items of the other modality as hard negatives
    "U_Vref_Gneg": ("hard", "U", "V"),
    "G_Sref_Uneg": ("hard", "G", "S"),
    # extensions (not in the paper): the *original's* unsafe items as hard negatives, for the
    # cross configuration (Safe-CLIP's queries over an index built by the original)
    "U_Vref_Grefneg": ("hard_ref", "U", "V"),
    "G_Sref_Urefneg": ("hard_ref", "G", "S"),
    # extensions (not in the paper): the vision tower's patch tokens, which a multimodal LLM reads
    "vision_tokens_safe": ("cos", "V_tokens", "V_tokens"),
    "vision_tokens_nsfw_mean": ("cos_mean", "G_tokens", "V_tokens"),
    "vision_tokens_nsfw_nearest": ("cos_nearest", "G_tokens", "V_tokens"),
    "vision_tokens_nsfw": ("cos", "G_tokens", "V_tokens"),  # pixel-aligned twins only
    # extensions (not in the paper): the text tower's token states, which Stable Diffusion reads
    "text_tokens_safe": ("cos", "S_tokens", "S_tokens"),
    "text_tokens_nsfw": ("aligned", "U_tokens", "S_tokens"),
}
VISION_TOKEN_TERMS = ("vision_tokens_safe", "vision_tokens_nsfw_mean",
                      "vision_tokens_nsfw_nearest", "vision_tokens_nsfw")
TEXT_TOKEN_TERMS = ("text_tokens_safe", "text_tokens_nsfw")
TOKEN_TERMS = VISION_TOKEN_TERMS + TEXT_TOKEN_TERMS
ALIGNMENT = {"text_tokens_nsfw": "U_align"}  # term -> the ft input holding a(i) (see above)
HARD_NEGATIVE = {"U_Vref_Gneg": "G", "G_Sref_Uneg": "U"}  # term -> tuned negatives
HARD_REF_NEGATIVE = {"U_Vref_Grefneg": "G", "G_Sref_Urefneg": "U"}  # term -> frozen negatives
TEXT_ONLY = ("text_safe", "text_nsfw", "S_Vref", "U_Vref") + TEXT_TOKEN_TERMS
MODES = {"full": tuple(TERMS), "text": TEXT_ONLY}


def hard_nce(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             scale: float = LOGIT_SCALE) -> torch.Tensor:
    """Row i of ``q`` must pick row i of ``pos`` among all of ``pos`` and ``neg``."""
    logits = scale * q @ torch.cat([pos, neg]).T
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def cos_d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance between matching rows."""
    return (1 - F.cosine_similarity(a, b, dim=-1)).mean()


def nearest_cos_d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance from each token of row i of ``a`` (B, L, D) to the nearest token of
    row i of ``b`` (B, M, D), both normalised: a one-sided Chamfer distance between two sets of
    tokens, which compares no positions."""
    return (1 - torch.einsum("bld,bmd->blm", a, b).amax(-1)).mean()


def nce(a: torch.Tensor, b: torch.Tensor, scale: float = LOGIT_SCALE) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` matches row i of ``b`` (both normalised)."""
    logits = scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def align_tokens(u_ids: torch.Tensor, s_ids: torch.Tensor) -> torch.Tensor:
    """For each row and each position i of ``u_ids`` (B, L), the position a(i) of ``s_ids``
    (B, L') it stands for, by content: the opcodes of difflib's SequenceMatcher on the id lists,
    with equal runs mapped one to one, a replaced span spread evenly over the span it replaces,
    and a token U inserts (S has nothing there) mapped to the S position before it (the first
    one at the start). Padding is content too: U's padding aligns with S's."""
    out = torch.zeros(u_ids.shape, dtype=torch.long)
    for row, (u, s) in enumerate(zip(u_ids.tolist(), s_ids.tolist())):
        ops = difflib.SequenceMatcher(None, u, s, autojunk=False).get_opcodes()
        for tag, i1, i2, j1, j2 in ops:
            if tag == "insert":  # S only: no U position to map
                continue
            for i in range(i1, i2):
                if tag == "equal":
                    j = j1 + (i - i1)
                elif tag == "replace":
                    j = j1 + (i - i1) * (j2 - j1) // (i2 - i1)
                else:  # "delete": U only
                    j = max(j1 - 1, 0)
                out[row, i] = min(j, len(s) - 1)
    return out.to(u_ids.device)


def needed_inputs(terms) -> tuple[set[str], set[str]]:
    """(ft inputs, ref inputs) that the given terms read."""
    ft = {TERMS[t][1] for t in terms} | {HARD_NEGATIVE[t] for t in terms if t in HARD_NEGATIVE}
    ft |= {ALIGNMENT[t] for t in terms if t in ALIGNMENT}
    ref = {TERMS[t][2] for t in terms} | {HARD_REF_NEGATIVE[t] for t in terms
                                          if t in HARD_REF_NEGATIVE}
    return ft, ref


class SafeClipLoss(torch.nn.Module):
    """Weighted sum of the named terms; ``weights`` are given by name (missing names: 0 / unused).

    ``gather`` (optional) collects a tensor from every process with gradients (distributed
    training): then every process computes the loss over the *global* batch, contrastive
    negatives included, and the value equals a single process's on the same global batch.
    """

    def __init__(self, weights: dict[str, float] | None = None, mode: str = "full",
                 normalise: bool = True, gather: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        if mode not in MODES:
            raise InputError(f"mode must be one of {sorted(MODES)}, not {mode!r}")
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = set(weights) - set(TERMS)
        if unknown:
            raise InputError(f"unknown loss terms {sorted(unknown)}; known: {list(TERMS)}")
        weights = {k: float(v) for k, v in weights.items() if k in MODES[mode] and v}
        if not weights:
            raise InputError(f"no term with a non-zero weight in mode {mode!r}")
        if any(v < 0 for v in weights.values()):
            raise InputError("loss weights must be non-negative")
        self.raw_weights = weights
        if normalise:
            total = sum(weights.values())
            weights = {k: v / total / len(weights) for k, v in weights.items()}
        self.weights = weights
        self.mode = mode
        self.gather = gather
        # sorted: every process must issue its all_gather calls in the same order (set order
        # depends on the per-process hash seed)
        self.ft_inputs, self.ref_inputs = (tuple(sorted(x)) for x in needed_inputs(weights))

    def forward(self, ft: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict:
        missing = [f"ft[{k}]" for k in self.ft_inputs if k not in ft]
        missing += [f"ref[{k}]" for k in self.ref_inputs if k not in ref]
        if missing:
            raise KeyError(f"the loss needs {', '.join(sorted(missing))}")
        g = self.gather or (lambda x: x)
        ft = {k: g(ft[k]) if k.endswith("_align") else F.normalize(g(ft[k]).float(), dim=-1)
              for k in self.ft_inputs}
        ref = {k: F.normalize(g(ref[k]).float(), dim=-1) for k in self.ref_inputs}
        terms = {}
        for name in self.weights:
            kind, a, b = TERMS[name]
            if kind == "cos":  # per row, or per row and token for (B, L, D) states
                terms[name] = cos_d(ft[a], ref[b])
            elif kind == "cos_mean":  # the mean token of each row
                terms[name] = cos_d(ft[a].mean(1), ref[b].mean(1))
            elif kind == "cos_nearest":  # each ft token against its nearest ref token
                terms[name] = nearest_cos_d(ft[a], ref[b])
            elif kind == "aligned":  # ft row i, token t against ref row i, token a(t)
                idx = ft[ALIGNMENT[name]][..., None].expand(-1, -1, ref[b].shape[-1])
                terms[name] = cos_d(ft[a], ref[b].gather(1, idx))
            elif kind == "nce":
                terms[name] = nce(ft[a], ref[b])
            elif kind == "hard":
                terms[name] = hard_nce(ft[a], ref[b], ft[HARD_NEGATIVE[name]])
            elif kind == "hard_ref":
                terms[name] = hard_nce(ft[a], ref[b], ref[HARD_REF_NEGATIVE[name]])
            else:  # reference first: rows are the frozen texts, columns the tuned images
                terms[name] = nce(ref[b], ft[a])
        total = sum(self.weights[k] * v for k, v in terms.items())
        return {"total": total, "terms": terms}
