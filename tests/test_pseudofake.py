"""Self-blended pseudo-fakes (raydf.pseudofake): where they change a frame, how much, drift, determinism."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from skimage import data

from raydf.config import ConfigError
from raydf.faces import expand_box
from raydf.pseudofake import (
    DRIFTING_PARAMS,
    PSEUDO_METHOD,
    SelfBlend,
    SelfBlendConfig,
    blend_seed,
    pseudo_video_id,
    self_blend,
)
from raydf.synth import ASTRONAUT_FACE_BOX

CFG = SelfBlendConfig()
T = 32  # the report's FF++ frame count


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # (512, 512, 3) uint8, one face (MTCNN box ASTRONAUT_FACE_BOX)


def _view(img: np.ndarray, zoom: float, dx: float, dy: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut zoomed by ``zoom`` and shifted by (dx, dy) into a (H, W) frame, and her face box there."""
    h, w = size
    m = np.array([[zoom, 0.0, dx], [0.0, zoom, dy]])
    frame = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    box = np.asarray(ASTRONAUT_FACE_BOX) * zoom + (dx, dy, dx, dy)
    return frame, box.astype(np.float32)


@pytest.fixture(scope="module")
def panning(astronaut) -> tuple[list[np.ndarray], np.ndarray]:
    """T frames of a camera panning and zooming over the astronaut (320x240), with her face boxes (T, 4)."""
    frames, boxes = [], []
    for t in range(T):
        zoom = 0.55 + 0.1 * np.sin(t / 7.0)
        frame, box = _view(astronaut, zoom, -40.0 + 2.0 * t, -10.0 + 15.0 * np.sin(t / 5.0), (240, 320))
        frames.append(frame)
        boxes.append(box)
    return frames, np.stack(boxes)


