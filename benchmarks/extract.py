"""``extract``: the Ray Data pipeline against the naive per-video loop, and each stage alone.

* Stages alone: decode+sample, face crops, content, style, in process CPU-seconds per
  video with one torch thread, on the same videos and config as the pipeline.
* Pipeline: ``raydf.extract.run_extraction`` on a local Ray (``num_cpus`` = cores). Its
  fixed costs (actor start-up, model loading, planning, compaction) are excluded by
  differencing two runs that differ only in the number of manifest rows: steady-state
  throughput = (n_large - n_small) / (wall_large - wall_small). The rows are the
  benchmark's videos repeated under distinct ids (each repeat is a full extraction).
  A warm-up run of n_small rows goes first and is not counted.
* Efficiency = pipeline throughput / ideal, ideal = cores / sum of stage CPU-s per video.
* Naive loop: :class:`benchmarks.reference.NaiveReference` over the same rows, one video
  at a time, with every core (its model loading is excluded the same way: per-video times).
* Faithful per-video cost: the reference and raydf's stages with the faithful
  ``psp_ir_se50`` on one video (two in full mode), process CPU-s with one thread;
  raydf in fp32 and in bf16 (CPU ``avx512_bf16``).
Face detection against facenet's MTCNN is the ``faces`` suite (equal minimum face size, equal recall).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.common import SuiteResult, cores, local_ray, median, timed, torch_threads
from benchmarks.gpu import TOLERANCE

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 640, 480


def make_videos(workdir: Path, pairs: int, seed: int = 0) -> list[str]:
    """``2 * pairs`` generated 640x480 videos (a real and its fake per pair); reused when present."""
    from raydf.synth import make_dataset

    out = workdir / f"videos-{pairs}-{seed}"
    if not (out / "metadata.jsonl").exists():
        make_dataset(out, videos=pairs, seed=seed, width=WIDTH, height=HEIGHT, overwrite=True)
    return sorted(str(p) for p in out.glob("*/*.mp4"))


def manifest(paths: list[str], copies: int) -> pa.Table:
    """Manifest rows for ``paths`` repeated ``copies`` times under distinct ids."""
    from raydf import schema as S

    rows = []
    for c in range(copies):
        for p in paths:
            vid = f"{Path(p).stem}-{c}"
            rows.append({S.VIDEO_ID: vid, S.URI: p, S.LABEL: int("fake" in p), S.DATASET: "bench", S.SPLIT: "",
                         S.SOURCE_ID: vid, S.METHOD: "", S.COMPRESSION: "", S.META: "{}"})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=S.MANIFEST_SCHEMA)


def pipeline_config(cfg, n_cores: int):  # noqa: ANN001, ANN201 - ExtractConfig
    """The pipeline's actor pools on ``n_cores`` CPUs, sized from the measured stage rates.

    The feature stage costs ~10x the crop stage per video, so every core but the crop
    actor's share runs a one-thread feature actor: one thread per actor avoids OpenMP
    barriers between a feature actor's threads when the crop actor takes a core away.
    """
    feature = max(1, n_cores)
    return replace(
        cfg,
        crop_actors=(1, 1),
        cpus_per_crop_actor=0.25,
        crop_threads=1,
        feature_actors=(feature, feature),
        cpus_per_feature_actor=round(0.75 * n_cores / feature, 3),
        feature_threads=1,
        feature_batch_size=1,
    )


def stage_costs(cfg, paths: list[str], reps: int) -> dict[str, Any]:  # noqa: ANN001
    """Mean CPU-seconds per video of each stage alone (one torch thread)."""
    from raydf.faces import FaceCropper
    from raydf.features import FeatureExtractor
    from raydf.video import read_video

    t = cfg.video.num_frames
    cropper = FaceCropper(cfg.faces)
    extractor = FeatureExtractor(cfg.content, cfg.style, device="cpu")
    per: dict[str, list[float]] = {"decode+sample": [], "faces": [], "content": [], "style": []}
    walls: dict[str, list[float]] = {k: [] for k in per}
    crops = {}
    for p in paths:  # warm-up: first decode/detect/forward of each
        crops[p] = cropper(read_video(p, t).frames).crops
    extractor(crops[paths[0]][None])
    for _ in range(reps):
        for p in paths:
            td, video = timed(lambda p=p: read_video(p, t))
            tf, faces = timed(lambda v=video: cropper(v.frames))
            tx, feats = timed(lambda c=faces.crops: extractor(c[None]))
            share = feats.t_content / max(feats.t_content + feats.t_style, 1e-9)
            per["decode+sample"].append(td.cpu)
            per["faces"].append(tf.cpu)
            per["content"].append(tx.cpu * share)
            per["style"].append(tx.cpu * (1 - share))
            walls["decode+sample"].append(td.wall)
            walls["faces"].append(tf.wall)
            walls["content"].append(feats.t_content)
            walls["style"].append(feats.t_style)
    # means, not medians: throughput is set by the total work, outliers included
    out = {k: float(np.mean(v)) for k, v in per.items()}
    return {"cpu": out, "wall": {k: float(np.mean(v)) for k, v in walls.items()}, "total_cpu": sum(out.values())}


def naive_loop(cfg, rows: list[str]) -> dict[str, Any]:  # noqa: ANN001
    """The reference per-video loop with every core: per-video wall seconds (model loading apart)."""
    from benchmarks.reference import NaiveReference

    t_load, ref = timed(lambda: NaiveReference(cfg))
    ref(rows[0])  # warm-up
    per_video = []
    stages: dict[str, list[float]] = {}
    for p in rows:
        t, r = timed(lambda p=p: ref(p))
        per_video.append(t.wall)
        for k, v in r.cpu.items():
            stages.setdefault(k, []).append(v)
    return {
        "videos": len(rows),
        "load_s": t_load.wall,
        "s_per_video": float(np.mean(per_video)),
        "videos_per_s": len(rows) / sum(per_video),
        "end_to_end_videos_per_s": len(rows) / (sum(per_video) + t_load.wall),
        "stage_cpu": {k: float(np.mean(v)) for k, v in stages.items()},
    }


def run_pipeline(cfg, rows: pa.Table, out: Path) -> float:  # noqa: ANN001
    from raydf.extract import run_extraction

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_extraction("bench", str(out), cfg, track=False, manifest=rows)
    wall = time.perf_counter() - t0
    if summary.ok != rows.num_rows:
        raise RuntimeError(f"pipeline wrote {summary.ok} ok rows of {rows.num_rows}: {summary.errors}")
    return wall


def machine_cpu() -> dict[str, float]:
    """Whole-machine CPU seconds so far from ``/proc/stat``: busy (user, nice, system, irq), kernel, idle."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq = (int(v) for v in f.readline().split()[1:8])
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "kernel": (system + irq + softirq) / tick,
            "idle": (idle + iowait) / tick}  # fmt: skip


