"""The model bundle: a trained fusion classifier plus the feature identity it was trained on.

A bundle holds everything needed to score a new video exactly as evaluation did: the
fusion weights (a plain state dict), the :class:`~raydf.config.FusionConfig`, the feature
store's :class:`~raydf.config.StoreConfig` (T, face settings, extractor configs, precision,
decoder and extractor provenance) and what training recorded (:class:`TrainInfo`).

It is saved with ``torch.save`` as a dict of tensors and plain values, and loaded with
``torch.load(weights_only=True)``: loading a bundle never unpickles code. Model resolution
(:func:`resolve_model`) turns a path, ``runs:/…``, ``models:/…`` or "the newest trained model
in the tracking store" into a bundle; a path needs no MLflow at all, and a query of a local
sqlite store neither imports MLflow nor creates or migrates anything.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from raydf.config import ConfigError, ExtractConfig, FusionConfig, StoreConfig, load_config, parse_provenance, to_dict
from raydf import tracking

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FILE",
    "BUNDLE_ARTIFACT_DIR",
    "MODEL_TAG",
    "BundleError",
    "NoModelError",
    "model_source_file",
    "ExtractorMismatch",
    "TrainInfo",
    "ModelBundle",
    "resolve_model",
    "model_warning",
]

BUNDLE_FORMAT = "raydf.fusion/2"
BUNDLE_FILE = "raydf_model.pt"
BUNDLE_ARTIFACT_DIR = "bundle"  # run artifact path of the bundle file (read without MLflow)
MODEL_TAG = "raydf.model"  # set to "logged" on a training run once its model is logged
TRAIN_EXPERIMENT = "raydf-train"  # kept equal to raydf.tracking.TRAIN_EXPERIMENT (tested)


class BundleError(RuntimeError):
    """A model cannot be found, read or applied as asked."""


class NoModelError(BundleError):
    """There is no trained model where one was looked for."""


class ExtractorMismatch(BundleError):
    """The feature extractors of a model cannot be rebuilt here (weights missing or different)."""


@dataclass(frozen=True)
class TrainInfo:
    """What training recorded about a model."""

    config: dict[str, Any] = field(default_factory=dict)  # the TrainConfig, as a dict
    features: str = ""  # the training feature store (redacted URI)
    best_epoch: int = -1
    run_id: str | None = None
    datasets: tuple[str, ...] = ()  # ``dataset`` values of the training rows
    generated: bool = False  # trained on raydf's generated set (raydf.synth)
    fakes: str = "dataset"  # what the fakes were: dataset | pseudo | both

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainInfo:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "datasets" in known:
            known["datasets"] = tuple(known["datasets"])
        return cls(**known)


def model_warning(store: StoreConfig, train: TrainInfo) -> str:
    """Plain words on why this model's scores of real videos mean nothing, or "" when they may."""
    reasons = []
    random = store.provenance.random_parts()
    if random:
        reasons.append(f"its {' and '.join(random)} extractor{'s are' if len(random) > 1 else ' is'} randomly initialised (no pretrained weights)")
    if train.generated:
        reasons.append("it was trained on raydf's generated videos of one face")
    if not reasons:
        return ""
    return "this model is a demo: " + "; ".join(reasons) + ". Its scores of real videos are not meaningful."


