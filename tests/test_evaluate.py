"""Unit tests of metrics, report tables and plots."""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from raydf import evaluate as ev


def _report_example() -> tuple[np.ndarray, np.ndarray]:
    """The report's Table 4 as predictions: 100 real (55 right), 100 fake (99 right)."""
    y = np.array([0] * 100 + [1] * 100)
    p = np.array([0.2] * 55 + [0.8] * 45 + [0.9] * 99 + [0.1])
    return y, p


def _rows(table: str) -> dict[str, list[str]]:
    """Markdown table body -> {first cell: other cells}."""
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    return {r[0]: r[1:] for r in cells}


def test_metrics_match_hand_computed_values() -> None:
    y = [0, 0, 1, 1, 1]
    p = [0.1, 0.6, 0.4, 0.8, 0.9]  # predictions at 0.5: 0 1 0 1 1 -> tn 1, fp 1, fn 1, tp 2
    m = ev.compute_metrics(y, p)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert (m["n"], m["n_real"], m["n_fake"]) == (5, 2, 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of 6 (fake, real) pairs ranked right
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.4, 0.8, 0.9])))
    # ROC: FNR stays 1/3 while FPR goes 0 -> 1/2 between thresholds 0.8 and 0.6; crossing at 1/3.
    assert m["eer"] == pytest.approx(1 / 3) and m["eer_threshold"] == pytest.approx(0.6)
    json.dumps(m)  # every value is JSON-able (NaN aside, which json writes as NaN)


def test_threshold_moves_the_decision() -> None:
    m = ev.compute_metrics([0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.8, 0.9], threshold=0.7)
    assert m["confusion_matrix"] == [[2, 0], [1, 2]] and m["precision"] == 1.0


def test_metrics_reproduce_the_reports_table_3() -> None:
    m = ev.compute_metrics(*_report_example())
    assert round(m["accuracy"], 4) == 0.77
    assert round(m["precision"], 4) == 0.6875
    assert round(m["recall"], 4) == 0.99
    assert round(m["f1"], 4) == 0.8115
    rows = _rows(ev.overall_table(m))
    assert rows["Accuracy"] == ["0.7700"] and rows["Precision"] == ["0.6875"]
    assert rows["Recall"] == ["0.9900"] and rows["F1 Score"] == ["0.8115"]
    assert "ROC AUC" in rows and "EER" in rows
    assert list(_rows(ev.overall_table(m, extended=False))) == ["Accuracy", "Precision", "Recall", "F1 Score"]


def test_classification_report_reproduces_the_reports_table_4() -> None:
    table = ev.classification_report_table(*_report_example())
    rows = _rows(table)
    assert rows["Real"] == ["0.98", "0.55", "0.71", "100"]
    assert rows["Fake"] == ["0.69", "0.99", "0.81", "100"]
    assert rows["Accuracy"] == ["-", "-", "0.77", "200"]
    assert rows["Macro Avg"] == ["0.83", "0.77", "0.76", "200"]
    assert rows["Weighted Avg"] == ["0.83", "0.77", "0.76", "200"]
    assert table.splitlines()[0].split("|")[1].strip() == "Class"


def test_eer_is_zero_for_a_perfect_classifier_and_half_for_a_random_one() -> None:
    perfect = ev.compute_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8])
    assert perfect["eer"] == 0.0 and perfect["roc_auc"] == 1.0
    assert 0.3 < perfect["eer_threshold"] <= 0.7
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    random = ev.compute_metrics(y, rng.random(4000))
    assert abs(random["eer"] - 0.5) < 0.04 and abs(random["roc_auc"] - 0.5) < 0.04
    inverted = ev.compute_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert inverted["eer"] == 1.0 and inverted["roc_auc"] == 0.0


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_nan_ranking_metrics_without_raising(label: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn UndefinedMetricWarning either
        m = ev.compute_metrics([label] * 4, [0.2, 0.4, 0.6, 0.8])
        pts = ev.roc_points([label] * 4, [0.2, 0.4, 0.6, 0.8])
    assert math.isnan(m["roc_auc"]) and math.isnan(m["eer"]) and math.isnan(m["average_precision"])
    assert m["accuracy"] == 0.5 and math.isfinite(m["log_loss"])
    assert (m["n_real"], m["n_fake"]) == ((4, 0) if label == 0 else (0, 4))
    assert len(pts["fpr"]) == 0


def test_roc_points_reproduce_the_logged_auc() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + 0.7 * rng.random(500), 0, 1).round(2)  # informative, with ties
    pts = ev.roc_points(y, p)
    auc = ev.compute_metrics(y, p)["roc_auc"]
    assert 0.6 < auc < 1.0
    assert np.trapezoid(pts["tpr"], pts["fpr"]) == pytest.approx(auc, abs=1e-12)
    assert pts["fpr"][0] == 0 and pts["tpr"][-1] == 1 and np.all(np.diff(pts["fpr"]) >= 0)


