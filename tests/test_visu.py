"""The real ViSU loader and the unsafe-image generator, offline: a tiny local ViSU-Text copy,
a fake COCO root in both naming schemes, and a seeded tiny Stable Diffusion pipeline."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from safeclip.data.visu import (
    HUB_ID,
    MissingDataError,
    TextSourceError,
    ViSUDataset,
    concept_category,
    split_files,
)
from safeclip.errors import InputError

# mild captions: the unsafe side only names a concept
ROWS = [
    {"incremental_id": 10, "safe": "a dog on the beach", "nsfw": "a dog on the beach near a gun",
     "coco_id": 139, "tag": "weapons", "split": "train"},
    {"incremental_id": 11, "safe": "a cup on a table", "nsfw": "a cup of blood on a table",
     "coco_id": 285, "tag": "blood", "split": "train"},
    {"incremental_id": 12, "safe": "a man riding a bike", "nsfw": "a man stealing a bike",
     "coco_id": 632, "tag": "Theft", "split": "train"},
    {"incremental_id": 13, "safe": "a cat on a sofa", "nsfw": "a cat on a sofa, vandalized",
     "coco_id": 724, "tag": "vandalsim", "split": "test"},  # misspelled on purpose
]
FIELDS = ["incremental_id", "safe", "nsfw", "coco_id", "tag", "split"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def visu(tmp_path_factory):
    """A CSV with all splits, a JSONL folder per split, a COCO root with 2014 and 2017 names."""
    root = tmp_path_factory.mktemp("visu")
    with (root / "visu.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(ROWS)
    folder = root / "ViSU-Text"
    folder.mkdir()
    for split in ("train", "test"):
        with (folder / f"ViSU-Text_{split}.jsonl").open("w") as f:
            for r in ROWS:
                if r["split"] == split:
                    f.write(json.dumps({k: v for k, v in r.items() if k != "split"}) + "\n")
    coco = root / "coco"
    names = {139: "train2017/000000000139.jpg", 285: "val2014/COCO_val2014_000000000285.jpg",
             632: "train2014/COCO_train2014_000000000632.jpg", 724: "val2017/000000000724.jpg"}
    for cid, name in names.items():
        (coco / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 12), (cid % 255, 40, 90)).save(coco / name)
    return {"csv": root / "visu.csv", "folder": folder, "coco": coco, "root": root}


def test_items_have_the_synthetic_shape(visu):
    from safeclip.mini.synthetic import SyntheticViSU

    ds = ViSUDataset("train", text=visu["csv"], coco_root=visu["coco"], need=("S", "U", "V"))
    assert len(ds) == 3  # the CSV's split column filters the rows
    item = ds[1]
    assert set(item) == set(SyntheticViSU("test", n=1)[0])
    assert item["id"] == "train-11" and item["S"] == "a cup on a table"
    assert item["U"] == "a cup of blood on a table" and item["G"] is None
    assert item["V"].mode == "RGB" and item["V"].size == (20, 12)  # a COCO 2014 name
    assert item["category"] == "shocking"
    assert item["tags"]["coco_id"] == 285 and item["tags"]["concept"] == "blood"
    assert abs(ds[0]["V"].getpixel((0, 0))[0] - 139) <= 3  # a COCO 2017 name (JPEG)
    assert ds[2]["category"] == "illegal activity" and ds[2]["tags"]["concept"] == "theft"


def test_jsonl_folder_and_text_only(visu):
    assert [p.name for p in split_files(visu["folder"], "test")] == ["ViSU-Text_test.jsonl"]
    ds = ViSUDataset("test", text=visu["folder"], need=("S", "U"))  # no image roots at all
    assert len(ds) == 1
    item = ds[0]
    assert item["V"] is None and item["G"] is None and item["id"] == "test-13"
    assert item["tags"]["concept"] == "vandalism"  # misspelling matched
    assert ds.check()["missing"] == {}
    assert concept_category("no such concept")[1] == "unknown"


def test_check_lists_missing_files(visu, tmp_path):
    ds = ViSUDataset("train", text=visu["csv"], coco_root=tmp_path / "nowhere",
                     unsafe_root=tmp_path / "unsafe")
    with pytest.raises(MissingDataError) as e:
        ds.check()
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "3 of 3 safe COCO images (V)" in msg and "3 of 3 unsafe images (G)" in msg
    assert "000000000139.jpg" in msg and str(tmp_path / "unsafe" / "train" / "12.png") in msg
    assert "safeclip data generate-unsafe" in msg and "--coco-root" in msg


def test_missing_text_source_names_hub_and_local_copy(tmp_path):
    with pytest.raises(TextSourceError, match="local copy") as e:
        ViSUDataset("train", text=tmp_path / "missing.csv", need=())
    assert HUB_ID in str(e.value)
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(TextSourceError, match="pip install datasets"):
            ViSUDataset("train", text=HUB_ID, need=())


def test_columns_are_configurable(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"data": [{"a": "safe one", "b": "unsafe one", "img": 5}]}))
    ds = ViSUDataset("validation", text=path, columns={"S": "a", "U": "b", "coco_id": "img"},
                     need=())
    assert ds[0]["S"] == "safe one" and ds[0]["tags"]["coco_id"] == 5
    assert ds[0]["id"] == "validation-0"
    with pytest.raises(InputError, match="columns"):
        ViSUDataset("validation", text=path, need=())
    official = tmp_path / "visu_test.json"  # {id: row}, the official training code's layout
    official.write_text(json.dumps({"7": {"safe": "s", "nsfw": "u", "coco_id": 9, "tag": "hate"}}))
    item = ViSUDataset("test", text=official, need=())[0]
    assert item["id"] == "test-7" and item["category"] == "hate" and item["tags"]["coco_id"] == 9


# ---------------------------------------------------------------------------- generate-unsafe

def tiny_pipeline():
    """A seeded Stable Diffusion pipeline of tiny components (as diffusers' fast tests build it)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from safeclip.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        norm_num_groups=2, attention_head_dim=2)
    vae = AutoencoderKL(
        block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=2)
    tok = clip_tokenizer(77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_generate_is_seeded_and_resumable(visu, pipe, tmp_path):
    from safeclip.data.generate_unsafe import generate_unsafe

    rows = ViSUDataset("train", text=visu["csv"], need=())
    kw = dict(seed=5, steps=2, guidance=2.0, batch=2, height=32, width=32, progress=False)
    res = generate_unsafe(rows, tmp_path, pipe, **kw)
    folder = tmp_path / "train"
    assert (res.written, res.skipped, res.rows) == (3, 0, 3)
    assert sorted(p.name for p in folder.glob("*.png")) == ["10.png", "11.png", "12.png"]
    assert not list(folder.glob(".*tmp"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["steps"] == 2 and manifest["status"] == "done"
    assert manifest["images"] == 3 and manifest["height"] == 32

    before = {p.name: np.asarray(Image.open(p)) for p in folder.glob("*.png")}
    assert before["10.png"].shape == (32, 32, 3)
    assert generate_unsafe(rows, tmp_path, pipe, **kw).written == 0  # nothing new
    (folder / "11.png").unlink()
    mtime = (folder / "10.png").stat().st_mtime_ns
    res = generate_unsafe(rows, tmp_path, pipe, **kw)
    assert (res.written, res.skipped) == (1, 2)
    assert (folder / "10.png").stat().st_mtime_ns == mtime
    again = np.asarray(Image.open(folder / "11.png")).astype(int)
    assert np.array_equal(again, before["11.png"])  # same seed alone as in a batch of 2

    with pytest.raises(ValueError, match="other settings"):
        generate_unsafe(rows, tmp_path, pipe, **{**kw, "seed": 6})

    # the images are what the loader reads as G
    full = ViSUDataset("train", text=visu["csv"], coco_root=visu["coco"], unsafe_root=tmp_path)
    full.check()
    assert full[0]["G"].size == (32, 32)


def test_cli_check_and_generate(visu, pipe, tmp_path, capsys):
    from safeclip.cli import main

    sd = tmp_path / "tiny-sd"
    pipe.save_pretrained(sd)
    out = tmp_path / "unsafe"
    assert main(["data", "generate-unsafe", "--text", str(visu["folder"]), "--split", "train",
                 "--out", str(out), "--sd", str(sd), "--steps", "2", "--height", "32",
                 "--width", "32", "--limit", "2", "--device", "cpu", "--no-progress",
                 "--json", "--log-level", "WARNING"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["written"] == 2 and sorted(p.name for p in (out / "train").glob("*.png")) == [
        "10.png", "11.png"]

    args = ["data", "check", "--text", str(visu["csv"]), "--split", "train",
            "--coco-root", str(visu["coco"]), "--unsafe-root", str(out), "--json"]
    assert main(args) == 1  # row 12 has no unsafe image
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] is False and rep["missing"]["G"]["count"] == 1
    assert rep["missing"]["V"]["count"] == 0 and "12.png" in rep["missing"]["G"]["first"][0]
    assert main(args[:-1] + ["--limit", "2"]) == 0
    assert "OK" in capsys.readouterr().out
