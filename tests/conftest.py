"""Shared fixtures: seeded tiny CLIPs saved in the real checkpoints' on-disk layouts."""
from __future__ import annotations

import json
import socket
from functools import lru_cache

import pytest
import torch


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    if hub_reachable():
        return
    skip = pytest.mark.skip(reason="needs real weights from the Hugging Face Hub, which is unreachable")
    for item in items:
        if "hub" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep galleries and tokenizer files out of the user's cache; no model override leaks in."""
    from safeclip.presets import ROLES

    monkeypatch.setenv("SAFECLIP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    for var in [r[3] for r in ROLES.values()] + ["SAFECLIP_MODELS_DIR", "SAFECLIP_WORLDS",
                                                   "SAFECLIP_GALLERY_DATASET"]:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, most of all on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(width=32, layers=2, heads=2, image_size=32, patch=8, context=16, embed_dim=24)


@pytest.fixture(scope="session")
def tiny_clip():
    from safeclip.mini.clip import clip_config, new_clip
    return new_clip(clip_config(**TINY), seed=3)


@pytest.fixture(scope="session")
def tiny_dirs(tiny_clip, tmp_path_factory):
    """The tiny model as a transformers folder, an open_clip folder, and a bare open_clip .bin
    with a named QuickGELU architecture (as aimagelab/safeclip_vit-l_14 ships it)."""
    import open_clip

    from safeclip.convert import hf_to_open_clip, save_open_clip
    from safeclip.mini.clip import save_clip_dir

    root = tmp_path_factory.mktemp("tiny")
    save_clip_dir(tiny_clip, root / "hf")
    save_open_clip(tiny_clip, root / "oc")
    sd, cfg = hf_to_open_clip(tiny_clip)
    torch.save(sd, root / "open_clip_pytorch_model.bin")
    arch_dir = root / "arch"
    arch_dir.mkdir()
    (arch_dir / "tiny-test-quickgelu.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(arch_dir)
    return {"hf": root / "hf", "oc": root / "oc", "bin": root / "open_clip_pytorch_model.bin",
            "arch": "tiny-test-quickgelu"}


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """``python app.py --preset mini`` in a subprocess, shared by the end-to-end tests."""
    from demo.process import AppProcess

    app = AppProcess(["--preset", "mini"], log=tmp_path_factory.mktemp("app") / "app.log")
    app.start()
    yield app
    app.stop()


REAL_WORLDS = ("vit-l-14", "vit-l-14-336", "vit-h-14")


@pytest.fixture(scope="session")
def standin_repos(tmp_path_factory):
    """The tiny stand-ins of the real worlds' Hub repositories (tests/standins.py)."""
    import standins

    return standins.write_all(tmp_path_factory.getbasetemp() / "standins")


@pytest.fixture(scope="session")
def models_dir(standin_repos, tmp_path_factory):
    """A ``SAFECLIP_MODELS_DIR`` as `safeclip download --out` leaves it: every model of the real
    worlds fetched from a Hub of stand-ins with the loaders' own file patterns, and nothing more.
    Also returns the fake Hub (its ``calls``: what each fetch asked for)."""
    from fakehub import FakeHub

    import safeclip.hub
    from safeclip.download import download_world
    from safeclip.presets import get_preset

    base = tmp_path_factory.getbasetemp()
    hub = FakeHub(standin_repos, base / "hf-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safeclip.hub, "_snapshot", hub.snapshot)
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        for var in ("SAFECLIP_MODELS_DIR", "SAFECLIP_CLIP", "SAFECLIP_SAFE_CLIP"):
            mp.delenv(var, raising=False)
        for name in REAL_WORLDS:
            download_world(get_preset(name, use_env=False), base / "models")
    return base / "models", hub


@pytest.fixture(scope="session")
def gallery_dataset(tmp_path_factory):
    """A small image-caption data set as a Hub data set folder holds it (parquet), for the
    default galleries of real worlds."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.getbasetemp() / "gallery-dataset"
    if (root / "data").exists():
        return root
    (root / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = {"image": [], "caption": []}
    words = ["a dog on the beach", "a cat on a sofa", "a red car in the street", "a cup of tea"]
    for i in range(12):
        im = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        buf = io.BytesIO()
        im.save(buf, format="JPEG")
        rows["image"].append({"bytes": buf.getvalue(), "path": None})
        rows["caption"].append([words[i % len(words)], "another caption"])
    features = datasets.Features({"image": datasets.Image(),
                                  "caption": datasets.Sequence(datasets.Value("string"))})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(root / "data" / "test-00000-of-00001.parquet"))
    return root


@lru_cache(maxsize=None)
def _bench_module(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench_script():
    """``bench_script("results")``: the module of bench/results.py (bench/ is not a package)."""
    return _bench_module
