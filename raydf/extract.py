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

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raydf import schema as S
from raydf.config import ExtractConfig, FeatureConfig, Provenance, StoreConfig, to_dict
from raydf.faces import FaceCropper
from raydf.faults import FaultPlan
from raydf.console import quiet_ray_kwargs
from raydf.datasets import SkipReport, build_manifest, check_unique_ids, skip_report
from raydf.faults import CrashLedger
from raydf.models.weights import WeightsError
from raydf.pseudofake import PSEUDO_METHOD, blend_seed, pseudo_video_id, self_blend
from raydf.sources import manifest_identities, with_source_columns
from raydf.store import FeatureStore
from raydf import tracking
from raydf.tracking import redact_uri
from raydf.video import SampledVideo, VideoDecodeError, VideoTooLarge, decoder_identity, read_video

log = logging.getLogger(__name__)

__all__ = [
    "CropStage",
    "FeatureStage",
    "ExtractSummary",
    "store_config",
    "expected_provenance",
    "extract_one",
    "crop_one",
    "features_one",
    "ExtractError",
    "run_extraction",
]

CROPS = "crops"  # uint8 bytes of (T, S, S, 3) between the stages; empty for error rows
# What the crop stage gets: a manifest row plus the source identity of its file (raydf.sources).
INPUT_SCHEMA = pa.schema(
    list(S.MANIFEST_SCHEMA) + [(c, S.FEATURE_SCHEMA.field(c).type) for c in S.SOURCE_COLUMNS]
)
_CROP_FIELDS = [
    (S.TRACK_ID, pa.int32()),
    (S.TRACK_SCORE, pa.float32()),
    (S.N_FRAMES, pa.int64()),
    (S.NUM_SAMPLED, pa.int32()),
    (S.FRAME_INDICES, pa.list_(pa.int32())),
    (S.FRAME_TIMES, pa.list_(pa.float32())),
    (S.FACE_VALID, pa.list_(pa.bool_())),
    (S.FACE_BOXES, pa.list_(pa.float32())),  # flattened (T*4,) between stages
    (S.FACE_PROBS, pa.list_(pa.float32())),
    (CROPS, pa.large_binary()),
    (S.STATUS, pa.string()),
    (S.ERROR, pa.string()),
    (S.NOTE, pa.string()),
    (S.T_READ, pa.float32()),
    (S.T_DECODE, pa.float32()),
    (S.T_FACES, pa.float32()),
]
CROP_SCHEMA = pa.schema(list(INPUT_SCHEMA) + _CROP_FIELDS)
_ERROR_KIND = "_error_kind"  # in-process only: "read" | "decode" | "too_large" | "faces" | "features" | "quarantine"


def store_config(cfg: ExtractConfig, *, precision: str, decoder: str) -> StoreConfig:
    """The feature identity of ``cfg`` (what the store records and every rerun must match).

    Weight files enter through their sha256 (:func:`expected_provenance`), not their paths; a seed
    only when it is what made the weights (random init); actor counts and resources not at all.
    """
    content = replace(cfg.content, weights=None, seed=cfg.content.seed if not cfg.content.weights else 0)
    style = replace(cfg.style, weights=None, seed=cfg.style.seed if not cfg.style.weights else 0)
    pseudo = bool(cfg.pseudo_fakes)
    features = FeatureConfig(
        num_frames=cfg.video.num_frames,
        faces=cfg.faces,
        content=content,
        style=style,
        precision=precision,
        decoder=decoder,
        pseudo_fakes=cfg.pseudo_fakes,
        self_blend=cfg.self_blend if pseudo else None,
        pseudo_seed=cfg.pseudo_seed if pseudo else None,
    )
    return StoreConfig(features=features, provenance=expected_provenance(cfg))


