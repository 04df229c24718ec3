"""What a training run leaves in MLflow: test metrics, tables, plots, ROC data, predictions, the model.

Every evaluation is a :class:`raydf.scoring.Predictions` (video-level, tracks aggregated as it
states); metric names are the constants of :mod:`raydf.schema` (``test_roc_auc`` ...).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from raydf import evaluate as E
from raydf import schema as S
from raydf.bundle import MODEL_TAG, ModelBundle
from raydf.mlflow_model import log_model
from raydf.scoring import Predictions

log = logging.getLogger(__name__)

__all__ = ["log_training_report", "log_test_metrics"]


def _write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=2, allow_nan=False, default=float))
    return path


def log_test_metrics(name: str, m: dict[str, Any]) -> None:
    """An evaluation's metrics on the active MLflow run as ``<name>_<metric>`` (NaN ones left out) and its counts."""
    import mlflow

    mlflow.log_metrics({S.eval_metric(name, k): float(m[k]) for k in S.EVAL_METRICS if np.isfinite(m[k])})
    mlflow.log_metrics({S.eval_metric(name, "n"): m["n"], S.eval_metric(name, "n_fake"): m["n_fake"], S.eval_metric(name, "n_real"): m["n_real"]})


def log_training_report(
    bundle: ModelBundle,
    bundle_path: Path,
    history: list[dict[str, Any]],
    evaluations: dict[str, Predictions],
    out_dir: Path,
) -> dict[str, dict[str, Any]]:
    """Log the report of a finished training to the active MLflow run; returns metrics per evaluation."""
    import mlflow

    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    E.save_figure(E.plot_curves(history), plots / "curves.png")
    E.save_figure(E.plot_lr(history), plots / "lr_schedule.png")
    results: dict[str, dict[str, Any]] = {}
    for name, pred in evaluations.items():
        m = E.compute_metrics(pred.labels, pred.probs, threshold=bundle.threshold)
        results[name] = m
        log_test_metrics(name, m)
        E.save_figure(E.plot_confusion(m["confusion_matrix"], title=f"Confusion matrix ({name})"), plots / f"confusion_{name}.png")
        if 0 < m["n_fake"] < m["n"]:
            E.save_figure(E.plot_roc(pred.labels, pred.probs), plots / f"roc_{name}.png")
            roc = E.roc_points(pred.labels, pred.probs)
            thresholds = [float(t) if np.isfinite(t) else 1e308 for t in roc["thresholds"]]  # strict JSON
            _write_json(out_dir / f"roc_{name}.json", {"fpr": roc["fpr"].tolist(), "tpr": roc["tpr"].tolist(), "thresholds": thresholds, "roc_auc": m["roc_auc"]})
            mlflow.log_artifact(str(out_dir / f"roc_{name}.json"), "evaluation")
        report = "\n\n".join(
            [
                f"# {name}",
                f"Video-level scores: the {pred.aggregation} over each video's face tracks.",
                E.overall_table(m),
                E.classification_report_table(pred.labels, pred.probs, threshold=bundle.threshold),
            ]
        )
        (out_dir / f"report_{name}.md").write_text(report + "\n")
        mlflow.log_artifact(str(out_dir / f"report_{name}.md"), "evaluation")
        rows = ["video_id,label,method,fake_probability"] + [
            f"{i},{int(y)},{mth},{p:.8f}" for i, y, mth, p in zip(pred.ids, pred.labels, pred.methods, pred.probs)
        ]
        (out_dir / f"predictions_{name}.csv").write_text("\n".join(rows) + "\n")
        mlflow.log_artifact(str(out_dir / f"predictions_{name}.csv"), "evaluation")
    main = evaluations.get(S.TEST) or next(iter(evaluations.values()), None)
    if main is not None:
        E.save_figure(E.plot_style_trajectories(main.style_sample, main.label_sample, main.valid_sample), plots / "style_trajectories.png")
        if len(main.labels) >= 3:  # a 2-D projection needs a few points
            E.save_figure(E.plot_decision_boundary(main.embeddings, main.labels, main.probs, threshold=bundle.threshold), plots / "decision_boundary.png")
        else:
            log.warning("only %d evaluated videos: no decision-boundary plot", len(main.labels))
    mlflow.log_artifacts(str(plots), "plots")
    _write_json(out_dir / "history.json", history)
    mlflow.log_artifact(str(out_dir / "history.json"))
    if (out_dir / "tensorboard").exists():
        mlflow.log_artifacts(str(out_dir / "tensorboard"), "tensorboard")

    log_model(bundle, bundle_path, out_dir)
    mlflow.set_tag(MODEL_TAG, "logged")
    return results
