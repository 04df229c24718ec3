"""Batch scoring: a model bundle applied to the rows of a feature store, aggregated per video.

A store row is one face track of a video (``(video_id, track_id)``). Every usable row is
scored; a video's score is an aggregate over its tracks, stated with every result:
``max`` (DFDC's rule and raydf's default: a video is fake if any face in it is) or ``mean``.
Papers differ here, so numbers computed with different aggregations are not comparable.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raydf import schema as S
from raydf.bundle import ModelBundle
from raydf.models.fusion import valid_enough
from raydf.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["AGGREGATIONS", "Predictions", "predict_features", "aggregate_tracks"]

AGGREGATIONS = ("max", "mean")  # how track scores become a video score
STYLE_SAMPLE = 60  # style sequences kept for the report's plots


@dataclass(frozen=True)
class Predictions:
    """Model outputs over a set of videos (sorted by video id)."""

    ids: list[str]  # video ids
    labels: np.ndarray  # (N,) 0/1
    probs: np.ndarray  # (N,) fake probability of the video (aggregated over its tracks)
    embeddings: np.ndarray  # (N, d) class-token embedding of the track that decided (max) or track 0 (mean)
    methods: list[str]
    tracks: list[int]  # tracks scored per video
    aggregation: str  # "max" | "mean"
    style_sample: np.ndarray  # (n, T, 512) style sequences of up to 60 videos (track 0), for plots
    valid_sample: np.ndarray  # (n, T)
    label_sample: np.ndarray  # (n,)


def aggregate_tracks(probs: np.ndarray, how: str) -> float:
    """One video's score from its tracks' scores (``max`` or ``mean``)."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown track aggregation {how!r}; known: {AGGREGATIONS}")
    return float(np.max(probs) if how == "max" else np.mean(probs))


def predict_features(
    bundle: ModelBundle,
    features_uri: str,
    keys: list[tuple[str, int]] | None,
    *,
    aggregation: str = "max",
    batch_size: int = 64,
) -> Predictions:
    """Score the ok rows of a feature store (all usable rows, or exactly ``keys``), one part at a time.

    Args:
        bundle: the trained model.
        features_uri: a feature store (local or ``s3://``).
        keys: the ``(video_id, track_id)`` rows to score; None scores every ok row with enough
            valid faces (the model's exclusion rule), e.g. a whole other dataset.
        aggregation: how a video's tracks combine (:data:`AGGREGATIONS`).

    Raises:
        ValueError: no usable rows.
    """
    import torch

    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown track aggregation {aggregation!r}; known: {AGGREGATIONS}")
    model = bundle.model()
    store = FeatureStore(features_uri)
    wanted = None
    if keys is not None:
        wanted = pa.array(sorted({f"{v}\x1f{t}" for v, t in keys}), pa.string())
    per_video: dict[str, list[tuple[int, float, np.ndarray]]] = defaultdict(list)
    meta: dict[str, tuple[int, str]] = {}
    styles, valids, slabels = [], [], []
    cols = [S.VIDEO_ID, S.TRACK_ID, S.LABEL, S.METHOD, S.STATUS, S.CONTENT, S.STYLE, S.FACE_VALID]
    with torch.inference_mode():
        for t in store.iter_parts(cols):
            mask = pc.equal(t[S.STATUS], S.STATUS_OK)
            if wanted is not None:
                joined = pc.binary_join_element_wise(t[S.VIDEO_ID], pc.cast(t[S.TRACK_ID], pa.string()), "\x1f")
                mask = pc.and_(mask, pc.is_in(joined, wanted))
            t = t.filter(mask)
            if not t.num_rows:
                continue
            valid = S.stack_column(t, S.FACE_VALID)
            if keys is None:  # a whole other dataset: apply the model's exclusion rule
                t = t.filter(pa.array(valid_enough(valid, bundle.fusion_config.min_valid_fraction)))
                if not t.num_rows:
                    continue
                valid = S.stack_column(t, S.FACE_VALID)
            content, style = S.stack_column(t, S.CONTENT), S.stack_column(t, S.STYLE)
            ids, tracks = t.column(S.VIDEO_ID).to_pylist(), t.column(S.TRACK_ID).to_pylist()
            labels, methods = t.column(S.LABEL).to_pylist(), t.column(S.METHOD).to_pylist()
            for i in range(0, t.num_rows, batch_size):
                # stack_column gives read-only views of the Arrow buffers: torch.tensor copies the batch
                c = torch.tensor(content[i : i + batch_size])  # (b, K, 2048)
                s = torch.tensor(style[i : i + batch_size])  # (b, T, 512)
                v = torch.tensor(valid[i : i + batch_size])  # (b, T)
                emb = model.embed(c, s, v)  # (b, d)
                p = torch.sigmoid(model.head(emb).squeeze(-1)).numpy()  # (b,) as FusionClassifier.forward
                for j in range(len(p)):
                    row = i + j
                    per_video[ids[row]].append((int(tracks[row] or 0), float(p[j]), emb[j].numpy()))
                    meta[ids[row]] = (int(labels[row]), methods[row])
            main = np.asarray([(tr or 0) == 0 for tr in tracks])
            if main.any() and sum(len(x) for x in styles) < STYLE_SAMPLE:
                styles.append(style[main][:STYLE_SAMPLE])
                valids.append(valid[main][:STYLE_SAMPLE])
                slabels.append(np.asarray(labels)[main][:STYLE_SAMPLE])
    if not per_video:
        raise ValueError(f"no usable (ok) rows to score in {features_uri}")
    out_ids = sorted(per_video)
    probs, embs, n_tracks = [], [], []
    for vid in out_ids:
        rows = sorted(per_video[vid], key=lambda x: x[0])
        ps = np.asarray([p for _, p, _ in rows])
        probs.append(aggregate_tracks(ps, aggregation))
        embs.append(rows[int(np.argmax(ps))][2] if aggregation == "max" else rows[0][2])
        n_tracks.append(len(rows))
    empty = np.zeros((0, bundle.num_frames), np.float32)
    return Predictions(
        ids=out_ids,
        labels=np.asarray([meta[v][0] for v in out_ids], int),
        probs=np.asarray(probs, np.float64),
        embeddings=np.stack(embs),
        methods=[meta[v][1] for v in out_ids],
        tracks=n_tracks,
        aggregation=aggregation,
        style_sample=np.concatenate(styles)[:STYLE_SAMPLE] if styles else empty[:, :, None].repeat(S.STYLE_DIM, 2),
        valid_sample=np.concatenate(valids)[:STYLE_SAMPLE] if valids else empty.astype(bool),
        label_sample=np.concatenate(slabels)[:STYLE_SAMPLE] if slabels else np.zeros(0, int),
    )
