"""Trained models: the model bundle, batch prediction on feature Parquet, and ``raydf detect``.

A :class:`ModelBundle` is the fusion classifier's weights plus everything needed to
score a new video exactly as evaluation did: the fusion config and the extraction's
feature config and extractor provenance. ``detect`` rebuilds those extractors (the
same weights, verified by sha256, or the same seeded random init) and runs the
extraction's own per-video path (:func:`raydf.extract.extract_one`), so its probability
for a video equals the one evaluation logged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from raydf import schema as S
from raydf.config import ExtractConfig, FusionConfig, load_config, to_dict

log = logging.getLogger(__name__)

__all__ = ["ModelBundle", "PackedFusion", "Predictions", "predict_features", "resolve_model", "detect", "DetectError"]

BUNDLE_FORMAT = "raydf.fusion/1"
BUNDLE_FILE = "raydf_model.pt"


class DetectError(RuntimeError):
    """The model cannot be applied to this video as asked (extractor mismatch, no model...)."""


@dataclass
class ModelBundle:
    """Fusion weights + the configs/provenance of the features they were trained on."""

    state_dict: dict[str, torch.Tensor]
    fusion_config: FusionConfig
    extract: dict[str, Any]  # the feature store's config: {"feature_config": ..., "provenance": ...}
    train: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.5

    def model(self) -> nn.Module:
        from raydf.models.fusion import FusionClassifier

        m = FusionClassifier(self.fusion_config)
        m.load_state_dict(self.state_dict)
        return m.eval()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": BUNDLE_FORMAT,
                "state_dict": self.state_dict,
                "fusion_config": to_dict(self.fusion_config),
                "extract": self.extract,
                "train": self.train,
                "threshold": self.threshold,
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DetectError(f"{path} is not a raydf model bundle: {type(exc).__name__}: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
            raise DetectError(f"{path} is not a raydf model bundle (format {obj.get('format') if isinstance(obj, dict) else type(obj)})")
        return cls(
            state_dict=obj["state_dict"],
            fusion_config=load_config(FusionConfig, obj["fusion_config"]),
            extract=obj["extract"],
            train=obj.get("train", {}),
            threshold=float(obj.get("threshold", 0.5)),
        )

    @property
    def num_frames(self) -> int:
        return int(self.extract["feature_config"]["video"]["num_frames"])

    def extract_config(self, *, style_weights: str | None = None, content_weights: str | None = None) -> ExtractConfig:
        """The ExtractConfig that reproduces the training features (weights must match provenance)."""
        fc = self.extract["feature_config"]
        prov = self.extract["provenance"]
        style = dict(fc["style"])
        content = dict(fc["content"])
        for what, conf, given in (("style", style, style_weights), ("content", content, content_weights)):
            if prov[what].startswith("random:"):
                if given:
                    raise DetectError(f"the model was trained on {what} features of a random init ({prov[what]}); do not pass {what} weights")
            else:
                if not given:
                    raise DetectError(
                        f"the model was trained on {what} features of weights {prov[what]}; pass that file with --{what}-weights"
                    )
                conf["weights"] = given
        return load_config(ExtractConfig, {"video": fc["video"], "faces": fc["faces"], "content": content, "style": style})


class PackedFusion(nn.Module):
    """The fusion classifier behind one flat input, for MLflow's pyfunc (which takes one array).

    Input (B, K*2048 + T*512 + T): content, style and the validity mask, flattened and
    concatenated; output (B,) fake probabilities.
    """

    def __init__(self, model: nn.Module, num_frames: int, num_clips: int) -> None:
        super().__init__()
        self.model = model
        self.t, self.k = num_frames, num_clips

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        b = packed.shape[0]
        c_end = self.k * S.CONTENT_DIM
        s_end = c_end + self.t * S.STYLE_DIM
        content = packed[:, :c_end].reshape(b, self.k, S.CONTENT_DIM)  # (B, K, 2048)
        style = packed[:, c_end:s_end].reshape(b, self.t, S.STYLE_DIM)  # (B, T, 512)
        valid = packed[:, s_end:] > 0.5  # (B, T)
        return torch.sigmoid(self.model(content, style, valid))

    @staticmethod
    def pack(content: np.ndarray, style: np.ndarray, valid: np.ndarray) -> np.ndarray:
        b = content.shape[0]
        return np.concatenate([content.reshape(b, -1), style.reshape(b, -1), valid.reshape(b, -1).astype(np.float32)], axis=1)


@dataclass(frozen=True)
class Predictions:
    """Model outputs over a set of videos (in store order)."""

    ids: list[str]
    labels: np.ndarray  # (N,) 0/1
    probs: np.ndarray  # (N,) fake probability
    embeddings: np.ndarray  # (N, d) class-token embedding
    methods: list[str]
    style_sample: np.ndarray  # (n, T, 512) style sequences of up to 60 videos, for plots
    valid_sample: np.ndarray  # (n, T)
    label_sample: np.ndarray  # (n,)


@torch.inference_mode()
def predict_features(bundle: ModelBundle, features_uri: str, ids: list[str] | None, *, batch_size: int = 64) -> Predictions:
    """Score the ok rows of a feature directory (all, or ``ids``), one part file at a time."""
    from raydf.models.fusion import valid_enough
    from raydf.store import FeatureStore

    model = bundle.model()
    store = FeatureStore(features_uri)
    wanted = pa.array(sorted(ids), pa.string()) if ids is not None else None
    out_ids, labels, probs, embs, methods = [], [], [], [], []
    styles, valids, slabels = [], [], []
    cols = [S.VIDEO_ID, S.LABEL, S.METHOD, S.STATUS, S.CONTENT, S.STYLE, S.FACE_VALID]
    for name in store.list_parts():
        t = store._read_part(name, cols)
        mask = pc.equal(t[S.STATUS], S.STATUS_OK)
        if wanted is not None:
            mask = pc.and_(mask, pc.is_in(t[S.VIDEO_ID], wanted))
        t = t.filter(mask)
        if not t.num_rows:
            continue
        valid = S.stack_column(t, S.FACE_VALID)
        if ids is None:  # a whole other dataset: apply the model's exclusion rule
            t = t.filter(pa.array(valid_enough(valid, bundle.fusion_config.min_valid_fraction)))
            if not t.num_rows:
                continue
            valid = S.stack_column(t, S.FACE_VALID)
        content, style = S.stack_column(t, S.CONTENT), S.stack_column(t, S.STYLE)
        for i in range(0, t.num_rows, batch_size):
            # stack_column gives read-only views of the Arrow buffers: torch.tensor copies the batch
            c = torch.tensor(content[i : i + batch_size])  # (b, K, 2048)
            s = torch.tensor(style[i : i + batch_size])  # (b, T, 512)
            v = torch.tensor(valid[i : i + batch_size])  # (b, T)
            emb = model.embed(c, s, v)  # (b, d)
            probs.append(torch.sigmoid(model.head(emb).squeeze(-1)).numpy())  # as FusionClassifier.forward
            embs.append(emb.numpy())
        out_ids += t.column(S.VIDEO_ID).to_pylist()
        labels.append(t.column(S.LABEL).to_numpy(zero_copy_only=False))
        methods += t.column(S.METHOD).to_pylist()
        if sum(len(x) for x in styles) < 60:
            styles.append(style[:60])
            valids.append(valid[:60])
            slabels.append(t.column(S.LABEL).to_numpy(zero_copy_only=False)[:60])
    if not out_ids:
        raise ValueError(f"no usable (ok) rows to score in {features_uri}")
    return Predictions(
        ids=out_ids,
        labels=np.concatenate(labels).astype(int),
        probs=np.concatenate(probs).astype(np.float64),
        embeddings=np.concatenate(embs),
        methods=methods,
        style_sample=np.concatenate(styles)[:60],
        valid_sample=np.concatenate(valids)[:60],
        label_sample=np.concatenate(slabels)[:60],
    )


def resolve_model(model: str | None, tracking_uri: str | None = None) -> tuple[ModelBundle, str]:
    """A bundle from a path, ``runs:/<id>/...``, ``models:/<name>/<version>``, or the newest run in the store.

    Returns the bundle and a description of where it came from.
    """
    import mlflow

    from raydf import tracking

    if model and not (model.startswith("runs:/") or model.startswith("models:/")):
        path = Path(model)
        if path.is_dir():
            path = path / BUNDLE_FILE
        if not path.exists():
            raise DetectError(f"model not found: {model}")
        return ModelBundle.load(path), str(path)
    mlflow.set_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    if model is None:
        exp = mlflow.get_experiment_by_name(tracking.TRAIN_EXPERIMENT)
        runs = (
            mlflow.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED' and tags.`raydf.model` = 'logged'", order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
            if exp
            else []
        )
        if not runs:
            raise DetectError(f"no trained model in {mlflow.get_tracking_uri()}; train one (make demo) or pass --model")
        model = f"runs:/{runs[0].info.run_id}/model"
    uri = model if model.startswith("models:/") else model
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except Exception as exc:
        raise DetectError(f"cannot fetch model {model}: {exc}") from exc
    found = sorted(Path(local).rglob(BUNDLE_FILE))
    if not found:
        raise DetectError(f"{model} has no {BUNDLE_FILE}")
    return ModelBundle.load(found[0]), model


def detect(
    video: str,
    *,
    model: str | None = None,
    tracking_uri: str | None = None,
    style_weights: str | None = None,
    content_weights: str | None = None,
) -> dict[str, Any]:
    """Fake probability of one video with a trained model (the extraction's own per-video path)."""
    from raydf.extract import FeatureStage, expected_provenance, extract_one

    t0 = time.perf_counter()
    bundle, source = resolve_model(model, tracking_uri)
    cfg = bundle.extract_config(style_weights=style_weights, content_weights=content_weights)
    prov = expected_provenance(cfg)
    if prov != bundle.extract["provenance"]:
        raise DetectError(f"extractor weights differ from the model's: model trained on {bundle.extract['provenance']}, given {prov}")
    t_load = time.perf_counter()
    row = extract_one(video, cfg, feature_stage=FeatureStage(cfg, prov))
    t_feat = time.perf_counter()
    net = bundle.model()
    with torch.inference_mode():
        content = torch.from_numpy(np.asarray(row[S.CONTENT], np.float32)[None])  # (1, K, 2048)
        style = torch.from_numpy(np.asarray(row[S.STYLE], np.float32)[None])  # (1, T, 512)
        valid = torch.from_numpy(np.asarray(row[S.FACE_VALID], bool)[None])  # (1, T)
        prob = float(torch.sigmoid(net(content, style, valid))[0])
    valid_frac = float(np.mean(row[S.FACE_VALID]))
    return {
        "video": video,
        "fake_probability": prob,
        "label": "fake" if prob >= bundle.threshold else "real",
        "threshold": bundle.threshold,
        "valid_face_fraction": valid_frac,
        "low_face_warning": valid_frac < bundle.fusion_config.min_valid_fraction,
        "model": source,
        "timing_s": {
            "load": t_load - t0,
            "decode": row[S.T_DECODE],
            "faces": row[S.T_FACES],
            "content": row[S.T_CONTENT],
            "style": row[S.T_STYLE],
            "total": time.perf_counter() - t0,
            "features": t_feat - t_load,
        },
    }


def evaluate_datasets(bundle: ModelBundle, datasets: dict[str, str]) -> dict[str, tuple[dict[str, Any], Predictions]]:
    """Metrics of the model on several feature directories, in one call.

    The dataset the model was trained on is scored on its test split only (the same
    deterministic split as training); any other dataset (cross-dataset) on all its usable rows.
    """
    from raydf.config import TrainConfig
    from raydf.evaluate import compute_metrics
    from raydf.train import assign_splits, load_index

    out = {}
    for name, uri in datasets.items():
        ids = None
        if bundle.train.get("features") == uri:
            cfg = load_config(TrainConfig, bundle.train["config"])
            assignment, _ = assign_splits(load_index(uri), cfg)
            ids = sorted(v for v, s in assignment.items() if s == "test")
            if not ids:
                raise ValueError(f"{uri} is the model's training data and has no test split")
        pred = predict_features(bundle, uri, ids)
        out[name] = (compute_metrics(pred.labels, pred.probs, threshold=bundle.threshold), pred)
    return out
