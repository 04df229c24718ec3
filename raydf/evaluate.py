"""Metrics, report tables and plots of a trained detector (plain numpy / sklearn / matplotlib).

Fake is the positive class (label 1, ``raydf.schema.FAKE``); ``y_prob`` is P(fake).

* :func:`compute_metrics` -- accuracy, precision, recall, F1, ROC AUC, average precision,
  EER (+ its threshold), log loss, confusion matrix and counts, in one JSON-able dict.
* :func:`classification_report_table` / :func:`overall_table` -- the report's Tables 4 and 3.
* :func:`roc_points` -- the ROC curve to log; its trapezoid area is the logged AUC.
* :func:`best_accuracy_threshold` -- the decision threshold that maximises accuracy (chosen on
  a validation split by :mod:`raydf.protocol`).
* ``plot_*`` -- figures of the field (learning curves, learning rate, confusion matrix, ROC,
  temporal style trajectories, decision boundary of the fused embedding). Each returns a
  :class:`matplotlib.figure.Figure` with its own Agg canvas: nothing touches ``pyplot``'s
  global figure list, so a long training or Tune run leaks no figures. Save with
  :func:`save_figure`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.decomposition import PCA
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve
from sklearn.neighbors import KNeighborsRegressor

from raydf.schema import EPOCH, LR, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS

log = logging.getLogger(__name__)

__all__ = [
    "EPOCH",
    "TRAIN_LOSS",
    "VAL_LOSS",
    "TRAIN_ACC",
    "VAL_ACC",
    "LR",
    "CLASS_NAMES",
    "compute_metrics",
    "roc_points",
    "best_accuracy_threshold",
    "markdown_table",
    "classification_report_table",
    "overall_table",
    "plot_curves",
    "plot_lr",
    "plot_confusion",
    "plot_roc",
    "plot_style_trajectories",
    "plot_decision_boundary",
    "save_figure",
]

# EPOCH, TRAIN_LOSS, ...: keys of one epoch's entry in the training history that the plots read
# (the metric names of raydf.schema, re-exported).

CLASS_NAMES = ("Real", "Fake")  # index = label (schema.REAL, schema.FAKE)
TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:red"  # report, Figures 2-3: training blue, validation red
REAL_COLOR, FAKE_COLOR = "tab:blue", "tab:red"
LOG_LOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] so log loss stays finite


def _inputs(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"y_true and y_prob must be non-empty and equally long, got {y.shape} and {p.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"y_true must be 0 (real) or 1 (fake), got values {np.unique(y)[:10]}")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"y_prob must be probabilities in [0, 1], got range [{np.nanmin(p)}, {np.nanmax(p)}]")
    return y.astype(np.int64), p


def _equal_error_rate(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): where the ROC crosses FPR = FNR, linearly interpolated between ROC points.

    The threshold is that of the first ROC point with FPR >= FNR (predict fake at p >= it).
    """
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    fnr = 1.0 - tpr
    d = fnr - fpr  # non-increasing from +1 (threshold inf) to -1 (threshold min)
    i = int(np.argmax(d <= 0))
    if d[i] == 0 or i == 0:
        return float(fpr[i]), float(thr[i])
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1])), float(thr[i])


