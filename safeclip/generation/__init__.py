"""Paired text-to-image generation: one generator, two text encoders, one batched pass.

    >>> from safeclip.generation import load_generator
    >>> gen = load_generator("mini")                  # or "vit-l-14" / "vit-h-14" (need weights)
    >>> gen.defaults, gen.limits
    >>> res = gen.generate_pair("a red dog holding a kite in the park", seed=0)
    >>> res.clip.image, res.clip.verdict, res.safeclip.image, res.safeclip.verdict
    >>> res.settings, res.warnings

    safeclip generate --preset mini --prompt "a red dog holding a kite" --seed 0 --out out/ --json

Modules: ``paired`` (the batched two-encoder Stable Diffusion sampler), ``sd`` (the loader of
kind ``diffusers-sd``), ``text`` (text encoders from any Safe-CLIP form), ``generator`` (limits,
judge, the world's loader), ``cli``.
"""
from ..limits import SEED
from .generator import GeneratedImage, PairedGenerator, PairResult, load_generator
from .paired import PairedStableDiffusion, share_identical_parameters

SEED_MAX = int(SEED.hi)

__all__ = ["SEED_MAX", "GeneratedImage", "PairResult", "PairedGenerator", "PairedStableDiffusion",
           "load_generator", "share_identical_parameters"]
