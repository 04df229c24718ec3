"""The report's experiment in one call: extract FF++ / Celeb-DF (/ DFDC), train, cross-evaluate.

The report trains on FaceForensics++ (T=32 frames) and on Celeb-DF (T=64), reports
accuracy on each, and tests both models on a DFDC subset. ``raydf reproduce``
does the same with the official weights and datasets the user points it at:

    raydf reproduce --ffpp /data/FaceForensics++ --celebdf /data/Celeb-DF-v2 --dfdc /data/dfdc \\
        --style-weights /weights/psp_ffhq_encode.pt --content-weights /weights/SLOW_8x8_R50.pyth \\
        --out s3://bucket/raydf-report \\
        --extract-config infra/configs/extract-aws.yaml --train-config infra/configs/train-aws.yaml
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from raydf.config import ExtractConfig, TrainConfig, load_config

log = logging.getLogger(__name__)

__all__ = ["REPORT_FRAMES", "ReproduceResult", "reproduce"]

# report: 32 frames for FaceForensics++, 64 for Celeb-DF; DFDC is only a cross-dataset test set.
REPORT_FRAMES = {"ffpp": 32, "celebdf": 64, "dfdc": 32}


@dataclass(frozen=True)
class ReproduceResult:
    features: dict[str, str]  # dataset -> feature URI
    runs: dict[str, str | None]  # training dataset -> MLflow run id
    metrics: dict[str, dict[str, dict[str, Any]]]  # training dataset -> evaluated dataset -> metrics


def reproduce(
    roots: dict[str, str],
    out: str,
    *,
    style_weights: str | None,
    content_weights: str | None,
    extract_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> ReproduceResult:
    """Extract every dataset in ``roots`` (``ffpp``, ``celebdf``, ``dfdc``), train on FF++ and
    Celeb-DF, and evaluate each model on its own test split and on every other dataset.

    Reruns resume: extraction skips videos already done; each training is a new MLflow run.
    """
    from raydf.extract import run_extraction
    from raydf.train import run_training

    unknown = set(roots) - set(REPORT_FRAMES)
    if unknown:
        raise ValueError(f"unknown datasets {sorted(unknown)}; expected some of {sorted(REPORT_FRAMES)}")
    base = out.rstrip("/")
    features: dict[str, str] = {}
    for name, root in roots.items():
        cfg = load_config(
            ExtractConfig,
            {
                **(extract_overrides or {}),
                "layout": name,
                "video": {"num_frames": REPORT_FRAMES[name]},
                "style": {"weights": style_weights, "config": "psp_ir_se50"},
                "content": {"weights": content_weights},
            },
        )
        features[name] = f"{base}/features/{name}"
        summary = run_extraction(root, features[name], cfg, tracking_uri=tracking_uri)
        log.info("%s: %s", name, "; ".join(summary.lines()))

    runs: dict[str, str | None] = {}
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    tcfg = load_config(TrainConfig, train_overrides or {})
    for name in ("ffpp", "celebdf"):
        if name not in features:
            continue
        others = {o: uri for o, uri in features.items() if o != name}
        result = run_training(
            features[name],
            tcfg,
            name=f"report-{name}",
            tracking_uri=tracking_uri,
            tags={"dataset": name, "experiment": "report"},
            extra_test=others,
            storage_path=None if "://" not in base else f"{base}/ray_results",
        )
        runs[name] = result.run_id
        metrics[name] = result.test_metrics
    return ReproduceResult(features=features, runs=runs, metrics=metrics)
