"""The generated dataset (raydf.synth): layout, pairing, determinism, ground truth, honesty, signal."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from raydf.synth import (
    FAMILIES,
    METADATA_FILE,
    SynthConfig,
    SynthError,
    make_dataset,
    read_metadata,
    write_noface_video,
    write_video,
)
from raydf.video import read_video

WIDTH, HEIGHT = 320, 240
RECORD_KEYS = {
    "video_id", "file", "label", "source_id", "family", "num_frames", "fps", "width", "height", "seed",
    "boxes", "motion", "manipulation", "codec", "generator",
}  # fmt: skip


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """6 pairs (index 5 very short), regular lengths 20..30 frames."""
    out = tmp_path_factory.mktemp("synth_small")
    make_dataset(out, videos=6, seed=3, min_frames=20, max_frames=30)
    return out


@pytest.fixture(scope="module")
def mtcnn():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu")


def _frames(root: Path, rec: dict) -> np.ndarray:
    """All decoded frames of a video, (T, H, W, 3) uint8."""
    video = read_video(root / rec["file"], rec["num_frames"])
    assert video.num_frames == rec["num_frames"], rec["file"]
    return video.stack()


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- layout and metadata -----------------------------------------------------------------------
def test_layout_and_metadata_describe_every_video(small_dataset: Path) -> None:
    meta = read_metadata(small_dataset)
    assert len(meta) == 12
    on_disk = {str(p.relative_to(small_dataset)) for p in small_dataset.glob("*/*.mp4")}
    assert on_disk == {r["file"] for r in meta}
    assert len({r["video_id"] for r in meta}) == 12
    for rec in meta:
        assert set(rec) == RECORD_KEYS, rec["video_id"]
        assert rec["file"].startswith("real/" if rec["label"] == 0 else "fake/")
        assert (rec["fps"], rec["width"], rec["height"], rec["seed"]) == (25, WIDTH, HEIGHT, 3)
        assert len(rec["boxes"]) == rec["num_frames"] and all(len(b) == 4 for b in rec["boxes"])
        video = read_video(small_dataset / rec["file"], 2)
        assert video.num_frames == rec["num_frames"], rec["file"]
        assert video.stack().shape[1:] == (HEIGHT, WIDTH, 3)
        assert video.fps == pytest.approx(25)
    with open(small_dataset / METADATA_FILE) as f:  # one JSON object per line
        assert all(isinstance(json.loads(line), dict) for line in f)


def test_each_fake_pairs_with_a_real_of_the_same_motion_and_length(small_dataset: Path) -> None:
    meta = read_metadata(small_dataset)
    reals = {r["video_id"]: r for r in meta if r["label"] == 0}
    fakes = [r for r in meta if r["label"] == 1]
    assert len(reals) == len(fakes) == 6
    for real in reals.values():
        assert (real["source_id"], real["family"], real["manipulation"]) == (real["video_id"], "", {})
    for i, fake in enumerate(sorted(fakes, key=lambda r: r["video_id"])):
        real = reals[fake["source_id"]]
        assert fake["family"] == FAMILIES[i % len(FAMILIES)] == fake["manipulation"]["family"]
        assert fake["file"] == f"fake/{fake['source_id']}_{fake['family']}.mp4"
        for key in ("num_frames", "boxes", "motion", "codec", "fps"):
            assert fake[key] == real[key], (fake["video_id"], key)
        if fake["family"] == "blend":  # per-frame jitter is recorded and varies
            assert len(fake["manipulation"]["per_frame"]["alpha"]) == fake["num_frames"]
            if fake["num_frames"] > 1:
                assert np.ptp(fake["manipulation"]["per_frame"]["alpha"]) > 0
    assert {f["family"] for f in fakes} == set(FAMILIES)


def test_lengths_vary_and_very_short_videos_are_present(small_dataset: Path) -> None:
    lengths = {r["video_id"]: r["num_frames"] for r in read_metadata(small_dataset)}
    short = {k: n for k, n in lengths.items() if n <= 8}
    assert set(short) == {"0005", "0005_flicker"}  # every 6th pair
    assert all(1 <= n <= 8 for n in short.values())
    regular = [n for k, n in lengths.items() if k not in short]
    assert all(20 <= n <= 30 for n in regular) and len(set(regular)) > 1


def test_faces_stay_inside_the_frame_and_move_smoothly(small_dataset: Path) -> None:
    meta = [r for r in read_metadata(small_dataset) if r["label"] == 0]
    travelled, zooms = [], []
    for rec in meta:
        boxes = np.asarray(rec["boxes"])  # (T, 4)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= WIDTH).all() and (boxes[:, 3] <= HEIGHT).all()
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        assert (steps < 6).all(), rec["video_id"]  # no jumps: a smooth camera path
        travelled.append(np.linalg.norm(centres.max(0) - centres.min(0)))
        widths = boxes[:, 2] - boxes[:, 0]
        zooms.append(widths.max() / widths.min())
        assert abs(rec["motion"]["roll_deg"]) + rec["motion"]["roll_amp_deg"] <= SynthConfig().max_rotation_deg + 1e-3
    assert max(travelled) > 10  # the camera pans
    assert max(zooms) > 1.03  # and zooms


def test_fake_differs_from_its_real_only_in_the_face_region(small_dataset: Path) -> None:
    meta = read_metadata(small_dataset)
    reals = {r["video_id"]: r for r in meta if r["label"] == 0}
    for fake in (r for r in meta if r["label"] == 1 and r["num_frames"] > 8):
        real = reals[fake["source_id"]]
        a, b = _frames(small_dataset, real).astype(np.int16), _frames(small_dataset, fake).astype(np.int16)
        diff = np.abs(a - b).mean(-1)  # (T, H, W)
        inside, outside = [], []
        for t, (x1, y1, x2, y2) in enumerate(fake["boxes"]):
            w, h = x2 - x1, y2 - y1
            face = np.zeros((HEIGHT, WIDTH), bool)
            face[int(y1 + 0.2 * h) : int(y2 - 0.2 * h), int(x1 + 0.2 * w) : int(x2 - 0.2 * w)] = True
            far = np.ones((HEIGHT, WIDTH), bool)
            far[max(int(y1 - 0.3 * h), 0) : int(y2 + 0.3 * h), max(int(x1 - 0.3 * w), 0) : int(x2 + 0.3 * w)] = False
            inside.append(diff[t][face].mean())
            outside.append(diff[t][far].mean())
        # Away from the face only the encoder's choices differ (its quantisation of the shared grain).
        assert np.mean(outside) < 3.5, fake["video_id"]
        assert np.mean(inside) > 4 * np.mean(outside), fake["video_id"]


# ---- determinism -------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_datasets(tmp_path: Path) -> None:
    kwargs = dict(videos=3, min_frames=4, max_frames=12)
    make_dataset(tmp_path / "a", seed=5, **kwargs)
    make_dataset(tmp_path / "b", seed=5, **kwargs)
    make_dataset(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (_tree_hashes(tmp_path / k) for k in "abc")
    assert len(a) == 7 and a == b
    assert set(a) == set(c) and all(a[k] != c[k] for k in a)  # another seed: another dataset


def test_a_larger_dataset_extends_a_smaller_one(tmp_path: Path) -> None:
    make_dataset(tmp_path / "two", videos=2, seed=9, min_frames=3, max_frames=6)
    make_dataset(tmp_path / "three", videos=3, seed=9, min_frames=3, max_frames=6)
    two, three = _tree_hashes(tmp_path / "two"), _tree_hashes(tmp_path / "three")
    videos = {k: v for k, v in two.items() if k.endswith(".mp4")}
    assert len(videos) == 4 and videos.items() <= three.items()
    lines = (tmp_path / "three" / METADATA_FILE).read_text().splitlines(keepends=True)
    assert "".join(lines[:4]) == (tmp_path / "two" / METADATA_FILE).read_text()


def test_zero_strength_fakes_equal_their_reals(tmp_path: Path) -> None:
    cfg = dataclasses.replace(SynthConfig(), strength=0.0)
    make_dataset(tmp_path, videos=2, seed=1, min_frames=5, max_frames=8, config=cfg)
    for fake in (r for r in read_metadata(tmp_path) if r["label"] == 1):
        real_file = tmp_path / "real" / f"{fake['source_id']}.mp4"
        assert (tmp_path / fake["file"]).read_bytes() == real_file.read_bytes()


def test_existing_dataset_is_kept_unless_overwrite(tmp_path: Path) -> None:
    meta = make_dataset(tmp_path, videos=1, seed=0, min_frames=3, max_frames=3)
    before = meta.read_bytes()
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        make_dataset(tmp_path, videos=1, seed=1, min_frames=3, max_frames=3)
    assert meta.read_bytes() == before
    make_dataset(tmp_path, videos=1, seed=1, min_frames=3, max_frames=3, overwrite=True)
    assert meta.read_bytes() != before and json.loads(meta.read_text().splitlines()[0])["seed"] == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"videos": 0}, "videos"),
        ({"families": ("blend", "deepfacelab")}, "families"),
        ({"width": 321}, "even"),
        ({"min_frames": 10, "max_frames": 5}, "min_frames"),
        ({"width": 64, "height": 64}, "too small"),
    ],
)
def test_invalid_arguments_are_rejected(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"videos": 1, "seed": 0, "min_frames": 2, "max_frames": 2, **kwargs}
    with pytest.raises(SynthError, match=match):
        make_dataset(tmp_path, **args)


def test_config_rejects_inverted_ranges() -> None:
    with pytest.raises(SynthError, match="zoom"):
        SynthConfig(zoom=(1.2, 0.9))
    with pytest.raises(SynthError, match="jitter_rho"):
        SynthConfig(jitter_rho=1.0)


# ---- helpers for other tests' fixtures ---------------------------------------------------------
def test_write_video_round_trips_one_odd_sized_frame(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:31, 0:45]
    frame = np.stack([yy * 8, xx * 5, (yy + xx) * 3], -1).astype(np.uint8)  # smooth gradients
    path = write_video(tmp_path / "sub" / "one.mp4", frame[None], fps=29.97)
    video = read_video(path, 4)
    assert video.num_frames == 1 and video.fps == pytest.approx(29.97, abs=0.01)
    frames = video.stack()
    assert frames.shape == (4, 32, 46, 3)  # padded to even sizes for yuv420p
    assert np.abs(frames[0, :31, :45].astype(int) - frame).mean() < 4


def test_write_video_streams_frames_and_rejects_bad_ones(tmp_path: Path) -> None:
    frames = (np.full((32, 48, 3), v, np.uint8) for v in range(0, 250, 25))  # a generator: 10 frames
    assert read_video(write_video(tmp_path / "ok.mp4", frames), 1).num_frames == 10
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="first frame"):
        write_video(tmp_path / "sizes.mp4", [np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.mp4"]  # failures leave no file behind


def test_noface_video_has_no_face_for_mtcnn(tmp_path: Path, mtcnn) -> None:
    path = write_noface_video(tmp_path / "noface.mp4", 12, seed=4)
    video = read_video(path, 12)
    frames = video.stack()
    assert video.num_frames == 12 and frames.shape == (12, HEIGHT, WIDTH, 3)
    assert np.abs(np.diff(frames.astype(int), axis=0)).mean() > 1  # it moves
    boxes, probs = mtcnn.detect(list(video.frames))
    best = [0.0 if b is None else float(np.max(p)) for b, p in zip(boxes, probs)]  # no face: box None
    assert max(best) < 0.9


# ---- ground truth against MTCNN ----------------------------------------------------------------
def test_ground_truth_boxes_match_mtcnn(small_dataset: Path, mtcnn) -> None:
    ious = []
    for rec in read_metadata(small_dataset):
        video = read_video(small_dataset / rec["file"], 8)  # 8 frames sampled uniformly (all, if fewer)
        boxes, _ = mtcnn.detect(list(video.frames))
        for idx, found in zip(video.indices.tolist(), boxes):
            truth = rec["boxes"][idx]
            ious.append(0.0 if found is None else max(_iou(b, truth) for b in found))
    ious = np.asarray(ious)
    assert len(ious) == 96
    assert (ious >= 0.7).mean() >= 0.9, np.round(ious, 2)


# ---- honesty and signal (40 pairs) -------------------------------------------------------------
@pytest.fixture(scope="module")
def paired_features(tmp_path_factory) -> dict[str, np.ndarray]:
    """40 pairs; per video: coarse statistics and random-conv-net features of the face crops."""
    import cv2
    import torch

    root = tmp_path_factory.mktemp("synth_40")
    make_dataset(root, videos=40, seed=11, min_frames=16, max_frames=40)
    torch.manual_seed(0)
    net = torch.nn.Sequential(  # random init: what a feature extractor without weights would see
        torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, 2, 1), torch.nn.ReLU(),
    ).eval()  # fmt: skip
    coarse, deep, labels, groups, families = [], [], [], [], []
    for rec in read_metadata(root):
        frames = _frames(root, rec)
        gray = frames.astype(np.float32).mean(-1)  # (T, H, W)
        means, stds, diffs, crops = [], [], [], []
        for t, (x1, y1, x2, y2) in enumerate(rec["boxes"]):
            face = (slice(int(round(y1)), int(round(y2))), slice(int(round(x1)), int(round(x2))))
            means.append(gray[t][face].mean())
            stds.append(gray[t][face].std())
            if t:
                diffs.append(np.abs(gray[t][face] - gray[t - 1][face]).mean())
            side = 1.2 * max(x2 - x1, y2 - y1)  # square crop, 20% margin
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            sx0, sy0 = max(int(cx - side / 2), 0), max(int(cy - side / 2), 0)
            crop = frames[t, sy0 : int(cy + side / 2), sx0 : int(cx + side / 2)]
            crops.append(cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA))
        frame_diff = np.abs(np.diff(gray, axis=0)).mean() if len(gray) > 1 else 0.0
        size = (root / rec["file"]).stat().st_size
        coarse.append([np.mean(means), np.std(means), np.mean(stds), np.std(stds), frame_diff,
                       np.mean(diffs) if diffs else 0.0, size, size / len(gray)])  # fmt: skip  # [5]: face diffs
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255 - 0.5  # (T, 3, 64, 64)
        with torch.no_grad():
            f = net(x)  # (T, 64, 8, 8)
        temporal = (f[1:] - f[:-1]).abs().mean((0, 2, 3)) if len(f) > 1 else torch.zeros(64)
        deep.append(torch.cat([f.mean((2, 3)).mean(0), f.std((2, 3)).mean(0), temporal]).numpy())
        labels.append(rec["label"])
        groups.append(rec["source_id"])
        families.append(rec["family"])
    return {
        "coarse": np.asarray(coarse),
        "deep": np.asarray(deep),
        "label": np.asarray(labels),
        "group": np.asarray(groups),
        "family": np.asarray(families),
    }


def _cv_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """ROC-AUC of out-of-fold logistic-regression scores; a pair never straddles folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    scores = cross_val_predict(clf, x, y, groups=groups, cv=GroupKFold(n_splits=5), method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


@pytest.mark.slow
def test_coarse_statistics_cannot_tell_real_from_fake(paired_features: dict[str, np.ndarray]) -> None:
    f = paired_features
    assert len(f["label"]) == 80 and f["label"].sum() == 40
    auc = _cv_auc(f["coarse"], f["label"], f["group"])
    assert auc <= 0.65, f"face mean/std, frame differences and file size separate real from fake: AUC {auc:.3f}"
    # The probe is not blind: 30% more face-region frame difference in the fakes would give them away.
    leaky = f["coarse"].copy()
    leaky[f["label"] == 1, 5] *= 1.3
    assert _cv_auc(leaky, f["label"], f["group"]) > 0.8


@pytest.mark.slow
def test_random_conv_features_of_face_crops_detect_fakes(paired_features: dict[str, np.ndarray]) -> None:
    f = paired_features
    auc = _cv_auc(f["deep"], f["label"], f["group"])
    assert auc >= 0.9, f"the manipulation is too weak for a random-feature probe: AUC {auc:.3f}"
    for family in FAMILIES:  # each family on its own carries the signal (train on one, test on another later)
        pairs = np.isin(f["group"], f["group"][f["family"] == family])
        assert _cv_auc(f["deep"][pairs], f["label"][pairs], f["group"][pairs]) >= 0.8, family
