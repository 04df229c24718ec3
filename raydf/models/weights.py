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
import re
import warnings
from collections.abc import Iterator
from typing import Any


log = logging.getLogger(__name__)

__all__ = ["WeightsError", "RandomInitWarning", "load_checkpoint", "random_provenance", "seeded", "load_weights_only"]


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
    obj = load_weights_only(io.BytesIO(data), f"weights file {uri}", WeightsError)
    return obj, f"sha256:{digest}"


def load_weights_only(source: Any, what: str, error: type[Exception] = WeightsError) -> Any:
    """``torch.load(source, weights_only=True)`` with an error a person can act on.

    Every file raydf reads through torch (extractor weights, model bundles, training
    checkpoints) goes through here: tensors and plain containers load; a pickled object that
    would run code is refused, and the error names the global it asked for.

    Raises:
        ``error``: "<what> is refused: it holds a pickled object (<global>) that would run code ..."
            or "<what> is not a loadable torch file: <reason>".
    """
    import pickle

    import torch  # lazily: raydf's CLI imports WeightsError without paying for torch

    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours its message
        found = re.search(r"GLOBAL ([\w.]+)|global[s]? ([\w.]+)", text)
        name = next((g for g in found.groups() if g), "an object") if found else "an object"
        raise error(
            f"{what} is refused: it holds a pickled object ({name}) that would run code when loaded; "
            "raydf loads tensors and plain values only"
        ) from None
    except Exception as exc:  # a corrupt zip, a truncated file, not a torch file at all
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
        raise error(f"{what} is not a loadable torch file: {type(exc).__name__}: {first[0] if first else ''}") from None


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
