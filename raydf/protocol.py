"""Evaluation protocols: a trained model scored on feature stores, video-level, tracks aggregated as stated.

One call (:func:`evaluate_datasets`) scores a model under every protocol the given feature
sets allow, each as an :class:`Evaluation`:

* **within-set**: the test split of the training store (the same deterministic plan as
  training, :func:`raydf.splits.plan_splits`): the fakes of the methods it trained on;
* **cross-manipulation**: when the model trained on some manipulation methods only
  (``TrainConfig.methods``, e.g. FF++ Deepfakes, or ``("self_blend",)`` for pseudo-fakes
  only), the training store's test reals against the test-split fakes of every *other*
  method (FF++'s "train on one, test on the others"; a fake's split is its manifest's, else
  that of the real video it was made from);
* **cross-compression**: another store of the same dataset at another compression (FF++
  c23 -> c40): the training plan's test videos, read from the other store;
* **cross-dataset**: every usable row of any other store.

Self-blended pseudo-fakes (:mod:`raydf.pseudofake`) are training material: they are scored
only where the training store has no fakes of its own (then its validation and test use
them, ``SplitPlan.pseudo_val``), never in another store. The model's exclusion rule (too few
valid faces) applies everywhere.

Each evaluation reports ROC-AUC, average precision, EER, accuracy at 0.5 and accuracy at the
**validation threshold**: the threshold that maximises accuracy on the model's validation
split (:func:`raydf.evaluate.best_accuracy_threshold`; ties go to the one nearest 0.5),
computed here from the training store, scored with the same track aggregation. Where the
evaluated fakes come from several methods, one evaluation per method follows (that method's
fakes against all the reals), so each manipulation gets its own AUC.

A video's score is the ``max`` or ``mean`` of its face tracks' scores
(:data:`raydf.scoring.AGGREGATIONS`); every evaluation and table states which, since papers
differ here and their numbers are not comparable otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raydf import schema as S
from raydf.bundle import ModelBundle
from raydf.config import TrainConfig, load_config
from raydf.evaluate import best_accuracy_threshold, compute_metrics, markdown_table
from raydf.models.fusion import valid_enough
from raydf.scoring import Predictions, predict_features
from raydf.splits import PSEUDO_METHOD, SplitPlan, load_index, plan_splits
from raydf.store import FeatureStore
from raydf.tracking import redact

log = logging.getLogger(__name__)

__all__ = [
    "WITHIN_SET",
    "CROSS_MANIPULATION",
    "CROSS_COMPRESSION",
    "CROSS_DATASET",
    "PROTOCOLS",
    "THRESHOLD_RULE",
    "TABLE_COLUMNS",
    "ValThreshold",
    "Evaluation",
    "validation_threshold",
    "evaluate_datasets",
    "protocol_tables",
    "markdown_tables",
    "model_description",
]

WITHIN_SET, CROSS_MANIPULATION, CROSS_COMPRESSION, CROSS_DATASET = "within-set", "cross-manipulation", "cross-compression", "cross-dataset"
PROTOCOLS = (WITHIN_SET, CROSS_MANIPULATION, CROSS_COMPRESSION, CROSS_DATASET)  # table order
THRESHOLD_RULE = "max validation accuracy"  # how the validation threshold is chosen
ALL_FAKES = "all"  # Evaluation.fakes of an evaluation over every fake of the set

# Columns of a protocol table (one row per Evaluation; Evaluation.row() gives them).
TABLE_COLUMNS = (
    "protocol", "trained on", "training fakes", "evaluated on", "fakes", "aggregation", "real", "fake",
    "roc_auc", "average_precision", "eer", "accuracy@0.5", "accuracy@val", "val_threshold",
)  # fmt: skip
_METRIC_COLUMNS = {"roc_auc": "roc_auc", "average_precision": "average_precision", "eer": "eer",
                   "accuracy@0.5": "accuracy", "accuracy@val": "accuracy_at_val_threshold", "val_threshold": "val_threshold"}  # fmt: skip


@dataclass(frozen=True)
class ValThreshold:
    """The decision threshold chosen on the model's validation split (:data:`THRESHOLD_RULE`)."""

    threshold: float  # NaN when the validation split could not be scored
    accuracy: float  # validation accuracy at ``threshold``
    n: int  # validation videos scored
    aggregation: str  # track aggregation it was computed with
    rule: str = THRESHOLD_RULE


