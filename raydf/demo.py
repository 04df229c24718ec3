"""``make demo``: the main job end to end on an embedded default.

Local Ray, local files, the project's default MLflow store, a small generated dataset:
generate -> Ray Data extraction (small pSp config) -> Ray Train (2 CPU workers) ->
evaluation -> MLflow. It trains into the default store, so a plain ``raydf detect CLIP``
afterwards uses the demo's model. It prints a short report (live bars on a terminal), then
what to run next; every log line goes to the command's log file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow.compute as pc

from raydf import schema as S
from raydf.config import ExtractConfig, TrainConfig, load_config
from raydf.store import FeatureStore
from raydf.synth import make_dataset
from raydf.tracking import redact, resolve_tracking_uri

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
    """Run the demo and print its report (a few dozen lines). Returns a process exit code."""
    from raydf.evaluate import overall_table
    from raydf.extract import run_extraction
    from raydf.train import run_training

    work = Path(workdir).resolve()
    data, features = work / "data", work / "features"
    tracking_uri = resolve_tracking_uri(tracking_uri)
    t0 = time.perf_counter()
    if not (data / "metadata.jsonl").exists():
        make_dataset(data, videos=videos or DEMO_VIDEOS, seed=DEMO_SEED)
    n_videos = len(list((data / "real").glob("*.mp4"))) + len(list((data / "fake").glob("*.mp4")))
    print(f"[1/3] dataset: {n_videos} generated videos (real + fake pairs of one face) in {data} ({time.perf_counter() - t0:.0f}s)")

    summary = run_extraction(str(data), str(features), demo_extract_config(), tracking_uri=tracking_uri, progress=True)
    table = FeatureStore(str(features)).read([S.VIDEO_ID, S.STATUS, S.CONTENT, S.STYLE, S.FACE_VALID])
    ok = table.filter(pc.equal(table[S.STATUS], S.STATUS_OK))
    content, style = S.stack_column(ok, S.CONTENT), S.stack_column(ok, S.STYLE)
    valid = S.stack_column(ok, S.FACE_VALID)
    done = f"{summary.processed} extracted now ({summary.wall_s:.0f}s, {summary.videos_per_s:.2f} videos/s)" if summary.processed else "all already extracted"
    print(f"[2/3] extraction: {summary.ok}/{summary.total} videos ok, {summary.error} errors; {done}")
    print(f"      features per video: content {tuple(content.shape[1:])}, style {tuple(style.shape[1:])}; "
          f"faces found in {valid.mean():.0%} of sampled frames")  # fmt: skip
    print("      mean stage seconds per video: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.stage_s.items()))

    t1 = time.perf_counter()
    result = run_training(
        str(features), demo_train_config(), storage_path=str(work / "ray_results"), name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
        tracking_uri=tracking_uri, tags={"dataset": "generated"}, output_dir=str(work / "model"), progress=True,
    )  # fmt: skip
    print(f"[3/3] training: {len(result.history)} epochs (best {result.best_epoch}), rows {result.splits} "
          f"({time.perf_counter() - t1:.0f}s)")  # fmt: skip
    for name, m in result.test_metrics.items():
        print(f"\n{name} split: {m['n']} held-out videos ({m['n_real']} real, {m['n_fake']} fake), "
              f"video score = {result.aggregation} over face tracks\n")  # fmt: skip
        print(overall_table(m))
    clip = sorted((data / "fake").glob("*.mp4"))[0]
    print(f"\ndone in {time.perf_counter() - t0:.0f}s. Model: {result.model_path} (MLflow run {result.run_id})")
    print("next:")
    print(f"  raydf detect {clip.relative_to(Path.cwd()) if clip.is_relative_to(Path.cwd()) else clip}")
    print(f"  mlflow ui --backend-store-uri {redact(tracking_uri)}")
    return 0
