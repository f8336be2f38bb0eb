"""Shared helpers of the stand-in writers (see ``tests/standins.py``): seeded tensors, LoRA-style
perturbations, weight files, the CLIP BPE tokenizer files, JSON and stub files.

Every tensor is drawn from its own ``torch.Generator`` seeded by (seed, tensor name), so a tensor's
values depend on nothing but its name, shape and the seed: not on construction order or library
defaults. Float values are rounded to fp16-representable numbers (stored as fp32), so a checkpoint
saved in fp16 (LLaVA) holds exactly the same values as its fp32 source.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import zlib
from functools import lru_cache
from pathlib import Path

import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
LORA_TARGETS = (
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.out_proj.weight",
    "mlp.fc1.weight",
    "mlp.fc2.weight",
    "embeddings.patch_embedding.weight",
)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _gen(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def fp16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.half().float() if t.is_floating_point() else t


def seeded_tensor(name: str, shape, seed: int) -> torch.Tensor:
    """A deterministic value of parameter ``name``: norms ~1, biases ~0, matrices ~fan_in**-0.5."""
    g = _gen(seed, name)
    shape = tuple(shape)
    noise = torch.randn(shape, generator=g)
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("logit_scale"):
        return fp16_exact(torch.full(shape, 4.6052))  # ln(100), where trained CLIPs end
    if len(shape) == 1 and leaf == "weight":  # LayerNorm / GroupNorm / RMSNorm scale
        return fp16_exact(1.0 + 0.05 * noise)
    if len(shape) <= 1:
        return fp16_exact(0.02 * noise)
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    if "embedding" in name or "embeds" in name or len(shape) == 2 and shape[1] == 1:
        return fp16_exact(0.1 * noise)
    return fp16_exact(noise / fan_in**0.5)


def seeded_state(model: torch.nn.Module, seed: int) -> dict:
    """Seeded values for every entry of ``model.state_dict()`` (the model may live on the meta
    device: only names and shapes are read). Persistent buffers are not expected."""
    params = dict(model.named_parameters())
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if name not in params:
            raise ValueError(f"unexpected persistent buffer {name}")
        out[name] = seeded_tensor(name, t.shape, seed)
    return out


def lora_perturbed(state: dict, seed: int, rank: int = 2, rel: float = 0.15) -> dict:
    """``state`` with W + B @ A added to the LoRA-targeted weights (a merged LoRA of rank ``rank``);
    every other tensor is the same object (byte-identical when saved)."""
    out = dict(state)
    for name, w in state.items():
        if not name.endswith(LORA_TARGETS):
            continue
        g = _gen(seed, name)
        flat = w.reshape(w.shape[0], -1)
        a = torch.randn(rank, flat.shape[1], generator=g)
        b = torch.randn(flat.shape[0], rank, generator=g)
        delta = b @ a
        delta = delta * (rel * flat.std() / delta.std())
        out[name] = fp16_exact(flat + delta).reshape(w.shape)
    return out


def text_position_ids(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.long).expand((1, -1)).contiguous()


def with_legacy_position_ids(state: dict, prefixes: dict[str, int]) -> dict:
    """Add the ``*.embeddings.position_ids`` buffers that checkpoints saved before transformers 4.31
    carry (they were persistent buffers then)."""
    out = dict(state)
    for prefix, n in prefixes.items():
        out[f"{prefix}.embeddings.position_ids"] = text_position_ids(n)
    return out


def save_weights(
    state: dict,
    folder: Path,
    safetensors_name: str | None,
    bin_name: str | None,
    dtype: torch.dtype | None = None,
) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in state.items()
    }
    if safetensors_name:
        save_file(sd, str(folder / safetensors_name), metadata={"format": "pt"})
    if bin_name:
        torch.save(sd, folder / bin_name)


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def write_stubs(folder: Path, repo_id: str, note: str = "") -> None:
    """The ``.gitattributes`` and ``README.md`` every Hub repository has (stand-in content)."""
    folder.mkdir(parents=True, exist_ok=True)
    lfs = ["*.bin", "*.safetensors", "*.h5", "*.msgpack", "*.ckpt", "*.model", "*.pt", "*.pth"]
    (folder / ".gitattributes").write_text(
        "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in lfs)
    )
    (folder / "README.md").write_text(
        f"---\ntags:\n- test-stand-in\n---\n\n# {repo_id} (tiny seeded stand-in)\n\n"
        f"Same file layout and config fields as the real repository; tiny random weights.\n{note}\n"
    )


# ----------------------------------------------------------------------------- CLIP BPE tokenizer
def _byte_to_unicode() -> dict[int, str]:
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    mapping.update(
        {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in printable)}
    )
    return mapping


@lru_cache(maxsize=1)
def clip_bpe_files() -> dict[str, bytes]:
    """``vocab.json``, ``merges.txt`` and ``tokenizer.json`` of the real 49,408-token CLIP BPE,
    built from the merges file open_clip ships (found without importing open_clip: that is slow)."""
    import tempfile

    from transformers import CLIPTokenizer

    spec = importlib.util.find_spec("open_clip")
    bpe = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_byte_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(tokens) == 49408, len(tokens)
    vocab = json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False)
    merges_txt = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    with tempfile.TemporaryDirectory() as d:
        Path(d, "vocab.json").write_text(vocab, encoding="utf-8")
        Path(d, "merges.txt").write_text(merges_txt, encoding="utf-8")
        tok = CLIPTokenizer.from_pretrained(d, model_max_length=77)
        tok.backend_tokenizer.save(str(Path(d, "tokenizer.json")), pretty=False)
        tokenizer_json = Path(d, "tokenizer.json").read_bytes()
    return {
        "vocab.json": vocab.encode(),
        "merges.txt": merges_txt.encode(),
        "tokenizer.json": tokenizer_json,
    }


def _added(content: str, legacy_type: bool) -> dict:
    d = {
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }
    return {"__type": "AddedToken", **d} if legacy_type else d


def write_clip_tokenizer(
    folder: Path,
    with_tokenizer_json: bool = True,
    pad_token: str = EOS,
    name_or_path: str = "openai/clip-vit-large-patch14",
) -> None:
    """CLIP tokenizer files in the 2022 Hub layout: ``vocab.json``, ``merges.txt``, optionally
    ``tokenizer.json``, and the legacy-format ``tokenizer_config.json`` /
    ``special_tokens_map.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = clip_bpe_files()
    for name in ("vocab.json", "merges.txt") + (("tokenizer.json",) if with_tokenizer_json else ()):
        (folder / name).write_bytes(files[name])
    write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": _added(BOS, True),
            "do_lower_case": True,
            "eos_token": _added(EOS, True),
            "errors": "replace",
            "model_max_length": 77,
            "name_or_path": name_or_path,
            "pad_token": pad_token,
            "special_tokens_map_file": "./special_tokens_map.json",
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": _added(EOS, True),
        },
    )
    write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": _added(BOS, False),
            "eos_token": _added(EOS, False),
            "pad_token": pad_token,
            "unk_token": _added(EOS, False),
        },
    )


def write_clip_preprocessor(folder: Path, size: int, legacy: bool = True, **extra) -> None:
    """``preprocessor_config.json``: the 2022 ``CLIPFeatureExtractor`` form (int sizes) when
    ``legacy``, else the ``CLIPImageProcessor`` form with size dicts."""
    if legacy:
        cfg = {
            "crop_size": size,
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": OPENAI_MEAN,
            "image_std": OPENAI_STD,
            "resample": 3,
            "size": size,
        }
    else:
        cfg = {
            "crop_size": {"height": size, "width": size},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": OPENAI_MEAN,
            "image_processor_type": "CLIPImageProcessor",
            "image_std": OPENAI_STD,
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": size},
        }
    cfg.update(extra)
    write_json(folder / "preprocessor_config.json", dict(sorted(cfg.items())))