def pipeline(cfg, paths: list[str], workdir: Path, small: int, large: int) -> dict[str, Any]:  # noqa: ANN001
    """Steady-state throughput from a small and a large run (after a warm-up run)."""
    with local_ray():
        small_rows, large_rows = manifest(paths, small), manifest(paths, large)
        warm = run_pipeline(cfg, small_rows, workdir / "pipe-warm")
        s0 = machine_cpu()
        t_small = run_pipeline(cfg, small_rows, workdir / "pipe-small")
        s1 = machine_cpu()
        t_large = run_pipeline(cfg, large_rows, workdir / "pipe-large")
        s2 = machine_cpu()
    n_small, n_large = small_rows.num_rows, large_rows.num_rows
    steady = (n_large - n_small) / max(t_large - t_small, 1e-9)
    # whole-machine CPU accounting of the steady state (large - small run), per video
    acct = {k: ((s2[k] - s1[k]) - (s1[k] - s0[k])) / (n_large - n_small) for k in s0}
    return {
        "steady_busy_cpu_s_per_video": acct["busy"],
        "steady_kernel_cpu_s_per_video": acct["kernel"],
        "steady_idle_cpu_s_per_video": acct["idle"],
        "rows_small": n_small,
        "rows_large": n_large,
        "wall_warmup_s": warm,
        "wall_small_s": t_small,
        "wall_large_s": t_large,
        "fixed_s": t_small - n_small / steady,
        "videos_per_s": steady,
        "end_to_end_videos_per_s": n_large / t_large,
    }


