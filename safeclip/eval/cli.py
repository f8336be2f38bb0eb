"""``safeclip eval``: measure a world's two models.

    safeclip eval retrieval --preset mini [--split test] [--n 1000] [--json] [--out FILE]
    safeclip eval retrieval --preset vit-l-14 --visu [TEXT] --coco-root DIR --unsafe-root DIR
    safeclip eval generation --preset mini --json
    safeclip eval captioning --preset mini --json

Each subcommand is its own module (retrieval: ``safeclip.eval.retrieval_cli``, generation,
captioning); this one dispatches and holds what they share.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def emit(result: dict, out: Path | None, as_json: bool, table) -> None:
    """Write the JSON to ``out`` (if given) and print it, or print ``table(result)``."""
    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text if as_json else table(result))


def paper_protocol(S, U, V, G, ks=(1, 10, 20)) -> dict[str, str]:
    """Recall@1/10/20 (in %) as the HySAC table reports them: T->I and I->T search the safe
    gallery only; T*->I∪I* and I*->T∪T* ask unsafe queries to find the safe counterpart in a
    gallery of safe and unsafe items together."""
    import torch

    from .retrieval import _ranks

    idx = torch.arange(len(S))
    plan = {"T->I": (S, V), "I->T": (V, S), "T*->I∪I*": (U, torch.cat([V, G])),
            "I*->T∪T*": (G, torch.cat([S, U]))}
    out = {}
    for name, (q, gallery) in plan.items():
        ranks = _ranks(q.float(), gallery.float(), idx)
        out[name] = "/".join(f"{100 * (ranks < k).float().mean().item():.1f}" for k in ks)
    return out


SUBCOMMANDS = {
    "retrieval": ("safeclip.eval.retrieval_cli:main",
                  "retrieval metrics of both models (the world's data or real ViSU)"),
    "generation": ("safeclip.eval.generation:main",
                   "paired generation: unsafe rate, fidelity, CLIP score per model"),
    "captioning": ("safeclip.eval.captioning:main",
                   "paired captioning: unsafe caption rate and accuracy per model"),
}


def main(argv=None) -> int:
    from ..cli import dispatch
    return dispatch(argv, SUBCOMMANDS, "safeclip eval", __doc__)
