"""FF++ vs Celeb-DF (vs ...): the best run of each dataset side by side, and MLflow's compare view.

Training runs (``raydf train``, and every Tune trial) carry the tags ``dataset``, ``split``,
``style_config`` and ``weights``. :func:`best_runs` searches the training and Tune experiments
for finished training runs, groups them by ``dataset`` and keeps the best of each: by test
ROC-AUC where the run was evaluated on a test split, else by validation AUC (a run with test
metrics always ranks above one without). :func:`compare_url` links MLflow's compare-runs page
for those runs (``#/compare-runs?runs=[...]&experiments=[...]``, the route MLflow's UI builds
itself).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from raydf import schema as S
from raydf import tracking

__all__ = ["BestRun", "Comparison", "best_runs", "compare_table", "compare_url", "run_compare"]

# Rows of the side-by-side table: (label, test metric, validation fallback).
TEST_AUC = S.eval_metric(S.TEST, S.ROC_AUC)  # test_roc_auc
ROWS = (
    ("accuracy", S.eval_metric(S.TEST, S.ACCURACY), S.VAL_ACC),
    ("F1", S.eval_metric(S.TEST, S.F1), None),
    ("ROC-AUC", TEST_AUC, S.VAL_AUC),
    ("EER", S.eval_metric(S.TEST, S.EER), None),
    ("log-loss", S.eval_metric(S.TEST, S.LOG_LOSS), None),
    ("n", S.eval_metric(S.TEST, "n"), None),
)
TRAIN_STAGE = "train"  # raydf.stage of training runs; sweep parents ("tune") repeat their best child
DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default


@dataclass(frozen=True)
class BestRun:
    """The best training run of one dataset."""

    dataset: str
    run_id: str
    run_name: str
    experiment_id: str
    ranked_by: str  # "test_roc_auc" or "val_auc"
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    best: list[BestRun]
    table: str
    url: str
    tracking_uri: str
    hint: str | None  # how to start a UI when the tracking URI is not a server

    def lines(self) -> list[str]:
        out = [self.table, "", f"MLflow compare view: {self.url}"]
        if self.hint:
            out.append(self.hint)
        return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def _rank(run) -> tuple[int, float, int]:  # noqa: ANN001 - mlflow Run
    m = run.data.metrics
    if _finite(m.get(TEST_AUC)):
        return (1, float(m[TEST_AUC]), run.info.start_time or 0)
    if _finite(m.get(S.VAL_AUC)):
        return (0, float(m[S.VAL_AUC]), run.info.start_time or 0)
    return (-1, -math.inf, run.info.start_time or 0)


def best_runs(
    tracking_uri: str | None = None,
    *,
    experiments: Sequence[str] = (tracking.TRAIN_EXPERIMENT, tracking.TUNE_EXPERIMENT),
    datasets: Sequence[str] | None = None,
    filter_string: str | None = None,
) -> list[BestRun]:
    """The best finished training run per ``dataset`` tag, in dataset order.

    Args:
        tracking_uri: MLflow store (default :func:`raydf.tracking.default_tracking_uri`).
        experiments: names of the experiments to search (missing ones are skipped).
        datasets: only these ``dataset`` tag values, in this order (default: all, sorted).
        filter_string: an extra MLflow filter, e.g. ``"tags.weights = 'pretrained'"``.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
    ids = [e.experiment_id for name in experiments if (e := client.get_experiment_by_name(name)) is not None]
    if not ids:
        return []
    query = f"tags.`raydf.stage` = '{TRAIN_STAGE}' and attributes.status = 'FINISHED'"
    if filter_string:
        query += f" and {filter_string}"
    runs, token = [], None
    while True:
        page = client.search_runs(ids, filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    grouped: dict[str, list[Any]] = {}
    for run in runs:
        ds = run.data.tags.get("dataset")
        if ds and (datasets is None or ds in datasets):
            grouped.setdefault(ds, []).append(run)
    order = list(datasets) if datasets is not None else sorted(grouped)
    out = []
    for ds in order:
        if ds not in grouped:
            continue
        run = max(grouped[ds], key=_rank)
        if _rank(run)[0] < 0:
            continue  # no AUC at all: nothing to compare
        out.append(
            BestRun(
                dataset=ds,
                run_id=run.info.run_id,
                run_name=run.info.run_name or run.info.run_id[:8],
                experiment_id=run.info.experiment_id,
                ranked_by=TEST_AUC if _rank(run)[0] == 1 else S.VAL_AUC,
                metrics=dict(run.data.metrics),
                tags=dict(run.data.tags),
            )
        )
    return out


def _fmt(v: Any, key: str | None) -> str:
    if not _finite(v):
        return "-"
    return str(int(v)) if key and key.endswith("_n") else f"{float(v):.4f}"


def compare_table(best: Sequence[BestRun]) -> str:
    """A Markdown table, one column per dataset: run, what it was ranked by, then the metrics.

    Metrics come from the test split; a run evaluated on validation only shows its validation
    accuracy/AUC, marked ``(val)``.
    """
    header = ["", *[b.dataset for b in best]]
    rows = [
        ["run", *[f"{b.run_name} ({b.run_id[:8]})" for b in best]],
        ["ranked by", *[b.ranked_by for b in best]],
        ["split / style / weights", *[f"{b.tags.get('split', '-')} / {b.tags.get('style_config', '-')} / {b.tags.get('weights', '-')}" for b in best]],
    ]
    for label, test_key, val_key in ROWS:
        cells = []
        for b in best:
            if _finite(b.metrics.get(test_key)):
                cells.append(_fmt(b.metrics[test_key], test_key))
            elif val_key and _finite(b.metrics.get(val_key)):
                cells.append(f"{_fmt(b.metrics[val_key], val_key)} (val)")
            else:
                cells.append("-")
        rows.append([label, *cells])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])


def compare_url(best: Sequence[BestRun], base_url: str) -> str:
    """MLflow UI compare-runs URL for these runs: ``<base>/#/compare-runs?runs=[..]&experiments=[..]``."""
    runs = json.dumps([b.run_id for b in best], separators=(",", ":"))
    exps = json.dumps(sorted({b.experiment_id for b in best}), separators=(",", ":"))
    return f"{base_url.rstrip('/')}/#/compare-runs?runs={quote(runs, safe='')}&experiments={quote(exps, safe='')}"


def run_compare(
    tracking_uri: str | None = None,
    *,
    experiments: Sequence[str] = (tracking.TRAIN_EXPERIMENT, tracking.TUNE_EXPERIMENT),
    datasets: Sequence[str] | None = None,
    filter_string: str | None = None,
    ui_url: str | None = None,
) -> Comparison:
    """Best run per dataset, the side-by-side table and the compare-view URL.

    The URL points at the tracking server when the tracking URI is ``http(s)://``; otherwise at
    ``ui_url`` (default ``http://127.0.0.1:5000``), with a hint to start ``mlflow ui`` there.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    best = best_runs(uri, experiments=experiments, datasets=datasets, filter_string=filter_string)
    hint = None
    if uri.startswith(("http://", "https://")):
        base = ui_url or uri
    else:
        base = ui_url or DEFAULT_UI
        hint = f"(no tracking server: start one first, e.g. mlflow ui --backend-store-uri {tracking.redact(uri)} --workers 1, then open the URL)"
    table = compare_table(best) if best else "no finished training runs with a dataset tag and an AUC"
    return Comparison(best=best, table=table, url=compare_url(best, base), tracking_uri=tracking.redact(uri), hint=hint)