def faithful_cost(cfg, paths: list[str]) -> dict[str, Any]:  # noqa: ANN001
    """Per-video CPU-seconds (one thread) with the faithful pSp: reference vs raydf fp32 vs raydf bf16."""
    from benchmarks.reference import NaiveReference
    from raydf.config import StyleConfig
    from raydf.faces import FaceCropper
    from raydf.features import FeatureExtractor
    from raydf.video import read_video

    cfg = replace(cfg, style=StyleConfig(config="psp_ir_se50"))
    t = cfg.video.num_frames
    ref = NaiveReference(cfg)
    cropper = FaceCropper(cfg.faces)
    ours = {p: FeatureExtractor(cfg.content, cfg.style, device="cpu", precision=p) for p in ("fp32", "bf16")}
    warm = np.zeros((1, t, cfg.faces.crop_size, cfg.faces.crop_size, 3), np.uint8)
    ref.style_codes(warm[0, :2])
    ref.content_features(warm[0])
    for ex in ours.values():
        ex(warm[:, : max(2, cfg.content.clip_len)])
    rows: dict[str, list[float]] = {"reference": [], "fp32": [], "bf16": []}
    stages: dict[str, dict[str, list[float]]] = {k: {} for k in rows}
    feats_err = []
    for p in paths:
        tr, r = timed(lambda p=p: ref(p))
        rows["reference"].append(tr.cpu)
        for k, v in r.cpu.items():
            stages["reference"].setdefault(k, []).append(v)
        td, video = timed(lambda p=p: read_video(p, t))
        tf, faces = timed(lambda v=video: cropper(v.frames))
        for name, ex in ours.items():
            tx, f = timed(lambda ex=ex, c=faces.crops: ex(c[None]))
            rows[name].append(td.cpu + tf.cpu + tx.cpu)
            share = f.t_content / max(f.t_content + f.t_style, 1e-9)
            for k, v in (("decode", td.cpu), ("faces", tf.cpu), ("content", tx.cpu * share), ("style", tx.cpu * (1 - share))):
                stages[name].setdefault(k, []).append(v)
            if name == "fp32":
                f32 = f
            else:
                feats_err.append(float(np.linalg.norm(f.style - f32.style) / np.linalg.norm(f32.style)))
    return {
        "videos": len(paths),
        "cpu_s_per_video": {k: float(np.mean(v)) for k, v in rows.items()},
        "stage_cpu_s": {k: {s: float(np.mean(v)) for s, v in d.items()} for k, d in stages.items()},
        "bf16_style_rel_err": max(feats_err) if feats_err else float("nan"),
    }


