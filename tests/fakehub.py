"""A Hugging Face Hub of the stand-ins (tests/standins.py), for tests without network.

    >>> hub = FakeHub(repos, cache)              # repos: {repo_id: stand-in folder}
    >>> monkeypatch.setattr("safeclip.hub._snapshot", hub.snapshot)
    >>> load_clip("vit-l-14", "safe_clip")        # downloads into ``cache`` as the Hub would

The cache has the real layout (``models--org--name/refs/main``, ``snapshots/<commit>/``), and
the local look-up is huggingface_hub's own ``snapshot_download(local_files_only=True)``, so a
partial cache behaves as it does for a user. A "download" copies the files that
``allow_patterns`` select (``standins.download``: huggingface_hub's matching rules) and records
the call in ``calls``.
"""
from __future__ import annotations

from pathlib import Path

import standins

COMMIT = "0" * 40


class RepositoryNotFoundError(Exception):
    """What the Hub answers for an unknown or gated repository."""


class FakeHub:
    def __init__(self, repos: dict[str, Path], cache: Path, offline: bool = False):
        self.repos, self.cache, self.offline = dict(repos), Path(cache), offline
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def folder(self, ref: str) -> Path:
        org, name = ref.split("/")
        return self.cache / f"models--{org}--{name}"

    def snapshot(self, ref: str, patterns: list[str], local_only: bool) -> Path:
        from huggingface_hub import snapshot_download

        if local_only:
            return Path(snapshot_download(ref, allow_patterns=patterns, local_files_only=True,
                                          cache_dir=self.cache))
        if self.offline:
            raise ConnectionError("the fake Hub is offline")
        self.calls.append((ref, tuple(patterns)))
        if ref not in self.repos:
            raise RepositoryNotFoundError(f"no repo {ref}")
        snap = self.folder(ref) / "snapshots" / COMMIT
        standins.download(self.repos[ref], snap, patterns)
        (self.folder(ref) / "refs").mkdir(parents=True, exist_ok=True)
        (self.folder(ref) / "refs" / "main").write_text(COMMIT)
        return snap

    def cache_only(self, ref: str, files: list[str]) -> Path:
        """Put only ``files`` of the stand-in of ``ref`` in the cache (a partial download)."""
        snap = self.folder(ref) / "snapshots" / COMMIT
        standins.download(self.repos[ref], snap, files)
        (self.folder(ref) / "refs").mkdir(parents=True, exist_ok=True)
        (self.folder(ref) / "refs" / "main").write_text(COMMIT)
        return snap
