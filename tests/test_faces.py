"""MTCNN face crops: found on generated faces, centre-crop fallback, box geometry, downscaled detection."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from raydf.config import FaceConfig
from raydf.faces import FaceCropper, box_iou, center_square, expand_box
from raydf.synth import write_noface_video
from raydf.video import read_video


@pytest.fixture(scope="module")
def cropper() -> FaceCropper:
    return FaceCropper(FaceConfig())


def test_expand_box_is_square_with_margin_and_centred():
    l, t, r, b = expand_box(np.array([100, 100, 200, 180]), 0.2, 640, 480)
    assert r - l == b - t == 120
    assert (l + r) / 2 == 150 and (t + b) / 2 == 140


def test_expand_box_is_shifted_into_the_frame():
    l, t, r, b = expand_box(np.array([0, 0, 100, 100]), 0.2, 640, 480)
    assert (l, t) == (0, 0) and r - l == b - t == 120


def test_expand_box_larger_than_frame_is_clipped():
    l, t, r, b = expand_box(np.array([0, 0, 300, 300]), 0.2, 320, 240)
    assert (l, t, r, b) == (0, 0, 320, 240)


def test_center_square():
    assert center_square(640, 480) == (80, 0, 560, 480)


def test_face_found_on_generated_video_with_iou_against_ground_truth(generated_dataset, cropper):
    rows = [json.loads(line) for line in (generated_dataset / "metadata.jsonl").read_text().splitlines()]
    hits = total = 0
    for row in rows:
        if row["num_frames"] < 8:
            continue
        video = read_video(generated_dataset / row["file"], 32)
        faces = cropper(video.frames)
        assert faces.crops.shape == (32, 256, 256, 3) and faces.crops.dtype == np.uint8
        for i, idx in enumerate(video.indices):
            total += 1
            hits += bool(faces.valid[i] and box_iou(faces.boxes[i], np.array(row["boxes"][idx])) >= 0.7)
    assert total >= 64
    assert hits / total >= 0.9, f"face found with IoU >= 0.7 in only {hits}/{total} frames"


def test_video_without_face_falls_back_to_centre_crops(tmp_path, cropper):
    path = tmp_path / "noface.mp4"
    write_noface_video(path, num_frames=12)
    video = read_video(path, 8)
    faces = cropper(video.frames)
    assert not faces.valid.any()
    assert (faces.probs == 0).all() and (faces.boxes == 0).all()
    h, w = video.frames.shape[1:3]
    l, t, r, b = center_square(w, h)
    interp = cv2.INTER_AREA if r - l > 256 else cv2.INTER_LINEAR  # downscale with area, upscale bilinear
    expected = cv2.resize(video.frames[0, t:b, l:r], (256, 256), interpolation=interp)
    np.testing.assert_array_equal(faces.crops[0], expected)


def test_track_follows_the_anchor_face_not_a_second_one():
    a = np.array([[100, 100, 200, 200]], np.float32)
    far = np.array([[400, 100, 500, 200]], np.float32)
    detections = [
        (a, np.array([0.95], np.float32)),
        (np.concatenate([far, a + 5]), np.array([0.99, 0.97], np.float32)),  # nearer box wins, not the likelier
        (far, np.array([0.98], np.float32)),  # only the other face: not our track
        (a + 10, np.array([0.9999], np.float32)),  # the anchor: most confident face of the video
        (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)),
    ]
    assert FaceCropper.track(detections) == [0, 1, None, 0, None]


def test_detection_on_downscaled_4k_matches_full_resolution():
    img = cv2.resize(astronaut(), (1920, 1080))
    frames = np.stack([img, img])
    down = FaceCropper(FaceConfig(detect_max_side=640))(frames)
    full = FaceCropper(FaceConfig(detect_max_side=0))(frames)
    assert down.valid.all() and full.valid.all()
    # MTCNN's box size wobbles ~10% with the pyramid scale; the face's position must not.
    size = full.boxes[0, 2] - full.boxes[0, 0]
    centre = lambda b: (b[:2] + b[2:]) / 2  # noqa: E731
    assert np.abs(centre(down.boxes[0]) - centre(full.boxes[0])).max() < 0.05 * size
    assert box_iou(down.boxes[0], full.boxes[0]) > 0.7