def compute_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Detection metrics with fake as the positive class.

    Args:
        y_true: (N,) 0 real / 1 fake.
        y_prob: (N,) P(fake) in [0, 1].
        threshold: predict fake when ``y_prob >= threshold``.

    Returns:
        ``accuracy, precision, recall, f1`` (sklearn's ``zero_division=0`` convention),
        ``roc_auc, average_precision, eer, eer_threshold`` (NaN when only one class is
        present: a ranking metric needs both), ``log_loss``, ``threshold``,
        ``confusion_matrix`` (2x2 nested list: rows true Real/Fake, columns predicted),
        ``n, n_real, n_fake``. Every value is a plain Python number or list (JSON-able).
    """
    y, p = _inputs(y_true, y_prob)
    pred = (p >= threshold).astype(np.int64)
    cm = confusion_matrix(y, pred, labels=[0, 1])  # (2, 2) rows true, cols predicted
    (tn, fp), (fn, tp) = cm.tolist()
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n_fake = int(y.sum())
    n_real = len(y) - n_fake
    both = n_real > 0 and n_fake > 0
    pc = np.clip(p, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    eer, eer_threshold = _equal_error_rate(y, p) if both else (math.nan, math.nan)
    return {
        "accuracy": float((tp + tn) / len(y)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(roc_auc_score(y, p)) if both else math.nan,
        "average_precision": float(average_precision_score(y, p)) if both else math.nan,
        "eer": eer,
        "eer_threshold": eer_threshold,
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1.0 - pc))),
        "threshold": float(threshold),
        "confusion_matrix": cm.tolist(),
        "n": len(y),
        "n_real": n_real,
        "n_fake": n_fake,
    }


def roc_points(y_true: Any, y_prob: Any) -> dict[str, np.ndarray]:
    """The ROC curve as ``fpr, tpr, thresholds`` arrays (sklearn's; the first threshold is +inf).

    ``np.trapezoid(tpr, fpr)`` equals ``compute_metrics(...)["roc_auc"]``. Empty arrays when
    only one class is present (the curve is undefined).
    """
    y, p = _inputs(y_true, y_prob)
    if y.min() == y.max():
        return {"fpr": np.zeros(0), "tpr": np.zeros(0), "thresholds": np.zeros(0)}
    fpr, tpr, thr = roc_curve(y, p)  # collinear points dropped: same area, fewer rows to log
    return {"fpr": fpr, "tpr": tpr, "thresholds": thr}


def best_accuracy_threshold(y_true: Any, y_prob: Any) -> tuple[float, float]:
    """The threshold that maximises accuracy on ``(y_true, y_prob)``, and that accuracy.

    Candidates are the midpoints between consecutive distinct scores, plus 0 (everything fake)
    and the midpoint between the top score and 1 (everything real; just above 1 when the top
    score is 1); a video is called fake at
    ``y_prob >= threshold``. Of the candidates with the best accuracy, the one nearest 0.5 wins
    (so 0.5 stays when nothing beats it, and the choice is deterministic). Midpoints, rather
    than the scores themselves, leave the same margin on both sides of the split.

    Args:
        y_true: (N,) 0 real / 1 fake.
        y_prob: (N,) P(fake) in [0, 1].

    Returns:
        ``(threshold, accuracy)``.

    Raises:
        ValueError: empty or mismatched inputs, labels not 0/1, scores outside [0, 1].
    """
    y, p = _inputs(y_true, y_prob)
    u = np.unique(p)  # (M,) sorted distinct scores
    top = (u[-1] + 1.0) / 2.0 if u[-1] < 1.0 else np.nextafter(1.0, 2.0)  # everything real, even a score of 1
    cand = np.concatenate([[0.0], (u[:-1] + u[1:]) / 2.0, [top]])  # (M + 1,)
    fake, real = np.sort(p[y == 1]), np.sort(p[y == 0])
    tp = len(fake) - np.searchsorted(fake, cand, side="left")  # (M + 1,) fakes at p >= c
    tn = np.searchsorted(real, cand, side="left")  # (M + 1,) reals at p < c
    acc = (tp + tn) / len(y)
    best = np.flatnonzero(acc == acc.max())
    i = int(best[np.argmin(np.abs(cand[best] - 0.5))])
    return float(cand[i]), float(acc[i])


def markdown_table(rows: list[list[str]]) -> str:
    """A Markdown table (first row the header) whose columns are also aligned as plain text."""
    return _markdown(rows)


def _markdown(rows: list[list[str]]) -> str:
    """A Markdown table whose columns are also aligned as plain text."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]

    def line(r: list[str]) -> str:
        cells = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if c else "-") for c, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), rule] + [line(r) for r in rows[1:]])


def classification_report_table(y_true: Any, y_prob: Any, threshold: float = 0.5, digits: int = 2) -> str:
    """The report's Table 4: per-class precision / recall / F1 / support, accuracy, macro and weighted averages."""
    y, p = _inputs(y_true, y_prob)
    pred = (p >= threshold).astype(np.int64)
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    n = int(sup.sum())
    f = f"{{:.{digits}f}}"
    rows = [["Class", "Precision", "Recall", "F1-Score", "Support"]]
    rows += [[name, f.format(prec[i]), f.format(rec[i]), f.format(f1[i]), str(int(sup[i]))] for i, name in enumerate(CLASS_NAMES)]
    rows.append(["Accuracy", "-", "-", f.format(float(np.mean(pred == y))), str(n)])
    rows.append(["Macro Avg", f.format(prec.mean()), f.format(rec.mean()), f.format(f1.mean()), str(n)])
    w = sup / n
    rows.append(["Weighted Avg", f.format(prec @ w), f.format(rec @ w), f.format(f1 @ w), str(n)])
    return _markdown(rows)


def overall_table(metrics: dict[str, Any], digits: int = 4, extended: bool = True) -> str:
    """The report's Table 3 (accuracy, precision, recall, F1) from :func:`compute_metrics`.

    With ``extended`` the threshold-free metrics follow (ROC AUC, average precision, EER, log loss).
    """
    names = [("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1 Score")]
    if extended:
        names += [("roc_auc", "ROC AUC"), ("average_precision", "Average Precision"), ("eer", "EER"), ("log_loss", "Log Loss")]
    rows = [["Metric", "Score"]]
    rows += [[label, f"{float(metrics[key]):.{digits}f}"] for key, label in names if key in metrics]
    return _markdown(rows)


