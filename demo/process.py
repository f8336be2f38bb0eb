"""Run ``app.py`` (or any Gradio script) in a subprocess and wait until it serves: used by the
end-to-end tests and by ``bench/app.py``.

    >>> with AppProcess(["--preset", "mini"]) as app:
    ...     Client(app.url).predict("a dog", 5, False, api_name="/search_text")
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """``python SCRIPT ARGS --port P`` in a subprocess, its output in ``log``; ``start()``
    returns once the page answers (or raises with the log's tail)."""

    def __init__(self, args=(), script: str | Path = ROOT / "app.py", log: str | Path | None = None,
                 env: dict | None = None, timeout: float = 240.0, cwd: str | Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.script, self.args, self.timeout = str(script), list(args), timeout
        self.cwd = Path(cwd) if cwd else ROOT
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        self.log = Path(log) if log else tmp / f"app-{self.port}.log"
        self.env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.started = self.ready = None

    def start(self) -> "AppProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = out = open(self.log, "w")  # noqa: SIM115 - the child writes to it until stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, self.script, *self.args, "--port",
                                      str(self.port)], cwd=self.cwd, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT)
        while time.perf_counter() - self.started < self.timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(self.url + "config", timeout=2).read()
                self.ready = time.perf_counter()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the app did not serve within {self.timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_out", None):
            self._out.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
