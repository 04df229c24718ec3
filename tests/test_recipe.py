"""Unit tests of the training recipe pieces: mixup, early stopping, optimizer/scheduler, balancing."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from raydf.config import TrainConfig
from raydf.recipe import (
    EarlyStopping,
    balanced_sample_weights,
    make_optimizer,
    make_scheduler,
    mixup,
    pos_weight,
    seed_everything,
)


def _batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(b, 2, 6, generator=g)
    style = torch.randn(b, 5, 4, generator=g)
    label = (torch.arange(b) % 2).float()
    valid = torch.rand(b, 5, generator=g) < 0.7
    return content, style, label, valid


def _lams(alpha: float, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    content, style, label, _ = _batch(2)
    return np.array([mixup(content, style, label, alpha=alpha, prob=1.0, generator=rng).lam for _ in range(n)])


@pytest.mark.parametrize("alpha", [0.4, 2.0])
def test_mixup_lambda_follows_beta_alpha_alpha(alpha: float) -> None:
    lams = _lams(alpha, 4000)
    mean, var = 0.5, 1.0 / (4.0 * (2.0 * alpha + 1.0))  # Beta(a, a): mean 1/2, var 1 / (4 (2a + 1))
    assert abs(lams.mean() - mean) < 4.0 * math.sqrt(var / len(lams))
    assert abs(lams.var() - var) < 0.1 * var
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert lams.min() >= 0.0 and lams.max() <= 1.0


def test_mixup_mixes_content_style_and_label_with_one_lambda_and_permutation() -> None:
    content, style, label, valid = _batch(8)
    rng = np.random.default_rng(7)
    out = mixup(content, style, label, alpha=0.4, prob=1.0, generator=rng, valid=valid)
    assert out.applied and 0.0 < out.lam < 1.0
    lam = out.lam
    # Recover j for each i from the content alone, then check style, label and mask use the same j.
    candidates = lam * content[:, None] + (1 - lam) * content[None, :]  # (i, j, K, D)
    err = (candidates - out.content[:, None]).flatten(2).abs().amax(-1)  # (i, j)
    j = err.argmin(dim=1)
    assert torch.all(err.min(dim=1).values < 1e-5)
    assert sorted(j.tolist()) == list(range(8))  # a permutation of the batch
    torch.testing.assert_close(out.style, lam * style + (1 - lam) * style[j])
    torch.testing.assert_close(out.label, lam * label + (1 - lam) * label[j])
    assert torch.equal(out.valid, valid & valid[j])
    assert not torch.equal(j, torch.arange(8))  # something was actually mixed


def test_mixup_mixes_about_seventy_percent_of_batches() -> None:
    rng = np.random.default_rng(0)
    content, style, label, _ = _batch(4)
    n = 2000
    mixed = sum(mixup(content, style, label, alpha=0.4, prob=0.7, generator=rng).applied for _ in range(n))
    sd = math.sqrt(n * 0.7 * 0.3)
    assert abs(mixed - 0.7 * n) < 4.0 * sd


@pytest.mark.parametrize(("alpha", "prob"), [(0.4, 0.0), (0.0, 1.0)])
def test_mixup_off_returns_the_batch_unchanged(alpha: float, prob: float) -> None:
    rng = np.random.default_rng(0)
    content, style, label, valid = _batch(4)
    for _ in range(200):
        out = mixup(content, style, label.long(), alpha=alpha, prob=prob, generator=rng, valid=valid)
        assert not out.applied and out.lam == 1.0
        assert out.content is content and out.style is style and out.valid is valid
        assert out.label.dtype == torch.float32 and torch.equal(out.label, label)


def test_mixup_is_reproducible_from_the_seed() -> None:
    content, style, label, _ = _batch(8)

    def run(seed: int) -> list:
        rng = np.random.default_rng(seed)
        return [mixup(content, style, label, alpha=0.4, prob=0.7, generator=rng) for _ in range(6)]

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        assert x.applied == y.applied and x.lam == y.lam and torch.equal(x.content, y.content)
    assert [x.lam for x in a] != [x.lam for x in c]


def test_mixup_rejects_bad_probability() -> None:
    content, style, label, _ = _batch(2)
    with pytest.raises(ValueError, match="1.5"):
        mixup(content, style, label, alpha=0.4, prob=1.5, generator=np.random.default_rng(0))


def _lrs(cfg: TrainConfig, epochs: int) -> list[float]:
    opt = make_optimizer(torch.nn.Linear(2, 1), cfg)
    sched = make_scheduler(opt, cfg)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])  # the lr the epoch trains with
        opt.step()
        sched.step()  # once per epoch
    return lrs


def test_scheduler_restarts_at_epochs_10_and_30_and_follows_the_report_formula() -> None:
    cfg = TrainConfig()  # lr 1e-4, T_0 10, T_mult 2, eta_min lr/100
    lrs = _lrs(cfg, 70)
    eta_max, eta_min = cfg.lr, cfg.lr * cfg.eta_min_ratio
    for epoch in (0, 10, 30):
        assert lrs[epoch] == pytest.approx(eta_max, rel=1e-9)
    assert all(lr < eta_max * (1 - 1e-6) for e, lr in enumerate(lrs) if e not in (0, 10, 30))
    for epoch, lr in enumerate(lrs):
        start, period = (0, 10) if epoch < 10 else (10, 20) if epoch < 30 else (30, 40)
        expected = eta_min + 0.5 * (eta_max - eta_min) * (1 + math.cos(math.pi * (epoch - start) / period))
        assert lr == pytest.approx(expected, rel=1e-6), epoch
    assert lrs[9] < 0.04 * eta_max and lrs[29] < 0.02 * eta_max and lrs[69] < 0.015 * eta_max  # near eta_min
    assert min(lrs) >= eta_min * (1 - 1e-9)
    assert lrs[10] > lrs[9] and lrs[30] > lrs[29]


def test_optimizer_is_adamw_with_the_config_values() -> None:
    cfg = TrainConfig(lr=3e-4, weight_decay=0.05)
    opt = make_optimizer(torch.nn.Linear(2, 1), cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["weight_decay"] == 0.05


def test_early_stopping_stops_after_exactly_patience_bad_epochs_and_keeps_the_best_weights() -> None:
    model = torch.nn.Linear(3, 1)
    stopper = EarlyStopping(patience=12)
    losses = [1.0, 0.8, 0.6, 0.5, 0.45] + [0.5, 0.46, 0.45, 0.9] * 10  # best at epoch 4, then no improvement
    saved = {}
    stopped_at = None
    for epoch, loss in enumerate(losses):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # in place, like an optimizer step
        saved[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        if stopper.step(loss, model.state_dict()):
            stopped_at = epoch
            break
    assert stopped_at == 4 + 12
    assert stopper.best_epoch == 4 and stopper.best_loss == 0.45
    for k, v in saved[4].items():
        assert torch.equal(stopper.best_state[k], v)
    assert not torch.equal(stopper.best_state["weight"], model.state_dict()["weight"])  # not the latest
    model.load_state_dict(stopper.best_state)
    assert torch.all(model.weight == 4.0)


def test_early_stopping_patience_resets_on_improvement_and_respects_min_delta() -> None:
    stopper = EarlyStopping(patience=3, min_delta=0.1)
    state = {"w": torch.zeros(1)}
    assert [stopper.step(x, state) for x in (1.0, 0.95, 0.92)] == [False, False, False]  # < min_delta: no improvement
    assert stopper.best_epoch == 0 and stopper.bad_epochs == 2
    assert stopper.step(0.8, state) is False and stopper.bad_epochs == 0  # improves by 0.2
    assert [stopper.step(x, state) for x in (float("nan"), 0.79, 0.75)] == [False, False, True]


def test_early_stopping_counters_survive_a_checkpoint_round_trip() -> None:
    a = EarlyStopping(patience=5)
    for x in (1.0, 0.5, 0.7):
        a.step(x, {"w": torch.tensor([x])})
    b = EarlyStopping()
    b.load_state_dict(a.state_dict(), best_state=a.best_state)
    assert (b.best_epoch, b.bad_epochs, b.epochs, b.patience) == (1, 1, 3, 5)
    assert torch.equal(b.best_state["w"], torch.tensor([0.5]))


def test_pos_weight_is_real_over_fake() -> None:
    assert pos_weight(np.array([0, 0, 0, 0, 0, 0, 1])).item() == pytest.approx(6.0)
    assert pos_weight(torch.tensor([1, 1, 1, 0])).item() == pytest.approx(1 / 3)
    assert pos_weight(np.ones(5)).item() == 1.0  # one class: nothing to balance
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight(np.array([0, 0, 1])))
    assert torch.isfinite(loss(torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])))
    with pytest.raises(ValueError, match="0 .real. or 1"):
        pos_weight(np.array([0, 2]))


def test_balanced_sample_weights_give_each_class_equal_mass() -> None:
    labels = np.array([0, 1, 1, 1, 1, 1, 1])
    w = balanced_sample_weights(labels)
    assert w[labels == 0].sum() == pytest.approx(1.0) and w[labels == 1].sum() == pytest.approx(1.0)
    sampler = torch.utils.data.WeightedRandomSampler(w, num_samples=6000, generator=torch.Generator().manual_seed(0))
    drawn = labels[list(sampler)]
    assert abs(drawn.mean() - 0.5) < 0.03


def test_seed_everything_makes_every_generator_repeat() -> None:
    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(123)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    seed_everything(124)
    assert torch.rand(1).item() != first[2]
