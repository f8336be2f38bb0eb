"""A Hugging Face Space build, simulated: requirements.txt installs from a folder that holds only
it, then the app starts from a copy of the code with nothing of the project installed, and its
GPU work is wrapped by ``spaces.GPU`` with the durations of the world's data."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Runs before the app (PYTHONPATH): forget the editable install of this checkout, as on a Space
# where requirements.txt is all that is installed.
UNINSTALL = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
"""
# A stand-in for ZeroGPU's `spaces` package: records the duration each function asked for.
SPACES = """
import json, os
def GPU(fn=None, duration=60):
    def wrap(f):
        with open(os.environ["SPACES_LOG"], "a") as out:
            out.write(json.dumps({"function": f.__name__, "duration": duration}) + "\\n")
        return f
    return wrap(fn) if callable(fn) else wrap
"""


def test_requirements_install_alone_in_an_empty_folder(tmp_path):
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert not [ln for ln in lines if ln.startswith(("-e", ".", "/", "-r", "file:"))]
    shutil.copy(ROOT / "requirements.txt", tmp_path / "requirements.txt")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                          "--disable-pip-version-check", "-r", "requirements.txt"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_app_runs_from_the_code_without_the_package_installed(tmp_path):
    from gradio_client import Client

    from demo.process import AppProcess

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    space = tmp_path / "space"
    for f in files:
        if f.startswith(("tests/", "bench/", ".ci/")) or not (ROOT / f).is_file():
            continue
        (space / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, space / f)
    hooks = tmp_path / "hooks"
    (hooks / "spaces").mkdir(parents=True)
    (hooks / "sitecustomize.py").write_text(UNINSTALL)
    (hooks / "spaces" / "__init__.py").write_text(SPACES)
    env = {"PYTHONPATH": str(hooks), "SPACES_LOG": str(tmp_path / "spaces.jsonl"),
           "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run([sys.executable, "-c", "import safeclip, demo; "
                            "print(safeclip.__file__); print(demo.__file__)"],
                           cwd=space, env={**__import__("os").environ, **env},
                           capture_output=True, text=True, check=True)
    assert all(line.startswith(str(space)) for line in probe.stdout.split())
    elsewhere = subprocess.run([sys.executable, "-c", "import safeclip"], cwd=tmp_path,
                               env={**__import__("os").environ, **env}, capture_output=True)
    assert elsewhere.returncode != 0  # as on a Space: the project is not installed
    with AppProcess([], script=space / "app.py", cwd=space, env=env,
                    log=tmp_path / "app.log") as app:  # preset auto: offline, so the mini world
        client = Client(app.url, verbose=False)
        *columns, summary = client.predict("a dog with a ball in the park", 3, False, 1.0, 0.0,
                                           api_name="/search_text")
        assert [len(c) for c in columns] == [3, 3, 3]
    asked = [json.loads(x) for x in (tmp_path / "spaces.jsonl").read_text().splitlines()]
    assert {a["function"]: a["duration"] for a in asked} == {"generate": 30, "caption": 30}
