"""Stand-in for pipelines/extract.py on the simulated cluster: are the stages placed by config?

Runs ``range -> crop-like actor stage -> feature-like actor stage`` with exactly
the resources an :class:`raydf.config.ExtractConfig` asks for (the same fields
the real extraction pipeline reads), and prints one ``PLACEMENT {json}`` line
with the node ids each stage ran on. Submit it like the real job:

    ray job submit --working-dir infra/local -- python placement_probe.py --config extract-fake.yaml
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import ray
from ray.data import ActorPoolStrategy

from raydf.config import ExtractConfig, load_config

CROP_NODE = "crop_node"
FEATURE_NODE = "feature_node"


class _NodeStamp:
    """Actor stage that records the node it runs on in ``COLUMN``."""

    COLUMN = ""

    def __init__(self) -> None:
        self._node = ray.get_runtime_context().get_node_id()  # fixed for the actor's life

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch[self.COLUMN] = np.full(len(batch["id"]), self._node)
        return batch


class CropProbe(_NodeStamp):
    """Where the face-crop stage runs (its actors show up as ``MapWorker(MapBatches(CropProbe))``)."""

    COLUMN = CROP_NODE


class FeatureProbe(_NodeStamp):
    """Where the feature stage runs."""

    COLUMN = FEATURE_NODE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="ExtractConfig YAML")
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args()
    cfg = load_config(ExtractConfig, args.config)

    ds = ray.data.range(args.rows, override_num_blocks=2)
    ds = ds.map_batches(
        CropProbe,
        batch_size=4,
        compute=ActorPoolStrategy(min_size=cfg.crop_actors[0], max_size=cfg.crop_actors[1]),
        num_cpus=cfg.cpus_per_crop_actor,
        resources=cfg.crop_resources or None,
    )
    ds = ds.map_batches(
        FeatureProbe,
        batch_size=4,
        compute=ActorPoolStrategy(min_size=cfg.feature_actors[0], max_size=cfg.feature_actors[1]),
        num_cpus=cfg.cpus_per_feature_actor,
        num_gpus=cfg.gpus_per_feature_actor,
        resources=cfg.feature_resources or None,
    )
    rows = ds.take_all()
    summary = {
        "rows": len(rows),
        "crop_nodes": sorted({str(r[CROP_NODE]) for r in rows}),
        "feature_nodes": sorted({str(r[FEATURE_NODE]) for r in rows}),
    }
    print("PLACEMENT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