# ---- plots ------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # own Agg canvas: renders headless, never registered with pyplot
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    pts = [(h.get(EPOCH, i), h[key]) for i, h in enumerate(history) if h.get(key) is not None]
    if not pts:
        return None
    x, y = zip(*pts)
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def plot_curves(history: Sequence[dict[str, Any]]) -> Figure:
    """Training (blue) and validation (red) loss and accuracy per epoch, as the report's Figures 2-3.

    ``history`` holds one dict per epoch with any of ``epoch, train_loss, val_loss,
    train_acc, val_acc`` (the module constants); missing keys are skipped.
    """
    if not history:
        raise ValueError("plot_curves needs a non-empty history")
    fig = _figure(10, 4)
    for ax, (title, train_key, val_key) in zip(fig.subplots(1, 2), [("Loss", TRAIN_LOSS, VAL_LOSS), ("Accuracy", TRAIN_ACC, VAL_ACC)]):
        for key, color, label in ((train_key, TRAIN_COLOR, "training"), (val_key, VAL_COLOR, "validation")):
            s = _series(history, key)
            if s is not None:
                ax.plot(*s, color=color, marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel="epoch", ylabel=title.lower())
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    return fig


def plot_lr(history: Sequence[dict[str, Any]]) -> Figure:
    """Learning rate per epoch; dashed lines mark the warm restarts (where the rate jumps up)."""
    s = _series(history, LR)
    if s is None:
        raise ValueError(f"no {LR!r} in the history")
    x, lr = s
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    ax.plot(x, lr, color=TRAIN_COLOR, marker="o", markersize=3)
    for e in x[1:][np.diff(lr) > 0]:
        ax.axvline(e, color="grey", linestyle="--", linewidth=0.8)
    ax.set(title="Learning rate (cosine annealing, warm restarts)", xlabel="epoch", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    return fig


def plot_confusion(cm: Any, labels: Sequence[str] = CLASS_NAMES, title: str = "Confusion matrix") -> Figure:
    """A confusion matrix (rows true, columns predicted) with counts and row percentages."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise ValueError(f"cm must be square with {len(labels)} rows, got shape {cm.shape}")
    fig = _figure(4.5, 4)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    dark = cm.max() / 2 if cm.max() else 1
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v}\n{share[i, j]:.0%}", ha="center", va="center", color="white" if v > dark else "black")
    ticks = np.arange(len(labels))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=labels, yticklabels=labels, xlabel="Predicted", ylabel="True", title=title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_roc(y_true: Any, y_prob: Any) -> Figure:
    """ROC curve with its AUC and the equal-error-rate point."""
    pts = roc_points(y_true, y_prob)
    fig = _figure(4.5, 4.5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    if len(pts["fpr"]):
        m = compute_metrics(y_true, y_prob)
        ax.plot(pts["fpr"], pts["tpr"], color=FAKE_COLOR, label=f"ROC (AUC = {m['roc_auc']:.3f})")
        ax.plot([m["eer"]], [1 - m["eer"]], "ko", label=f"EER = {m['eer']:.3f}")
    else:
        ax.text(0.5, 0.3, "undefined: only one class present", ha="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title="ROC", aspect="equal")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def _class_legend(ax: Any) -> None:
    ax.legend(handles=[Line2D([], [], color=REAL_COLOR, label=CLASS_NAMES[0]), Line2D([], [], color=FAKE_COLOR, label=CLASS_NAMES[1])])


def plot_style_trajectories(style: Any, labels: Any, valid: Any = None, max_per_class: int = 25) -> Figure:
    """Temporal style patterns: PCA trajectories of the style codes and per-frame style change.

    Left: every frame's style code of every video projected on the first two principal
    components (fit on all valid frames), each video drawn as a path over time (a circle marks
    the first frame); real blue, fake red. Right: the style change ``||s_t - s_{t-1}||`` per
    frame, thin per video and bold as the class mean -- the report's observation that style
    is less consistent across frames in fakes.

    Args:
        style: (N, T, D) style codes.
        labels: (N,) 0 real / 1 fake.
        valid: optional (N, T) bool; frames without a face are left out (lines break there).
        max_per_class: videos drawn per class (the first ones; all enter the PCA and the means).
    """
    style = np.asarray(style, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if style.ndim != 3 or style.shape[0] != labels.shape[0]:
        raise ValueError(f"style must be (N, T, D) with N = len(labels), got {style.shape} and {labels.shape}")
    n, t, d = style.shape
    valid = np.ones((n, t), bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.sum() < 2:
        raise ValueError("plot_style_trajectories needs at least two valid frames")
    pca = PCA(n_components=min(2, d), svd_solver="full").fit(style[valid])
    xy = pca.transform(style.reshape(n * t, d)).reshape(n, t, -1)  # (N, T, 2)
    xy[~valid] = np.nan
    step = np.linalg.norm(np.diff(style, axis=1), axis=-1)  # (N, T-1) ||s_t - s_{t-1}||
    step[~(valid[:, 1:] & valid[:, :-1])] = np.nan

    fig = _figure(11, 4.5)
    traj, change = fig.subplots(1, 2)
    for cls, color in ((0, REAL_COLOR), (1, FAKE_COLOR)):
        idx = np.flatnonzero(labels == cls)
        for i in idx[:max_per_class]:
            traj.plot(xy[i, :, 0], xy[i, :, -1], color=color, alpha=0.5, linewidth=0.9)
            first = np.flatnonzero(valid[i])[:1]
            traj.plot(xy[i, first, 0], xy[i, first, -1], "o", color=color, markersize=3)
            if t > 1:
                change.plot(np.arange(1, t), step[i], color=color, alpha=0.2, linewidth=0.7)
        if len(idx) and t > 1 and np.isfinite(step[idx]).any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": a frame no video has valid
                change.plot(np.arange(1, t), np.nanmean(step[idx], axis=0), color=color, linewidth=2.5, gid=f"mean_{cls}")
    ev = pca.explained_variance_ratio_
    traj.set(title="Style trajectories (PCA of style codes)", xlabel=f"PC1 ({ev[0]:.0%})", ylabel=f"PC2 ({ev[-1]:.0%})")
    change.set(title=r"Style change $\|s_t - s_{t-1}\|$ (bold: class mean)", xlabel="frame t", ylabel="L2 norm")
    for ax in (traj, change):
        ax.grid(alpha=0.3)
        _class_legend(ax)
    return fig


def plot_decision_boundary(embeddings: Any, labels: Any, probs: Any, threshold: float = 0.5, k: int = 15) -> Figure:
    """The fused class-token embeddings in 2-D, over the model's P(fake) in that plane.

    Points: the first two principal components of the embeddings (``FusionClassifier.embed``),
    coloured by true label, crosses for misclassified videos. Background: P(fake) interpolated
    from the model's own probabilities by a distance-weighted kNN in the PCA plane, with the
    decision threshold drawn as a contour. We interpolate the model's outputs rather than fit a
    logistic regression to the labels because the latter would draw a boundary of a new linear
    model, not of ours; the kNN shows where the detector itself says real or fake, including a
    non-linear or fragmented boundary.

    Args:
        embeddings: (N, d) fused embeddings, N >= 3.
        labels: (N,) 0 real / 1 fake.
        probs: (N,) the model's P(fake).
        threshold: the decision threshold drawn and used for "misclassified".
        k: neighbours of the kNN (at most N).
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    y, p = _inputs(labels, probs)
    if emb.ndim != 2 or emb.shape[0] != len(y) or len(y) < 3 or emb.shape[1] < 2:
        raise ValueError(f"embeddings must be (N >= 3, d >= 2) with N = len(labels), got {emb.shape} and {len(y)} labels")
    pca = PCA(n_components=2, svd_solver="full").fit(emb)
    xy = pca.transform(emb)  # (N, 2)
    knn = KNeighborsRegressor(n_neighbors=min(k, len(y)), weights="distance").fit(xy, p)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = 0.1 * np.maximum(hi - lo, 1e-6)
    gx, gy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 150), np.linspace(lo[1] - pad[1], hi[1] + pad[1], 150))
    grid = knn.predict(np.column_stack([gx.ravel(), gy.ravel()])).reshape(gx.shape)  # (150, 150)

    fig = _figure(6, 5)
    ax = fig.subplots()
    cs = ax.contourf(gx, gy, grid, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.35)
    if grid.min() < threshold < grid.max():
        ax.contour(gx, gy, grid, levels=[threshold], colors="k", linewidths=1.2)
    wrong = (p >= threshold).astype(int) != y
    for cls, color in ((0, REAL_COLOR), (1, FAKE_COLOR)):
        ok, bad = (y == cls) & ~wrong, (y == cls) & wrong
        ax.scatter(xy[ok, 0], xy[ok, 1], c=color, s=18, edgecolors="k", linewidths=0.3, label=CLASS_NAMES[cls])
        if bad.any():
            label = f"{CLASS_NAMES[cls]} (misclassified)"
            ax.scatter(xy[bad, 0], xy[bad, 1], c=color, s=40, marker="X", edgecolors="k", linewidths=0.5, label=label)
    fig.colorbar(cs, ax=ax, label="model P(fake), kNN in this plane")
    ev = pca.explained_variance_ratio_
    ax.set(title="Decision boundary of the fused embedding", xlabel=f"PC1 ({ev[0]:.0%})", ylabel=f"PC2 ({ev[1]:.0%})")
    ax.legend(loc="best", fontsize="small")
    return fig