@dataclass(frozen=True)
class Evaluation:
    """One model on one set of videos under one protocol.

    ``metrics`` are :func:`raydf.evaluate.compute_metrics` at threshold 0.5, plus
    ``val_threshold`` and ``accuracy_at_val_threshold`` (NaN when no validation split).
    """

    name: str  # key: "<protocol>/<set>" or "<protocol>/<set>/<method>"
    protocol: str  # one of PROTOCOLS
    metrics: dict[str, Any]
    predictions: Predictions
    dataset: str = ""  # the evaluated feature set's name
    fakes: str = ALL_FAKES  # "all", or the one method whose fakes (against all reals) were scored
    fake_methods: tuple[str, ...] = ()  # methods of the scored fakes
    trained_on: str = ""  # model_description(bundle)
    training_fakes: str = "dataset"  # TrainInfo.fakes: dataset | pseudo | both
    aggregation: str = "max"  # how a video's tracks were combined

    def row(self) -> dict[str, Any]:
        """This evaluation as a table row (:data:`TABLE_COLUMNS`)."""
        m = self.metrics
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "trained on": self.trained_on,
            "training fakes": self.training_fakes,
            "evaluated on": self.dataset,
            "fakes": self.fakes if self.fakes != ALL_FAKES else f"all ({', '.join(self.fake_methods) or 'none'})",
            "aggregation": f"{self.aggregation} over tracks",
            "real": int(m["n_real"]),
            "fake": int(m["n_fake"]),
        }
        out.update({col: float(m[key]) for col, key in _METRIC_COLUMNS.items()})
        return out


def model_description(bundle: ModelBundle) -> str:
    """What a model trained on, in a few words: ``"ffpp [Deepfakes]"``, ``"folders [self_blend]"``."""
    cfg = _train_config(bundle)
    where = ",".join(bundle.train.datasets) or redact(bundle.train.features) or "?"
    return f"{where} [{', '.join(cfg.methods)}]" if cfg.methods else where


def _train_config(bundle: ModelBundle) -> TrainConfig:
    return load_config(TrainConfig, bundle.train.config) if bundle.train.config else TrainConfig()


def _same_store(a: str, b: str) -> bool:
    """Whether two URIs name the same store (local paths compared resolved)."""
    if not a or not b:
        return False
    if "://" in a or "://" in b:
        return redact(a).rstrip("/") == redact(b).rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _key_name(text: str) -> str:
    """An MLflow-safe name part: letters, digits, ``_ . -`` only."""
    return re.sub(r"[^\w.\-]+", "_", text).strip("._") or "set"


def _usable(index: pa.Table, min_valid_fraction: float) -> list[dict[str, Any]]:
    """Rows that are ``ok`` and have enough valid faces (the model's exclusion rule)."""
    ok = [r for r in index.to_pylist() if r[S.STATUS] == S.STATUS_OK]
    if not ok:
        return []
    keep = valid_enough(np.asarray([r[S.FACE_VALID] for r in ok], bool), min_valid_fraction)  # (N,)
    return [r for r, k in zip(ok, keep) if k]


def _key(r: dict[str, Any]) -> tuple[str, int]:
    return r[S.VIDEO_ID], int(r[S.TRACK_ID] or 0)


def _fake_methods(pred: Predictions) -> tuple[str, ...]:
    return tuple(sorted({m or "?" for m, y in zip(pred.methods, pred.labels) if y == S.FAKE}))


def _subset(pred: Predictions, keep: np.ndarray) -> Predictions:
    """The videos of ``pred`` where ``keep`` (N,) is True (plot samples kept as they are)."""
    idx = np.flatnonzero(keep)
    return dataclasses.replace(
        pred,
        ids=[pred.ids[i] for i in idx],
        labels=pred.labels[idx],
        probs=pred.probs[idx],
        embeddings=pred.embeddings[idx],
        methods=[pred.methods[i] for i in idx],
        tracks=[pred.tracks[i] for i in idx],
    )


def _metrics(pred: Predictions, vt: ValThreshold) -> dict[str, Any]:
    m = compute_metrics(pred.labels, pred.probs, threshold=0.5)
    if math.isfinite(vt.threshold):
        acc = float(np.mean((pred.probs >= vt.threshold).astype(int) == pred.labels))
    else:
        acc = math.nan
    return {**m, "val_threshold": vt.threshold, "accuracy_at_val_threshold": acc}


