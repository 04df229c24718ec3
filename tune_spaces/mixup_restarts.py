"""The report's sweep: mixup and the cosine warm-restart schedule, plus the learning rate.

Keys are :class:`raydf.config.TrainConfig` fields (``raydf.tune.apply_params`` merges a
sampled config into the base config, so a typo fails before any trial starts). The report's
own recipe (alpha 0.4, 70% of batches mixed, T_0=10 doubling, lr 1e-4) lies inside every range.
"""

from __future__ import annotations

from typing import Any

from ray import tune


def param_space() -> dict[str, Any]:
    """Mixup alpha and probability, restart period ``T_0`` and its growth ``T_mult``, learning rate."""
    return {
        "mixup_alpha": tune.uniform(0.1, 1.0),  # lambda ~ Beta(alpha, alpha); report: 0.4
        "mixup_prob": tune.uniform(0.3, 1.0),  # share of batches mixed; report: 0.7
        "t_0": tune.choice([5, 10, 20]),  # epochs until the first restart; report: 10
        "t_mult": tune.choice([1, 2]),  # period growth after a restart; report: 2
        "lr": tune.loguniform(3e-5, 1e-3),  # AdamW; report: 1e-4
    }
