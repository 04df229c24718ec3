"""Weights policy shared by the extractors.

Weights come from a path or any fsspec URI the user gives (no download at run
time) and are loaded with ``torch.load(..., weights_only=True)``. Provenance is
``sha256:<hex>`` of the file, or ``random:<seed>:<config>`` for a seeded random
initialisation, which can be rebuilt exactly later from that string.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any


log = logging.getLogger(__name__)

__all__ = ["WeightsError", "RandomInitWarning", "load_checkpoint", "random_provenance", "seeded"]


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable, or does not fit the model."""


class RandomInitWarning(UserWarning):
    """Features come from randomly initialised extractors (no pretrained weights given)."""


def load_checkpoint(uri: str) -> tuple[Any, str]:
    """Read a checkpoint from a local path or fsspec URI.

    Returns:
        The unpickled object (``weights_only=True``) and its provenance ``sha256:<hex>``.

    Raises:
        WeightsError: the file does not exist, cannot be read, or is not a torch checkpoint.
    """
    import fsspec

    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise WeightsError(f"weights file not found: {uri}") from exc
    except Exception as exc:  # fsspec backends raise many types (PermissionError, ClientError...)
        raise WeightsError(f"cannot read weights file {uri}: {type(exc).__name__}: {exc}") from exc
    if not data:
        raise WeightsError(f"weights file is empty: {uri}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        import torch  # lazily: raydf's CLI imports WeightsError without paying for torch

        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle refused by weights_only, truncated file...
        raise WeightsError(f"weights file {uri} is not a loadable torch checkpoint: {type(exc).__name__}: {exc}") from exc
    return obj, f"sha256:{digest}"


def random_provenance(seed: int, config: str, what: str) -> str:
    """Warn loudly and return ``random:<seed>:<config>``."""
    msg = (
        f"NO PRETRAINED WEIGHTS for the {what} extractor: using a seeded random initialisation "
        f"(seed={seed}, config={config}). Features are NOT those of the report; pass the official "
        f"weights (see README, 'Pretrained weights') for real detection."
    )
    log.info(msg)  # the console commands say it once, for the whole model (raydf.bundle.model_warning)
    warnings.warn(msg, RandomInitWarning, stacklevel=3)
    return f"random:{seed}:{config}"


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