def validation_threshold(bundle: ModelBundle, features_uri: str | None = None, *, aggregation: str | None = None) -> ValThreshold:
    """The threshold that maximises accuracy on the model's validation split (:data:`THRESHOLD_RULE`).

    The split is re-planned from the training store exactly as training planned it
    (same config, same seed); its videos are scored with ``aggregation`` (default: the
    training config's) and :func:`raydf.evaluate.best_accuracy_threshold` picks the threshold.

    Args:
        bundle: the trained model.
        features_uri: the training store (default: the one the bundle records).
        aggregation: ``max`` | ``mean`` over a video's tracks.

    Returns:
        The threshold; NaN (with a warning logged) when the training store cannot be read
        or its validation split lacks a class.
    """
    cfg = _train_config(bundle)
    how = aggregation or cfg.aggregation
    uri = features_uri or bundle.train.features
    try:
        plan = plan_splits(load_index(uri), cfg)
        keys = plan.keys["val"]
        if not keys:
            raise ValueError("no validation rows")
        pred = predict_features(bundle, uri, keys, aggregation=how)
    except Exception as exc:  # the store moved, or credentials are missing: report without it
        log.warning("no validation threshold (training store %s: %s); accuracy at it is reported as n/a", redact(uri or "?"), exc)
        return ValThreshold(math.nan, math.nan, 0, how)
    if pred.labels.min() == pred.labels.max():
        log.warning("the validation split of %s holds one class only: no validation threshold", redact(uri))
        return ValThreshold(math.nan, math.nan, len(pred.labels), how)
    t, acc = best_accuracy_threshold(pred.labels, pred.probs)
    return ValThreshold(t, acc, len(pred.labels), how)


def _split_of_videos(plan: SplitPlan) -> dict[str, str]:
    return {v: split for split, keys in plan.keys.items() for v, _ in keys}


def _cross_manipulation_keys(
    rows: list[dict[str, Any]], plan: SplitPlan, cfg: TrainConfig
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], tuple[str, ...]]:
    """Test reals, test-split fakes of the methods the model did not train on, and those methods."""
    trained = set(cfg.methods)
    held_out = sorted({r[S.METHOD] for r in rows if r[S.LABEL] == S.FAKE and r[S.METHOD] != PSEUDO_METHOD and r[S.METHOD] not in trained})
    if not cfg.methods or not held_out:
        return [], [], ()
    split_of = _split_of_videos(plan)
    reals = [k for k in plan.keys[S.TEST] if plan.labels[k] == S.REAL]
    fakes, unplaced = [], 0
    for r in rows:
        if r[S.LABEL] != S.FAKE or r[S.METHOD] not in held_out:
            continue
        split = r[S.SPLIT] if r[S.SPLIT] in S.SPLITS else split_of.get(r[S.SOURCE_ID] or "")
        if split is None:
            unplaced += 1
        elif split == S.TEST:
            fakes.append(_key(r))
    if unplaced:
        log.warning("%d held-out fake row(s) have no split (no manifest split, source video not planned): left out", unplaced)
    return reals, fakes, tuple(held_out)


def _compressions(uri: str) -> tuple[set[str], set[str]]:
    """The non-empty compressions and the dataset names of a store's rows."""
    t = FeatureStore(uri).read([S.COMPRESSION, S.DATASET])
    return {c for c in t.column(S.COMPRESSION).to_pylist() if c}, {d for d in t.column(S.DATASET).to_pylist() if d}


