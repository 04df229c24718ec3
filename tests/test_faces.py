"""MTCNN face tracks: equality with facenet's MTCNN.detect on every kind of frame, the video's subject
as the main track, small / edge-cut / tiny / mixed-size frames, summed-area tables without overflow."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from skimage.data import astronaut

from benchmarks.faces import FacePlacement, background, benchmark_set, composite, recall
from raydf.config import FaceConfig, load_config
from raydf.faces import (
    FaceCropper,
    MTCNNDetector,
    _area_crops,
    _area_level,
    _integral,
    box_iou,
    center_square,
    expand_box,
    link_tracks,
)
from raydf.synth import write_noface_video
from raydf.video import read_video

CFG = FaceConfig()


def _frames(size: tuple[int, int], bg: str, placements: list[list[FacePlacement]], *, seed: int = 0, gray: bool = False):
    """Frames (T, H, W, 3) on one background, one list of faces per frame, and their boxes."""
    w, h = size
    base = background(bg, w, h, np.random.default_rng(seed))
    frames, boxes = zip(*(composite(base, p, gray=gray) for p in placements), strict=True)
    return np.stack(frames), list(boxes)


@pytest.fixture(scope="module")
def cropper() -> FaceCropper:
    return FaceCropper(CFG)


@pytest.fixture(scope="module")
def kinds() -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """Eight kinds of frames, each (T, H, W, 3) with its ground-truth boxes."""
    p = FacePlacement
    bright = np.full((2160, 4096, 3), 250, np.uint8)  # a bright 4K frame: int32 sums overflow
    bright[:, :1200] = background("coffee", 1200, 2160, np.random.default_rng(4))
    four_k, four_k_boxes = composite(bright, [p(128, 3600, 1800), p(560, 700, 900, roll=5)])
    return {
        "one face": _frames((640, 480), "coffee", [[p(150, 300, 240)], [p(140, 320, 250, roll=8)]]),
        "several faces": _frames((800, 600), "rocket", [[p(60, 100, 100), p(120, 400, 300, roll=-10), p(220, 650, 380, squeeze=0.85)]]),
        "small faces": _frames((1280, 720), "grass", [[p(45, 200, 200), p(55, 600, 360, roll=5), p(70, 1000, 500)]]),
        "cut by the edge": _frames(  # sliding out of the left edge, then cut by the right and the bottom edge
            (640, 480), "chelsea", [[p(260, x, 240)] for x in (100, 60, 40, 20)] + [[p(200, 600, 240)], [p(240, 320, 440)]]
        ),
        "odd size 321x239": _frames((321, 239), "hubble_deep_field", [[p(80, 150, 120)], [p(90, 40, 200)]]),
        "no face": _frames((640, 480), "brick", [[], []]),
        "grayscale": _frames((640, 480), "colorwheel", [[p(120, 200, 240), p(70, 500, 120)]], gray=True),
        "4K": (four_k[None], [four_k_boxes]),
    }


@pytest.fixture(scope="module")
def reference(kinds) -> dict[str, list[np.ndarray]]:
    """facenet-pytorch's own MTCNN.detect on every kind, with raydf's min face size and thresholds: (n, 5) per frame."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, min_face_size=CFG.min_face_size, thresholds=list(CFG.thresholds), device="cpu")
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # facenet's small ops at 2 threads cost 4x the CPU time in OpenMP barriers here
    try:
        for name, (frames, _) in kinds.items():
            boxes, probs = mtcnn.detect(frames)
            out[name] = [
                np.zeros((0, 5)) if b is None else np.concatenate([np.asarray(b, np.float64), np.asarray(p, np.float64)[:, None]], 1)
                for b, p in zip(boxes, probs, strict=True)
            ]
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector(thresholds=CFG.thresholds)


def _assert_same(ours: list[np.ndarray], ref: list[np.ndarray], what: str) -> None:
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert a.shape == b.shape, f"{what}, frame {i}: {len(a)} faces vs facenet's {len(b)}"
        a, b = a[np.argsort(-a[:, 4], kind="stable")], b[np.argsort(-b[:, 4], kind="stable")]
        np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-3, rtol=0, err_msg=f"{what}, frame {i}: boxes")
        np.testing.assert_allclose(a[:, 4], b[:, 4], atol=1e-5, rtol=0, err_msg=f"{what}, frame {i}: probabilities")


KINDS = ["one face", "several faces", "small faces", "cut by the edge", "odd size 321x239", "no face", "grayscale", "4K"]


