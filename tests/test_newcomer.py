"""A newcomer's first ten minutes, from a fresh clone: the README's commands in order.

``make demo`` (reusing this run's virtual environment, so it adds minutes, not a 6.7 GB
install) under a pseudo-terminal, where progress bars are drawn: at most 60 lines; then
``raydf detect <a generated clip>`` with no flags from the clone's root uses the demo's model.
Interrupting a command (SIGTERM) leaves no Ray process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
LINE_BUDGET = 60


def _clean_env(home: Path, clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "RAYDF_", "AWS_"))}
    env.update(HOME=str(home), PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(clone),
               RAY_USAGE_STATS_ENABLED="0", TERM="xterm")  # fmt: skip
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("newcomer")
    dest = root / "raydf"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True)
    home = root / "home"
    home.mkdir()
    return dest, _clean_env(home, dest)


def test_make_demo_then_detect_with_no_flags(clone):
    dest, env = clone
    if not shutil.which("script"):
        pytest.skip("util-linux `script` is needed for a pseudo-terminal")
    stamp = VENV / ".raydf-installed"
    make = f"make -o {stamp} demo VENV={VENV}"
    tty = dest / "demo.tty"
    proc = subprocess.run(["script", "-q", "-e", "-c", f"stty cols 120 rows 40; {make}", str(tty)], cwd=dest, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1500)  # fmt: skip
    text = tty.read_bytes().decode(errors="replace")
    body = text.split("\n", 1)[1].rsplit("Script done", 1)[0]  # `script`'s own header and footer
    assert proc.returncode == 0, body[-3000:]
    lines = body.count("\n")
    assert lines <= LINE_BUDGET, f"make demo printed {lines} lines:\n{body}"
    assert "\r" in body and "training" in body  # live bars were drawn on the terminal
    assert "next:" in body and "raydf detect" in body and "not meaningful" in body
    assert "INFO" not in body and "Traceback" not in body

    clip = sorted((dest / "demo" / "data" / "real").glob("*.mp4"))[0]
    out = subprocess.run(["raydf", "detect", str(clip.relative_to(dest)), "--json"], cwd=dest, env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["model"]["source"].startswith("runs:/")  # the demo's model, from the default store
    assert "not meaningful" in result["model"]["warning"]
    assert (dest / "mlflow.db").is_file()  # the demo trained into the clone's default store


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigterm_leaves_no_ray_process_behind(clone):
    dest, env = clone
    data = dest / "demo" / "data"
    if not (data / "metadata.jsonl").exists():  # the demo test made it; alone, make a tiny one
        subprocess.run(["raydf", "make-dataset", str(data), "--videos", "2"], cwd=dest, env=env, check=True, timeout=300)
    proc = subprocess.Popen(["raydf", "extract", "--input", str(data), "--output", str(dest / "sigterm-features"),
                             "--style-config", "psp_tiny", "--frames", "8", "--no-track"],
                            cwd=dest, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    seen: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        kids = _descendants(proc.pid)
        if any("raylet" in " ".join(k.cmdline()) for k in kids if k.is_running()):
            seen = kids
            break
        time.sleep(0.5)
    assert seen, "the command did not start Ray"
    time.sleep(3)  # the pipeline is running
    seen = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    gone, alive = psutil.wait_procs(seen, timeout=60)
    assert not alive, f"left running after SIGTERM: {[p.cmdline()[:2] for p in alive]}"