def evaluate_datasets(
    bundle: ModelBundle,
    datasets: dict[str, str],
    *,
    aggregation: str | None = None,
    train_features: str | None = None,
    per_method: bool = True,
) -> dict[str, Evaluation]:
    """Score a model on several feature stores under every protocol they allow (see module docstring).

    Args:
        bundle: the trained model.
        datasets: ``{name: feature store URI}``; the training store among them gives the
            within-set (and cross-manipulation) evaluations.
        aggregation: ``max`` | ``mean`` over a video's face tracks (default: the training config's).
        train_features: the training store, when it is not where the bundle says (for the
            validation threshold and the test split of cross-compression).
        per_method: add one evaluation per fake method where a set has several.

    Returns:
        ``{name: Evaluation}`` in protocol order; names are ``"<protocol>/<set>"`` and
        ``"<protocol>/<set>/<method>"`` (MLflow-safe).

    Raises:
        ValueError: the training store is given and has no test split; a store has no usable rows.
    """
    cfg = _train_config(bundle)
    how = aggregation or cfg.aggregation
    train_uri = train_features or bundle.train.features
    vt = validation_threshold(bundle, train_uri, aggregation=how)
    trained_on, training_fakes = model_description(bundle), bundle.train.fakes
    min_valid = bundle.fusion_config.min_valid_fraction

    plan: SplitPlan | None = None
    train_comp: tuple[set[str], set[str]] | None = None

    def training_plan() -> SplitPlan:
        nonlocal plan
        if plan is None:
            plan = plan_splits(load_index(train_uri), cfg)
        return plan

    jobs: list[tuple[str, str, str, list[tuple[str, int]]]] = []  # (protocol, set name, uri, keys)
    for name, uri in datasets.items():
        if _same_store(uri, train_uri) or (bundle.train.features and _same_store(uri, bundle.train.features)):
            p = plan_splits(load_index(uri), cfg)
            if not p.keys[S.TEST]:
                raise ValueError(f"{redact(uri)} is the model's training data and has no test split")
            jobs.append((WITHIN_SET, name, uri, p.keys[S.TEST]))
            reals, fakes, held_out = _cross_manipulation_keys(_usable(load_index(uri), min_valid), p, cfg)
            if reals and fakes:
                jobs.append((CROSS_MANIPULATION, name, uri, sorted(reals + fakes)))
                log.info("%s: cross-manipulation on held-out %s (%d fake rows)", name, ", ".join(held_out), len(fakes))
            elif held_out:
                log.warning("%s: no test-split reals and fakes of the held-out %s: no cross-manipulation evaluation", name, ", ".join(held_out))
            continue
        rows = _usable(load_index(uri), min_valid)
        pseudo = sum(r[S.METHOD] == PSEUDO_METHOD for r in rows)
        if pseudo:
            log.info("%s: %d self-blended pseudo-fake row(s) left out (training material, not this set's fakes)", name, pseudo)
        rows = [r for r in rows if r[S.METHOD] != PSEUDO_METHOD]
        protocol, keys = CROSS_DATASET, [_key(r) for r in rows]
        try:
            if train_comp is None:
                train_comp = _compressions(train_uri)
            comp, names = _compressions(uri)
            if comp and train_comp[0] and comp != train_comp[0] and names & train_comp[1]:
                test_videos = set(training_plan().videos(S.TEST))
                protocol, keys = CROSS_COMPRESSION, [_key(r) for r in rows if r[S.VIDEO_ID] in test_videos]
                log.info("%s: cross-compression %s -> %s on the training test split", name, "/".join(sorted(train_comp[0])), "/".join(sorted(comp)))
        except Exception as exc:  # training store unreadable: the set is still a cross-dataset test
            log.warning("cannot compare %s with the training store (%s): scored as cross-dataset", name, exc)
        if not keys:
            raise ValueError(f"no usable rows to score in {redact(uri)} ({protocol})")
        jobs.append((protocol, name, uri, sorted(keys)))

    out: dict[str, Evaluation] = {}
    for protocol, name, uri, keys in sorted(jobs, key=lambda j: PROTOCOLS.index(j[0])):
        pred = predict_features(bundle, uri, keys, aggregation=how)
        methods = _fake_methods(pred)
        base = f"{protocol}/{_key_name(name)}"
        common = {"protocol": protocol, "dataset": name, "trained_on": trained_on, "training_fakes": training_fakes, "aggregation": how}
        out[base] = Evaluation(base, metrics=_metrics(pred, vt), predictions=pred, fake_methods=methods, **common)
        if per_method and len(methods) > 1:
            for m in methods:
                sub = _subset(pred, np.asarray([y == S.REAL or (mth or "?") == m for y, mth in zip(pred.labels, pred.methods)]))
                key = f"{base}/{_key_name(m)}"
                out[key] = Evaluation(key, metrics=_metrics(sub, vt), predictions=sub, fakes=m, fake_methods=(m,), **common)
    return out


def protocol_tables(evaluations: dict[str, Evaluation]) -> dict[str, list[dict[str, Any]]]:
    """``{protocol: rows}`` (rows as :meth:`Evaluation.row`), protocols in :data:`PROTOCOLS` order."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for e in evaluations.values():
        tables.setdefault(e.protocol, []).append(e.row())
    return {p: tables[p] for p in PROTOCOLS if p in tables}


def _fmt(col: str, v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"
    return str(v)


def markdown_tables(evaluations: dict[str, Evaluation]) -> str:
    """One Markdown table per protocol, each headed by its protocol and the track aggregation."""
    parts = []
    for protocol, rows in protocol_tables(evaluations).items():
        hows = sorted({r["aggregation"] for r in rows})
        head = f"### {protocol} (video score: {' / '.join(hows)}; val threshold: {THRESHOLD_RULE})"
        cols = [c for c in TABLE_COLUMNS if c != "protocol"]
        parts.append(head + "\n\n" + markdown_table([cols] + [[_fmt(c, r[c]) for c in cols] for r in rows]))
    return "\n\n".join(parts)
