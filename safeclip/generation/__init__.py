"""Paired text-to-image generation: one Stable Diffusion, two text encoders, one batched loop.

    >>> from safeclip.generation import load_generator
    >>> gen = load_generator("mini")                  # or "vit-l-14" / "vit-h-14" (need weights)
    >>> gen.defaults, gen.limits
    >>> res = gen.generate_pair("a red dog holding a kite in the park", seed=0)
    >>> res.clip.image, res.clip.verdict, res.safeclip.image, res.safeclip.verdict
    >>> res.settings, res.warnings

    safeclip generate --preset mini --prompt "a red dog holding a kite" --seed 0 --out out/ --json

Modules: ``paired`` (the batched two-encoder sampler and parameter sharing), ``decoder`` (the
mini world's generator: an embedding decoder, same pairing), ``text`` (which hidden states a
generator reads), ``generator`` (input checks, judge, preset loaders), ``cli``.
"""
from ..presets import SEED_MAX, generation_settings
from .cli import main
from .generator import GeneratedImage, PairedGenerator, PairResult, load_generator
from .paired import PairedStableDiffusion, share_identical_parameters

__all__ = ["SEED_MAX", "GeneratedImage", "PairResult", "PairedGenerator", "PairedStableDiffusion",
           "generation_settings", "load_generator", "main", "share_identical_parameters"]