@pytest.mark.parametrize("kind", KINDS)
def test_detector_equals_facenet_mtcnn_detect(kind, kinds, reference, detector):
    frames, truth = kinds[kind]
    ours = detector(frames, CFG.min_face_size)
    _assert_same(ours, reference[kind], kind)
    found = sum(any(box_iou(g, d) >= 0.4 for d in det[:, :4]) for gts, det in zip(truth, ours, strict=True) for g in gts)
    assert found >= {"small faces": 3, "cut by the edge": 4}.get(kind, sum(len(g) for g in truth)), f"{kind}: {found} faces found"


def test_cropper_finds_every_face_of_the_kinds_where_facenet_does(kinds, reference, cropper):
    for name, (frames, _) in kinds.items():
        dets = cropper.detect(list(frames))  # a list of frames, as a stream with size changes gives them
        for i, (boxes, probs) in enumerate(dets):
            ref = reference[name][i]
            ref = ref[ref[:, 4] >= CFG.min_face_prob]
            assert len(boxes) == len(ref), (name, i)
            np.testing.assert_allclose(np.sort(probs), np.sort(ref[:, 4]), atol=1e-5)


def test_small_face_in_full_hd_and_4k_is_found_at_the_default_min_face(kinds, cropper):
    frames, _ = _frames((1920, 1080), "rocket", [[FacePlacement(61, 1500, 700, squeeze=0.9)]] * 2)  # ~49x61 px
    faces = cropper(frames)
    assert faces.valid.all()
    assert box_iou(faces.boxes[0], composite(frames[0], [FacePlacement(61, 1500, 700, squeeze=0.9)])[1][0]) > 0.5
    (frame,), (gts,) = kinds["4K"]
    boxes, _ = cropper.detect(frame[None])[0]
    small = gts[0]  # ~100x128 px in 4096x2160
    assert max(box_iou(small, b) for b in boxes) > 0.5


def test_edge_cut_face_found_as_often_as_facenet_finds_it(kinds, reference, cropper):
    """A large face sliding out of the frame: found in the same frames as facenet's MTCNN (same thresholds)."""
    frames, _ = kinds["cut by the edge"]
    ref_found = [bool((r[:, 4] >= CFG.min_face_prob).any()) for r in reference["cut by the edge"]]
    assert [len(b) > 0 for b, _ in cropper.detect(frames)] == ref_found and sum(ref_found) >= 4
    sliding = cropper(frames[:4])  # the same face, 21% to 40% out of the frame
    assert sliding.valid.tolist() == ref_found[:4]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_detector_on_cuda_equals_facenet(kinds, reference):
    det = MTCNNDetector(thresholds=CFG.thresholds, device="cuda")
    for name in ("several faces", "cut by the edge", "4K"):
        _assert_same(det(kinds[name][0], CFG.min_face_size), reference[name], f"cuda {name}")
    assert FaceCropper(CFG, device="cuda")(kinds["one face"][0]).valid.all()


# ---- summed-area tables ----------------------------------------------------------------------


def test_summed_area_table_of_a_bright_4k_frame_does_not_overflow():
    frame = np.full((1, 2160, 4096, 3), 255, np.uint8)
    total = 255 * 2160 * 4096  # > 2**31 - 1
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        table = _integral(frame, torch.device(device))
        last = table[0, -1, -1] if isinstance(table, np.ndarray) else table[0, -1, -1].cpu().numpy()
        assert (np.asarray(last, np.float64) == total).all()
        level = _area_level(table, 200, 379, torch.device(device))  # (1, 3, 200, 379), normalised
        np.testing.assert_allclose(level.cpu().numpy(), (255 - 127.5) * 0.0078125, rtol=0, atol=1e-6)
        y0, x0 = torch.tensor([1900]), torch.tensor([3800])
        crop = _area_crops(table, torch.tensor([0]), y0, y0 + 260, x0, x0 + 296, 48, torch.device(device))
        np.testing.assert_allclose(crop.cpu().numpy(), (255 - 127.5) * 0.0078125, rtol=0, atol=1e-6)


def test_area_resampling_equals_torch_interpolate_area():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 97, 131, 3), np.uint8)
    table = _integral(frames, torch.device("cpu"))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    ref = (torch.nn.functional.interpolate(x, size=(40, 53), mode="area") - 127.5) * 0.0078125
    np.testing.assert_allclose(_area_level(table, 40, 53, torch.device("cpu")).numpy(), ref.numpy(), atol=1e-6)
    y0, y1, x0, x1 = (torch.tensor([v]) for v in (10, 29, 5, 70))
    crop = _area_crops(table, torch.tensor([1]), y0, y1, x0, x1, 24, torch.device("cpu"))
    ref = (torch.nn.functional.interpolate(x[1:, :, 10:29, 5:70], size=(24, 24), mode="area") - 127.5) * 0.0078125
    np.testing.assert_allclose(crop.numpy(), ref.numpy(), atol=1e-6)


