"""Frame sampling: exact indices, circular padding, wrong headers, bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from raydf.synth import write_video
from raydf.video import VideoDecodeError, read_video, sample_indices
from tests.conftest import frame_level, index_frames
from tests.media import write_audio_only


def test_long_video_indices_are_uniform_linspace():
    np.testing.assert_array_equal(sample_indices(100, 32), np.round(np.linspace(0, 99, 32)).astype(int))
    assert sample_indices(100, 32)[0] == 0 and sample_indices(100, 32)[-1] == 99


def test_short_video_is_circularly_padded():
    np.testing.assert_array_equal(sample_indices(10, 32), np.arange(32) % 10)


def test_one_frame_video_repeats_its_frame():
    np.testing.assert_array_equal(sample_indices(1, 32), np.zeros(32, int))


def test_exact_count_takes_every_frame():
    np.testing.assert_array_equal(sample_indices(32, 32), np.arange(32))


def test_zero_frames_is_rejected():
    with pytest.raises(ValueError):
        sample_indices(0, 32)


def _check_frames(video, n):
    for frame, idx in zip(video.frames, video.indices):
        assert abs(float(frame.mean()) - frame_level(n, int(idx))) < 4, (idx, frame.mean())


@pytest.mark.parametrize("n", [100, 10, 1])
def test_sampled_frames_are_the_indexed_frames(tmp_path, n):
    path = tmp_path / f"v{n}.mp4"
    write_video(path, index_frames(n), fps=25)
    video = read_video(path, 32)
    assert video.num_frames == n
    assert video.frames.shape == (32, 48, 64, 3) and video.frames.dtype == np.uint8
    np.testing.assert_array_equal(video.indices, sample_indices(n, 32))
    _check_frames(video, n)


def test_bytes_and_path_give_the_same_frames(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, index_frames(40), fps=25)
    a = read_video(path, 16)
    b = read_video(path.read_bytes(), 16, name="v.mp4")
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_pyav_backend_matches_opencv(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, index_frames(40), fps=25)
    a = read_video(path, 16, backend="opencv")
    b = read_video(path, 16, backend="pyav")
    assert b.backend == "pyav" and b.num_frames == 40
    np.testing.assert_array_equal(a.indices, b.indices)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 2


def _avi_with_header_count(tmp_path: Path, true_n: int, header_n: int) -> Path:
    """An MJPG AVI whose header frame count (avih + strh) is patched to ``header_n``."""
    raw = tmp_path / "raw.avi"
    w = cv2.VideoWriter(str(raw), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for f in index_frames(true_n):
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    data = bytearray(raw.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    assert struct.unpack_from("<I", data, avih + 24)[0] == true_n
    struct.pack_into("<I", data, avih + 24, header_n)  # dwTotalFrames
    struct.pack_into("<I", data, strh + 40, header_n)  # dwLength
    out = tmp_path / f"hdr{header_n}.avi"
    out.write_bytes(bytes(data))
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT) == header_n
    return out


@pytest.mark.parametrize("header_n", [50, 5])
def test_wrong_header_frame_count_is_resampled_from_true_count(tmp_path, header_n):
    path = _avi_with_header_count(tmp_path, 20, header_n)
    video = read_video(path, 8)
    assert video.num_frames == 20
    np.testing.assert_array_equal(video.indices, sample_indices(20, 8))
    _check_frames(video, 20)


def test_truncated_file_raises_decode_error_naming_it(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, index_frames(30), fps=25)
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        read_video(bad, 8)


@pytest.mark.parametrize(
    "name,content",
    [("empty.mp4", b""), ("notes.mp4", b"this is a text file, not a video\n" * 20)],
)
def test_non_video_files_raise_decode_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=name):
        read_video(path, 8)


def test_missing_file_raises_decode_error(tmp_path):
    with pytest.raises(VideoDecodeError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4", 8)


def test_audio_only_file_raises_decode_error(tmp_path):
    path = write_audio_only(tmp_path / "audio.mp4", frames=20)
    with pytest.raises(VideoDecodeError, match="audio.mp4"):
        read_video(path, 8)