def run(*, quick: bool, workdir: str) -> SuiteResult:
    from raydf.config import ExtractConfig, StyleConfig, VideoConfig

    work = Path(workdir) / "extract"
    work.mkdir(parents=True, exist_ok=True)
    result = SuiteResult("extract")
    n_cores = cores()
    t_frames = 16 if quick else 32
    pairs = 1 if quick else 3
    style = "psp_tiny" if quick else "psp_ir_se50"
    reps = 2 if quick else 3
    copies_small, copies_large = (1, 16) if quick else (1, 3)  # enough rows that start-up jitter is a few %
    base = ExtractConfig(video=VideoConfig(num_frames=t_frames), style=StyleConfig(config=style))
    cfg = pipeline_config(base, n_cores)
    paths = make_videos(work, pairs)
    result.config.update({
        "videos": len(paths), "size": f"{WIDTH}x{HEIGHT}", "T": t_frames, "style_config": style, "cores": n_cores,
        "pipeline": {"crop_actors": cfg.crop_actors, "cpus_per_crop_actor": cfg.cpus_per_crop_actor, "crop_threads": cfg.crop_threads,
                     "feature_actors": cfg.feature_actors, "cpus_per_feature_actor": cfg.cpus_per_feature_actor,
                     "feature_threads": cfg.feature_threads, "feature_batch_size": cfg.feature_batch_size},
        "rows_small_large": [copies_small * len(paths), copies_large * len(paths)],
    })  # fmt: skip
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    log.info("extract: stage costs alone (before the pipeline)")
    with torch_threads(1):
        before = stage_costs(cfg, paths, reps)

    log.info("extract: naive loop")
    with torch_threads(n_cores):
        naive = naive_loop(base, [str(p) for p in manifest(paths, copies_large).column("uri").to_pylist()])

    log.info("extract: pipeline")
    pipe = pipeline(cfg, paths, work, copies_small, copies_large)
    log.info("extract: stage costs alone (after the pipeline)")
    with torch_threads(1):
        after = stage_costs(cfg, paths, reps)
    # the machine's speed drifts (shared host): the ideal is the mean of the costs measured either side
    costs = {
        "cpu": {k: (before["cpu"][k] + after["cpu"][k]) / 2 for k in before["cpu"]},
        "wall": {k: (before["wall"][k] + after["wall"][k]) / 2 for k in before["wall"]},
        "total_cpu": (before["total_cpu"] + after["total_cpu"]) / 2,
        "total_cpu_before_after": [before["total_cpu"], after["total_cpu"]],
    }
    result.tables["stages alone (CPU-s per video, 1 thread)"] = [
        {"stage": k, "CPU-s/video": round(v, 4), "wall s/video": round(costs["wall"][k], 4)} for k in costs["cpu"]
        for v in [costs["cpu"][k]]
    ] + [{"stage": "sum", "CPU-s/video": round(costs["total_cpu"], 4), "wall s/video": round(sum(costs["wall"].values()), 4)},
         {"stage": "sum before / after the pipeline", "CPU-s/video": f"{before['total_cpu']:.3f} / {after['total_cpu']:.3f}",
          "wall s/video": ""}]  # fmt: skip
    ideal = n_cores / costs["total_cpu"]
    result.tables["pipeline vs naive"] = [
        {"what": "ideal (cores / sum of stage CPU-s)", "videos/s": round(ideal, 3), "note": ""},
        {"what": "pipeline, steady state", "videos/s": round(pipe["videos_per_s"], 3),
         "note": f"{pipe['rows_large']} - {pipe['rows_small']} rows over {pipe['wall_large_s']:.1f} - {pipe['wall_small_s']:.1f} s"},
        {"what": "pipeline, steady state: whole-machine CPU-s per video", "videos/s": "",
         "note": f"busy {pipe['steady_busy_cpu_s_per_video']:.3f} (kernel {pipe['steady_kernel_cpu_s_per_video']:.3f}), "
                 f"idle {pipe['steady_idle_cpu_s_per_video']:.3f}; stages alone sum to {costs['total_cpu']:.3f}"},
        {"what": "pipeline, end to end (large run)", "videos/s": round(pipe["end_to_end_videos_per_s"], 3),
         "note": f"fixed cost ~{pipe['fixed_s']:.1f} s per run"},
        {"what": "naive loop, per video", "videos/s": round(naive["videos_per_s"], 3), "note": f"{naive['s_per_video']:.2f} s/video"},
        {"what": "naive loop, end to end", "videos/s": round(naive["end_to_end_videos_per_s"], 3), "note": f"model loading {naive['load_s']:.1f} s"},
    ]  # fmt: skip
    result.ratio("pipeline efficiency (steady throughput / ideal)", pipe["videos_per_s"] / ideal, 0.85, ">=",
                 f"{pipe['videos_per_s']:.3f} / {ideal:.3f} videos/s, {style}, T={t_frames}")  # fmt: skip
    result.ratio("pipeline CPU-s per video (whole machine, steady state) / sum of stages alone",
                 pipe["steady_busy_cpu_s_per_video"] / costs["total_cpu"], None,
                 detail=f"idle share {pipe['steady_idle_cpu_s_per_video'] / (pipe['steady_idle_cpu_s_per_video'] + pipe['steady_busy_cpu_s_per_video']):.2f}: "
                        "the gap to the ideal is extra CPU per video (3 one-thread processes on 2 cores, copies, kernel), not idle cores")  # fmt: skip
    result.ratio("pipeline / naive loop (steady state)", pipe["videos_per_s"] / naive["videos_per_s"], 1.2, ">=",
                 f"end to end (fixed costs included): {pipe['end_to_end_videos_per_s'] / naive['end_to_end_videos_per_s']:.2f}")  # fmt: skip

    log.info("extract: faithful per-video cost")
    with torch_threads(1):
        faith = faithful_cost(base, paths[: 1 if quick else 2])
    c = faith["cpu_s_per_video"]
    result.tables[f"faithful per-video CPU-s (psp_ir_se50, T={t_frames}, 1 thread)"] = [
        {"implementation": k, **{s: round(v, 3) for s, v in faith["stage_cpu_s"][k].items()}, "total": round(c[k], 3)} for k in c
    ]
    result.ratio("faithful per-video CPU cost: raydf (cpu_precision=bf16) / naive reference", c["bf16"] / c["reference"], 0.4, "<=",
                 f"bf16 style features within {faith['bf16_style_rel_err']:.1e} relative L2 of fp32 "
                 f"(tolerance tested: {TOLERANCE['bf16']:g})")  # fmt: skip
    result.ratio("faithful per-video CPU cost: raydf fp32 / naive reference", c["fp32"] / c["reference"], None,
                 detail="fp32: one style level halves pSp's FLOPs, but the reference already runs near the conv peak here")  # fmt: skip
    result.config["faithful"] = faith
    result.config["stage_cpu_s"] = costs["cpu"]
    result.config["naive"] = naive
    result.config["pipeline_runs"] = pipe
    result.notes.append(
        f"Quick mode: {len(paths)} videos at T={t_frames}, pipeline and naive loop with {style}; the faithful per-video "
        "cost always uses psp_ir_se50." if quick else f"{len(paths)} videos at T={t_frames} with {style}."
    )
    result.notes.append(
        "Steady state: the pipeline's fixed cost (actor start, model loading, planning, compaction) is removed by "
        "differencing a small and a large run; Ray start-up is outside both."
    )
    return result