# ---- the video's subject -----------------------------------------------------------------------

MAIN = [FacePlacement(148, 200 + 4 * i, 220, roll=20, squeeze=0.7, blur=2.5) for i in range(16)]  # turned, soft: ~104x148
BYSTANDER = [FacePlacement(60, 500, 150 + 2 * i) for i in range(16)]  # small and sharp: ~48x60
ABSENT = (10, 11)  # frames where the main person has left


@pytest.fixture(scope="module")
def scene():
    placements = [[BYSTANDER[i]] if i in ABSENT else [MAIN[i], BYSTANDER[i]] for i in range(16)]
    frames, _ = _frames((640, 480), "coffee", placements)
    main = np.stack([composite(frames[0], [m])[1][0] for m in MAIN])  # (16, 4) ground truth
    bystander = np.stack([composite(frames[0], [b])[1][0] for b in BYSTANDER])
    return frames, main, bystander


def test_main_face_is_the_subject_not_a_sharper_bystander(scene, cropper):
    frames, main, bystander = scene
    dets = cropper.detect(frames)
    # The old rule's trap: the bystander is the most confident face of the video and of most frames.
    best = [boxes[int(np.argmax(probs))] for boxes, probs in dets if len(probs)]
    assert sum(box_iou(b, bystander[0]) > box_iou(b, main[0]) for b in best) >= 10
    faces = cropper(frames)
    assert faces.track_id == 0 and faces.note == "" and faces.score > 0
    for i in range(16):
        if i in ABSENT:
            assert not faces.valid[i] and faces.probs[i] == 0 and (faces.boxes[i] == 0).all()
            l, t, r, b = center_square(640, 480)
            np.testing.assert_array_equal(faces.crops[i], cv2.resize(frames[i, t:b, l:r], (256, 256), interpolation=cv2.INTER_AREA))
        else:
            assert faces.valid[i] and box_iou(faces.boxes[i], main[i]) > 0.5, i


def test_two_tracks_give_both_people(scene):
    frames, main, bystander = scene
    tracks = FaceCropper(FaceConfig(max_tracks=2)).tracks(frames)
    assert [t.track_id for t in tracks] == [0, 1] and tracks[0].score > tracks[1].score
    assert tracks[1].valid.all()
    assert all(box_iou(tracks[1].boxes[i], bystander[i]) > 0.5 for i in range(16))
    assert all(box_iou(tracks[0].boxes[i], main[i]) > 0.5 for i in range(16) if i not in ABSENT)
    assert tracks[1].crops.shape == (16, 256, 256, 3)


def test_one_track_across_a_stream_that_changes_size(scene, cropper):
    frames, main, _ = scene
    small = [cv2.resize(f, (480, 360), interpolation=cv2.INTER_AREA) for f in frames[8:]]
    mixed = list(frames[:8]) + small  # 640x480 then 480x360, as when a stream switches resolution
    faces = cropper(mixed)
    assert faces.crops.shape == (16, 256, 256, 3)
    for i in range(16):
        if i in ABSENT:
            assert not faces.valid[i]
        else:
            scale = 1.0 if i < 8 else 0.75
            assert faces.valid[i] and box_iou(faces.boxes[i], main[i] * scale) > 0.5, i


def test_link_tracks_scores_presence_times_area_in_frame_relative_units():
    big, small = np.array([[100, 100, 200, 220]], np.float32), np.array([[400, 50, 440, 100]], np.float32)
    one = np.ones(1, np.float32)
    none = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    dets = [(np.concatenate([small, big]), np.array([0.9999, 0.95], np.float32)), (small, one), none, (big / 2, one)]
    sizes = [(640, 480), (640, 480), (640, 480), (320, 240)]  # the last frame is half size: same place, same track
    tracks = link_tracks(dets, sizes)
    assert len(tracks) == 2
    assert tracks[0].frames.tolist() == [0, 3] and tracks[1].frames.tolist() == [0, 1]
    assert tracks[0].score == pytest.approx(2 * (100 * 120) / (640 * 480) / 4)
    assert tracks[1].score == pytest.approx(2 * (40 * 50) / (640 * 480) / 4)
    far = [(big, one), (big + 150, one)]  # moved more than a box size: another face
    assert len(link_tracks(far, [(640, 480)] * 2)) == 2
    grown = [(big, one), (np.array([[60, 60, 300, 340]], np.float32), one)]  # same centre, 2.3x the size
    assert len(link_tracks(grown, [(640, 480)] * 2)) == 2


# ---- tiny, odd and face-free input ------------------------------------------------------------