@pytest.fixture(scope="module")
def still(astronaut) -> tuple[list[np.ndarray], np.ndarray]:
    """T copies of the astronaut (any change between output frames is the blend's drift)."""
    return [astronaut] * T, np.tile(np.asarray(ASTRONAUT_FACE_BOX, np.float32), (T, 1))


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels where any channel differs."""
    return np.any(a != b, axis=2)


def _allowed(box: np.ndarray, shape: tuple[int, ...], margin: float = 0.2) -> np.ndarray:
    """(H, W) bool: the square crop faces.py cuts for ``box`` with ``margin``."""
    h, w = shape[:2]
    left, top, right, bottom = expand_box(box, margin, w, h)
    inside = np.zeros((h, w), bool)
    inside[top:bottom, left:right] = True
    return inside


def _box_region(box: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, slice]:
    h, w = shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return slice(max(y1, 0), min(y2, h)), slice(max(x1, 0), min(x2, w))


# ---- where and how much ------------------------------------------------------------------------
def test_only_the_face_region_changes_and_follows_the_face(panning) -> None:
    frames, boxes = panning
    result = self_blend(frames, boxes, seed=7)
    assert isinstance(result, SelfBlend) and result.applied.all()
    for t, (src, out, box) in enumerate(zip(frames, result.frames, boxes)):
        assert out.shape == src.shape and out.dtype == np.uint8
        changed = _changed(src, out)
        assert not (changed & ~_allowed(box, src.shape)).any(), f"frame {t}: a change outside the face crop"
        inner = changed[_box_region(box, src.shape)]
        assert inner.mean() > 0.3, f"frame {t}: only {inner.mean():.2f} of the face box changed"


def test_the_blend_is_subtle(still, panning) -> None:
    # A pseudo-fake, not a painted face: mean |difference| over the face box stays a few grey levels.
    for frames, boxes in (still, panning):
        for seed in range(4):
            result = self_blend(frames, boxes, seed=seed)
            for src, out, box in zip(frames, result.frames, boxes):
                region = _box_region(box, src.shape)
                diff = np.abs(out[region].astype(np.int16) - src[region].astype(np.int16))
                assert 0.3 < diff.mean() < 12.0, f"seed {seed}: mean |diff| {diff.mean():.2f} in the face box"


def test_frames_without_a_face_are_left_unchanged(panning) -> None:
    frames, boxes = panning
    boxes = boxes.copy()
    boxes[[0, 5, 6]] = np.nan  # no detection
    boxes[9] = 0.0  # FaceCrops' zero box ...
    valid = np.ones(T, bool)
    valid[[9, 12]] = False  # ... and its validity flag (frame 12 keeps a real box but is flagged)
    boxes[20] = (100.0, 100.0, 104.0, 130.0)  # narrower than min_face_px
    result = self_blend(frames, boxes, seed=1, valid=valid)
    skipped = {0, 5, 6, 9, 12, 20}
    assert set(np.flatnonzero(~result.applied).tolist()) == skipped
    assert result.params["applied"] == result.applied.tolist()
    for t in range(T):
        if t in skipped:
            assert result.frames[t] is frames[t]
        else:
            assert _changed(frames[t], result.frames[t]).any()


def test_inputs_are_not_modified(panning) -> None:
    frames, boxes = panning
    before = [f.copy() for f in frames]
    self_blend(np.stack(frames), boxes, seed=2)  # a (T, H, W, 3) array works as well as a list
    assert all(np.array_equal(a, b) for a, b in zip(before, frames))


# ---- sizes and borders -------------------------------------------------------------------------
def test_frames_of_different_sizes(astronaut) -> None:
    views = [
        _view(astronaut, 1.0, 0.0, 0.0, (512, 512)),
        _view(astronaut, 0.5, 20.0, 10.0, (240, 320)),
        _view(astronaut, 1.7, 300.0, 80.0, (720, 1280)),
        _view(astronaut, 0.8, -31.5, 7.25, (301, 397)),  # odd sizes, fractional box
    ]
    frames, boxes = [v[0] for v in views], np.stack([v[1] for v in views])
    result = self_blend(frames, boxes, seed=11)
    assert result.applied.all()
    for src, out, box in zip(frames, result.frames, boxes):
        assert out.shape == src.shape
        changed = _changed(src, out)
        assert not (changed & ~_allowed(box, src.shape)).any()
        assert changed[_box_region(box, src.shape)].mean() > 0.3


def test_face_box_partly_outside_the_frame(astronaut) -> None:
    frame = np.ascontiguousarray(astronaut[100:, 220:])  # (412, 292, 3): the face cut at the top-left
    box = np.asarray(ASTRONAUT_FACE_BOX, np.float32) - (220, 100, 220, 100)  # x1, y1 < 0
    outside = box + (-1000, 0, -1000, 0)  # wholly outside
    result = self_blend([frame, frame], np.stack([box, outside]), seed=4)
    assert result.applied.tolist() == [True, False]
    changed = _changed(frame, result.frames[0])
    assert not (changed & ~_allowed(box, frame.shape)).any()
    assert changed[_box_region(box, frame.shape)].mean() > 0.3
    assert result.frames[1] is frame


# ---- drift -------------------------------------------------------------------------------------
def _unit(result: SelfBlend, name: str) -> np.ndarray:
    """A parameter's per-frame values as a fraction of its range: (T,) or (T, 3)."""
    lo, hi = getattr(CFG, name)
    return (np.asarray(result.params["per_frame"][name]) - lo) / (hi - lo)


def test_blend_parameters_drift_smoothly(still) -> None:
    frames, boxes = still
    tol = 1e-3  # the JSON keeps 4 decimals
    for seed in range(5):
        result = self_blend(frames, boxes, seed=seed)
        for name in DRIFTING_PARAMS:
            u = _unit(result, name)
            assert u.min() >= -tol and u.max() <= 1 + tol, f"{name} leaves its range"
            steps = np.abs(np.diff(u, axis=0))
            assert steps.max() <= CFG.max_step() + tol, f"{name} jumps by {steps.max():.3f} of its range"
            assert np.ptp(u, axis=0).min() > 0.01, f"{name} is constant over {T} frames"
    # In pixels: consecutive frames of a still video differ, but far less than frames 16 apart.
    out = np.stack(self_blend(frames, boxes, seed=0).frames).astype(np.float32)  # (T, H, W, 3)
    near = np.abs(out[1:] - out[:-1]).mean()
    far = np.abs(out[16:] - out[:-16]).mean()
    assert 0 < near < 0.5 * far


