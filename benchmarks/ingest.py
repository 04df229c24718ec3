"""``ingest``: Ray Data -> Ray Train training steps/s against the same loop over in-memory tensors.

One Ray Train worker (``resources_per_worker={"CPU": 1}``, the rest of the cores left
to Ray Data, as ``raydf train`` does on this machine) runs the training step of
``raydf.train.run_epoch`` (fusion classifier, AdamW, mixup) two ways, epoch by epoch,
interleaved:

* **ray**: batches from ``get_dataset_shard("train").iter_torch_batches`` over the
  feature Parquet, through exactly ``raydf.train.training_datasets`` (the split filter,
  the list-to-array conversion and the object-store cache of ``raydf train``);
* **memory**: the same rows read once into tensors in the worker, cut into batches of
  the same size.

The ratio is the median over epochs of (ray steps/s) / (memory steps/s).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SuiteResult, cores, local_ray, median

log = logging.getLogger(__name__)

T_FRAMES, K_CLIPS = 32, 2
METRICS_FILE = "ingest_metrics.json"


def make_features(out: Path, rows: int, files: int, seed: int = 0) -> list[tuple[str, int]]:
    """A feature Parquet store of ``rows`` random videos in ``files`` parts (the extraction's schema)."""
    import pyarrow.parquet as pq

    from raydf import schema as S

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = []
    per = -(-rows // files)
    for f in range(files):
        batch = []
        for i in range(f * per, min(rows, (f + 1) * per)):
            vid = f"v{i:05d}"
            ids.append((vid, 0))
            batch.append({
                S.VIDEO_ID: vid, S.TRACK_ID: 0, S.URI: f"/bench/{vid}.mp4", S.LABEL: i % 2, S.DATASET: "bench", S.SPLIT: "train",
                S.SOURCE_ID: vid, S.METHOD: "", S.COMPRESSION: "", S.META: "{}", S.STATUS: S.STATUS_OK,
                S.N_FRAMES: T_FRAMES, S.FRAME_INDICES: np.arange(T_FRAMES, dtype=np.int32),
                S.FACE_VALID: rng.random(T_FRAMES) > 0.1,
                S.FACE_BOXES: np.zeros((T_FRAMES, 4), np.float32), S.FACE_PROBS: np.ones(T_FRAMES, np.float32),
                S.CONTENT: rng.standard_normal((K_CLIPS, S.CONTENT_DIM), dtype=np.float32),
                S.STYLE: rng.standard_normal((T_FRAMES, S.STYLE_DIM), dtype=np.float32),
            })  # fmt: skip
        pq.write_table(S.feature_table(batch), out / f"part-{f:03d}.parquet")
    return ids


def _loop(config: dict[str, Any]) -> None:
    """Ray Train worker: interleaved epochs from the dataset shard and from in-memory tensors."""
    import pyarrow.parquet as pq
    import ray.train
    import torch

    from raydf.config import FusionConfig, TrainConfig
    from raydf.models.fusion import FusionClassifier
    from raydf.train import B_LABEL, run_epoch, to_tensors

    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=config["batch_size"], mixup_alpha=0.5, mixup_prob=0.7)
    model = FusionClassifier(FusionConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(0)

    arrays = to_tensors(pq.read_table(config["features"]))
    n = len(arrays[B_LABEL])
    bs = config["batch_size"]
    memory = [{k: torch.from_numpy(v[i : i + bs]) for k, v in arrays.items()} for i in range(0, n, bs)]
    shard = ray.train.get_dataset_shard("train")

    def epoch(batches) -> tuple[float, int]:  # noqa: ANN001
        t0 = time.perf_counter()
        out = run_epoch(model, batches, loss_fn=loss_fn, optimizer=opt, cfg=cfg, rng=rng)
        return time.perf_counter() - t0, out["n"]

    epoch(memory)  # warm-up: first autograd/allocator pass
    epoch(shard.iter_torch_batches(batch_size=bs))  # warm-up: Ray Data's first execution
    ray_s, mem_s, ray_rows = [], [], []
    for _ in range(config["epochs"]):
        w, rows = epoch(shard.iter_torch_batches(batch_size=bs, prefetch_batches=2))
        ray_s.append(w)
        ray_rows.append(rows)
        w, _ = epoch(memory)
        mem_s.append(w)
    steps = len(memory)
    metrics = {
        "steps": steps, "rows": n, "ray_rows": ray_rows, "threads": torch.get_num_threads(),
        "ray_steps_per_s": [steps / s for s in ray_s], "memory_steps_per_s": [steps / s for s in mem_s],
    }  # fmt: skip
    # Ray Train V2 keeps what a report carries with its checkpoint: the measurements travel as a file in one
    with tempfile.TemporaryDirectory() as d:
        Path(d, METRICS_FILE).write_text(json.dumps(metrics))
        ray.train.report({"steps": steps}, checkpoint=ray.train.Checkpoint.from_directory(d))


def run(*, quick: bool, workdir: str) -> SuiteResult:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydf.config import TrainConfig
    from raydf.splits import SplitPlan
    from raydf.train import training_datasets

    result = SuiteResult("ingest")
    rows, epochs, batch = (512, 3, 32) if quick else (2048, 5, 32)
    work = Path(workdir) / "ingest"
    ids = make_features(work / "features", rows, files=8)
    result.config.update({"rows": rows, "batch_size": batch, "epochs": epochs, "T": T_FRAMES, "K": K_CLIPS, "cores": cores()})
    with local_ray():
        trainer = TorchTrainer(
            _loop,
            train_loop_config={"features": str(work / "features"), "batch_size": batch, "epochs": epochs},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
            datasets={"train": training_datasets(str(work / "features"), SplitPlan({"train": ids, "val": [], "test": []}, {}, {}, ()),
                                                 TrainConfig())["train"]},
            run_config=RunConfig(name="ingest", storage_path=str(work / "ray_results")),
        )
        fitted = trainer.fit()
        with fitted.checkpoint.as_directory() as d:
            metrics = json.loads(Path(d, METRICS_FILE).read_text())
    if any(r != rows for r in metrics["ray_rows"]):
        raise RuntimeError(f"Ray Data delivered {metrics['ray_rows']} rows per epoch, expected {rows}")
    ratios = [a / b for a, b in zip(metrics["ray_steps_per_s"], metrics["memory_steps_per_s"])]
    result.tables["training steps/s (1 worker)"] = [
        {"epoch": i, "Ray Data steps/s": round(a, 2), "in-memory steps/s": round(b, 2), "ratio": round(a / b, 3)}
        for i, (a, b) in enumerate(zip(metrics["ray_steps_per_s"], metrics["memory_steps_per_s"]))
    ]
    result.ratio("ingest: Ray Data -> Ray Train steps/s / in-memory steps/s", median(ratios), 0.9, ">=",
                 f"{median(metrics['ray_steps_per_s']):.1f} vs {median(metrics['memory_steps_per_s']):.1f} steps/s, "
                 f"{metrics['steps']} steps of {batch} per epoch, {metrics['threads']} torch thread(s) in the worker")  # fmt: skip
    result.notes.append(
        "Same worker, same model and optimiser state, epochs interleaved; the data path is raydf.train.training_datasets "
        "(read_parquet -> split filter -> arrays -> materialised once) and iter_torch_batches, as in raydf train. "
        "Without the cache (TrainConfig.cache_features=False) every epoch re-reads the Parquet: 0.32 in quick mode."
    )
    return result