@pytest.mark.parametrize(("y", "p"), [([0, 2], [0.1, 0.2]), ([0, 1], [0.1, 1.2]), ([0, 1], [0.1]), ([], [])])
def test_bad_inputs_are_rejected(y: list, p: list) -> None:
    with pytest.raises(ValueError):
        ev.compute_metrics(y, p)


def _assert_png(path: Path, min_bytes: int = 8_000) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 300 and height >= 300


def _history(epochs: int = 30) -> list[dict]:
    lr = [1e-4 * (0.01 + 0.495 * (1 + math.cos(math.pi * (e % 10) / 10))) for e in range(epochs)]
    return [
        {
            ev.EPOCH: e,
            ev.TRAIN_LOSS: 0.7 * math.exp(-e / 8),
            ev.VAL_LOSS: 0.7 * math.exp(-e / 10) + 0.05,
            ev.TRAIN_ACC: 1 - 0.5 * math.exp(-e / 5),
            ev.VAL_ACC: 0.95 - 0.45 * math.exp(-e / 6),
            ev.LR: lr[e],
        }
        for e in range(epochs)
    ]


def _style(n: int = 12, t: int = 32, d: int = 512):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    base = rng.normal(size=(n, 1, d))
    drift = np.cumsum(rng.normal(scale=0.05, size=(n, t, d)), axis=1)
    jitter = rng.normal(scale=0.5, size=(n, t, d)) * labels[:, None, None]  # fakes flicker
    valid = rng.random((n, t)) > 0.1
    return base + drift + jitter, labels, valid


def _figures() -> dict[str, Figure]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.35 * y + 0.65 * rng.random(80), 0, 1)  # informative, not separable
    emb = rng.normal(size=(80, 32)) + 2.0 * y[:, None]
    style, labels, valid = _style()
    return {
        "curves": ev.plot_curves(_history()),
        "lr": ev.plot_lr(_history()),
        "confusion": ev.plot_confusion(ev.compute_metrics(y, p)["confusion_matrix"]),
        "roc": ev.plot_roc(y, p),
        "style": ev.plot_style_trajectories(style, labels, valid),
        "boundary": ev.plot_decision_boundary(emb, y, p),
    }


def test_every_plot_saves_a_non_empty_png_and_leaks_no_pyplot_figure(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figures = _figures()
    assert plt.get_fignums() == before
    for name, fig in figures.items():
        assert isinstance(fig, Figure), name
        path = ev.save_figure(fig, tmp_path / "plots" / f"{name}.png")
        _assert_png(path)


def test_plots_draw_what_they_claim() -> None:
    figures = _figures()
    loss_ax, acc_ax = figures["curves"].axes
    assert [line.get_color() for line in loss_ax.get_lines()] == ["tab:blue", "tab:red"]
    assert len(loss_ax.get_lines()[0].get_xdata()) == 30
    assert len([line for line in figures["lr"].axes[0].get_lines() if line.get_linestyle() == "--"]) == 2  # restarts at 10, 20
    texts = [t.get_text() for t in figures["confusion"].axes[0].texts]
    assert len(texts) == 4 and all("%" in t for t in texts)
    assert "AUC" in figures["roc"].axes[0].get_legend().get_texts()[1].get_text()
    traj, change = figures["style"].axes
    assert len(traj.get_lines()) == 2 * 12  # one path + one start marker per video
    assert len(change.get_lines()) == 12 + 2  # one per video + one mean per class


def test_style_change_panel_shows_the_flickering_class_above() -> None:
    style, labels, valid = _style()
    change = ev.plot_style_trajectories(style, labels, valid).axes[1]
    means = {line.get_gid(): line for line in change.get_lines() if line.get_gid()}
    real_mean, fake_mean = means["mean_0"], means["mean_1"]
    assert np.nanmean(fake_mean.get_ydata()) > 2 * np.nanmean(real_mean.get_ydata())


def test_curves_accept_a_history_with_missing_keys() -> None:
    fig = ev.plot_curves([{ev.TRAIN_LOSS: 1.0}, {ev.TRAIN_LOSS: 0.5, ev.VAL_LOSS: 0.6}])
    assert len(fig.axes[0].get_lines()) == 2 and not fig.axes[1].has_data()
    with pytest.raises(ValueError):
        ev.plot_curves([])


def test_plot_roc_and_boundary_handle_degenerate_input(tmp_path: Path) -> None:
    _assert_png(ev.save_figure(ev.plot_roc([1, 1, 1], [0.2, 0.5, 0.9]), tmp_path / "roc.png"), min_bytes=4_000)
    with pytest.raises(ValueError, match="N >= 3"):
        ev.plot_decision_boundary(np.zeros((2, 4)), [0, 1], [0.2, 0.8])
