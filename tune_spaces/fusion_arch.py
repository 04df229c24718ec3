"""A wider sweep over the fusion classifier's architecture (``FusionConfig``, under ``model``).

Every width choice is divisible by every head count, so each sample is a valid
:class:`raydf.config.FusionConfig`. Combine with the training recipe's defaults (or a
``--config``) for the rest.
"""

from __future__ import annotations

from typing import Any

from ray import tune


def param_space() -> dict[str, Any]:
    """StyleGRU size, attention/transformer width and depth, dropout, the style-flow option."""
    return {
        "model": {
            "gru_hidden": tune.choice([128, 256, 512]),  # StyleGRU hidden size; default 256
            "gru_layers": tune.choice([1, 2]),
            "d_model": tune.choice([128, 256, 512]),  # style attention / transformer width; default 256
            "transformer_heads": tune.choice([4, 8]),  # divides every d_model above
            "transformer_layers": tune.choice([1, 2, 3]),  # default 2
            "ff_dim": tune.choice([256, 512, 1024]),  # default 512
            "fc_hidden": tune.choice([64, 128, 256]),
            "dropout": tune.uniform(0.0, 0.3),  # default 0.1
            "style_flow": tune.choice([False, True]),  # first differences of the style codes
        },
        "lr": tune.loguniform(3e-5, 1e-3),
    }
