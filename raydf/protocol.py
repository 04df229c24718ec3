"""Evaluation protocols: a trained model scored on feature stores, video-level, tracks aggregated as stated.

* *within-set*: the test split of the training store (the same deterministic plan as training);
* *cross-dataset*: every row of another store (the model's exclusion rule applies).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from raydf import schema as S
from raydf.bundle import ModelBundle
from raydf.config import TrainConfig, load_config
from raydf.evaluate import compute_metrics
from raydf.scoring import Predictions, predict_features
from raydf.splits import load_index, plan_splits
from raydf.tracking import redact

log = logging.getLogger(__name__)

__all__ = ["Evaluation", "evaluate_datasets"]


@dataclass(frozen=True)
class Evaluation:
    """One model on one feature set."""

    name: str
    protocol: str  # "within-set" | "cross-dataset"
    metrics: dict[str, Any]
    predictions: Predictions


def evaluate_datasets(bundle: ModelBundle, datasets: dict[str, str], *, aggregation: str | None = None) -> dict[str, Evaluation]:
    """Metrics of the model on several feature stores, in one call.

    The store the model was trained on is scored on its test split only; any other store
    (cross-dataset) on all its usable rows.

    Raises:
        ValueError: the training store has no test split; a store has no usable rows.
    """
    train_cfg = load_config(TrainConfig, bundle.train.config) if bundle.train.config else TrainConfig()
    how = aggregation or train_cfg.aggregation
    out: dict[str, Evaluation] = {}
    for name, uri in datasets.items():
        keys = None
        protocol = "cross-dataset"
        if bundle.train.features and bundle.train.features == redact(uri):
            plan = plan_splits(load_index(uri), train_cfg)
            keys = plan.keys[S.TEST]
            protocol = "within-set"
            if not keys:
                raise ValueError(f"{redact(uri)} is the model's training data and has no test split")
        pred = predict_features(bundle, uri, keys, aggregation=how)
        out[name] = Evaluation(name, protocol, compute_metrics(pred.labels, pred.probs, threshold=bundle.threshold), pred)
    return out
