"""Shared fixtures: synthetic videos made here, once per session where they are expensive."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

# Tests never download and never touch the user's Ray/MLflow state.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

DATA = Path(__file__).parent / "data"


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
    make_dataset(out, videos=4, seed=7)
    return out