def _file_sha256(uri: str) -> str:
    import fsspec


    h = hashlib.sha256()
    try:
        with fsspec.open(uri, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise WeightsError(f"weights file not found: {uri}") from exc
    return f"sha256:{h.hexdigest()}"


def expected_provenance(cfg: ExtractConfig) -> Provenance:
    """Provenance of both extractors, known before any model is built (a weights file is hashed)."""
    c, s = cfg.content, cfg.style
    return Provenance(
        content=_file_sha256(c.weights) if c.weights else f"random:{c.seed}:slow_r50",
        style=_file_sha256(s.weights) if s.weights else f"random:{s.seed}:{s.config}",
    )


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


def _message(exc: BaseException) -> str:
    """An exception as one plain line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _error_row(base: dict[str, Any], kind: str, message: str) -> dict[str, Any]:
    return {**base, S.TRACK_ID: 0, S.STATUS: S.STATUS_ERROR, S.ERROR: message, S.NOTE: "", CROPS: b"", _ERROR_KIND: kind}


class CropStage:
    """CPU stage: a manifest row -> sampled frames -> one row of 256x256 face crops (uint8) per face track.

    One row per track (``track_id`` 0 = the main face, then further tracks up to
    ``faces.max_tracks``); with ``pseudo_fakes="self-blend"`` a real video also yields its
    self-blended pseudo-fake's row (same sampled frames, same cropper). Whatever goes wrong with
    a video becomes one error row naming the exception: no exception leaves :meth:`crop`.
    """

    def __init__(self, cfg: ExtractConfig, *, ledger: Any = None, faults: FaultPlan | None = None, board: Any = None) -> None:
        self.cfg = cfg
        _set_threads(cfg.crop_threads)
        self.cropper = FaceCropper(cfg.faces)  # MTCNN loaded once per actor
        self.ledger = ledger  # CrashLedger actor handle (None outside Ray)
        self.faults = faults or FaultPlan()
        self.board = board  # ProgressBoard actor handle (None: no live progress)

    def crop(self, row: dict[str, Any], data: bytes | None = None) -> list[dict[str, Any]]:
        """One video: read (unless ``data`` is given), decode, sample, crop every track.

        Returns:
            Crop rows (:data:`CROP_SCHEMA` fields), one per track, or one error row.
        """
        key = f"crop:{row[S.VIDEO_ID]}"
        base = {k: row.get(k) for k in INPUT_SCHEMA.names}
        base.update({S.NUM_SAMPLED: self.cfg.video.num_frames, S.T_READ: 0.0, S.T_DECODE: 0.0, S.T_FACES: 0.0})
        if self.ledger is not None:
            import ray

            crashes = ray.get(self.ledger.begin.remote(key))
            if crashes >= self.cfg.max_crashes:
                self.ledger.end.remote(key)
                log.error("quarantined %s: it killed its crop worker %d times", row[S.URI], crashes)
                return [_error_row(base, "quarantine", f"quarantined: processing this video killed its worker {crashes} times (decoder crash or out of memory)")]
        rows = self._crop(row, base, data)
        if self.ledger is not None:
            self.ledger.end.remote(key)
        if self.board is not None:
            self.board.add.remote("videos_cropped", 1)  # raydf.progress.CROPPED
        return rows

    def _crop(self, row: dict[str, Any], base: dict[str, Any], data: bytes | None) -> list[dict[str, Any]]:
        uri = row[S.URI]
        local = _local_path(uri)
        t0 = time.perf_counter()
        try:
            if data is None and local is None:
                data = _read_bytes(uri)
        except Exception as exc:  # missing object, permissions, network...
            return [_error_row(base, "read", f"cannot read {redact_uri(uri)}: {_message(exc)}")]
        t1 = time.perf_counter()
        base[S.T_READ] = t1 - t0
        self.faults.crop(row[S.VIDEO_ID])
        try:
            self.faults.decode(row[S.VIDEO_ID])
            # Local files are decoded in place; object-store bytes are spilled to tmpfs for OpenCV.
            v = self.cfg.video
            video = read_video(
                data if data is not None else local,
                v.num_frames,
                backend=v.backend,
                name=redact_uri(uri),
                max_pixels=v.max_pixels,
                max_duration_s=v.max_duration_s,
                seek=v.seek,
                threads=v.threads or self.cfg.crop_threads,  # one decoder thread per 1-CPU actor; 0: all cores
            )
        except VideoDecodeError as exc:
            base[S.T_DECODE] = time.perf_counter() - t1
            return [_error_row(base, "too_large" if isinstance(exc, VideoTooLarge) else "decode", str(exc))]
        except Exception as exc:  # a decoder bug on an odd file: this video's row, never the job
            base[S.T_DECODE] = time.perf_counter() - t1
            return [_error_row(base, "decode", f"decoding {redact_uri(uri)} failed: {_message(exc)}")]
        base[S.T_DECODE] = time.perf_counter() - t1
        return self.crop_video(base, video)

    def crop_video(self, row: dict[str, Any], video: SampledVideo) -> list[dict[str, Any]]:
        """Already sampled frames (a decoded video, or frames streamed by a client) -> crop rows.

        ``row`` holds the manifest (and source) columns; timings already measured are kept.
        """
        base = {k: row.get(k) for k in INPUT_SCHEMA.names}
        base.update({S.NUM_SAMPLED: len(video.frames), S.T_READ: row.get(S.T_READ, 0.0), S.T_DECODE: row.get(S.T_DECODE, 0.0)})
        t0 = time.perf_counter()
        try:
            tracks = self.cropper.tracks(video.frames)
        except Exception as exc:  # a detector failure on odd frames must not kill the job
            return [_error_row(base, "faces", f"face detection failed on {redact_uri(row[S.URI])}: {_message(exc)}")]
        base[S.T_FACES] = time.perf_counter() - t0
        rows = [self._track_row(base, video, t) for t in tracks]
        if self.cfg.pseudo_fakes and row.get(S.LABEL) == S.REAL:
            try:
                rows += self._pseudo_fake(base, video, tracks[0])
            except Exception as exc:  # the real rows stand; the pseudo-fake is reported missing
                log.warning("no pseudo-fake for %s: %s", redact_uri(row[S.URI]), _message(exc))
        return rows

    def _track_row(self, base: dict[str, Any], video: Any, faces: Any) -> dict[str, Any]:
        main = faces.track_id == 0
        return {
            **base,
            **({} if main else {S.T_READ: 0.0, S.T_DECODE: 0.0, S.T_FACES: 0.0}),  # a video's times sit on track 0
            S.TRACK_ID: faces.track_id,
            S.TRACK_SCORE: faces.score,
            S.N_FRAMES: video.num_frames,
            S.FRAME_INDICES: video.indices,
            S.FRAME_TIMES: np.asarray(video.times, np.float32),
            S.FACE_VALID: faces.valid,
            S.FACE_BOXES: faces.boxes.reshape(-1),
            S.FACE_PROBS: faces.probs,
            CROPS: faces.crops.tobytes(),  # (T, S, S, 3) uint8
            S.STATUS: S.STATUS_OK,
            S.ERROR: "",
            S.NOTE: faces.note,
        }

    def _pseudo_fake(self, base: dict[str, Any], video: Any, main: Any) -> list[dict[str, Any]]:
        """The self-blended pseudo-fake of a real video: its main face blended into itself, same frames."""
        real_id = base[S.VIDEO_ID]
        blend = self_blend(video.frames, main.boxes, valid=main.valid, seed=blend_seed(real_id, self.cfg.pseudo_seed), cfg=self.cfg.self_blend)
        if not blend.applied.any():
            log.info("no pseudo-fake for %s: no frame with a face to blend", real_id)
            return []
        t0 = time.perf_counter()
        faces = self.cropper.tracks(blend.frames)[0]
        pseudo = {
            **base,
            S.VIDEO_ID: pseudo_video_id(real_id),
            S.LABEL: S.FAKE,
            S.METHOD: PSEUDO_METHOD,
            S.SOURCE_ID: real_id,
            S.META: json.dumps({"self_blend": blend.params, "real": real_id}, sort_keys=True),
            S.T_READ: 0.0,
            S.T_DECODE: 0.0,
            S.T_FACES: time.perf_counter() - t0,
        }
        return [self._track_row(pseudo, video, faces)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [r for row in batch.to_pylist() for r in self.crop(row)]
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
    """Feature stage (one GPU per actor on a cluster): crop rows -> content + style -> feature rows.

    Batches of videos go through the extractors together. When a batch fails as a whole it is
    retried video by video, so one bad video does not take its batch-mates with it; when a batch
    killed its actor before, it runs video by video from the start, and a video that killed the
    actor ``max_crashes`` times on its own becomes an error row (quarantined).
    """

    def __init__(
        self,
        cfg: ExtractConfig,
        provenance: Provenance | None = None,
        device: str | None = None,
        *,
        precision: str | None = None,
        ledger: Any = None,
        faults: FaultPlan | None = None,
        board: Any = None,
    ) -> None:
        from raydf.features import FeatureExtractor, resolve_precision

        self.cfg = cfg
        _set_threads(cfg.feature_threads)
        self.extractor = FeatureExtractor(cfg.content, cfg.style, device=device, precision=precision or resolve_precision(cfg, device))
        actual = Provenance(content=self.extractor.content_provenance, style=self.extractor.style_provenance)
        if provenance is not None and actual != provenance:
            raise RuntimeError(f"extractor weights changed since the run started: expected {provenance}, loaded {actual}")
        self.provenance = actual
        self.precision = self.extractor.precision
        self.ledger = ledger
        self.faults = faults or FaultPlan()
        self.board = board

    def _features(self, rows: list[dict[str, Any]]) -> Any:
        size = self.cfg.faces.crop_size
        self.faults.feature_batch(sorted({r[S.VIDEO_ID] for r in rows}))
        crops = np.stack([np.frombuffer(r[CROPS], np.uint8).reshape(-1, size, size, 3) for r in rows])  # (B, T, S, S, 3)
        return self.extractor(crops)

    def _fill(self, out: list[dict[str, Any]], idx: list[int], feats: Any) -> None:
        for j, i in enumerate(idx):
            out[i][S.CONTENT] = feats.content[j]
            out[i][S.STYLE] = feats.style[j]
            out[i][S.T_CONTENT] = feats.t_content / len(idx)
            out[i][S.T_STYLE] = feats.t_style / len(idx)

    def _fail(self, out: list[dict[str, Any]], idx: list[int], message: str, kind: str = "features") -> None:
        for i in idx:
            out[i].update({S.STATUS: S.STATUS_ERROR, S.ERROR: message, _ERROR_KIND: kind})

    def _one_by_one(self, out: list[dict[str, Any]], ok: list[int]) -> None:
        by_video: dict[str, list[int]] = {}
        for i in ok:
            by_video.setdefault(out[i][S.VIDEO_ID], []).append(i)
        for vid, idx in by_video.items():
            key = f"feature:{vid}"
            if self.ledger is not None:
                import ray

                crashes = ray.get(self.ledger.begin.remote(key))
                if crashes >= self.cfg.max_crashes:
                    self.ledger.end.remote(key)
                    self._fail(out, idx, f"quarantined: computing features of this video killed its worker {crashes} times", "quarantine")
                    continue
            try:
                self._fill(out, idx, self._features([out[i] for i in idx]))
            except Exception as exc:
                log.warning("feature extraction failed for %s: %s", vid, _message(exc))
                self._fail(out, idx, f"feature extraction failed: {_message(exc)}")
            if self.ledger is not None:
                self.ledger.end.remote(key)

    def rows(self, crop_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Crop rows -> feature rows (:data:`raydf.schema.FEATURE_SCHEMA` fields; arrays as numpy)."""
        out = []
        for r in crop_rows:
            row = {k: v for k, v in r.items()}
            row[S.STYLE_LEVEL] = self.cfg.style.level
            row[S.CONTENT_PROVENANCE] = self.provenance.content
            row[S.STYLE_PROVENANCE] = self.provenance.style
            if r.get(S.FACE_BOXES) is not None:
                row[S.FACE_BOXES] = np.asarray(r[S.FACE_BOXES], np.float32).reshape(-1, 4)
            out.append(row)
        ok = [i for i, r in enumerate(out) if r[S.STATUS] == S.STATUS_OK]
        if ok:
            batch_key = "batch:" + hashlib.sha1("\n".join(sorted({out[i][S.VIDEO_ID] for i in ok})).encode()).hexdigest()
            crashed_before = False
            if self.ledger is not None:
                import ray

                crashed_before = ray.get(self.ledger.begin.remote(batch_key)) > 0
            if crashed_before or len(ok) == 1:
                self._one_by_one(out, ok)
            else:
                try:
                    self._fill(out, ok, self._features([out[i] for i in ok]))
                except Exception as exc:
                    log.warning("a feature batch of %d rows failed (%s); retrying video by video", len(ok), _message(exc))
                    self._one_by_one(out, ok)
            if self.ledger is not None:
                self.ledger.end.remote(batch_key)
        # A video whose features failed is one error row (track 0), whatever its tracks were.
        first_error: dict[str, dict[str, Any]] = {}
        for row in out:
            row.pop(CROPS, None)
            if row[S.STATUS] != S.STATUS_OK:
                first_error.setdefault(row[S.VIDEO_ID], row)
        kept, done = [], set()
        for row in out:
            vid = row[S.VIDEO_ID]
            if vid not in first_error:
                kept.append(row)
            elif vid not in done:
                done.add(vid)
                kept.append({**first_error[vid], S.TRACK_ID: 0})
        if self.board is not None:
            self.board.add.remote("videos_featured", len({r[S.VIDEO_ID] for r in kept if r[S.METHOD] != "self_blend"}))
        return kept

    def __call__(self, batch: pa.Table) -> pa.Table:
        return S.feature_table(self.rows(batch.to_pylist()))


@dataclass(frozen=True)
class ExtractSummary:
    """What an extraction run did and what the output now holds (for the manifest's videos)."""

    output: str  # redacted
    total: int  # videos in the manifest
    processed: int  # videos processed by this run
    skipped: int  # already done in the output (same source identity, status ok)
    ok: int  # videos whose main row is ok
    error: int  # videos whose row is an error
    no_face: int  # ok videos without a single valid face
    tracks: int  # ok face-track rows (>= ok; more with faces.max_tracks > 1)
    pseudo_fakes: int  # self-blended pseudo-fake rows
    wall_s: float
    videos_per_s: float
    stage_s: dict[str, float]  # mean per-video seconds of each stage (this run's rows)
    errors: dict[str, str]  # video_id -> error, for this manifest
    provenance: Provenance
    precision: str
    files_skipped: dict[str, int] = field(default_factory=dict)  # reason -> files the manifest left out
    files_skipped_lines: tuple[str, ...] = ()  # the same, in plain words with examples
    epoch: int = 0  # the lease epoch this run wrote under
    mlflow_run_id: str | None = None

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k} {v:.3f}s" for k, v in self.stage_s.items())
        out = [
            f"output: {self.output}",
            f"videos: {self.total} in manifest, {self.processed} processed now, {self.skipped} already done",
            f"status: ok {self.ok} | error {self.error} | no-face {self.no_face}"
            + (f" | face tracks {self.tracks}" if self.tracks != self.ok else "")
            + (f" | pseudo-fakes {self.pseudo_fakes}" if self.pseudo_fakes else ""),
            f"throughput: {self.videos_per_s:.3f} videos/s ({self.wall_s:.1f}s wall)",
            f"per-video stage times: {stages}",
            f"provenance: content {self.provenance.content} | style {self.provenance.style} | precision {self.precision}",
        ]
        if self.files_skipped:
            out.append(f"files left out of the manifest: {sum(self.files_skipped.values())} "
                       f"({', '.join(f'{k} {v}' for k, v in sorted(self.files_skipped.items()))})")
        return out


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
    faults: FaultPlan | None = None,
    progress: bool = False,
) -> ExtractSummary:
    """Run the extraction job (connects to the running Ray cluster, or starts a local one).

    The run holds the output's lease while it writes (a second run into the same output fails
    fast naming the holder); a video counts as done only while its stored source identity
    (URI, size, mtime or ETag) matches the input, so replaced files are extracted again.

    Args:
        input_uri: a dataset root (local or ``s3://``) in one of the layouts, or a manifest file.
        output_uri: the feature directory (local or ``s3://``); reruns resume into it.
        cfg: extraction config (defaults: the report's settings, random-init extractors).
        tracking_uri: MLflow store (default: :func:`raydf.tracking.default_tracking_uri`).
        track: log the run to MLflow.
        manifest: use this manifest instead of building one from ``input_uri``.
        faults: test seam: videos for which a stage fails on purpose (:class:`raydf.faults.FaultPlan`).
        progress: draw live progress bars (videos cropped, videos with features) on a terminal.

    Raises:
        ExtractConfigMismatch: ``output_uri`` holds features made with another feature identity.
        LeaseHeld: another live run holds ``output_uri``.
        ManifestError: the dataset's manifest files are malformed, or ids repeat.
    """
    import uuid

    import ray

    from raydf.features import resolve_precision
    from raydf.progress import CROPPED, FEATURED, Bar, ProgressBoard, watch
    from raydf.sink import FeatureSink

    cfg = cfg or ExtractConfig()
    t_start = time.perf_counter()
    if manifest is None:
        manifest = build_manifest(input_uri, cfg.layout, ffpp_compression=cfg.ffpp_compression, ffpp_methods=cfg.ffpp_methods)
        skipped: SkipReport = skip_report(manifest)
    else:
        check_unique_ids(manifest, "manifest")
        skipped = SkipReport()
    feature_device = "cuda" if cfg.gpus_per_feature_actor else "cpu"
    sconf = store_config(cfg, precision=resolve_precision(cfg, feature_device), decoder=decoder_identity(cfg.video.backend))
    store = FeatureStore(output_uri)
    with store.acquire_lease(stale_after_s=cfg.lease_timeout_s) as lease:
        store.ensure_config(lease, sconf.features.to_dict(), sconf.provenance.to_dict())
        store.compact(lease)
        identities = manifest_identities(manifest)
        done = store.done(identities)
        todo = manifest.filter(pc.invert(pc.is_in(manifest[S.VIDEO_ID], pa.array(sorted(done), pa.string()))))
        todo = with_source_columns(todo, identities)
        log.info("%d videos in manifest, %d already done, %d to process", manifest.num_rows, manifest.num_rows - todo.num_rows, todo.num_rows)

        t_pipe = time.perf_counter()
        if todo.num_rows:
            if not ray.is_initialized():
                ray.init(ignore_reinit_error=True, **quiet_ray_kwargs())
            metadata = {
                S.META_EXTRACT_CONFIG: json.dumps(sconf.features.to_dict(), sort_keys=True).encode(),
                S.META_PROVENANCE: json.dumps(sconf.provenance.to_dict(), sort_keys=True).encode(),
            }
            ledger = CrashLedger.start(f"raydf-crashes-{lease.epoch}-{uuid.uuid4().hex[:8]}")
            plan = faults or FaultPlan()
            board = ProgressBoard.start() if progress else None
            ds = ray.data.from_arrow(_blocks(todo.cast(INPUT_SCHEMA), cfg.crop_actors[1]))
            ds = ds.map_batches(
                CropStage,
                fn_constructor_kwargs={"cfg": cfg, "ledger": ledger, "faults": plan, "board": board},
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(min_size=cfg.crop_actors[0], max_size=cfg.crop_actors[1]),
                num_cpus=cfg.cpus_per_crop_actor,
                resources=cfg.crop_resources or None,
            )
            ds = ds.map_batches(
                FeatureStage,
                fn_constructor_kwargs={"cfg": cfg, "provenance": sconf.provenance, "precision": sconf.features.precision,
                                       "ledger": ledger, "faults": plan, "board": board},  # fmt: skip
                batch_size=cfg.feature_batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(min_size=cfg.feature_actors[0], max_size=cfg.feature_actors[1]),
                num_cpus=cfg.cpus_per_feature_actor,
                num_gpus=cfg.gpus_per_feature_actor or None,
                resources=cfg.feature_resources or None,
            )
            sink = FeatureSink(output_uri, epoch=lease.epoch, rows_per_file=cfg.rows_per_file, metadata=metadata)
            bars = [Bar(FEATURED, "extraction", "video", todo.num_rows, postfix=(CROPPED,))]
            with watch(board, bars) if board is not None else contextlib.nullcontext():
                ds.write_datasink(sink)
            ray.kill(ledger)
        wall = time.perf_counter() - t_pipe
        store.compact(lease)
        store.refresh_manifest(lease, manifest)
        summary = _summarise(store, manifest, todo.num_rows, wall, sconf, redact_uri(output_uri), skipped, lease.epoch)
    log.info("extraction finished in %.1fs", time.perf_counter() - t_start)
    if track:
        summary = _track(summary, cfg, input_uri, store, tracking_uri)
    return summary


