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
    """Keep placeholder models and tokenizer files out of the user's cache."""
    monkeypatch.setenv("SAFECLIP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    for var in ("SAFECLIP_CLIP", "SAFECLIP_SAFE_CLIP", "SAFECLIP_SD", "SAFECLIP_SAFE_SD",
                "SAFECLIP_LLAVA", "SAFECLIP_MODELS_DIR"):
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
