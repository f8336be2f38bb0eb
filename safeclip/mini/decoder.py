"""The mini world's generator (kind ``mini-decoder``): a decoder from a CLIP text embedding (plus
noise) to VAE latents, behind the same paired interface as Stable Diffusion.

A mini Stable Diffusion trained here earlier drew scenes but almost never the object after 64
minutes of CPU training, so the mini world uses this generator (model card:
assets/models/mini-gen/README.md). How it differs from the real system (it reads the pooled
embedding, which is exactly what Safe-CLIP's loss moves) is listed in the world's data.

How it generates, in the spirit of unCLIP (DALL-E 2's decoder, conditioned on CLIP embeddings):

    prompt -> CLIP text tower -> normalised projected embedding e   (what Safe-CLIP's loss moves)
    seed   -> z ~ N(0, I), z_dim numbers                             (placement, size, side)
    (e, z) -> EmbeddingDecoder -> 16 x 16 x 16 latent -> the mini SD's VAE decoder -> 64 px image

The decoder is trained with the *original* text tower only (safeclip.mini.train_gen: each item's
noise is the best of a few prior draws, IMLE-style); Safe-CLIP's tower is dropped in unchanged,
as in the paper. ``steps`` does not apply (one
pass). ``guidance`` g and a negative prompt act on the latent, classifier-free style:
latent = d(e_neg, z) + g * (d(e, z) - d(e_neg, z)), where e_neg is the negative prompt's embedding
(the empty prompt's when there is none); g = 1 is the plain conditional sample.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..generation.text import load_text_embedder  # noqa: F401 - re-exported for the trainers
from ..sharing import share_equal_tensors

CONFIG = "decoder_config.json"
WEIGHTS = "decoder.safetensors"


@dataclass
class DecoderConfig:
    embed_dim: int = 128  # CLIP's projection dimension
    z_dim: int = 8
    widths: tuple = (128, 96, 64)  # 4x4 -> 8x8 -> 16x16
    latent_channels: int = 16
    latent_size: int = 16


class _Block(nn.Module):
    """2x upsampling, two 3x3 convolutions, FiLM from the condition vector, residual."""

    def __init__(self, c_in: int, c_out: int, cond: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(8, c_out), nn.GroupNorm(8, c_out)
        self.film = nn.Linear(cond, 4 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        s1, b1, s2, b2 = self.film(c)[:, :, None, None].chunk(4, dim=1)
        x = F.silu(self.norm1(self.conv1(h)) * (1 + s1) + b1)
        x = F.silu(self.norm2(self.conv2(x)) * (1 + s2) + b2)
        return x + self.skip(h)


class EmbeddingDecoder(nn.Module):
    """(normalised text embedding, noise z) -> VAE latent (latent_channels x size x size)."""

    def __init__(self, config: DecoderConfig | None = None):
        super().__init__()
        self.config = cfg = config or DecoderConfig()
        cond = cfg.embed_dim + cfg.z_dim
        self.start = 4
        steps = cfg.latent_size // self.start
        if self.start * 2 ** (len(cfg.widths) - 1) != cfg.latent_size or steps < 1:
            raise ValueError(f"widths {cfg.widths} do not reach latent size {cfg.latent_size}")
        self.cond = nn.Sequential(nn.Linear(cond, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU())
        self.stem = nn.Linear(256, cfg.widths[0] * self.start ** 2)
        self.blocks = nn.ModuleList(_Block(a, b, 256) for a, b in zip(cfg.widths, cfg.widths[1:]))
        self.out = nn.Sequential(nn.GroupNorm(8, cfg.widths[-1]), nn.SiLU(),
                                 nn.Conv2d(cfg.widths[-1], cfg.latent_channels, 3, padding=1))

    def forward(self, embedding: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = self.cond(torch.cat([embedding, z], dim=-1))
        h = self.stem(c).view(len(c), self.config.widths[0], self.start, self.start)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG).write_text(json.dumps(asdict(self.config), indent=2))
        save_file({k: v.detach().half().contiguous() for k, v in self.state_dict().items()},
                  str(path / WEIGHTS))

    @classmethod
    def load(cls, path: str | Path, dtype=torch.float32) -> EmbeddingDecoder:
        from safetensors.torch import load_file

        path = Path(path)
        conf = json.loads((path / CONFIG).read_text())
        conf["widths"] = tuple(conf["widths"])
        model = cls(DecoderConfig(**conf))
        model.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
        return model.to(dtype).eval().requires_grad_(False)


class PairedEmbeddingDecoder:
    """Both prompts' images from one noise draw, in one batched decoder and VAE pass.

    Same call as ``PairedStableDiffusion``: ``paired(prompt, negative, seed, steps, guidance,
    height, width)`` -> (original's image, safe one's image). Rows of the batch: [negative_clip,
    negative_safe, prompt_clip, prompt_safe]; each image equals ``single`` with that encoder.
    """

    sampler = "EmbeddingDecoder"  # settings["scheduler"]: no scheduler, one pass
    uses_steps = False

    def __init__(self, decoder: EmbeddingDecoder, vae, tokenizer, text_encoder, safe_text_encoder,
                 share: bool = True):
        self.decoder, self.vae, self.tokenizer = decoder, vae, tokenizer
        self.text_encoder, self.safe_text_encoder = text_encoder, safe_text_encoder
        sharing = share_equal_tensors(text_encoder, safe_text_encoder) if share else {}
        self.shared_bytes = sharing.get("shared_bytes", 0)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @torch.no_grad()
    def embed(self, encoder, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(texts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        out = encoder(input_ids=tok.input_ids.to(self.device),
                      attention_mask=tok.attention_mask.to(self.device))
        return F.normalize(out.text_embeds.float(), dim=-1)

    def noise(self, seed: int, n: int = 1) -> torch.Tensor:
        g = torch.Generator("cpu").manual_seed(int(seed))
        return torch.randn(n, self.decoder.config.z_dim, generator=g).to(self.device)

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor, negatives: torch.Tensor, z: torch.Tensor,
               guidance: float) -> torch.Tensor:
        """Images in [0, 1], (n, 3, H, W), from prompt and negative embeddings and noise."""
        if guidance == 1.0:
            lat = self.decoder(embeddings, z)
        else:
            n = len(embeddings)
            both = self.decoder(torch.cat([negatives, embeddings]), torch.cat([z, z]))
            lat = both[:n] + guidance * (both[n:] - both[:n])
        x = self.vae.decode(lat / self.vae.config.scaling_factor).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    @staticmethod
    def to_pil(x: torch.Tensor):
        from PIL import Image

        arr = (x * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

    def single(self, encoder, prompt: str, negative: str | None, seed: int, guidance: float):
        """One image with one encoder (the reference the paired call must equal)."""
        e = self.embed(encoder, [prompt])
        n = self.embed(encoder, [negative or ""])
        return self.to_pil(self.decode(e, n, self.noise(seed), guidance))[0]

    def __call__(self, prompt: str, negative_prompt: str | None = None, seed: int = 0,
                 steps: int = 1, guidance: float = 1.0, height: int = 64, width: int = 64,
                 progress: bool = True):
        del steps, height, width  # one decoder pass; the size is fixed (checked by the caller)
        texts = [negative_prompt or "", prompt]
        with tqdm(total=2, desc="generate pair", unit="stage", disable=not progress) as bar:
            e_o, e_s = self.embed(self.text_encoder, texts), self.embed(self.safe_text_encoder, texts)
            bar.update()
            neg, pos = torch.stack([e_o[0], e_s[0]]), torch.stack([e_o[1], e_s[1]])
            images = self.to_pil(self.decode(pos, neg, self.noise(seed).expand(2, -1), guidance))
            bar.update()
        return images[0], images[1]


def load_generator(world, device=None, offload: bool = False):
    """Kind ``mini-decoder``: the decoder folder of the world's ``sd`` model (decoder/, vae/ and
    sd_config.json), with the text towers of its ``text`` and ``safe_text`` models."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    from ..encoders import default_device_dtype
    from ..generation.generator import PairedGenerator, settings_of
    from ..hub import CLIP_FILES, Files, Layout, fetch
    from ..safety.base import load_judge

    g = world.generation
    layout = Layout("a mini generator (sd_config.json, decoder/, vae/)", (Files(
        (), (("sd_config.json",), ("decoder/" + CONFIG,), ("decoder/" + WEIGHTS,),
             ("vae/config.json",))),))
    sd = fetch(g.sd.ref, layout, role="sd", world=world.name, hint=g.sd.hint)
    if g.text is None:
        raise ValueError(f"world {world.name!r}: a mini decoder has no text encoder of its own; "
                         "name the original one (generation.text)")
    towers = {s.role: fetch(s.ref, CLIP_FILES, role=s.role, world=world.name, hint=s.hint)
              for s in (g.text, g.safe_text)}
    conf = json.loads((sd / "sd_config.json").read_text())
    device, _ = default_device_dtype(device, torch.float32)
    context = int(conf.get("text_encoder", {}).get("context_length", 77))
    tokenizer = CLIPTokenizer.from_pretrained(towers[g.text.role], model_max_length=context)
    paired = PairedEmbeddingDecoder(
        EmbeddingDecoder.load(sd / "decoder").to(device),
        AutoencoderKL.from_pretrained(sd / conf.get("vae", "vae")).float().eval().to(device),
        tokenizer, load_text_embedder(towers[g.text.role]).to(device),
        load_text_embedder(towers[g.safe_text.role]).to(device))
    defaults, limits = settings_of(world)
    return PairedGenerator(paired, load_judge(g.judge, world), world, defaults, limits)