def _summarise(store: Any, manifest: pa.Table, processed: int, wall: float, sconf: StoreConfig, output: str, skipped: Any, epoch: int) -> ExtractSummary:
    ids = set(manifest.column(S.VIDEO_ID).to_pylist())
    status = store.status_table()
    rows = status.to_pylist()
    mine = [r for r in rows if r[S.VIDEO_ID] in ids]
    main = [r for r in mine if (r[S.TRACK_ID] or 0) == 0]
    ok = [r for r in main if r[S.STATUS] == S.STATUS_OK]
    pseudo = [r for r in rows if r[S.VIDEO_ID] not in ids and r[S.VIDEO_ID].rsplit("/", 1)[0] in ids and r[S.STATUS] == S.STATUS_OK]
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
        error=len(main) - len(ok),
        no_face=no_face,
        tracks=sum(1 for r in mine if r[S.STATUS] == S.STATUS_OK),
        pseudo_fakes=len(pseudo),
        wall_s=wall,
        videos_per_s=processed / wall if processed and wall > 0 else 0.0,
        stage_s=stage_s,
        errors={r[S.VIDEO_ID]: r[S.ERROR] for r in main if r[S.STATUS] != S.STATUS_OK},
        provenance=sconf.provenance,
        precision=sconf.features.precision,
        files_skipped={str(k): int(v) for k, v in skipped.counts.items()},
        files_skipped_lines=tuple(skipped.lines()),
        epoch=epoch,
    )


