"""The bundled mini world, as a plug-in: its data, judges, caption vocabulary and the build that
trains its models (``safeclip mini build``). Its generator is a Stable Diffusion pipeline and its
captioner a LLaVA: they load through the real worlds' kinds (``diffusers-sd``, ``llava``).

The world itself is data (``safeclip/worlds/mini.toml``, which names this module as its
plug-in). Importing this module registers the kinds only the mini world uses, and nothing else:
no model code is imported until a kind is used.

  image_judge     mini-judge     the CNN that says which objects an image shows (mini.judge)
  text_judge      mini-words     the world's vocabulary, every synonym (mini.words)
  source          synthetic      galleries of a split: --dataset synthetic:test (mini.sources)
  retrieval_eval  synthetic      S, U, V, G of a split (mini.synthetic)
  generation_eval mini-prompts   unsafe rate and fidelity on the world's prompt set
  captioning_eval mini-captions  unsafe caption rate and caption accuracy
  train_data      synthetic      rendered splits for `safeclip train` (mini.cache)
  command         mini           `safeclip mini build | overlap | judge | clip | gen | llava`
"""
from pathlib import Path

from ..kinds import register

WORLD = "mini"  # the world this plug-in serves
ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
MODELS = ASSETS / "models"  # where `safeclip mini build` writes the bundled models

register("image_judge", "mini-judge", "safeclip.mini.judge:load_judge")
register("text_judge", "mini-words", "safeclip.mini.words:load_judge")
register("source", "synthetic", "safeclip.mini.sources:SyntheticSource", prefix="synthetic")
register("retrieval_eval", "synthetic", "safeclip.mini.synthetic:retrieval_quads")
register("generation_eval", "mini-prompts", "safeclip.mini.eval_generation:evaluate")
register("captioning_eval", "mini-captions", "safeclip.mini.eval_captioning:evaluate")
register("train_data", "synthetic", "safeclip.mini.cache:train_sources")
register("command", "mini", "safeclip.mini.build:main",
         help="build the bundled mini world from scratch, or one of its models")
