"""The report's training recipe as small, separately testable pieces (plain PyTorch).

* :func:`mixup` -- 70% of batches mix content, style and label with one lambda ~ Beta(a, a).
* :class:`EarlyStopping` -- patience 12 on validation loss, keeps the best weights.
* :func:`make_optimizer` / :func:`make_scheduler` -- AdamW and cosine annealing with warm
  restarts (T_0=10, doubling, eta_min = lr / 100), stepped once per epoch.
* :func:`pos_weight` / :func:`balanced_sample_weights` -- class imbalance (Celeb-DF is ~1:6).
* :func:`seed_everything`.

The training loop (``raydf.train``) wires them together; nothing here knows Ray or MLflow.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from raydf.config import TrainConfig

log = logging.getLogger(__name__)

__all__ = [
    "MixupBatch",
    "mixup",
    "EarlyStopping",
    "make_optimizer",
    "make_scheduler",
    "pos_weight",
    "balanced_sample_weights",
    "seed_everything",
]


class MixupBatch(NamedTuple):
    """A batch after :func:`mixup`; unchanged inputs when ``applied`` is False."""

    content: Tensor  # (B, K, 2048)
    style: Tensor  # (B, T, 512)
    label: Tensor  # (B,) float, soft labels in [0, 1] when mixed
    lam: float  # the lambda used; 1.0 when not applied
    applied: bool
    valid: Tensor | None  # (B, T) bool: valid_i & valid_j when mixed; None when none was given


def mixup(
    content: Tensor,
    style: Tensor,
    label: Tensor,
    *,
    alpha: float,
    prob: float,
    generator: np.random.Generator,
    valid: Tensor | None = None,
) -> MixupBatch:
    """Mixup (Zhang et al. 2017) on a batch, as the report applies it.

    With probability ``prob`` one ``lam ~ Beta(alpha, alpha)`` and one permutation ``j`` of
    the batch are drawn, and content, style and label are all mixed with them:
    ``x~ = lam * x_i + (1 - lam) * x_j``. Otherwise the inputs come back unchanged
    (labels as float). ``alpha == 0`` disables mixup (Beta(0, 0) is undefined), and a batch
    of one is never mixed (it could only mix with itself).

    The face-validity mask of a mixed sample is ``valid_i & valid_j``: a mixed style code
    at frame t is a meaningful face only if both sources had a face there; where one did
    not, the blend contains a missing-face placeholder and must stay masked.

    Args:
        content: (B, K, D) clip features.
        style: (B, T, D) style codes.
        label: (B,) 0/1 (or already soft) labels.
        alpha: Beta concentration (``TrainConfig.mixup_alpha``).
        prob: probability a batch is mixed (``TrainConfig.mixup_prob``, report: 0.7).
        generator: the only source of randomness (coin, lambda, permutation), so a seeded
            generator makes the augmentation reproducible.
        valid: optional (B, T) bool face validity.

    Returns:
        A :class:`MixupBatch` ``(content, style, label, lam, applied, valid)``.
    """
    if not 0.0 <= prob <= 1.0 or alpha < 0.0:
        raise ValueError(f"mixup needs prob in [0, 1] and alpha >= 0, got prob={prob}, alpha={alpha}")
    label = label.float()
    # The coin is always drawn, so the generator's stream does not depend on prob.
    applied = bool(generator.random() < prob) and alpha > 0.0 and label.shape[0] > 1
    if not applied:
        return MixupBatch(content, style, label, 1.0, False, valid)
    lam = float(generator.beta(alpha, alpha))
    perm = torch.from_numpy(generator.permutation(label.shape[0])).to(label.device)  # (B,)
    content = lam * content + (1.0 - lam) * content[perm]  # (B, K, D)
    style = lam * style + (1.0 - lam) * style[perm]  # (B, T, D)
    label = lam * label + (1.0 - lam) * label[perm]  # (B,)
    if valid is not None:
        valid = valid.bool() & valid.bool()[perm]  # (B, T)
    return MixupBatch(content, style, label, lam, True, valid)


class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` epochs; keep the best weights.

    Call :meth:`step` once per epoch. An epoch improves when ``val_loss < best - min_delta``
    (a NaN loss never does). ``best_state`` is a CPU deep copy of the state dict passed at
    the best epoch, so later training cannot change it.

    Example::

        stopper = EarlyStopping(patience=cfg.patience)
        for epoch in range(cfg.max_epochs):
            ...
            if stopper.step(val_loss, model.state_dict()):
                break
        model.load_state_dict(stopper.best_state)
    """

    def __init__(self, patience: int = 12, min_delta: float = 0.0) -> None:  # report: patience 12
        if patience < 1 or min_delta < 0:
            raise ValueError(f"patience must be >= 1 and min_delta >= 0, got {patience}, {min_delta}")
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = float("inf")
        self.best_epoch = -1  # index of the step() call that set best_loss
        self.best_state: dict[str, Any] | None = None
        self.epochs = 0  # step() calls so far
        self.bad_epochs = 0  # consecutive epochs without improvement

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def step(self, val_loss: float, state_dict: dict[str, Any]) -> bool:
        """Record one epoch's validation loss; returns True when training should stop."""
        val_loss = float(val_loss)
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss = val_loss
            self.best_epoch = self.epochs
            self.best_state = _cpu_copy(state_dict)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.epochs += 1
        if self.should_stop:
            log.info("early stop after %d epochs; best val loss %.4f at epoch %d", self.epochs, self.best_loss, self.best_epoch)
        return self.should_stop

    def state_dict(self) -> dict[str, Any]:
        """The counters (not ``best_state``) to store in a checkpoint and resume after a failure."""
        return {k: getattr(self, k) for k in ("best_loss", "best_epoch", "epochs", "bad_epochs", "patience", "min_delta")}

    def load_state_dict(self, state: dict[str, Any], best_state: dict[str, Any] | None = None) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        if best_state is not None:
            self.best_state = _cpu_copy(best_state)