def _track(summary: ExtractSummary, cfg: ExtractConfig, input_uri: str, store: Any, tracking_uri: str | None) -> ExtractSummary:
    import mlflow

    mlflow.set_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    exp = tracking.get_or_create_experiment(tracking.EXTRACT_EXPERIMENT)
    with mlflow.start_run(experiment_id=exp, run_name="extract") as run:
        mlflow.log_params(tracking.safe_params({"input": input_uri, "output": summary.output, **to_dict(cfg)}))
        mlflow.set_tags(
            {
                "raydf.stage": "extract",
                "raydf.content_provenance": summary.provenance.content,
                "raydf.style_provenance": summary.provenance.style,
                "raydf.precision": summary.precision,
                "raydf.output": summary.output,
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
                "face_tracks": summary.tracks,
                "pseudo_fakes": summary.pseudo_fakes,
                "videos_per_s": summary.videos_per_s,
                "wall_s": summary.wall_s,
                "files_skipped": sum(summary.files_skipped.values()),
                **{f"files_skipped_{k}": v for k, v in summary.files_skipped.items()},
                **{f"stage_{k}_s": v for k, v in summary.stage_s.items()},
            }
        )
        tracking.log_parquet_dataset(store.uri, name="features", digest=store.digest(), context="extraction", num_rows=summary.ok + summary.error)
        if summary.errors:
            mlflow.log_dict({k: tracking.redact(v) for k, v in summary.errors.items()}, "errors.json")
        if summary.files_skipped_lines:
            mlflow.log_text("\n".join(tracking.redact(x) for x in summary.files_skipped_lines) + "\n", "files_skipped.txt")
    return replace(summary, mlflow_run_id=run.info.run_id)