def test_drift_does_not_depend_on_which_frames_have_faces(panning) -> None:
    frames, boxes = panning
    holes = boxes.copy()
    holes[::3] = np.nan
    full, gappy = self_blend(frames, boxes, seed=5), self_blend(frames, holes, seed=5)
    assert full.params["per_frame"] == gappy.params["per_frame"]
    for t in range(1, T, 3):
        assert np.array_equal(full.frames[t], gappy.frames[t])


# ---- determinism, ids, parameters --------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(panning) -> None:
    frames, boxes = panning
    a, b, c = (self_blend(frames, boxes, seed=s) for s in (3, 3, 4))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.frames, b.frames))
    assert json.dumps(a.params) == json.dumps(b.params)
    assert all(x.tobytes() != z.tobytes() for x, z in zip(a.frames, c.frames))
    assert a.params["per_frame"] != c.params["per_frame"]


def test_blend_seed_is_a_stable_hash() -> None:
    # Pinned (Python's salted hash() would change from process to process); the value is
    # `printf '0/0003' | sha256sum`, first 8 bytes read little-endian, shifted right by one.
    assert blend_seed("0003", 0) == 7020664012530029192
    assert 0 <= blend_seed("0003", 0) < 2**63
    assert len({blend_seed(v, s) for v in ("0003", "0004", "ffpp/000_003") for s in (0, 1)}) == 6
    assert pseudo_video_id("0003") == "0003/self_blend" and PSEUDO_METHOD == "self_blend"


def test_parameters_are_json_ready(panning) -> None:
    frames, boxes = panning
    result = self_blend(frames, boxes, seed=blend_seed("0000", 0))
    params = json.loads(json.dumps(result.params, allow_nan=False))  # plain JSON, no NaN
    assert params == result.params
    assert params["method"] == PSEUDO_METHOD and params["seed"] == blend_seed("0000", 0)
    assert set(params["per_frame"]) == set(DRIFTING_PARAMS)
    for name, values in params["per_frame"].items():
        assert len(values) == T, name
    assert np.asarray(params["per_frame"]["rgb_shift"]).shape == (T, 3)
    assert len(params["mask_harmonics"]["amplitude"]) == len(CFG.mask_harmonics)
    assert sum(params["mask_harmonics"]["amplitude"]) <= CFG.mask_deform + 1e-3


# ---- contracts ---------------------------------------------------------------------------------
def test_config_refuses_a_mask_beyond_the_margin() -> None:
    with pytest.raises(ConfigError, match="mask reaches"):
        SelfBlendConfig(mask_axis_x=(0.4, 0.55))
    with pytest.raises(ConfigError, match="mask reaches"):
        SelfBlendConfig(margin=0.0)
    with pytest.raises(ConfigError, match="low <= high"):
        SelfBlendConfig(scale=(1.05, 0.95))
    assert dataclasses.replace(CFG, margin=0.4, mask_axis_x=(0.4, 0.55)).margin == 0.4


def test_bad_inputs_are_refused(astronaut) -> None:
    box = np.asarray([ASTRONAUT_FACE_BOX], np.float32)  # (1, 4)
    with pytest.raises(ValueError, match="boxes must be"):
        self_blend([astronaut, astronaut], box, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        self_blend([astronaut.astype(np.float32)], box, seed=0)
    with pytest.raises(ValueError, match="valid must be"):
        self_blend([astronaut], box, seed=0, valid=np.ones(2, bool))
