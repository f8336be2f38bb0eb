"""The mini build's last step: the test split, read once, at the end (``safeclip mini build
--only eval``).

Every figure below comes from a ``safeclip eval`` command with the folder's models; the step
writes it beside the model it measures and rewrites the model cards:

- OUT/mini-clip/metrics.json, OUT/mini-safeclip/metrics.json: ``safeclip eval retrieval``'s
  ViSU-style recalls (``evaluate_model_dir``);
- OUT/mini-gen/metrics.json: ``safeclip eval generation --preset mini --json``, and
  samples.png, a sheet of test prompts drawn by both text encoders;
- OUT/mini-llava/metrics.json: ``safeclip eval captioning --preset mini --json``;
- OUT/../gallery/mini: the bundled pool gallery (``safeclip index build --preset mini
  --dataset synthetic:test``), and OUT/../eval/retrieval.json, the About tab's figures
  (``safeclip eval retrieval --preset mini --alpha 0,...,1.5 --json``).
"""
from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stdout
from pathlib import Path

logger = logging.getLogger(__name__)

ALPHAS = "0,0.25,0.5,0.75,1,1.25,1.5"


def evaluate_model_dir(model_dir: Path, split: str = "test") -> dict:
    """Retrieval metrics of a CLIP folder on a split, written beside it as metrics.json."""
    from ..encoders import load_clip_folder
    from ..eval.retrieval import evaluate_encoder
    from .synthetic import SyntheticViSU

    metrics = evaluate_encoder(load_clip_folder(model_dir, device="cpu"), SyntheticViSU(split))
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    (model_dir / "metrics.json").write_text(json.dumps({"split": split, **metrics}, indent=2))
    return metrics


def _overrides(out: Path) -> list[str]:
    return ["--clip", str(out / "mini-clip"), "--safe-clip", str(out / "mini-safeclip")]


def _quiet(main, argv: list[str]) -> None:
    with redirect_stdout(io.StringIO()):
        main(argv)


def evaluate_all(work: Path, out: Path) -> dict:
    """Run every evaluation of the module docstring; return the headline figures."""
    from ..eval.retrieval_cli import main as retrieval_main
    from ..generation import load_generator
    from ..index_cli import main as index_main
    from .eval_captioning import evaluate_captioning
    from .eval_generation import evaluate_folder, sample_sheet
    from .gen_export import write_card as gen_card
    from .recipes import write_card as safeclip_card
    from .train_clip import ClipTrainConfig, write_clip_card
    from .train_llava import write_card as llava_card

    out = Path(out)
    report = {}
    for name in ("mini-clip", "mini-safeclip"):
        report[name] = evaluate_model_dir(out / name)
    t = json.loads((out / "mini-clip" / "training.json").read_text())
    write_clip_card(out / "mini-clip", ClipTrainConfig(**t["config"]), t, report["mini-clip"])
    safeclip_card(out / "mini-safeclip")
    gen = evaluate_folder(out / "mini-gen")
    sheet = load_generator("mini", overrides={"sd": str(out / "mini-gen"),
                                              "clip": str(out / "mini-clip"),
                                              "safe_clip": str(out / "mini-safeclip")},
                           device="cpu", cache=False)
    sample_sheet(sheet).save(out / "mini-gen" / "samples.png")
    gen_card(out / "mini-gen")
    report["mini-gen"] = {m: {k: gen[m][k] for k in ("unsafe_rate", "safe_fidelity")}
                          for m in ("clip", "safeclip")}
    models = {"clip": str(out / "mini-clip"), "safe_clip": str(out / "mini-safeclip"),
              "llava": str(out / "mini-llava")}
    cap = evaluate_captioning("mini", "test", model_overrides=models)
    (out / "mini-llava" / "metrics.json").write_text(json.dumps(cap, indent=2))
    llava_card(out / "mini-llava")
    report["mini-llava"] = {m: {k: cap["models"][m][k] for k in
                                ("unsafe_caption_rate", "safe_caption_accuracy")}
                            for m in ("clip", "safeclip")}
    gallery, figures = out.parent / "gallery" / "mini", out.parent / "eval" / "retrieval.json"
    figures.parent.mkdir(parents=True, exist_ok=True)
    _quiet(index_main, ["build", "--preset", "mini", "--dataset", "synthetic:test", "--out",
                        str(gallery), "--overwrite", *_overrides(out)])
    _quiet(retrieval_main, ["--preset", "mini", "--alpha", ALPHAS, "--json", "--out",
                            str(figures), *_overrides(out)])
    pool = json.loads(figures.read_text())["protocols"]["pool"]
    report["retrieval_pool_cross"] = pool.get("cross")
    logger.info("test split: %s", json.dumps(report, default=str)[:2000])
    return report