class ExtractError(RuntimeError):
    """One video could not be turned into features (not a decode problem: faces or features failed)."""


def _input_row(video: str | bytes, name: str | None) -> tuple[dict[str, Any], bytes | None, str]:
    data = bytes(video) if isinstance(video, (bytes, bytearray, memoryview)) else None
    label = name or ("<upload>" if data is not None else str(video))
    row = {S.VIDEO_ID: label, S.URI: label if data is not None else str(video), S.LABEL: None, S.DATASET: "", S.SPLIT: "",
           S.SOURCE_ID: "", S.METHOD: "", S.COMPRESSION: "", S.META: "{}"}  # fmt: skip
    return row, data, label


def crop_one(crop_stage: CropStage, video: str | bytes, name: str | None = None) -> list[dict[str, Any]]:
    """The crop stage on one video: crop rows, one per face track.

    Raises:
        VideoDecodeError: the input cannot be read or is not a decodable video.
        ExtractError: face detection failed.
    """
    row, data, label = _input_row(video, name)
    cropped = crop_stage.crop(row, data)
    if cropped[0][S.STATUS] != S.STATUS_OK:
        kind, msg = cropped[0].get(_ERROR_KIND), cropped[0][S.ERROR]
        if kind in ("read", "decode", "too_large"):
            prefix = f"cannot decode video {label}: "
            error = VideoTooLarge if kind == "too_large" else VideoDecodeError
            raise error(label, msg[len(prefix) :] if msg.startswith(prefix) else msg)
        raise ExtractError(msg)
    return cropped


