"""MLflow tracking: where runs go, and the small helpers every stage uses.

Default store: ``sqlite:////<RAYDF_HOME>/mlflow.db`` with artifacts under
``<RAYDF_HOME>/mlartifacts`` (absolute paths, so runs submitted as Ray jobs,
whose working dir is a temporary copy, land in the same store as local runs).
``RAYDF_HOME`` defaults to the project directory (the nearest ancestor of the
current directory holding raydf's ``pyproject.toml``), or ``~/.raydf`` inside a
Ray job's temporary working dir. ``MLFLOW_TRACKING_URI`` or ``--tracking-uri``
points runs anywhere else (an ``mlflow server``, Postgres, ...).

Secrets never reach MLflow: params are flattened configs, and any value that
looks like a credential or a URL with user info is redacted (:func:`safe_params`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "raydf_home",
    "default_tracking_uri",
    "resolve_tracking_uri",
    "get_or_create_experiment",
    "flatten",
    "safe_params",
    "redact",
    "redact_uri",
    "strip_userinfo",
    "log_parquet_dataset",
]

EXTRACT_EXPERIMENT = "raydf-extract"
TRAIN_EXPERIMENT = "raydf-train"
TUNE_EXPERIMENT = "raydf-tune"

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")
_SECRET_KEY = re.compile(r"(secret|password|token|credential|access_key)", re.I)


def raydf_home() -> Path:
    """The directory that holds the default MLflow store (see module docstring)."""
    env = os.environ.get("RAYDF_HOME")
    if env:
        return Path(env).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if "runtime_resources" in cwd.parts or "working_dir_files" in str(cwd):
        return (Path.home() / ".raydf").resolve()
    for d in (cwd, *cwd.parents):
        pp = d / "pyproject.toml"
        if pp.is_file() and re.search(r'^name\s*=\s*"raydf"', pp.read_text(errors="ignore"), re.M):
            return d
    return cwd


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the absolute sqlite store under :func:`raydf_home`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    home = raydf_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"  # home is absolute: four slashes in all


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use, without credentials in it.

    An explicit URI wins over ``MLFLOW_TRACKING_URI`` and the default store; a relative sqlite
    path is made absolute (a Ray job's cwd is temporary). User info (``https://user:secret@host``)
    is moved into ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (when those are unset),
    where MLflow's client reads it: the returned URI is what raydf hands to MLflow, Ray workers,
    tags, files and logs, so no secret travels in a URI. Ray workers on another machine need
    those variables in the cluster's environment.
    """
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    m = re.match(r"^\w[\w+.-]*://([^/@\s]+)@", uri)
    if m:
        from urllib.parse import unquote

        user, _, password = m.group(1).partition(":")
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
        if password:
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
        uri = strip_userinfo(uri)
    return uri


def strip_userinfo(uri: str) -> str:
    """``scheme://user:secret@host/...`` -> ``scheme://host/...``."""
    return re.sub(r"^(\w[\w+.-]*://)[^/@\s]+@", r"\1", uri)


def get_or_create_experiment(name: str, artifact_root: str | None = None) -> str:
    """Experiment id of ``name``; new experiments get an absolute artifact location.

    With a sqlite/file store, MLflow's default artifact root is ``./mlruns`` relative to the
    process's cwd; pin it to ``mlartifacts/`` beside the sqlite database (or ``artifact_root``).
    """
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = mlflow.get_tracking_uri()
    location = artifact_root
    if location is None and uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()  # beside the database
    elif location is None and (uri.startswith("file:") or uri.startswith("/")):
        location = (raydf_home() / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another worker/trial
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": v}``; lists/tuples/dicts as JSON strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple, Mapping)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


# Query parameters that carry credentials (presigned S3/GCS/Azure URLs, OAuth tokens, API keys).
_SECRET_QUERY = re.compile(
    r"([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential|signature|sig|"
    r"awsaccesskeyid|token|access_token|id_token|api_key|apikey|key|password|secret|sv|se|sp|skoid|sktid)=)[^&#\s]*",
    re.I,
)


def redact(text: str) -> str:
    """Remove secrets from any text: values of secret environment variables, user info of URLs
    (``https://user:secret@host`` -> ``https://***@host``) and credential query parameters
    (``X-Amz-Signature=...`` -> ``X-Amz-Signature=***``)."""
    for name in _SECRET_ENV:
        val = os.environ.get(name)
        if val and len(val) >= 4:
            text = text.replace(val, "***")
    text = re.sub(r"(\w[\w+.-]*://)[^/@\s]+@", r"\1***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)


def redact_uri(uri: str) -> str:
    """A URI fit for logs, errors, tags and params (see :func:`redact`)."""
    return redact(str(uri))


def safe_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flattened params as strings, with credential-looking keys dropped and values redacted."""
    out = {}
    for k, v in flatten(params).items():
        if _SECRET_KEY.search(k):
            continue
        out[k] = redact("" if v is None else str(v))[:6000]
    return out


def _dataset_source(uri: str):  # noqa: ANN202 - mlflow.data.dataset_source.DatasetSource
    """The MLflow dataset source of a Parquet directory, chosen explicitly: MLflow registers the
    local-file source twice, so its own resolver warns that a local path is ambiguous."""
    from mlflow.data.dataset_source_registry import get_registered_sources

    for cls in get_registered_sources():  # first match, in registration order (local, s3, gcs, ...)
        if cls._can_resolve(uri):
            return cls._resolve(uri)
    raise ValueError(f"MLflow has no dataset source for {redact(uri)}")


def log_parquet_dataset(uri: str, *, name: str, digest: str, context: str, num_rows: int | None = None) -> None:
    """Log a Parquet dataset by reference (no data loaded) as an input of the active run."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    ds = MetaDataset(source=_dataset_source(strip_userinfo(uri)), name=name, digest=digest[:36])
    tags = {"num_rows": str(num_rows)} if num_rows is not None else None
    mlflow.log_input(ds, context=context, tags=tags)