def _cpu_copy(obj: Any) -> Any:
    """Deep copy with every tensor detached and copied to CPU, so the kept weights hold no GPU memory."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = type(obj)((k, _cpu_copy(v)) for k, v in obj.items())  # keeps OrderedDict
        if hasattr(obj, "_metadata"):  # module state dicts carry per-module versions for load_state_dict
            out._metadata = copy.deepcopy(obj._metadata)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the config's learning rate and weight decay."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.CosineAnnealingWarmRestarts:
    """Cosine annealing with warm restarts (Loshchilov & Hutter 2016), as the report sets it.

    Call ``scheduler.step()`` once per **epoch**, after the epoch: the report counts
    ``T_cur`` in epochs since the last restart. With T_0=10 and T_mult=2 the learning rate
    is back at ``cfg.lr`` at the start of epochs 0, 10, 30, 70, ... and approaches
    ``eta_min = cfg.lr * cfg.eta_min_ratio`` just before each restart.
    """
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cfg.t_0, T_mult=cfg.t_mult, eta_min=cfg.lr * cfg.eta_min_ratio
    )


def _binary_counts(labels: np.ndarray | Tensor) -> tuple[int, int]:
    y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    y = y.reshape(-1)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {np.unique(y)[:10]}")
    n_fake = int((y == 1).sum())
    return len(y) - n_fake, n_fake


def pos_weight(labels: np.ndarray | Tensor) -> Tensor:
    """``BCEWithLogitsLoss(pos_weight=...)`` for imbalanced data: ``n_real / n_fake``, shape (1,).

    Each fake then weighs n_real/n_fake as much as a real, so both classes contribute equally
    to the loss. With only one class present the weight is 1 (there is nothing to balance).
    """
    n_real, n_fake = _binary_counts(labels)
    if n_real == 0 or n_fake == 0:
        log.warning("pos_weight: only one class among %d labels (real=%d, fake=%d); using 1.0", n_real + n_fake, n_real, n_fake)
        return torch.ones(1)
    return torch.tensor([n_real / n_fake], dtype=torch.float32)


def balanced_sample_weights(labels: np.ndarray | Tensor) -> np.ndarray:
    """Per-sample weights ``1 / count(class)`` for ``torch.utils.data.WeightedRandomSampler``.

    An alternative to :func:`pos_weight` (use one, not both): sampled with replacement,
    each batch holds as many reals as fakes in expectation. The weights sum to 2 (1 with one class).
    """
    n_real, n_fake = _binary_counts(labels)
    y = np.asarray(labels.detach().cpu().numpy() if isinstance(labels, Tensor) else labels).reshape(-1)
    return np.where(y == 1, 1.0 / max(n_fake, 1), 1.0 / max(n_real, 1))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device).

    ``PYTHONHASHSEED`` is exported for child processes (e.g. data-loader workers); it
    cannot change the hashing of the running interpreter.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
