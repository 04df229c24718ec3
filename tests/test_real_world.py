"""Real-world inputs through the real Ray Data pipeline, in one run: rotation, size changes, several
people, tiny frames, odd containers, hidden files, the same stem twice, and injected failures
(an exception while decoding, a failing feature batch, a crop actor that exits hard)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from raydf import schema as S
from raydf.config import ExtractConfig, load_config
from raydf.faults import FaultPlan
from tests.media import PORTRAIT_WINDOW, astronaut_frames, write_clip, write_resizing_clip

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = 8


def _two_people(n: int) -> np.ndarray:
    """(n, 240, 320, 3): the subject large on the left, a smaller bystander on the right."""
    big = astronaut_frames(n, 220, 176, window=PORTRAIT_WINDOW)  # face ~110 px
    small = astronaut_frames(n, 110, 88, window=PORTRAIT_WINDOW)  # face ~55 px
    frames = np.full((n, 240, 320, 3), 90, np.uint8)
    frames[:, 10:230, 10:186] = big
    frames[:, 60:170, 215:303] = small
    return frames


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory, generated_dataset) -> Path:
    root = tmp_path_factory.mktemp("odd")
    real, fake = root / "real", root / "fake"
    real.mkdir()
    fake.mkdir()
    gen_real = sorted((generated_dataset / "real").glob("*.mp4"))
    for name, src in zip(["good_a", "good_b", "good_c", "good_d"], gen_real):
        shutil.copy(src, real / f"{name}.mp4")
    shutil.copy(gen_real[4], real / "clip.mp4")
    portrait = astronaut_frames(10, 200, 160, window=PORTRAIT_WINDOW)
    write_clip(real / "clip.mov", portrait)  # the same stem in another container
    write_clip(real / "phone.M4V", portrait)
    sideways = np.ascontiguousarray(np.rot90(portrait, k=-1, axes=(1, 2)))  # stored sideways, shown upright
    write_clip(real / "portrait.mkv", sideways, "libsvtav1", rotation=90)  # a codec this OpenCV cannot decode
    write_resizing_clip(real / "resizing.mkv", [astronaut_frames(10, 240, 320), astronaut_frames(10, 360, 200, window=PORTRAIT_WINDOW)],
                        "libsvtav1")  # fmt: skip
    write_clip(real / "tiny.mp4", astronaut_frames(10, 18, 32))
    write_clip(real / "two_people.mp4", _two_people(10))
    (real / ".hidden.mp4").write_bytes((real / "good_a.mp4").read_bytes())
    (real / "._good_a.mp4").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    for src in sorted((generated_dataset / "fake").glob("*.mp4"))[:2]:
        shutil.copy(src, fake / src.name)
    return root


@pytest.fixture(scope="module")
def odd_run(odd_dataset, tmp_path_factory, ray_cluster):
    from raydf.extract import run_extraction
    from raydf.store import FeatureStore

    out = tmp_path_factory.mktemp("odd_features") / "features"
    cfg = load_config(
        ExtractConfig,
        {"style": {"config": "psp_tiny"}, "video": {"num_frames": T}, "faces": {"max_tracks": 2}, "rows_per_file": 4, "feature_batch_size": 2},
    )
    ids = {p.stem: f"folders/real/{p.stem}" for p in (odd_dataset / "real").glob("good_*.mp4")}
    faults = FaultPlan(decode_error=(ids["good_b"],), feature_batch_error=(ids["good_c"],), crop_exit=(ids["good_d"],))
    summary = run_extraction(str(odd_dataset), str(out), cfg, track=False, faults=faults)
    rows = FeatureStore(str(out)).read().to_pylist()
    return summary, {(r[S.VIDEO_ID].split("/")[-1], r[S.TRACK_ID]): r for r in rows}, rows


def test_the_job_survives_every_injected_failure_and_writes_every_other_row(odd_run):
    summary, rows, raw = odd_run
    keys = [(r[S.VIDEO_ID], r[S.TRACK_ID]) for r in raw]
    assert len(keys) == len(set(keys)), "a (video, track) is present twice"
    assert "InjectedFault" in rows[("good_b", 0)][S.ERROR]  # an exception while decoding: its own error row
    assert rows[("good_c", 0)][S.STATUS] == S.STATUS_ERROR and "feature extraction failed" in rows[("good_c", 0)][S.ERROR]
    assert rows[("good_d", 0)][S.STATUS] == S.STATUS_ERROR and "quarantined" in rows[("good_d", 0)][S.ERROR]
    assert rows[("good_a", 0)][S.STATUS] == S.STATUS_OK  # a batch-mate of a failing batch is not taken with it
    others = [k for k in rows if k[0] not in ("good_b", "good_c", "good_d") and k[1] == 0]
    assert all(rows[k][S.STATUS] == S.STATUS_OK for k in others), {k: rows[k][S.ERROR] for k in others if rows[k][S.ERROR]}
    assert summary.error == 3 and summary.total == summary.ok + summary.error


def test_every_container_and_the_same_stem_get_rows_and_hidden_files_are_counted(odd_run):
    summary, rows, _ = odd_run
    for name in ("clip.mp4", "clip.mov", "phone"):
        assert rows[(name, 0)][S.STATUS] == S.STATUS_OK, rows[(name, 0)][S.ERROR]
    assert summary.files_skipped.get("hidden") == 1 and summary.files_skipped.get("appledouble") == 1
    assert any("hidden" in line for line in summary.files_skipped_lines)


def test_rotated_av1_is_upright_and_its_face_found(odd_run):
    _, rows, _ = odd_run
    row = rows[("portrait", 0)]
    assert row[S.STATUS] == S.STATUS_OK
    assert sum(row[S.FACE_VALID]) >= T - 1  # sideways, MTCNN finds nothing (tests/test_video.py's control)


def test_a_stream_that_changes_size_keeps_true_sizes_and_times(odd_run):
    _, rows, _ = odd_run
    row = rows[("resizing", 0)]
    assert row[S.STATUS] == S.STATUS_OK
    times = np.asarray(row[S.FRAME_TIMES])
    assert np.all(np.diff(times) > 0) and times[-1] == pytest.approx(19 / 25, abs=1e-3)
    boxes = np.asarray(row[S.FACE_BOXES]).reshape(-1, 4)[np.asarray(row[S.FACE_VALID])]
    late = np.asarray(row[S.FRAME_INDICES])[np.asarray(row[S.FACE_VALID])] >= 10
    assert late.any() and np.all(boxes[late][:, 2] <= 200 + 1)  # boxes in the 200x360 frames' own pixels


def test_tiny_frames_get_centre_crops_and_a_plain_note(odd_run):
    _, rows, _ = odd_run
    row = rows[("tiny", 0)]
    assert row[S.STATUS] == S.STATUS_OK and not any(row[S.FACE_VALID])
    assert "too small" in row[S.NOTE] and "torch" not in row[S.NOTE]


def test_two_people_are_two_tracks_with_the_subject_first(odd_run):
    _, rows, _ = odd_run
    main, other = rows[("two_people", 0)], rows[("two_people", 1)]
    assert main[S.STATUS] == other[S.STATUS] == S.STATUS_OK
    area = lambda r: np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b, v in zip(r[S.FACE_BOXES], r[S.FACE_VALID]) if v])  # noqa: E731
    assert area(main) > 2 * area(other) and main[S.TRACK_SCORE] > other[S.TRACK_SCORE]
    assert np.mean([b[0] for b, v in zip(main[S.FACE_BOXES], main[S.FACE_VALID]) if v]) < 160  # the subject is on the left


# ---- raydf detect on the same kinds of input ---------------------------------------------------------
@pytest.fixture(scope="module")
def two_track_bundle(tmp_path_factory):
    """A model bundle over the features of this module's config (max_tracks=2, T=8, psp_tiny)."""
    import torch

    from raydf.bundle import ModelBundle
    from raydf.config import FusionConfig
    from raydf.extract import store_config
    from raydf.models.fusion import FusionClassifier

    cfg = load_config(ExtractConfig, {"style": {"config": "psp_tiny"}, "video": {"num_frames": T}, "faces": {"max_tracks": 2}})
    torch.manual_seed(0)
    fusion = load_config(FusionConfig, {"gru_hidden": 32, "d_model": 32, "transformer_heads": 2, "ff_dim": 32, "fc_hidden": 16, "transformer_layers": 1})
    bundle = ModelBundle(FusionClassifier(fusion).state_dict(), fusion, store_config(cfg, precision="fp32", decoder="pyav=test"))
    return bundle.save(tmp_path_factory.mktemp("bundle") / "raydf_model.pt")