def features_one(feature_stage: FeatureStage, crop_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The feature stage on one video's crop rows: feature rows sorted by track. Raises ExtractError."""
    rows = feature_stage.rows(crop_rows)
    if rows[0][S.STATUS] != S.STATUS_OK:
        raise ExtractError(rows[0][S.ERROR])
    return sorted(rows, key=lambda r: r[S.TRACK_ID])


def extract_one(
    video: str | bytes,
    cfg: ExtractConfig | None = None,
    *,
    crop_stage: CropStage | None = None,
    feature_stage: FeatureStage | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """Feature rows of one video through exactly the pipeline's two stages (``raydf detect``, the service).

    Args:
        video: a local path or URI, or the file's bytes.
        cfg: extraction config (ignored for stages that are given).
        crop_stage, feature_stage: reuse loaded stages (models load once).
        name: how to name the video in rows and errors (default: the path; ``<upload>`` for bytes).

    Returns:
        One feature row per face track (track 0 first), as the Parquet holds them, arrays as numpy.

    Raises:
        VideoDecodeError: the input cannot be read or is not a decodable video.
        ExtractError: faces or features failed on a decodable video.
    """
    cfg = cfg or ExtractConfig()
    crop_stage = crop_stage or CropStage(replace(cfg, crop_threads=0))  # alone in the process: all cores
    feature_stage = feature_stage or FeatureStage(cfg)
    return features_one(feature_stage, crop_one(crop_stage, video, name))
