"""Test helpers for the detection service: a model bundle, clips, and ``raydf serve`` as a subprocess.

:func:`start_service` runs the real console script (``python -m raydf.cli serve``) on a free
port of 127.0.0.1 with its own ``HOME`` (Ray's auth token), its own Ray temp dir and a parent-death
signal, so a crashed or killed test run never leaves a service behind; :meth:`Service.stop`
sends SIGTERM (the service shuts Serve and its Ray down), then ends whatever is left of the
process group and of the Ray processes that name its temp dir, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.infra_helpers import end_processes, free_ports

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"  # git-ignored
NUM_FRAMES = 8  # T of the test model: small, so every clip costs little CPU
_FOREIGN_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def make_bundle(path: Path, *, num_frames: int = NUM_FRAMES, style: str = "psp_tiny", seed: int = 0) -> Path:
    """A real model bundle: a fusion classifier with a seeded init, for the store config of a small
    ExtractConfig (``psp_tiny`` style encoder, ``num_frames`` frames), saved as ``raydf train`` saves one."""
    import torch

    from raydf.bundle import ModelBundle
    from raydf.config import ExtractConfig, FusionConfig, load_config
    from raydf.extract import store_config
    from raydf.features import resolve_precision
    from raydf.models.fusion import FusionClassifier
    from raydf.video import decoder_identity

    cfg = load_config(ExtractConfig, {"video": {"num_frames": num_frames}, "style": {"config": style}})
    torch.manual_seed(seed)
    fusion = FusionConfig()
    bundle = ModelBundle(
        state_dict=FusionClassifier(fusion).state_dict(),
        fusion_config=fusion,
        store=store_config(cfg, precision=resolve_precision(cfg, "cpu"), decoder=decoder_identity(cfg.video.backend)),
    )
    return bundle.save(path)


def generated_clips(root: Path, *, videos: int = 3, seed: int = 21) -> dict[str, Path]:
    """``{"real/0000.mp4": path, "fake/0000_blend.mp4": path, ...}`` of a small generated dataset."""
    from raydf.synth import make_dataset

    make_dataset(root, videos=videos, seed=seed, width=320, height=240, min_frames=12, max_frames=40)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return {r["file"]: root / r["file"] for r in rows}


def _pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    """The child gets SIGTERM when the test process dies (Linux ``prctl(PR_SET_PDEATHSIG)``)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    os.setpgrp()  # its own process group: stop() ends the group


@dataclass
class Service:
    """A running ``raydf serve``."""

    url: str
    token: str | None
    proc: subprocess.Popen
    root: Path  # HOME, the log, the token file
    ray_tmp: Path  # Ray's temp dir (short: Unix socket paths are limited to 107 bytes)
    log: Path
    startup_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    def headers(self, token: str | None = None) -> dict[str, str]:
        t = token if token is not None else self.token
        return {"Authorization": f"Bearer {t}"} if t else {}

    def detect(self, path: Path, *, token: str | None = None, params: dict[str, str] | None = None,
               timeout: float = 300) -> requests.Response:  # fmt: skip
        with open(path, "rb") as f:
            return requests.post(f"{self.url}/v1/detect", files={"video": (path.name, f, "video/mp4")},
                                 headers=self.headers(token), params=params, timeout=timeout)  # fmt: skip

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"raydf serve exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                r = requests.get(f"{self.url}/healthz", timeout=15)
                last = r.json()
                if r.status_code == 200 and last.get("status") == "ok":
                    return last
            except (requests.RequestException, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(f"raydf serve not healthy after {timeout:.0f}s (last: {last}):\n{self.log.read_text()[-4000:]}")

    def wait_model(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = requests.get(f"{self.url}/v1/model", headers=self.headers(), timeout=30)
            if r.status_code == 200:
                return r.json()
            time.sleep(0.5)
        raise TimeoutError(f"no model after {timeout:.0f}s: {r.status_code} {r.text}")

    def ready(self, timeout: float) -> None:
        """Wait until healthy (stopping the service if it never gets there); records the startup time."""
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop(grace_s=20)
            raise
        self.startup_s = time.monotonic() - self.extra["t0"]

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM (Serve and Ray shut down), then end the group and the Ray processes of its temp dir, by pid."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        leftovers: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or ())
                if str(self.ray_tmp) in cmd or os.getpgid(p.pid) == self.proc.pid:
                    leftovers[p.pid] = p
            except (psutil.Error, ProcessLookupError):
                continue
        leftovers.pop(os.getpid(), None)
        end_processes(leftovers, grace_s=10)
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def start_service(root: Path, *, model: Path | str, token: bool = True, args: tuple[str, ...] = (),
                  wait_s: float = 420.0) -> Service:  # fmt: skip
    """``raydf serve`` on a free loopback port, waiting (``wait_s`` > 0) until both deployments answer ``/healthz``.

    Args:
        root: a folder for the service's HOME, log and token file.
        model: ``--model`` (it need not exist yet: requests get 503 until it does).
        token: start with ``--token-file`` (a fresh random token).
        args: further ``raydf serve`` flags.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "home").mkdir(exist_ok=True)
    (port,) = free_ports(1)
    tok = secrets.token_urlsafe(24) if token else None
    cmd = [sys.executable, "-m", "raydf.cli", "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    if tok:
        (root / "token").write_text(tok + "\n")
        (root / "token").chmod(0o600)
        cmd += ["--token-file", str(root / "token")]
    ray_tmp = Path(tempfile.mkdtemp(prefix="rdfs-"))
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(HOME=str(root / "home"), RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))  # fmt: skip
    log = root / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
    svc = Service(url=f"http://127.0.0.1:{port}", token=tok, proc=proc, root=root, ray_tmp=ray_tmp, log=log)
    svc.extra["t0"] = time.monotonic()
    if wait_s:
        svc.ready(wait_s)
    return svc


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM to the test process becomes KeyboardInterrupt, so fixture teardowns still run."""

    def _raise(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.getsignal(signal.SIGTERM)
    installed = previous in (signal.SIG_DFL, None)
    if installed:
        signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def cli_detect(clip: Path, model: Path, home: Path) -> dict[str, Any]:
    """``python -m raydf.cli detect CLIP --model MODEL --json``: the console's answer for one clip."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, "-m", "raydf.cli", "detect", str(clip), "--model", str(model), "--json"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"raydf detect failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout)
