"""The contract between extraction (writer) and training (reader).

Column names, Arrow types and shapes of the manifest and of the feature
Parquet live here and nowhere else. Feature arrays are stored as nested Arrow
lists (``list<fixed_size_list<float32, D>>``) so plain ``pyarrow`` and pandas
read them without Ray; :func:`stack_column` turns them
back into numpy::

    import pyarrow.parquet as pq
    from raydf.schema import stack_column, CONTENT, STYLE
    table = pq.read_table("features/")           # or "s3://bucket/features/"
    ok = table.filter(pc.equal(table["status"], "ok"))
    content = stack_column(ok, CONTENT)           # (N, K, 2048) float32
    style = stack_column(ok, STYLE)               # (N, T, 512) float32
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

# ---- manifest: one row per input video -------------------------------------------------------
VIDEO_ID = "video_id"  # unique within a dataset, stable across runs
URI = "uri"  # local path or fsspec URI (s3://...)
LABEL = "label"  # 0 real, 1 fake
DATASET = "dataset"  # ffpp | celebdf | dfdc | folders | generated ...
SPLIT = "split"  # train | val | test | "" (unknown: split later by source_id)
SOURCE_ID = "source_id"  # the real video/identity a sample derives from (split key)
METHOD = "method"  # manipulation method ("" for real videos)
COMPRESSION = "compression"  # raw | c23 | c40 | ""
META = "meta"  # JSON object with anything else the layout knows

REAL, FAKE = 0, 1
SPLITS = ("train", "val", "test")

# Dataset layouts and FaceForensics++ methods: one list each (raydf.datasets registers a reader per layout).
LAYOUT_NAMES = ("ffpp", "celebdf", "dfdc", "folders")
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")

MANIFEST_COLUMNS = (VIDEO_ID, URI, LABEL, DATASET, SPLIT, SOURCE_ID, METHOD, COMPRESSION, META)
MANIFEST_SCHEMA = pa.schema(
    [
        (VIDEO_ID, pa.string()),
        (URI, pa.string()),
        (LABEL, pa.int8()),
        (DATASET, pa.string()),
        (SPLIT, pa.string()),
        (SOURCE_ID, pa.string()),
        (METHOD, pa.string()),
        (COMPRESSION, pa.string()),
        (META, pa.string()),
    ]
)

# ---- features: one row per (video, face track) ------------------------------------------------------
TRACK_ID = "track_id"  # int32: 0 = the video's main face (and every error row), 1.. further tracks by score
ROW_KEY = (VIDEO_ID, TRACK_ID)  # a feature row's key: exactly one row per key in a compacted store
TRACK_SCORE = "track_score"  # float32: presence x mean box area / frame area of the track; 0 for a fallback track
# Source identity of the input a row was made from: a row is "done" only while these match the input.
SOURCE_URI = "source_uri"  # the input URI with user info and query string stripped (never credentials)
SOURCE_SIZE = "source_size"  # int64 bytes
SOURCE_MTIME = "source_mtime"  # float64 seconds since the epoch (null where the store gives an ETag instead)
SOURCE_ETAG = "source_etag"  # string ("" where the filesystem has no ETag)
SOURCE_COLUMNS = (SOURCE_URI, SOURCE_SIZE, SOURCE_MTIME, SOURCE_ETAG)
FRAME_TIMES = "frame_times"  # (T,) float32 seconds of each sampled frame, from the stream's pts
NOTE = "note"  # plain-words remark on a usable row (e.g. frames too small to detect in); "" when none
N_FRAMES = "n_frames"  # true decoded frame count of the video
NUM_SAMPLED = "num_sampled"  # T
FRAME_INDICES = "frame_indices"  # (T,) int32
FACE_VALID = "face_valid"  # (T,) bool
FACE_BOXES = "face_boxes"  # (T, 4) float32, x1 y1 x2 y2 in full-resolution pixels
FACE_PROBS = "face_probs"  # (T,) float32, 0 where no face
CONTENT = "content"  # (K, 2048) float32, K = T // 16
STYLE = "style"  # (T, 512) float32
STYLE_LEVEL = "style_level"  # int
CONTENT_PROVENANCE = "content_provenance"  # sha256:<hex> | random:<seed>:<config>
STYLE_PROVENANCE = "style_provenance"
STATUS = "status"  # ok | error
ERROR = "error"  # "" when ok
T_READ = "t_read_s"
T_DECODE = "t_decode_s"
T_FACES = "t_faces_s"
T_CONTENT = "t_content_s"
T_STYLE = "t_style_s"

STATUS_OK = "ok"
STATUS_ERROR = "error"

CONTENT_DIM = 2048
STYLE_DIM = 512
BOX_DIM = 4

TIMING_COLUMNS = (T_READ, T_DECODE, T_FACES, T_CONTENT, T_STYLE)


def _matrix(width: int) -> pa.DataType:
    return pa.list_(pa.list_(pa.float32(), width))


FEATURE_SCHEMA = pa.schema(
    list(MANIFEST_SCHEMA)
    + [
        (TRACK_ID, pa.int32()),
        (TRACK_SCORE, pa.float32()),
        (SOURCE_URI, pa.string()),
        (SOURCE_SIZE, pa.int64()),
        (SOURCE_MTIME, pa.float64()),
        (SOURCE_ETAG, pa.string()),
        (N_FRAMES, pa.int64()),
        (NUM_SAMPLED, pa.int32()),
        (FRAME_INDICES, pa.list_(pa.int32())),
        (FRAME_TIMES, pa.list_(pa.float32())),
        (FACE_VALID, pa.list_(pa.bool_())),
        (FACE_BOXES, _matrix(BOX_DIM)),
        (FACE_PROBS, pa.list_(pa.float32())),
        (CONTENT, _matrix(CONTENT_DIM)),
        (STYLE, _matrix(STYLE_DIM)),
        (STYLE_LEVEL, pa.int32()),
        (CONTENT_PROVENANCE, pa.string()),
        (STYLE_PROVENANCE, pa.string()),
        (STATUS, pa.string()),
        (ERROR, pa.string()),
        (NOTE, pa.string()),
    ]
    + [(c, pa.float32()) for c in TIMING_COLUMNS]
)
FEATURE_COLUMNS = tuple(FEATURE_SCHEMA.names)

# Key/value metadata stored in every part file's schema.
META_EXTRACT_CONFIG = b"raydf.extract_config"
META_PROVENANCE = b"raydf.provenance"


def matrix_array(rows: list[np.ndarray | None], width: int) -> pa.Array:
    """Build a ``list<fixed_size_list<float32, width>>`` array from per-row 2-D arrays.

    ``None`` rows become nulls (error rows carry no features).
    """
    offsets = [0]
    flats = []
    valid = []
    for r in rows:
        if r is None:
            offsets.append(offsets[-1])
            valid.append(False)
            continue
        a = np.ascontiguousarray(r, dtype=np.float32).reshape(-1, width)
        flats.append(a.reshape(-1))
        offsets.append(offsets[-1] + a.shape[0])
        valid.append(True)
    flat = np.concatenate(flats) if flats else np.zeros(0, np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)
    mask = pa.array([not v for v in valid], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner, mask=mask)


def vector_array(rows: list[np.ndarray | None], typ: pa.DataType) -> pa.Array:
    """Build a ``list<typ>`` array from per-row 1-D arrays (``None`` -> null)."""
    return pa.array([None if r is None else np.asarray(r).tolist() for r in rows], pa.list_(typ))


def stack_column(table: pa.Table, column: str) -> np.ndarray:
    """A whole fixed-shape list column -> one dense numpy array, zero-copy where Arrow allows.

    ``content`` -> (N, K, 2048), ``style`` -> (N, T, 512), ``face_boxes`` -> (N, T, 4),
    ``face_valid`` / ``face_probs`` / ``frame_indices`` / ``frame_times`` -> (N, T). All rows must have the
    same length (one extraction config); null rows are rejected.
    """
    col = table.column(column).combine_chunks()
    if col.null_count:
        raise ValueError(f"column {column!r} has {col.null_count} null rows; filter status == 'ok' first")
    n = len(col)
    values = col.flatten()
    inner_width = None
    if pa.types.is_fixed_size_list(values.type):
        inner_width = values.type.list_size
        values = values.flatten()
    arr = values.to_numpy(zero_copy_only=False)
    if n == 0:
        return arr.reshape(0, 0, inner_width) if inner_width else arr.reshape(0, 0)
    if inner_width:
        return arr.reshape(n, -1, inner_width)
    return arr.reshape(n, -1)


def feature_table(rows: list[dict[str, Any]], metadata: dict[bytes, bytes] | None = None) -> pa.Table:
    """Rows (dicts with numpy arrays, ``None`` for absent features) -> a table with :data:`FEATURE_SCHEMA`.

    Missing keys become nulls. Matrix columns use the zero-copy builders above, so a batch of
    videos costs no per-float Python work.
    """
    matrices = {CONTENT: CONTENT_DIM, STYLE: STYLE_DIM, FACE_BOXES: BOX_DIM}
    vectors = {FRAME_INDICES: pa.int32(), FRAME_TIMES: pa.float32(), FACE_VALID: pa.bool_(), FACE_PROBS: pa.float32()}
    arrays = []
    for f in FEATURE_SCHEMA:
        values = [r.get(f.name) for r in rows]
        if f.name in matrices:
            arrays.append(matrix_array(values, matrices[f.name]))
        elif f.name in vectors:
            arrays.append(vector_array(values, vectors[f.name]))
        else:
            arrays.append(pa.array(values, f.type))
    schema = FEATURE_SCHEMA.with_metadata(metadata) if metadata else FEATURE_SCHEMA
    return pa.Table.from_arrays(arrays, schema=schema)


# ---- metric names: what training logs per epoch and what Tune, compare and the reports read ----------
EPOCH = "epoch"  # 0-based epoch index (the MLflow step)
TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
VAL_AUC = "val_auc"
LR = "lr"
EPOCH_S = "epoch_s"  # wall seconds of the epoch
BEST_EPOCH = "best_epoch"
BEST_VAL_LOSS = "best_val_loss"
RESUMED_FROM = "resumed_from"  # -1, or the checkpoint epoch a restarted worker group resumed from
EPOCH_METRICS = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, VAL_AUC, LR, EPOCH_S, BEST_VAL_LOSS)  # logged per epoch

# Evaluation metrics (raydf.evaluate.compute_metrics keys), logged as "<evaluation>_<metric>", e.g. test_roc_auc.
ACCURACY, PRECISION, RECALL, F1 = "accuracy", "precision", "recall", "f1"
ROC_AUC, AVERAGE_PRECISION, EER, LOG_LOSS = "roc_auc", "average_precision", "eer", "log_loss"
EVAL_METRICS = (ACCURACY, PRECISION, RECALL, F1, ROC_AUC, AVERAGE_PRECISION, EER, LOG_LOSS)
TEST = "test"  # the name of the within-set evaluation


def eval_metric(evaluation: str, metric: str) -> str:
    """MLflow name of an evaluation's metric: ``eval_metric("test", ROC_AUC) == "test_roc_auc"``."""
    return f"{evaluation}_{metric}"
