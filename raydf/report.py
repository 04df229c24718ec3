"""What a training run leaves in MLflow: test metrics, tables, plots, ROC data, predictions, the model.

Every evaluation is a :class:`raydf.scoring.Predictions` (video-level, tracks aggregated as it
states); metric names are the constants of :mod:`raydf.schema` (``test_roc_auc`` ...).

An evaluation under the protocols of :mod:`raydf.protocol` (``raydf evaluate``, ``raydf
reproduce``) is its own MLflow run in :data:`EVALUATE_EXPERIMENT` (:func:`log_protocol_run`):
one table per protocol (``mlflow.log_table``, ``protocols/<protocol>.json``), the same tables
as Markdown, and every evaluation's metrics as ``<protocol>/<set>[/<method>]_<metric>``.
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

__all__ = ["EVALUATE_EXPERIMENT", "log_training_report", "log_test_metrics", "log_protocol_tables", "log_protocol_run"]

EVALUATE_EXPERIMENT = "raydf-evaluate"  # MLflow experiment of protocol evaluations
PROTOCOL_METRICS = (S.ROC_AUC, S.AVERAGE_PRECISION, S.EER, S.ACCURACY, "accuracy_at_val_threshold")


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


def log_protocol_tables(evaluations: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Log :mod:`raydf.protocol` evaluations to the active MLflow run; returns the tables logged.

    One ``mlflow.log_table`` per protocol (``protocols/<protocol>.json``, columns
    :data:`raydf.protocol.TABLE_COLUMNS`), all tables as ``protocols/tables.md``, and for each
    evaluation ``<name>_<metric>`` (:data:`PROTOCOL_METRICS`, NaN left out) plus its counts.
    """
    import mlflow

    from raydf.protocol import markdown_tables, protocol_tables

    tables = protocol_tables(evaluations)
    for protocol, rows in tables.items():
        cols = list(rows[0])
        mlflow.log_table({c: [r[c] for r in rows] for c in cols}, artifact_file=f"protocols/{protocol}.json")
    mlflow.log_text(markdown_tables(evaluations) + "\n", "protocols/tables.md")
    for name, e in evaluations.items():
        m = e.metrics
        mlflow.log_metrics({S.eval_metric(name, k): float(m[k]) for k in PROTOCOL_METRICS if np.isfinite(m[k])})
        mlflow.log_metrics({S.eval_metric(name, "n_real"): m["n_real"], S.eval_metric(name, "n_fake"): m["n_fake"]})
    return tables


def log_protocol_run(
    bundle: ModelBundle,
    evaluations: dict[str, Any],
    *,
    source: str,
    datasets: dict[str, str],
    tracking_uri: str | None = None,
    name: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """One MLflow run (experiment :data:`EVALUATE_EXPERIMENT`) holding a model's protocol evaluations.

    Args:
        bundle: the evaluated model; its training run id becomes the tag ``raydf.model_run``.
        evaluations: :func:`raydf.protocol.evaluate_datasets` output.
        source: where the model came from (path or MLflow URI), as a tag.
        datasets: ``{name: feature store URI}`` evaluated, as params (credentials redacted).
        tracking_uri: MLflow store (default: :func:`raydf.tracking.default_tracking_uri`).
        name: run name.
        tags: extra tags.

    Returns:
        The run id.
    """
    import mlflow

    from raydf import tracking
    from raydf.protocol import THRESHOLD_RULE

    mlflow.set_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    exp = tracking.get_or_create_experiment(EVALUATE_EXPERIMENT)
    first = next(iter(evaluations.values()), None)
    with mlflow.start_run(experiment_id=exp, run_name=name) as run:
        mlflow.set_tags(
            {
                "raydf.stage": "evaluate",
                "raydf.model": tracking.redact(source),
                "raydf.model_run": bundle.train.run_id or "",
                "raydf.training_fakes": bundle.train.fakes,
                "dataset": ",".join(bundle.train.datasets),
                **(tags or {}),
            }
        )
        mlflow.log_params(
            {
                "aggregation": first.aggregation if first else "",
                "threshold_rule": THRESHOLD_RULE,
                "val_threshold": first.metrics["val_threshold"] if first else float("nan"),
                **{f"features.{k}": tracking.redact(v) for k, v in datasets.items()},
            }
        )
        log_protocol_tables(evaluations)
        return run.info.run_id
