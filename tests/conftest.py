"""Shared fixtures: synthetic videos made here, once per session where they are expensive."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Tests never download and never touch the user's Ray/MLflow state.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

DATA = Path(__file__).parent / "data"


def pytest_configure(config):
    """SIGTERM (a CI timeout, `timeout make test`) stops the run the way Ctrl-C does, so the session's
    fixtures are torn down: its Ray head, the moto server and any MLflow server end with it."""
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(autouse=True)
def _quiet_random_init_warning():
    from raydf.models.weights import RandomInitWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        yield


def index_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(n, H, W, 3) uint8 frames whose flat grey level encodes the frame index (robust to H.264)."""
    levels = (np.arange(n) * 200 // max(n - 1, 1)).astype(np.uint8) if n > 1 else np.array([100], np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def frame_level(n: int, i: int) -> float:
    return float(i * 200 // max(n - 1, 1)) if n > 1 else 100.0


@pytest.fixture(scope="session")
def generated_dataset(tmp_path_factory) -> Path:
    """A small generated dataset (real/ + fake/ + metadata.jsonl), shared by the session."""
    from raydf.synth import make_dataset

    out = tmp_path_factory.mktemp("generated")
    make_dataset(out, videos=10, seed=7)
    return out


# ---- real services: S3 (moto server) and a Ray cluster with token auth ------------------------------
@dataclass
class S3Endpoint:
    endpoint: str  # host:port
    url: str  # http://host:port
    client: object  # boto3 S3 client
    env: dict[str, str]

    def make_bucket(self, name: str) -> str:
        import uuid

        bucket = f"{name}-{uuid.uuid4().hex[:8]}"
        self.client.create_bucket(Bucket=bucket)
        return bucket


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Endpoint]:
    """A moto S3 server on 127.0.0.1; the standard AWS environment points every client at it."""
    import boto3
    import requests

    from tests.infra_helpers import end_processes, free_ports

    (port,) = free_ports(1)
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            break
        except requests.RequestException:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.1)
    import uuid

    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        # moto checks no signature: a unique secret lets tests prove it never leaks (test_security.py)
        "AWS_SECRET_ACCESS_KEY": f"raydf-s3-secret-{uuid.uuid4().hex}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1"
    )
    try:
        yield S3Endpoint(endpoint=f"127.0.0.1:{port}", url=url, client=client, env=env)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
        end_processes({proc.pid: __import__("psutil").Process(proc.pid)})


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """A 2-CPU Ray head on 127.0.0.1 with token auth, which this process joins as a driver.

    The cluster's environment carries the S3 endpoint (as an instance profile would on AWS),
    so actors read and write ``s3://`` without credentials in any job argument.
    """
    from tests.infra_helpers import start_cluster

    import uuid

    # A tracking token in the cluster's environment, as a user's shell would have one (never to leak).
    cluster = start_cluster(head_cpus=2, extra_env={**s3.env, "MLFLOW_TRACKING_TOKEN": f"raydf-mlflow-token-{uuid.uuid4().hex}"})
    try:
        with cluster.connect(log_to_driver=False):
            yield cluster
    finally:
        cluster.stop()


@dataclass
class Extracted:
    data: Path
    features: Path
    cfg: object
    summary: object
    tracking_uri: str


@pytest.fixture(scope="session")
def extracted(tmp_path_factory, generated_dataset, ray_cluster) -> Extracted:
    """The generated dataset through the real Ray Data pipeline, once per session (T=32, psp_tiny)."""
    from raydf.config import ExtractConfig, load_config
    from raydf.extract import run_extraction

    root = tmp_path_factory.mktemp("extracted")
    cfg = load_config(ExtractConfig, {"style": {"config": "psp_tiny"}, "rows_per_file": 4, "feature_batch_size": 2})
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    summary = run_extraction(str(generated_dataset), str(root / "features"), cfg, tracking_uri=tracking_uri)
    return Extracted(data=generated_dataset, features=root / "features", cfg=cfg, summary=summary, tracking_uri=tracking_uri)
