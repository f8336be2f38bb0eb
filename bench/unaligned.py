"""How much does a recipe owe to the mini world's pixel-aligned pairs? (validation split)

    python bench/unaligned.py --work work/unaligned --recipes text-tokens+nearest

In the mini world an unsafe image G and its safe counterpart V are drawn with the same jitter
(positions, sizes, pixel noise): they are identical except around the object. Real ViSU pairs are
not: the safe image is another picture of the same meaning. This script

1. copies the rendered training and validation splits of ``--data`` into WORK/data with every V
   redrawn by ``safeclip.mini.render.render_rejittered``: the same subject, colour, scene, side
   and safe object as before (the captions still describe it), with a jitter of its own, so that
   no patch of G has an identical counterpart in V;
2. prints how aligned the pairs are before and after: the share of G's pixel patches that V
   holds exactly, anywhere; and where the vision token terms read them (patch tokens of the mini
   CLIP's layer -2 on ``--n`` validation pairs), the share of G's tokens whose nearest V token
   (cosine) sits at the same position, and the mean cosine distance from each G token to its
   nearest V token, the quantity ``vision_tokens_nsfw_nearest`` lowers (object tokens and the
   others apart);
3. trains each recipe on WORK/data and evaluates it as ``bench/recipes.py`` does (validation, the
   evaluation images unchanged), into WORK/recipes and ``--out`` (default
   MODELS/mini-safeclip/unaligned.json, beside the aligned pairs' recipes.json).

Compare its figures with the same recipe's row in assets/models/mini-safeclip/recipes.json
(trained on the aligned pairs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def rejitter_split(src: Path, dst: Path, split: str) -> Path:
    """Copy ``src/split`` to ``dst/split`` with each V redrawn with its own jitter (chunks
    already there are kept: resumable)."""
    from tqdm.auto import tqdm

    from safeclip.mini.render import render_rejittered

    (dst / split).mkdir(parents=True, exist_ok=True)
    meta = json.loads((src / split / "meta.json").read_text())
    chunks = sorted((src / split).glob("chunk_*.npz"))
    for path in tqdm(chunks, desc=f"re-jitter {split}", unit="chunk"):
        out = dst / split / path.name
        if out.exists():
            continue
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        size = arrays["V"].shape[1]
        arrays["V"] = np.stack([np.asarray(render_rejittered(t, t["safe_object"], size),
                                           dtype=np.uint8)
                                for t in map(json.loads, arrays["tags"].tolist())])
        tmp = out.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(out)
    (dst / split / "meta.json").write_text(json.dumps(meta))
    return dst / split


def alignment(clip, g_u8: np.ndarray, v_u8: np.ndarray, obj, layer: int = -2) -> dict:
    """How aligned the pairs (G, V) are (uint8 NHWC; ``obj``: their object patches, from
    ``object_patches``): pixel patches and nearest tokens at ``layer`` (the module docstring)."""
    import torch

    from safeclip.train.data import normalise_u8
    from safeclip.train.towers import vision_pooled_and_tokens

    grid = clip.config.vision_config.image_size // clip.config.vision_config.patch_size
    held = [{row.tobytes() for row in cut} for cut in _cut(v_u8, grid)]
    identical = np.mean([[row.tobytes() in h for row in cut]
                         for cut, h in zip(_cut(g_u8, grid), held)])
    best, where = [], []
    with torch.no_grad():
        for i in range(0, len(g_u8), 100):
            tv, tg = (torch.nn.functional.normalize(vision_pooled_and_tokens(
                clip, normalise_u8(torch.from_numpy(x[i:i + 100])), layer)[1], dim=-1)
                for x in (v_u8, g_u8))
            b, w = torch.einsum("bld,bmd->blm", tg, tv).max(-1)
            best.append(b)
            where.append(w)
    dist, where = 1 - torch.cat(best), torch.cat(where)
    same = (where == torch.arange(where.shape[1])).float().mean()
    return {"identical_patch_share": round(float(identical), 4),
            "same_position_share": round(float(same), 4),
            "nearest_distance_object": round(float(dist[obj].mean()), 4),
            "nearest_distance_rest": round(float(dist[~obj].mean()), 4)}


def _cut(x: np.ndarray, grid: int) -> np.ndarray:
    """(n, H, W[, C]) -> (n, grid * grid, pixels of a patch): the tower's patch grid."""
    n, p = len(x), x.shape[1] // grid
    return x.reshape(n, grid, p, grid, p, -1).transpose(0, 1, 3, 2, 4, 5).reshape(
        n, grid * grid, -1)


def object_patches(g_u8: np.ndarray, v_aligned_u8: np.ndarray, grid: int):
    """(n, grid * grid) bool, True where the patch holds the unsafe object: where G differs at
    all from its aligned V (render_pair's pair shares its pixel noise)."""
    import torch

    diff = np.abs(g_u8.astype(np.int16) - v_aligned_u8.astype(np.int16))
    return torch.from_numpy(_cut(diff, grid).max(-1) > 0)


def main(argv=None) -> int:
    from transformers import CLIPModel

    from safeclip.cli import setup_logging
    from safeclip.mini import MODELS
    from safeclip.mini.cache import load_split
    from safeclip.mini.recipes import RECIPES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("work") / "unaligned")
    p.add_argument("--models", type=Path, default=MODELS, help="mini-clip, -gen, -llava")
    p.add_argument("--data", type=Path, default=Path("work") / "mini" / "data",
                   help="the build's rendered splits (safeclip mini build --only data)")
    p.add_argument("--recipes", nargs="*", default=["text-tokens+nearest"],
                   choices=list(RECIPES), help="none: only the data and the alignment figures")
    p.add_argument("--n", type=int, default=500, help="validation pairs for the alignment")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    setup_logging("INFO")
    data_dir = args.work / "data"
    for split in ("validation", "train"):
        rejitter_split(args.data, data_dir, split)
    aligned, moved = load_split(args.data, "validation"), load_split(data_dir, "validation")
    n = min(args.n, len(aligned["V"]))
    clip = CLIPModel.from_pretrained(args.models / "mini-clip").eval().float()
    g = aligned["G"][:n]
    obj = object_patches(g, aligned["V"][:n], clip.config.vision_config.image_size
                         // clip.config.vision_config.patch_size)
    report = {"pairs": n, "layer": -2,
              "aligned": alignment(clip, g, aligned["V"][:n], obj),
              "rejittered": alignment(clip, g, moved["V"][:n], obj)}
    print(json.dumps(report, indent=2))
    out = args.out or args.models / "mini-safeclip" / "unaligned.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.recipes:
        import recipes as bench_recipes  # a sibling bench script

        bench_recipes.main(["--work", str(args.work / "recipes"), "--models", str(args.models),
                            "--data", str(data_dir), "--recipes", *args.recipes,
                            "--out", str(out)])
    full = json.loads(out.read_text()) if out.exists() else {}
    for key in ("chosen", "rule"):  # an experiment: it chooses nothing
        full.pop(key, None)
    full["alignment"] = report
    full["data"] = "V redrawn by safeclip.mini.render.render_rejittered (bench/unaligned.py)"
    out.write_text(json.dumps(full, indent=2) + "\n")
    if (out.parent / "training.json").exists():  # a model folder: its card shows these figures
        from safeclip.mini.recipes import write_card

        write_card(out.parent)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
