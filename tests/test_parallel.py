"""A gallery embedded by several processes (torchrun / accelerate launch) is the gallery one
process builds: same items, same vectors, one manifest, each process doing its own batches."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from safeclip.parallel import Workers

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["index", "build", "--preset", "mini", "--dataset", "synthetic:test", "--limit", "40",
        "--batch-size", "8", "--device", "cpu"]


def run(cmd, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          **kw)


def vectors(folder: Path, name: str) -> np.ndarray:
    index = faiss.read_index(str(folder / name))
    return index.reconstruct_n(0, index.ntotal)


def test_one_process_is_the_whole_world(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    w = Workers.current("cpu")
    assert (w.rank, w.world, w.main, w.state) == (0, 1, True, None)
    assert all(w.mine(b) for b in range(5)) and w.total(7) == 7


def test_two_processes_build_the_gallery_one_process_builds(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = run([sys.executable, "-m", "safeclip", *ARGS, "--out", str(one)])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
             "2", "-m", "safeclip", *ARGS, "--out", str(two)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "worker 1 of 2: done" in r.stdout  # the second process ran and left the index alone
    assert r.stdout.count("built ") == 1  # one report, by worker 0
    report = json.loads((two / "build_report.json").read_text())
    assert report["embedded"] == 40 and "embedded by 2 workers" in report["notes"]
    rows = [json.loads(x) for x in (one / "items.jsonl").read_text().splitlines()]
    assert rows == [json.loads(x) for x in (two / "items.jsonl").read_text().splitlines()]
    for name in ("images.clip.faiss", "images.safeclip.faiss", "captions.clip.faiss"):
        np.testing.assert_allclose(vectors(one, name), vectors(two, name), atol=1e-5)
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert m1["checksum"] == m2["checksum"] and m1["count"] == m2["count"] == 40
    assert not (two / ".partial").exists() and not list(two.glob("*.part*"))


@pytest.mark.parametrize("rank, expected", [(0, [0, 2, 4]), (1, [1, 3])])
def test_batches_are_split_round_robin(rank, expected):
    w = Workers(rank, 2)
    assert [b for b in range(5) if w.mine(b)] == expected and w.main == (rank == 0)
