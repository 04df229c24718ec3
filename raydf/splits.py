"""Split planning: which feature rows train, validate and test a model (driver side, light columns only).

Rows are keyed by ``(video_id, track_id)``; a split is decided per *video* and every track of
a video goes with it. Rows keep the manifest's split; rows without one are split by
``source_id`` (a real video, all fakes made from it and its self-blended pseudo-fake land in
the same split), shuffled with the config's seed. The same plan is made by training and by
evaluation (:func:`plan_splits` is deterministic given the store and the config).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raydf import schema as S
from raydf.config import TrainConfig
from raydf.models.fusion import valid_enough
from raydf.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["INDEX_COLUMNS", "SplitPlan", "load_index", "assign_splits", "plan_splits"]

INDEX_COLUMNS = (S.VIDEO_ID, S.TRACK_ID, S.LABEL, S.SPLIT, S.SOURCE_ID, S.DATASET, S.METHOD, S.META, S.STATUS, S.FACE_VALID)
PSEUDO_METHOD = "self_blend"  # raydf.pseudofake.PSEUDO_METHOD (that module needs OpenCV; equality is tested)

# Why a row is left out of training and evaluation.
EXCLUDED_ERROR, EXCLUDED_FEW_FACES, EXCLUDED_METHOD, EXCLUDED_PSEUDO = "error", "few_faces", "other_method", "pseudo_fake"


@dataclass(frozen=True)
class SplitPlan:
    """The rows of each split, as ``(video_id, track_id)`` keys, and what was left out."""

    keys: dict[str, list[tuple[str, int]]]  # split -> sorted keys
    excluded: dict[str, int]  # reason -> rows
    labels: dict[tuple[str, int], int]  # key -> label
    datasets: tuple[str, ...]  # dataset names of the usable rows
    pseudo_val: bool = False  # validation uses pseudo-fakes (the dataset has no fakes of its own)

    def videos(self, split: str) -> list[str]:
        return sorted({v for v, _ in self.keys[split]})

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.keys.items()}


def load_index(features_uri: str) -> pa.Table:
    """The light columns (:data:`INDEX_COLUMNS`) of every row of a feature store."""
    return FeatureStore(features_uri).read(list(INDEX_COLUMNS))


def assign_splits(index: pa.Table, cfg: TrainConfig) -> tuple[dict[str, str], dict[str, int]]:
    """Video id -> ``train`` | ``val`` | ``test`` for videos with a usable row, plus excluded row counts.

    Kept for callers that think in videos; :func:`plan_splits` gives the row keys.
    """
    plan = plan_splits(index, cfg)
    return {v: s for s, keys in plan.keys.items() for v, _ in keys}, plan.excluded


def plan_splits(index: pa.Table, cfg: TrainConfig) -> SplitPlan:
    """Plan the splits of a store's rows (see module docstring).

    Left out: rows that are not ``ok``; rows with fewer valid faces than
    ``cfg.model.min_valid_fraction``; fakes of other methods when ``cfg.methods`` is set;
    pseudo-fakes when ``cfg.fakes == "dataset"``, and dataset fakes when ``cfg.fakes == "pseudo"``
    (training only: validation and test always use the dataset's fakes where there are any).

    Raises:
        ValueError: ``cfg.fakes`` asks for pseudo-fakes and the store has none.
    """
    rows = index.to_pylist()
    excluded: Counter[str] = Counter()
    usable = []
    for r in rows:
        if r[S.STATUS] != S.STATUS_OK:
            excluded[EXCLUDED_ERROR] += 1
        elif cfg.methods and r[S.LABEL] == S.FAKE and r[S.METHOD] != PSEUDO_METHOD and r[S.METHOD] not in cfg.methods:
            excluded[EXCLUDED_METHOD] += 1
        elif not bool(valid_enough(np.asarray([r[S.FACE_VALID]], bool), cfg.model.min_valid_fraction)[0]):
            excluded[EXCLUDED_FEW_FACES] += 1
        else:
            usable.append(r)
    is_pseudo = {r[S.VIDEO_ID]: r[S.METHOD] == PSEUDO_METHOD for r in usable}
    has_pseudo = any(is_pseudo.values())
    has_dataset_fakes = any(r[S.LABEL] == S.FAKE and not is_pseudo[r[S.VIDEO_ID]] for r in usable)
    fakes = getattr(cfg, "fakes", "dataset")
    if fakes in ("pseudo", "both") and not has_pseudo:
        raise ValueError(f"fakes={fakes!r} needs pseudo-fakes in the store: extract with --pseudo-fakes self-blend")

    # One split per video: the manifest's, else by source_id groups; a pseudo-fake follows its real video.
    split_of_video: dict[str, str] = {}
    pending: dict[str, str] = {}
    for r in usable:
        vid = r[S.VIDEO_ID]
        if r[S.SPLIT] in S.SPLITS:
            split_of_video[vid] = r[S.SPLIT]
        elif not is_pseudo[vid]:
            pending[vid] = r[S.SOURCE_ID] or vid
    have = set(split_of_video.values())
    sources = sorted(set(pending.values()))
    rng = np.random.default_rng(cfg.seed)
    rng.shuffle(sources)
    n = len(sources)
    n_test = 0 if "test" in have else int(round(n * cfg.test_fraction))
    n_val = 0 if "val" in have else max(1 if n > 2 else 0, int(round(n * cfg.val_fraction)))
    split_of_source = {src: "test" if i < n_test else ("val" if i < n_test + n_val else "train") for i, src in enumerate(sources)}
    for vid, src in pending.items():
        split_of_video[vid] = split_of_source[src]
    for r in usable:  # the pseudo-fake's source_id is its real video's id
        vid = r[S.VIDEO_ID]
        if vid not in split_of_video:
            split_of_video[vid] = split_of_video.get(r[S.SOURCE_ID], "train")

    keys: dict[str, list[tuple[str, int]]] = {s: [] for s in S.SPLITS}
    pseudo_val = has_pseudo and not has_dataset_fakes
    for r in usable:
        key = (r[S.VIDEO_ID], int(r[S.TRACK_ID] or 0))
        split = split_of_video[r[S.VIDEO_ID]]
        pseudo = is_pseudo[r[S.VIDEO_ID]]
        if pseudo and split == "train" and fakes == "dataset":
            excluded[EXCLUDED_PSEUDO] += 1
            continue
        if pseudo and split != "train" and not pseudo_val:
            excluded[EXCLUDED_PSEUDO] += 1  # pseudo-fakes are for training; evaluation uses the dataset's fakes
            continue
        if not pseudo and split == "train" and fakes == "pseudo" and r[S.LABEL] == S.FAKE:
            excluded[EXCLUDED_METHOD] += 1
            continue
        keys[split].append(key)
    labels = {(r[S.VIDEO_ID], int(r[S.TRACK_ID] or 0)): int(r[S.LABEL]) for r in usable}
    datasets = tuple(sorted({r[S.DATASET] for r in usable}))
    return SplitPlan(
        keys={s: sorted(k) for s, k in keys.items()},
        excluded={k: excluded.get(k, 0) for k in (EXCLUDED_ERROR, EXCLUDED_FEW_FACES, EXCLUDED_METHOD, EXCLUDED_PSEUDO)},
        labels=labels,
        datasets=datasets,
        pseudo_val=pseudo_val,
    )