def test_tiny_frames_get_centre_crops_and_a_note_not_an_exception(cropper):
    tiny = np.stack([cv2.resize(astronaut(), (32, 18))] * 4)
    tracks = cropper.tracks(tiny)
    assert len(tracks) == 1
    faces = tracks[0]
    assert not faces.valid.any() and faces.crops.shape == (4, 256, 256, 3)
    assert "32x18" in faces.note and "too small to detect faces" in faces.note
    np.testing.assert_array_equal(faces.crops[0], cv2.resize(tiny[0, :, 7:25], (256, 256), interpolation=cv2.INTER_LINEAR))
    one = cropper([tiny[0]])
    assert one.note.startswith("frame 32x18 is too small to detect faces in")


def test_a_few_tiny_frames_in_a_video_are_skipped_with_a_note(scene, cropper):
    frames, main, _ = scene
    mixed = list(frames[:6]) + [cv2.resize(frames[6], (32, 18))] + list(frames[7:10])
    faces = cropper(mixed)
    assert faces.valid.tolist() == [True] * 6 + [False] + [True] * 3
    assert "1 of 10 frames" in faces.note and "32x18" in faces.note


def test_frame_smaller_than_the_min_face_is_searched_for_a_face_filling_it(cropper, detector):
    from facenet_pytorch import MTCNN

    face = astronaut()[40:200, 150:300]  # the head fills the frame
    frame = cv2.resize(face, (34, 36), interpolation=cv2.INTER_AREA)  # short side under min_face_size=40
    (boxes, probs), = cropper.detect([frame])  # facenet's MTCNN(min_face_size=40) has no pyramid here and raises
    assert len(boxes) == 1 and probs[0] > 0.9
    ref_boxes, ref_probs = MTCNN(keep_all=True, min_face_size=34, thresholds=list(CFG.thresholds)).detect(frame[None])
    np.testing.assert_allclose(boxes, np.asarray(ref_boxes[0], np.float32), atol=1e-3)  # = facenet searching for 34 px faces
    assert detector.scales(36, 34, CFG.min_face_size) == []


def test_video_without_face_falls_back_to_centre_crops(tmp_path, cropper):
    path = tmp_path / "noface.mp4"
    write_noface_video(path, num_frames=12)
    video = read_video(path, 8)
    tracks = cropper.tracks(video.frames)
    assert len(tracks) == 1
    faces = tracks[0]
    assert not faces.valid.any() and faces.track_id == 0 and faces.score == 0.0
    assert (faces.probs == 0).all() and (faces.boxes == 0).all()
    h, w = video.frames[0].shape[:2]
    l, t, r, b = center_square(w, h)
    interp = cv2.INTER_AREA if r - l > 256 else cv2.INTER_LINEAR  # downscale with area, upscale bilinear
    expected = cv2.resize(video.frames[0][t:b, l:r], (256, 256), interpolation=interp)
    np.testing.assert_array_equal(faces.crops[0], expected)


def test_face_found_on_generated_video_with_iou_against_ground_truth(generated_dataset, cropper):
    rows = [json.loads(line) for line in (generated_dataset / "metadata.jsonl").read_text().splitlines()]
    hits = total = 0
    for row in rows[:6]:
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


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 32, 32), np.uint8), [np.zeros((32, 32, 3), np.float32)], [np.zeros((32, 32, 4), np.uint8)]],
    ids=["no channels", "float", "rgba"],
)
def test_frames_that_are_not_uint8_rgb_are_refused(bad, cropper):
    with pytest.raises(ValueError, match="expected"):
        cropper(bad)


def test_benchmark_set_has_small_edge_cut_and_multi_face_frames_with_ground_truth():
    frames, gts, kinds = benchmark_set(320, 240, 12, seed=3)
    assert frames.shape == (12, 240, 320, 3) and len(gts) == len(kinds) == 12
    flat = [k for kk in kinds for k in kk]
    assert sum(k.startswith("small") for k in flat) >= len(flat) / 4
    assert any(k.endswith("edge") for k in flat) and any(len(kk) > 1 for kk in kinds)
    heights = np.concatenate([g[:, 3] - g[:, 1] for g in gts])
    assert heights.min() >= 40
    assert recall(gts, gts, kinds)["all"] == 1.0 and recall([g[:0] for g in gts], gts, kinds)["all"] == 0.0


# ---- geometry and config -----------------------------------------------------------------------


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


def test_face_config_refuses_the_removed_downscaling_knobs_and_bad_values():
    with pytest.raises(ValueError):
        load_config(FaceConfig, {"detect_max_side": 640})
    with pytest.raises(ValueError, match="max_tracks"):
        FaceConfig(max_tracks=0)
    with pytest.raises(ValueError, match="min_face_size"):
        FaceConfig(min_face_size=8)