def test_detect_scores_every_person_and_reports_the_maximum(two_track_bundle, odd_dataset):
    from raydf.bundle import ModelBundle
    from raydf.detect import Detector

    det = Detector(ModelBundle.load(two_track_bundle), str(two_track_bundle))
    out = det(str(odd_dataset / "real" / "two_people.mp4"), explain=True)
    assert [f.track_id for f in out.faces] == [0, 1]
    assert out.fake_probability == max(f.fake_probability for f in out.faces) and out.aggregation == "max"
    assert all(len(f.boxes) == T for f in out.faces) and out.faces[0].track_score > out.faces[1].track_score
    assert [fr.index for fr in out.frames] == sorted(fr.index for fr in out.frames) and len(out.frames) == T
    ex = out.explanation  # when (integrated gradients) and where (SmoothGrad heat maps) of the deciding track
    assert ex["track_id"] == max(out.faces, key=lambda f: f.fake_probability).track_id
    assert [fr.evidence for fr in out.frames] == pytest.approx([s if v else None for s, v in zip(ex["when"]["scores"], ex["when"]["valid"])], abs=1e-4)
    assert len(ex["where"]["maps"]) == len(ex["where"]["overlays"]) == len(ex["where"]["frames"]) >= 1
    assert all(u.startswith("data:image/png;base64,") for u in ex["where"]["overlays"])


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "audio", "huge"])
def test_detect_answers_any_bad_input_in_one_line_with_exit_code_2(kind, two_track_bundle, odd_dataset, tmp_path):
    import subprocess
    import sys

    from tests.media import write_audio_only, write_declared_size_vp8

    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = (odd_dataset / "real" / "good_a.mp4").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "text":
        path.write_text("not a video\n" * 20)
    elif kind == "audio":
        write_audio_only(path)
    else:
        path = write_declared_size_vp8(tmp_path / "huge.webm", 16000, 9000)  # 16K: over the pixel cap
    out = subprocess.run([sys.executable, "-m", "raydf.cli", "detect", str(path), "--model", str(two_track_bundle)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("raydf detect: error: ") and path.name in out.stderr