@dataclass(frozen=True)
class ModelBundle:
    """Fusion weights + the feature identity they were trained on."""

    state_dict: dict[str, Any]  # name -> torch.Tensor
    fusion_config: FusionConfig
    store: StoreConfig
    train: TrainInfo = field(default_factory=TrainInfo)
    threshold: float = 0.5

    def model(self):  # noqa: ANN201 - FusionClassifier (torch imported lazily)
        """The fusion classifier in eval mode."""
        from raydf.models.fusion import FusionClassifier

        m = FusionClassifier(self.fusion_config)
        m.load_state_dict(self.state_dict)
        return m.eval()

    @property
    def num_frames(self) -> int:
        return self.store.features.num_frames

    @property
    def num_clips(self) -> int:
        return max(1, self.num_frames // self.store.features.clip_len)

    @property
    def precision(self) -> str:
        return self.store.features.precision

    @property
    def warning(self) -> str:
        return model_warning(self.store, self.train)

    def save(self, path: str | Path) -> Path:
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": BUNDLE_FORMAT,
                "state_dict": dict(self.state_dict),
                "fusion_config": to_dict(self.fusion_config),
                "store": self.store.to_dict(),
                "train": self.train.to_dict(),
                "threshold": float(self.threshold),
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Read a bundle (weights only: no code is unpickled).

        Raises:
            BundleError: not a file raydf wrote as a bundle, a crafted pickle, or another format.
        """
        from raydf.models.weights import load_weights_only

        obj = load_weights_only(path, f"model bundle {path}", BundleError)  # a pickle with code is refused
        if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
            got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise BundleError(f"{path} is not a raydf model bundle of format {BUNDLE_FORMAT} (found {got!r}); retrain with this raydf")
        try:
            return cls(
                state_dict=obj["state_dict"],
                fusion_config=load_config(FusionConfig, obj["fusion_config"]),
                store=StoreConfig.from_dict(obj["store"]),
                train=TrainInfo.from_dict(obj.get("train", {})),
                threshold=float(obj.get("threshold", 0.5)),
            )
        except (KeyError, ConfigError) as exc:
            raise BundleError(f"{path}: malformed raydf model bundle ({exc})") from exc

    def extract_config(self, *, style_weights: str | None = None, content_weights: str | None = None) -> ExtractConfig:
        """The ExtractConfig that reproduces the training features.

        Raises:
            ExtractorMismatch: pretrained weights are needed and not given, or given for a random init.
        """
        f = self.store.features
        content, style = to_dict(f.content), to_dict(f.style)
        for what, conf, given in (("style", style, style_weights), ("content", content, content_weights)):
            origin = getattr(self.store.provenance, what)
            if parse_provenance(origin).kind == "random":
                if given:
                    raise ExtractorMismatch(f"the model was trained on {what} features of a random init ({origin}); do not pass {what} weights")
            elif not given:
                raise ExtractorMismatch(f"the model was trained on {what} features of weights {origin}; pass that file with --{what}-weights")
            else:
                conf["weights"] = given
        precision = f.precision
        return load_config(
            ExtractConfig,
            {
                "video": {"num_frames": f.num_frames},
                "faces": to_dict(f.faces),
                "content": content,
                "style": style,
                "cpu_precision": precision if precision in ("fp32", "bf16") else "fp32",
                "half_precision": precision == "fp16",
                "pseudo_fakes": "",
            },
        )

    def with_threshold(self, threshold: float) -> ModelBundle:
        return replace(self, threshold=float(threshold))


# ---- model resolution ----------------------------------------------------------------------------
def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def model_source_file(model: str | None, tracking_uri: str | None = None) -> Path | None:
    """The local file :func:`resolve_model` reads first for ``model``: a bundle path (a directory's
    ``BUNDLE_FILE``), or with ``model=None`` the sqlite tracking store it searches; None where no
    local file tells (``runs:/`` and ``models:/`` URIs, a tracking server). The file may not exist."""
    if model and not model.startswith(("runs:/", "models:/")):
        path = Path(model)
        return path / BUNDLE_FILE if path.is_dir() else path
    if model is None:
        return _sqlite_path(tracking.resolve_tracking_uri(tracking_uri))
    return None


def _local_artifact_path(artifact_uri: str) -> Path | None:
    if artifact_uri.startswith("file:"):
        return Path(unquote(urlparse(artifact_uri).path))
    return Path(artifact_uri) if artifact_uri.startswith("/") else None


def _newest_in_sqlite(db: Path) -> tuple[str, str] | None:
    """(run id, artifact URI) of the newest finished run with a logged model, read-only, no MLflow.

    Reads MLflow's own tables (``runs``, ``tags``, ``experiments``; mlflow==3.17.2 pinned) through
    a read-only connection, so nothing is created or migrated.
    """
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute(
            "SELECT r.run_uuid, r.artifact_uri FROM runs r "
            "JOIN experiments e ON e.experiment_id = r.experiment_id "
            "JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE e.name = ? AND r.status = 'FINISHED' AND r.lifecycle_stage = 'active' "
            "AND t.key = ? AND t.value = 'logged' ORDER BY r.start_time DESC LIMIT 1",
            (TRAIN_EXPERIMENT, MODEL_TAG),
        ).fetchone()
    finally:
        con.close()
    return (row[0], row[1]) if row else None


def resolve_model(model: str | None, tracking_uri: str | None = None) -> tuple[ModelBundle, str]:
    """A bundle from a path, ``runs:/<id>/…``, ``models:/<name>/<version>``, or the newest trained model.

    Args:
        model: a bundle file or a directory holding one; an MLflow model URI; or None for the
            newest finished training run with a logged model in the tracking store.
        tracking_uri: the MLflow store to search (default: :func:`raydf.tracking.default_tracking_uri`).

    Returns:
        The bundle and a description of where it came from.

    Raises:
        NoModelError: the path does not exist, or the store holds no trained model (or does not exist).
        BundleError: the model exists but cannot be read as a bundle.
    """
    if model and not model.startswith(("runs:/", "models:/")):
        path = model_source_file(model)
        assert path is not None
        if not path.exists():
            raise NoModelError(f"model not found: {model}")
        return ModelBundle.load(path), str(path)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    shown = tracking.redact(uri)
    if model is None:
        db = _sqlite_path(uri)
        if db is not None:
            if not db.is_file():
                raise NoModelError(f"no trained model found in {shown} (no such store); train one (make demo) or pass --model")
            try:
                found = _newest_in_sqlite(db)
            except sqlite3.Error as exc:
                raise NoModelError(f"no trained model found in {shown} ({exc})") from exc
            if found is None:
                raise NoModelError(f"no trained model found in {shown}; train one (make demo) or pass --model")
            run_id, artifact_uri = found
            local = _local_artifact_path(artifact_uri)
            if local is not None and (local / BUNDLE_ARTIFACT_DIR / BUNDLE_FILE).is_file():
                return ModelBundle.load(local / BUNDLE_ARTIFACT_DIR / BUNDLE_FILE), f"runs:/{run_id}/{BUNDLE_ARTIFACT_DIR}"
            model = f"runs:/{run_id}/{BUNDLE_ARTIFACT_DIR}"
        else:
            model = _newest_with_mlflow(uri, shown)
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model)
    except Exception as exc:
        raise NoModelError(f"cannot fetch model {model} from {shown}: {type(exc).__name__}: {exc}") from exc
    found_files = sorted(Path(local).rglob(BUNDLE_FILE)) if Path(local).is_dir() else [Path(local)]
    if not found_files or not found_files[0].is_file():
        raise BundleError(f"{model} holds no {BUNDLE_FILE}")
    return ModelBundle.load(found_files[0]), model


def _newest_with_mlflow(uri: str, shown: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(TRAIN_EXPERIMENT)
    runs = (
        mlflow.search_runs(
            [exp.experiment_id],
            filter_string=f"attributes.status = 'FINISHED' and tags.`{MODEL_TAG}` = 'logged'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        if exp
        else []
    )
    if not runs:
        raise NoModelError(f"no trained model found in {shown}; train one (make demo) or pass --model")
    return f"runs:/{runs[0].info.run_id}/{BUNDLE_ARTIFACT_DIR}"
