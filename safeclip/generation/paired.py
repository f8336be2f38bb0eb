"""One Stable Diffusion pipeline, two text encoders, both images in one batched denoising loop.

    >>> from safeclip.generation.paired import PairedStableDiffusion, share_identical_parameters
    >>> paired = PairedStableDiffusion(pipe, safe_text_encoder)    # pipe: a StableDiffusionPipeline
    >>> img_clip, img_safe = paired(prompt, negative_prompt=None, seed=0, steps=20, guidance=5.0,
    ...                             height=64, width=64)

The batch is ``[uncond_clip, uncond_safe, cond_clip, cond_safe]``: each encoder gets its own
unconditional (negative-prompt) embedding, both images start from the same initial latents, drawn
exactly as the stock pipeline draws them (``prepare_latents`` with
``torch.Generator(device).manual_seed(seed)``), and every step mirrors the stock loop of
``StableDiffusionPipeline.__call__``. So each image equals what the stock pipeline produces with
that text encoder alone and that seed, within float tolerance, for deterministic schedulers (DDIM
with eta=0, PNDM, DPM-Solver, Euler); ancestral schedulers draw per-step noise for the batch and
only keep the same distribution.
"""
from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from ..sharing import share_equal_tensors

logger = logging.getLogger(__name__)


def share_identical_parameters(reference: torch.nn.Module, other: torch.nn.Module) -> int:
    """The bytes ``other`` no longer holds after sharing its tensors equal to ``reference``'s
    (see safeclip.sharing)."""
    return share_equal_tensors(reference, other)["shared_bytes"]


class PairedStableDiffusion:
    """A StableDiffusionPipeline (its text encoder = the original) plus a second text encoder."""

    def __init__(self, pipe, safe_text_encoder: torch.nn.Module, share: bool = True):
        self.pipe = pipe
        self.safe_text_encoder = safe_text_encoder.eval().requires_grad_(False)
        self.shared_bytes = share_identical_parameters(pipe.text_encoder, safe_text_encoder) if share else 0
        if share:
            logger.info("safe text encoder shares %.1f MB of identical tensors with the original",
                        self.shared_bytes / 2**20)

    uses_steps = True  # a denoising loop: ``steps`` matters

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def sampler(self) -> str:
        return type(self.pipe.scheduler).__name__

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    # ------------------------------------------------------------------------------ encoding
    @torch.no_grad()
    def _encode(self, encoder, prompt: str, negative: str | None):
        """(cond, uncond) hidden states of ``encoder``, as ``StableDiffusionPipeline.encode_prompt``
        computes them (max-length padding, truncation, no attention mask unless the config asks;
        a missing negative prompt is the empty string)."""
        tok, device = self.pipe.tokenizer, self.device
        enc_device = next(encoder.parameters()).device
        mask_needed = getattr(encoder.config, "use_attention_mask", False)

        def run(text):
            t = tok([text], padding="max_length", max_length=tok.model_max_length,
                    truncation=True, return_tensors="pt")
            mask = t.attention_mask.to(enc_device) if mask_needed else None
            h = encoder(t.input_ids.to(enc_device), attention_mask=mask)[0]
            return h.to(dtype=encoder.dtype, device=device)

        return run(prompt), run(negative if negative is not None else "")

    def encode_pair(self, prompt: str, negative: str | None):
        """Embeddings batch ``[uncond_clip, uncond_safe, cond_clip, cond_safe]``."""
        c_o, u_o = self._encode(self.pipe.text_encoder, prompt, negative)
        c_s, u_s = self._encode(self.safe_text_encoder, prompt, negative)
        return torch.cat([u_o, u_s, c_o, c_s])

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str | None = None, seed: int = 0,
                 steps: int = 20, guidance: float = 7.5, height: int = 512, width: int = 512,
                 progress: bool = True):
        """Two PIL images: (original encoder's, safe encoder's)."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
            retrieve_timesteps,
        )

        pipe, device = self.pipe, self.device
        cfg = guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None
        embeds = self.encode_pair(prompt, negative_prompt)  # (4, L, D)
        if not cfg:
            embeds = embeds[2:]
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        timesteps, steps = retrieve_timesteps(pipe.scheduler, steps, device)
        latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, height, width,
                                       embeds.dtype, device, generator)
        latents = torch.cat([latents, latents])  # the same start for both images
        extra = pipe.prepare_extra_step_kwargs(generator, 0.0)
        for t in tqdm(timesteps, desc="generate pair", unit="step", disable=not progress):
            x = torch.cat([latents] * 2) if cfg else latents
            x = pipe.scheduler.scale_model_input(x, t)
            noise = pipe.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
            if cfg:
                uncond, text = noise.chunk(2)
                noise = uncond + guidance * (text - uncond)
            latents = pipe.scheduler.step(noise, t, latents, **extra, return_dict=False)[0]
        vae = pipe.vae
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False,
                           generator=generator)[0]
        images = pipe.image_processor.postprocess(image, output_type="pil",
                                                  do_denormalize=[True] * len(image))
        return images[0], images[1]
