"""``make demo``: the main job end to end on an embedded default.

Local Ray, local files, a sqlite MLflow store, a small generated dataset:
generate -> Ray Data extraction (small pSp config) -> Ray Train (2 CPU workers)
-> evaluation -> MLflow; it ends with the test metrics and the ``mlflow ui`` command.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow.compute as pc

from raydf import schema as S
from raydf.config import ExtractConfig, TrainConfig, load_config

log = logging.getLogger(__name__)

DEMO_VIDEOS = 16  # real videos; each gets a paired fake
DEMO_SEED = 0
DEMO_STYLE_CONFIG = "psp_tiny"  # the faithful psp_ir_se50 costs ~1 s per face on 2 cores


def demo_extract_config() -> ExtractConfig:
    return load_config(ExtractConfig, {"style": {"config": DEMO_STYLE_CONFIG}, "rows_per_file": 4})


def demo_train_config() -> TrainConfig:
    return load_config(
        TrainConfig,
        {"max_epochs": 40, "batch_size": 8, "lr": 3e-4, "num_workers": 2, "cpus_per_worker": 0.5, "patience": 12},
    )


def run_demo(workdir: str | Path = "demo", *, videos: int | None = None, tracking_uri: str | None = None) -> int:
    """Run the demo; prints what it did. Returns a process exit code."""
    from raydf.extract import run_extraction
    from raydf.store import FeatureStore
    from raydf.synth import make_dataset
    from raydf.tracking import resolve_tracking_uri

    work = Path(workdir).resolve()
    data, features = work / "data", work / "features"
    tracking_uri = resolve_tracking_uri(tracking_uri or f"sqlite:///{work / 'mlflow.db'}")
    t0 = time.perf_counter()
    if not (data / "metadata.jsonl").exists():
        make_dataset(data, videos=videos or DEMO_VIDEOS, seed=DEMO_SEED)
    print(f"[1/3] dataset: {data} ({time.perf_counter() - t0:.1f}s)")

    summary = run_extraction(str(data), str(features), demo_extract_config(), tracking_uri=tracking_uri)
    print("[2/3] extraction:")
    for line in summary.lines():
        print(f"      {line}")
    table = FeatureStore(str(features)).read([S.VIDEO_ID, S.STATUS, S.CONTENT, S.STYLE, S.FACE_VALID, S.T_DECODE, S.T_FACES, S.T_CONTENT, S.T_STYLE])
    ok = table.filter(pc.equal(table[S.STATUS], S.STATUS_OK)).sort_by(S.VIDEO_ID)
    print(f"      {'video':<14} {'content':>10} {'style':>10} {'faces':>6} {'decode':>7} {'mtcnn':>7} {'content':>8} {'style':>7}")
    for r in ok.to_pylist():
        k, t = len(r[S.CONTENT]), len(r[S.STYLE])
        shape_c, shape_s = f"({k}, {len(r[S.CONTENT][0])})", f"({t}, {len(r[S.STYLE][0])})"
        print(
            f"      {r[S.VIDEO_ID]:<14} {shape_c:>10} {shape_s:>10} {sum(r[S.FACE_VALID]):>3}/{t:<2} "
            f"{r[S.T_DECODE]:>6.2f}s {r[S.T_FACES]:>6.2f}s {r[S.T_CONTENT]:>7.2f}s {r[S.T_STYLE]:>6.2f}s"
        )
    from raydf.evaluate import overall_table
    from raydf.train import run_training

    t1 = time.perf_counter()
    result = run_training(
        str(features), demo_train_config(), storage_path=str(work / "ray_results"), name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
        tracking_uri=tracking_uri, tags={"dataset": "generated"}, output_dir=str(work / "model"),
    )
    print(f"[3/3] training: {len(result.history)} epochs (best {result.best_epoch}), splits {result.splits} ({time.perf_counter() - t1:.0f}s)")
    for name, m in result.test_metrics.items():
        print(f"\n      {name} metrics ({m['n']} held-out videos):")
        for line in overall_table(m).splitlines():
            print(f"      {line}")
    print(f"\nmodel: {result.model_path}")
    print(f"try:   raydf detect {data / 'fake' / sorted(p.name for p in (data / 'fake').glob('*.mp4'))[0]} --tracking-uri {tracking_uri}")
    print(f"done in {time.perf_counter() - t0:.0f}s; look at the runs with:")
    print(f"       mlflow ui --backend-store-uri {tracking_uri}")
    return 0
