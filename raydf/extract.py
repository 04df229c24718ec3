"""The Ray Data extraction job: manifest -> CPU face-crop actors -> feature actors -> Parquet.

::

    manifest rows ──► CropStage (CPU actor pool)      read bytes, decode + sample T frames, MTCNN track crops
                 ──► FeatureStage (GPU/CPU actor pool) content (K, 2048) + style (T, 512) per video
                 ──► FeatureSink                        exactly-once Parquet parts (raydf.store)

Crops travel between the stages as uint8 bytes (T*256*256*3 per video), never
as floats. A bad input never kills the job: it becomes a row with
``status="error"`` and the reason. ``raydf detect`` runs the same two stages on
one video (:func:`extract_one`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raydf import schema as S
from raydf.config import ExtractConfig, to_dict
from raydf.faces import FaceCropper
from raydf.video import VideoDecodeError, read_video

log = logging.getLogger(__name__)

__all__ = [
    "CropStage",
    "FeatureStage",
    "ExtractSummary",
    "feature_config",
    "expected_provenance",
    "extract_one",
    "run_extraction",
]

CROPS = "crops"  # uint8 bytes of (T, S, S, 3) between the stages; empty for error rows
_CROP_FIELDS = [
    (S.N_FRAMES, pa.int64()),
    (S.NUM_SAMPLED, pa.int32()),
    (S.FRAME_INDICES, pa.list_(pa.int32())),
    (S.FACE_VALID, pa.list_(pa.bool_())),
    (S.FACE_BOXES, pa.list_(pa.float32())),  # flattened (T*4,) between stages
    (S.FACE_PROBS, pa.list_(pa.float32())),
    (CROPS, pa.large_binary()),
    (S.STATUS, pa.string()),
    (S.ERROR, pa.string()),
    (S.T_READ, pa.float32()),
    (S.T_DECODE, pa.float32()),
    (S.T_FACES, pa.float32()),
]
CROP_SCHEMA = pa.schema(list(S.MANIFEST_SCHEMA) + _CROP_FIELDS)


def feature_config(cfg: ExtractConfig) -> dict[str, Any]:
    """The parts of the config that change features (not actor counts or resources, nor weight paths)."""
    d = to_dict(cfg)
    content = {k: v for k, v in d["content"].items() if k != "weights"}
    style = {k: v for k, v in d["style"].items() if k != "weights"}
    if cfg.content.weights:
        content.pop("seed")
    if cfg.style.weights:
        style.pop("seed")
    return {"video": {"num_frames": cfg.video.num_frames}, "faces": d["faces"], "content": content, "style": style}


def _file_sha256(uri: str) -> str:
    import fsspec

    from raydf.models.weights import WeightsError

    h = hashlib.sha256()
    try:
        with fsspec.open(uri, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise WeightsError(f"weights file not found: {uri}") from exc
    return f"sha256:{h.hexdigest()}"


def expected_provenance(cfg: ExtractConfig) -> dict[str, str]:
    """Provenance of both extractors, known before any model is built."""
    c, s = cfg.content, cfg.style
    return {
        "content": _file_sha256(c.weights) if c.weights else f"random:{c.seed}:slow_r50",
        "style": _file_sha256(s.weights) if s.weights else f"random:{s.seed}:{s.config}",
    }


def _read_bytes(uri: str) -> bytes:
    import fsspec

    with fsspec.open(uri, "rb") as f:
        return f.read()


def _set_threads(n: int) -> None:
    """torch intra-op threads of this process (0 = all cores it may run on)."""
    import os

    import torch

    n = n or len(os.sched_getaffinity(0))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://") :]
    return None if "://" in uri else uri


class CropStage:
    """CPU stage: manifest rows -> sampled frames -> 256x256 face-track crops (uint8) + per-frame flags."""

    def __init__(self, cfg: ExtractConfig) -> None:
        self.cfg = cfg
        _set_threads(cfg.crop_threads)
        self.cropper = FaceCropper(cfg.faces)  # MTCNN loaded once per actor

    def crop(self, row: dict[str, Any], data: bytes | None = None) -> dict[str, Any]:
        """One video: read (unless ``data`` is given), decode, sample, crop. Errors become an error row."""
        out: dict[str, Any] = {k: row.get(k) for k in S.MANIFEST_COLUMNS}
        t_num = self.cfg.video.num_frames
        out.update({S.NUM_SAMPLED: t_num, S.STATUS: S.STATUS_ERROR, CROPS: b"", S.T_READ: 0.0, S.T_DECODE: 0.0, S.T_FACES: 0.0})
        uri = row[S.URI]
        local = _local_path(uri)
        t0 = time.perf_counter()
        try:
            if data is None and local is None:
                data = _read_bytes(uri)
        except Exception as exc:  # missing object, permissions, network...
            out[S.ERROR] = f"cannot read {uri}: {type(exc).__name__}: {exc}"
            return out
        t1 = time.perf_counter()
        out[S.T_READ] = t1 - t0
        try:
            # Local files are decoded in place; object-store bytes are spilled to tmpfs for OpenCV.
            video = read_video(data if data is not None else local, t_num, backend=self.cfg.video.backend, name=uri)
        except VideoDecodeError as exc:
            out[S.ERROR] = str(exc)
            out[S.T_DECODE] = time.perf_counter() - t1
            return out
        t2 = time.perf_counter()
        out[S.T_DECODE] = t2 - t1
        try:
            faces = self.cropper(video.frames)
        except Exception as exc:  # a detector failure on odd frames must not kill the job
            out[S.ERROR] = f"face detection failed on {row[S.URI]}: {type(exc).__name__}: {exc}"
            return out
        out.update(
            {
                S.N_FRAMES: video.num_frames,
                S.FRAME_INDICES: video.indices,
                S.FACE_VALID: faces.valid,
                S.FACE_BOXES: faces.boxes.reshape(-1),
                S.FACE_PROBS: faces.probs,
                CROPS: faces.crops.tobytes(),  # (T, S, S, 3) uint8
                S.STATUS: S.STATUS_OK,
                S.ERROR: "",
                S.T_FACES: time.perf_counter() - t2,
            }
        )
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.crop(r) for r in batch.to_pylist()]
        return _crop_table(rows)


def _crop_table(rows: list[dict[str, Any]]) -> pa.Table:
    arrays = []
    for f in CROP_SCHEMA:
        vals = [r.get(f.name) for r in rows]
        if pa.types.is_list(f.type):
            vals = [None if v is None else np.asarray(v).tolist() for v in vals]
        arrays.append(pa.array(vals, f.type))
    return pa.Table.from_arrays(arrays, schema=CROP_SCHEMA)


class FeatureStage:
    """Feature stage (one GPU per actor on a cluster): crops -> content + style -> feature rows.

    Batches of videos go through the extractors together; a failing batch becomes error rows.
    """

    def __init__(self, cfg: ExtractConfig, provenance: dict[str, str] | None = None, device: str | None = None) -> None:
        from raydf.features import FeatureExtractor

        self.cfg = cfg
        _set_threads(cfg.feature_threads)
        self.extractor = FeatureExtractor(
            cfg.content, cfg.style, device=device, half=cfg.half_precision, cpu_precision=cfg.cpu_precision
        )
        actual = {"content": self.extractor.content_provenance, "style": self.extractor.style_provenance}
        if provenance is not None and actual != provenance:
            raise RuntimeError(f"extractor weights changed since the run started: expected {provenance}, loaded {actual}")
        self.provenance = actual

    def rows(self, crop_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        size = self.cfg.faces.crop_size
        out = []
        ok = [i for i, r in enumerate(crop_rows) if r[S.STATUS] == S.STATUS_OK]
        feats = None
        error = ""
        if ok:
            try:
                crops = np.stack(
                    [np.frombuffer(crop_rows[i][CROPS], np.uint8).reshape(-1, size, size, 3) for i in ok]
                )  # (B, T, S, S, 3)
                feats = self.extractor(crops)
            except Exception as exc:
                log.exception("feature extraction failed for a batch of %d videos", len(ok))
                error = f"feature extraction failed: {type(exc).__name__}: {exc}"
        pos = {i: j for j, i in enumerate(ok)}
        for i, r in enumerate(crop_rows):
            row = {k: v for k, v in r.items() if k != CROPS}
            row[S.STYLE_LEVEL] = self.cfg.style.level
            row[S.CONTENT_PROVENANCE] = self.provenance["content"]
            row[S.STYLE_PROVENANCE] = self.provenance["style"]
            if r[S.FACE_BOXES] is not None:
                row[S.FACE_BOXES] = np.asarray(r[S.FACE_BOXES], np.float32).reshape(-1, 4)
            if i in pos and feats is not None:
                j = pos[i]
                row[S.CONTENT] = feats.content[j]
                row[S.STYLE] = feats.style[j]
                row[S.T_CONTENT] = feats.t_content / len(ok)
                row[S.T_STYLE] = feats.t_style / len(ok)
            elif i in pos:
                row[S.STATUS] = S.STATUS_ERROR
                row[S.ERROR] = error
            out.append(row)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        return S.feature_table(self.rows(batch.to_pylist()))


@dataclass(frozen=True)
class ExtractSummary:
    """What an extraction run did and what the output now holds."""

    output: str
    total: int  # videos in the manifest
    processed: int  # videos processed by this run
    skipped: int  # already ok in the output
    ok: int  # rows with status ok in the output (for this manifest)
    error: int
    no_face: int  # ok rows without a single valid face
    wall_s: float
    videos_per_s: float
    stage_s: dict[str, float]  # mean per-video seconds of each stage (this run's rows)
    errors: dict[str, str]  # video_id -> error, for this manifest
    provenance: dict[str, str]
    mlflow_run_id: str | None = None

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k} {v:.3f}s" for k, v in self.stage_s.items())
        return [
            f"output: {self.output}",
            f"videos: {self.total} in manifest, {self.processed} processed now, {self.skipped} already done",
            f"status: ok {self.ok} | error {self.error} | no-face {self.no_face}",
            f"throughput: {self.videos_per_s:.3f} videos/s ({self.wall_s:.1f}s wall)",
            f"per-video stage times: {stages}",
            f"provenance: content {self.provenance['content']} | style {self.provenance['style']}",
        ]


def _blocks(manifest: pa.Table, max_actors: int) -> list[pa.Table]:
    """Split the manifest into many small blocks so every actor gets work and results stream."""
    n = manifest.num_rows
    size = int(min(16, max(1, n // (4 * max(1, max_actors)))))
    return [manifest.slice(i, size) for i in range(0, n, size)]


def run_extraction(
    input_uri: str,
    output_uri: str,
    cfg: ExtractConfig | None = None,
    *,
    tracking_uri: str | None = None,
    track: bool = True,
    manifest: pa.Table | None = None,
) -> ExtractSummary:
    """Run the extraction job (connects to the running Ray cluster, or starts a local one).

    Args:
        input_uri: a dataset root (local or ``s3://``) in one of the layouts, or a manifest file.
        output_uri: the feature directory (local or ``s3://``); reruns resume into it.
        cfg: extraction config (defaults: the report's settings, random-init extractors).
        tracking_uri: MLflow store (default: :func:`raydf.tracking.default_tracking_uri`).
        track: log the run to MLflow.
        manifest: use this manifest instead of building one from ``input_uri``.

    Raises:
        ExtractConfigMismatch: ``output_uri`` holds features made with another config/weights.
        ManifestError: the dataset's manifest files are malformed.
    """
    import ray

    from raydf.datasets import build_manifest
    from raydf.sink import FeatureSink
    from raydf.store import FeatureStore

    cfg = cfg or ExtractConfig()
    t_start = time.perf_counter()
    if manifest is None:
        manifest = build_manifest(
            input_uri, cfg.layout, ffpp_compression=cfg.ffpp_compression, ffpp_methods=cfg.ffpp_methods
        )
    provenance = expected_provenance(cfg)
    fconf = feature_config(cfg)
    store = FeatureStore(output_uri)
    store.ensure_config(fconf, provenance)
    store.compact()
    done = store.done_ids()
    todo = manifest.filter(pc.invert(pc.is_in(manifest[S.VIDEO_ID], pa.array(sorted(done), pa.string()))))
    log.info("%d videos in manifest, %d already done, %d to process", manifest.num_rows, manifest.num_rows - todo.num_rows, todo.num_rows)

    run_seq = time.time_ns()
    t_pipe = time.perf_counter()
    if todo.num_rows:
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=True)
        metadata = {
            S.META_EXTRACT_CONFIG: json.dumps(fconf, sort_keys=True).encode(),
            S.META_PROVENANCE: json.dumps(provenance, sort_keys=True).encode(),
        }
        ds = ray.data.from_arrow(_blocks(todo, cfg.crop_actors[1]))
        ds = ds.map_batches(
            CropStage,
            fn_constructor_args=(cfg,),
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=cfg.crop_actors[0], max_size=cfg.crop_actors[1]),
            num_cpus=cfg.cpus_per_crop_actor,
            resources=cfg.crop_resources or None,
        )
        ds = ds.map_batches(
            FeatureStage,
            fn_constructor_args=(cfg, provenance),
            batch_size=cfg.feature_batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=cfg.feature_actors[0], max_size=cfg.feature_actors[1]),
            num_cpus=cfg.cpus_per_feature_actor,
            num_gpus=cfg.gpus_per_feature_actor or None,
            resources=cfg.feature_resources or None,
        )
        ds.write_datasink(FeatureSink(output_uri, metadata=metadata, run_seq=run_seq, rows_per_file=cfg.rows_per_file))
    wall = time.perf_counter() - t_pipe
    store.compact()
    summary = _summarise(store, manifest, todo.num_rows, wall, provenance, run_seq, output_uri)
    log.info("extraction finished in %.1fs", time.perf_counter() - t_start)
    if track:
        summary = _track(summary, cfg, input_uri, store, tracking_uri)
    return summary


def _summarise(store, manifest: pa.Table, processed: int, wall: float, provenance, run_seq: int, output: str) -> ExtractSummary:
    ids = set(manifest.column(S.VIDEO_ID).to_pylist())
    status = store.status_table()
    status = status.filter(pc.is_in(status[S.VIDEO_ID], pa.array(sorted(ids), pa.string())))
    rows = status.to_pylist()
    ok = [r for r in rows if r[S.STATUS] == S.STATUS_OK]
    no_face = sum(1 for r in ok if not any(r[S.FACE_VALID] or []))
    stage_s = {}
    for col in S.TIMING_COLUMNS:
        vals = [r[col] for r in ok if r[col] is not None]
        stage_s[col.removeprefix("t_").removesuffix("_s")] = float(np.mean(vals)) if vals else 0.0
    return ExtractSummary(
        output=output,
        total=len(ids),
        processed=processed,
        skipped=len(ids) - processed,
        ok=len(ok),
        error=len(rows) - len(ok),
        no_face=no_face,
        wall_s=wall,
        videos_per_s=processed / wall if processed and wall > 0 else 0.0,
        stage_s=stage_s,
        errors={r[S.VIDEO_ID]: r[S.ERROR] for r in rows if r[S.STATUS] != S.STATUS_OK},
        provenance=provenance,
    )


def _track(summary: ExtractSummary, cfg: ExtractConfig, input_uri: str, store, tracking_uri: str | None) -> ExtractSummary:
    import mlflow

    from raydf import tracking

    mlflow.set_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    exp = tracking.get_or_create_experiment(tracking.EXTRACT_EXPERIMENT)
    with mlflow.start_run(experiment_id=exp, run_name="extract") as run:
        mlflow.log_params(tracking.safe_params({"input": input_uri, "output": summary.output, **to_dict(cfg)}))
        mlflow.set_tags(
            {
                "raydf.stage": "extract",
                "raydf.content_provenance": summary.provenance["content"],
                "raydf.style_provenance": summary.provenance["style"],
                "raydf.output": tracking.redact(summary.output),
                "style_config": cfg.style.config,
            }
        )
        mlflow.log_metrics(
            {
                "videos_total": summary.total,
                "videos_processed": summary.processed,
                "videos_ok": summary.ok,
                "videos_error": summary.error,
                "videos_no_face": summary.no_face,
                "videos_per_s": summary.videos_per_s,
                "wall_s": summary.wall_s,
                **{f"stage_{k}_s": v for k, v in summary.stage_s.items()},
            }
        )
        tracking.log_parquet_dataset(summary.output, name="features", digest=store.digest(), context="extraction", num_rows=summary.ok + summary.error)
        if summary.errors:
            mlflow.log_dict({k: tracking.redact(v) for k, v in summary.errors.items()}, "errors.json")
    return replace(summary, mlflow_run_id=run.info.run_id)


def extract_one(
    path: str,
    cfg: ExtractConfig | None = None,
    *,
    crop_stage: CropStage | None = None,
    feature_stage: FeatureStage | None = None,
) -> dict[str, Any]:
    """Features of one video through exactly the pipeline's two stages (used by ``raydf detect``).

    Returns the feature row (as the Parquet holds it, arrays as numpy). Raises
    :class:`VideoDecodeError` when the file is not a decodable video.
    """
    cfg = cfg or ExtractConfig()
    crop_stage = crop_stage or CropStage(replace(cfg, crop_threads=0))  # alone in the process: all cores
    feature_stage = feature_stage or FeatureStage(cfg)
    row = {S.VIDEO_ID: path, S.URI: path, S.LABEL: None, S.DATASET: "", S.SPLIT: "", S.SOURCE_ID: "", S.METHOD: "", S.COMPRESSION: "", S.META: "{}"}
    cropped = crop_stage.crop(row)
    if cropped[S.STATUS] != S.STATUS_OK:
        prefix = f"cannot decode video {path}: "
        msg = cropped[S.ERROR]
        raise VideoDecodeError(path, msg[len(prefix) :] if msg.startswith(prefix) else msg)
    (out,) = feature_stage.rows([cropped])
    if out[S.STATUS] != S.STATUS_OK:
        raise RuntimeError(out[S.ERROR])
    return out
