"""Frame sampling on real-world kinds of video.

Exact indices and circular padding; upright frames from rotated (and mirrored) video on
every backend; true frame sizes when the size changes mid-stream; seeking that returns
exactly the sequential path's frames; pts times for variable frame rates; caps on size and
duration; wrong headers and bad files. Every clip is encoded here (tests/media.py).
"""

from __future__ import annotations

import logging
import struct
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from raydf.config import FaceConfig, VideoConfig
from raydf.synth import write_video
from raydf.video import (
    BACKENDS,
    SampledVideo,
    VideoDecodeError,
    VideoTooLarge,
    _Limits,
    _read_opencv,
    decoder_identity,
    read_video,
    sample_indices,
)
from tests.conftest import frame_level, index_frames
from tests.media import (
    PORTRAIT_WINDOW,
    astronaut_frames,
    write_audio_only,
    write_clip,
    write_declared_size_vp8,
    write_garbled_copy,
    write_long_declared_mkv,
    write_resizing_clip,
)

CODEC_ROUNDING = 8.0  # mean |decoded - source| over a frame, 0..255 levels: these small clips measure 3-6
MS = Fraction(1, 1000)


def _read_logged(caplog: pytest.LogCaptureFixture, *args, **kwargs) -> tuple[SampledVideo, logging.LogRecord]:  # noqa: ANN002, ANN003
    """read_video and the record it logs of the path it took (seek / sequential) and the packets it decoded."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="raydf.video"):
        video = read_video(*args, **kwargs)
    records = [r for r in caplog.records if hasattr(r, "decode_path")]
    assert records, "read_video logged no decode record"
    return video, records[-1]


def _assert_same_frames(a: SampledVideo, b: SampledVideo) -> None:
    assert a.num_frames == b.num_frames
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.times, b.times)
    assert len(a.frames) == len(b.frames)
    for t, (x, y) in enumerate(zip(a.frames, b.frames)):
        assert x.shape == y.shape, (t, x.shape, y.shape)
        np.testing.assert_array_equal(x, y, err_msg=f"frame {t} (index {a.indices[t]})")


def _error(frame: np.ndarray, source: np.ndarray) -> float:
    assert frame.shape == source.shape, (frame.shape, source.shape)
    return float(np.abs(frame.astype(np.int16) - source.astype(np.int16)).mean())


# ---- sample_indices ---------------------------------------------------------------------------------


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


# ---- the contract on plain H.264 ----------------------------------------------------------------------


def _check_levels(video: SampledVideo, n: int) -> None:
    for frame, idx in zip(video.frames, video.indices):
        assert abs(float(frame.mean()) - frame_level(n, int(idx))) < 4, (idx, frame.mean())


@pytest.mark.parametrize("n", [100, 10, 1])
def test_sampled_frames_are_the_indexed_frames(tmp_path, n):
    path = tmp_path / f"v{n}.mp4"
    write_video(path, index_frames(n), fps=25)
    video = read_video(path, 32)
    assert video.num_frames == n and video.backend == "pyav" and video.rotation == 0 and video.fps == 25
    assert isinstance(video.frames, tuple) and len(video.frames) == 32 and video.uniform
    assert video.stack().shape == (32, 48, 64, 3) and video.stack().dtype == np.uint8
    assert video.indices.dtype == np.int32 and video.times.dtype == np.float64
    np.testing.assert_array_equal(video.indices, sample_indices(n, 32))
    np.testing.assert_allclose(video.times, video.indices / 25)
    _check_levels(video, n)


def test_bytes_and_path_give_the_same_frames(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, index_frames(40), fps=25)
    _assert_same_frames(read_video(path, 16), read_video(path.read_bytes(), 16, name="v.mp4"))
    _assert_same_frames(read_video(path, 16, backend="opencv"), read_video(path.read_bytes(), 16, name="v.mp4", backend="opencv"))


def test_defaults_come_from_video_config():
    cfg = VideoConfig()
    defaults = read_video.__kwdefaults__
    assert (defaults["backend"], defaults["max_pixels"], defaults["max_duration_s"], defaults["seek"], defaults["threads"]) == (
        cfg.backend, cfg.max_pixels, cfg.max_duration_s, cfg.seek, cfg.threads)  # fmt: skip


def test_decoder_identity_names_the_libraries_that_may_decode():
    auto, pyav_only = decoder_identity("auto"), decoder_identity("pyav")
    assert f"pyav={av.__version__}" in pyav_only and "ffmpeg=" in pyav_only and "swscale=" in pyav_only
    assert "opencv" not in pyav_only
    assert f"opencv={cv2.__version__}" in auto and decoder_identity("opencv") == auto
    with pytest.raises(ValueError):
        decoder_identity("gstreamer")


def test_unknown_backend_is_a_caller_error(tmp_path):
    path = write_video(tmp_path / "v.mp4", index_frames(4))
    with pytest.raises(ValueError, match="gstreamer"):
        read_video(path, 4, backend="gstreamer")


# ---- rotation: upright on every backend -------------------------------------------------------------

ROTATIONS = (90, 180, 270)
ORIENTED_KINDS = {"h264-mp4": ("libx264", ".mp4"), "av1-mp4": ("libsvtav1", ".mp4")}  # OpenCV cannot decode AV1 here


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    """(6, 128, 96, 3) upright portrait frames of the astronaut's face."""
    return astronaut_frames(6, 128, 96, window=PORTRAIT_WINDOW)


def _stored_sideways(frames: np.ndarray, rotation: int) -> np.ndarray:
    """What a camera stores when the display must turn it ``rotation`` degrees counter-clockwise."""
    return np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90), axes=(1, 2)))


@pytest.fixture(scope="module")
def rotated_clips(tmp_path_factory, portrait) -> dict[tuple[str, int], Path]:
    out = tmp_path_factory.mktemp("rotated")
    return {
        (kind, rot): write_clip(out / f"{kind}_{rot}{ext}", _stored_sideways(portrait, rot), codec, rotation=rot)
        for kind, (codec, ext) in ORIENTED_KINDS.items()
        for rot in ROTATIONS
    }


@pytest.fixture(scope="module")
def mtcnn():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu")


def _faces(mtcnn, frames: list[np.ndarray]) -> list[float]:
    """Best MTCNN face probability in each frame (0 when none)."""
    _, probs = mtcnn.detect(np.stack(frames))
    return [0.0 if p is None or p[0] is None else float(max(p)) for p in probs]


def test_sideways_frames_hide_the_face_from_mtcnn(portrait, mtcnn):
    """Why orientation matters: MTCNN finds the face upright, and in no sideways frame as surely as
    raydf accepts a face (FaceConfig.min_face_prob)."""
    assert min(_faces(mtcnn, list(portrait[:2]))) > 0.95
    for rot in ROTATIONS:
        assert max(_faces(mtcnn, list(_stored_sideways(portrait[:2], rot)))) < FaceConfig().min_face_prob, rot


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rot", ROTATIONS)
@pytest.mark.parametrize("kind", ORIENTED_KINDS)
def test_rotated_video_comes_out_upright(rotated_clips, portrait, mtcnn, kind, rot, backend):
    video = read_video(rotated_clips[kind, rot], 3, backend=backend)
    assert video.rotation == rot
    # OpenCV decodes H.264 itself; for AV1, which it cannot decode, PyAV's frames come back.
    assert video.backend == ("opencv" if backend == "opencv" and kind.startswith("h264") else "pyav")
    for frame, i in zip(video.frames, video.indices):
        assert _error(frame, portrait[i]) < CODEC_ROUNDING
        assert _error(frame[::-1, ::-1], portrait[i]) > 5 * CODEC_ROUNDING  # upside down is far off
    assert min(_faces(mtcnn, list(video.frames))) > 0.95


@pytest.mark.parametrize(
    "rot,hflip,vflip", [(0, True, False), (0, False, True), (90, True, False), (270, True, False), (90, False, True)]
)
def test_mirrored_display_matrix_is_applied_by_every_backend(tmp_path, portrait, rot, hflip, vflip):
    """Display rotation, then the mirror (FFmpeg's av_display_matrix_flip), as PyAV writes them."""
    path = write_clip(tmp_path / "m.mp4", portrait, rotation=rot, hflip=hflip, vflip=vflip)
    shown = np.rot90(portrait, rot // 90, axes=(1, 2))
    shown = shown[:, :, ::-1] if hflip else shown
    shown = shown[:, ::-1] if vflip else shown
    for backend in ("pyav", "opencv"):
        video = read_video(path, 3, backend=backend)
        assert video.backend == backend
        for frame, i in zip(video.frames, video.indices):
            assert _error(frame, shown[i]) < CODEC_ROUNDING, (backend, i)


# ---- frame sizes that change mid-stream ----------------------------------------------------------------

RESIZING_KINDS = {
    "av1-mkv": ("libsvtav1", ".mkv"),
    "vp8-webm": ("libvpx", ".webm"),
    "vp9-webm": ("libvpx-vp9", ".webm"),
    "h264-mkv": ("libx264", ".mkv"),
}


@pytest.fixture(scope="module")
def resizing_segments() -> list[np.ndarray]:
    """10 frames at 320x240, then 10 at 200x360 (W x H)."""
    return [astronaut_frames(10, 240, 320), astronaut_frames(10, 360, 200)]


@pytest.fixture(scope="module")
def resizing_clips(tmp_path_factory, resizing_segments) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("resizing")
    return {kind: write_resizing_clip(out / f"{kind}{ext}", resizing_segments, codec) for kind, (codec, ext) in RESIZING_KINDS.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", RESIZING_KINDS)
def test_frames_keep_their_true_size_when_it_changes_midstream(resizing_clips, resizing_segments, kind, backend):
    video = read_video(resizing_clips[kind], 20, backend=backend)
    assert video.num_frames == 20
    np.testing.assert_array_equal(video.indices, np.arange(20))
    # OpenCV scales the 200x360 frames to 320x240 (or cannot decode AV1): PyAV's frames come back.
    assert video.backend == "pyav"
    for frame, i in zip(video.frames, video.indices):
        segment, j = divmod(int(i), 10)
        assert _error(frame, resizing_segments[segment][j]) < CODEC_ROUNDING, i
    assert not video.uniform
    with pytest.raises(ValueError, match=r"frame 0: 320x240, frame 10: 200x360"):
        video.stack()


def test_frame_over_the_pixel_cap_midstream_is_refused(tmp_path):
    """The header's size passes the cap; a later, larger frame does not."""
    path = write_resizing_clip(tmp_path / "grow.webm", [astronaut_frames(4, 360, 200), astronaut_frames(4, 240, 320)], "libvpx")
    assert read_video(path, 8, max_pixels=320 * 240).num_frames == 8
    with pytest.raises(VideoTooLarge, match="decoded frame size 320x240"):
        read_video(path, 8, max_pixels=75_000)


# ---- seeking: exactly the sequential path's frames --------------------------------------------------------

GOP = {"g": "12", "keyint_min": "12", "sc_threshold": "0"}
SEEK_KINDS = {
    "h264-bframes-mp4": ("libx264", ".mp4", "yuv420p", GOP),
    "hevc-mp4": ("libx265", ".mp4", "yuv420p", {"x265-params": "keyint=12:min-keyint=12:scenecut=0:log-level=error"}),
    "vp9-webm": ("libvpx-vp9", ".webm", "yuv420p", {"g": "12", "deadline": "good", "cpu-used": "8", "auto-alt-ref": "1"}),
    "mjpeg-avi": ("mjpeg", ".avi", "yuvj420p", None),
}
SEEK_FRAMES = 72


@pytest.fixture(scope="module")
def seek_clips(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("seek")
    frames = astronaut_frames(SEEK_FRAMES, 72, 96)
    return {
        kind: write_clip(out / f"{kind}{ext}", frames, codec, pix_fmt=pix, options=opts)
        for kind, (codec, ext, pix, opts) in SEEK_KINDS.items()
    }


def test_h264_seek_clip_has_b_frames(seek_clips):
    """The H.264 clip reorders frames (decode order != display order), so seeking meets B-frames."""
    with av.open(str(seek_clips["h264-bframes-mp4"])) as c:
        pts = [p.pts for p in c.demux(c.streams.video[0]) if p.size]
    assert any(b < a for a, b in zip(pts, pts[1:]))


@pytest.mark.parametrize("t", [8, 3, 100])
@pytest.mark.parametrize("kind", SEEK_KINDS)
def test_seeking_returns_the_sequential_frames(seek_clips, caplog, kind, t):
    fast, fast_log = _read_logged(caplog, seek_clips[kind], t)
    slow, slow_log = _read_logged(caplog, seek_clips[kind], t, seek=False)
    assert (fast_log.decode_path, slow_log.decode_path) == ("seek", "sequential")
    assert fast.num_frames == SEEK_FRAMES
    _assert_same_frames(fast, slow)
    if t < 10:  # a few sampled frames: whole keyframe intervals are never decoded
        assert fast_log.packets_sent < slow_log.packets_sent


def test_frame_threads_give_the_same_frames(seek_clips):
    path = seek_clips["h264-bframes-mp4"]
    _assert_same_frames(read_video(path, 8, threads=3), read_video(path, 8, threads=1, seek=False))


@pytest.mark.parametrize("kind", SEEK_KINDS)
def test_opencv_and_pyav_frames_agree(seek_clips, kind):
    a, b = read_video(seek_clips[kind], 8, backend="opencv"), read_video(seek_clips[kind], 8, backend="pyav")
    assert a.backend == "opencv"
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.times, b.times)
    for x, y in zip(a.frames, b.frames):
        assert _error(x, y) < 1.0  # the same swscale conversion: identical for 8-bit video


def test_opencv_and_pyav_agree_on_10_bit_hevc(tmp_path):
    path = write_clip(tmp_path / "hevc10.mkv", astronaut_frames(12, 72, 96), "libx265", pix_fmt="yuv420p10le",
                      options={"x265-params": "log-level=error"})  # fmt: skip
    a, b = read_video(path, 4, backend="opencv"), read_video(path, 4, backend="pyav")
    assert a.backend == "opencv"
    for x, y in zip(a.frames, b.frames):
        assert _error(x, y) < 2.0  # 10-bit to 8-bit: the two conversions round differently


def test_opencv_seeks_far_frames_and_checks_them(tmp_path):
    """OpenCV seeks (CAP_PROP_POS_FRAMES) to frames far apart; each is checked against PyAV's time."""
    path = write_clip(tmp_path / "long.mp4", astronaut_frames(200, 48, 64), options={"g": "25", "keyint_min": "25"})
    a, b = read_video(path, 3, backend="opencv"), read_video(path, 3, backend="pyav")
    assert a.backend == "opencv"
    np.testing.assert_array_equal(a.indices, [0, 100, 199])
    for x, y in zip(a.frames, b.frames):
        np.testing.assert_array_equal(x, y)


def test_mpegts_has_no_seek_index_and_is_decoded_sequentially(tmp_path, caplog):
    path = write_clip(tmp_path / "v.ts", index_frames(40), container="mpegts", options=GOP)
    video, record = _read_logged(caplog, path, 8)
    assert record.decode_path == "sequential" and record.packets_sent == 40
    assert video.num_frames == 40
    _check_levels(video, 40)
    np.testing.assert_allclose(video.times, video.indices / 25, atol=1e-6)


def test_truncated_matroska_keeps_the_frames_before_the_cut(tmp_path):
    """A partial download: the frames before the cut are real, and both paths find the same ones."""
    whole = write_clip(tmp_path / "whole.mkv", index_frames(60), options=GOP)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    video = read_video(cut, 8)
    _assert_same_frames(video, read_video(cut, 8, seek=False))
    assert 10 < video.num_frames < 60
    for frame, idx in zip(video.frames, video.indices):
        assert abs(float(frame.mean()) - frame_level(60, int(idx))) < 4


def test_corrupt_keyframe_met_while_seeking_falls_back_to_sequential(tmp_path, caplog):
    """A keyframe a sampled frame needs does not decode: its interval's frames are lost, as sequentially."""
    whole = write_clip(tmp_path / "whole.mkv", index_frames(60), options=GOP)  # keyframes at 0, 12, 24...
    broken = write_garbled_copy(whole, tmp_path / "broken.mkv", packets={24})
    video, record = _read_logged(caplog, broken, 8)
    assert record.decode_path == "sequential"
    assert "seeking gave unexpected frames" in caplog.text
    _assert_same_frames(video, read_video(broken, 8, seek=False))
    assert video.num_frames < 60


# ---- timestamps ------------------------------------------------------------------------------------------


def test_variable_frame_rate_times_come_from_pts(tmp_path):
    durations_ms = [40, 40, 120, 20, 200, 40, 40, 33, 67, 500, 40]
    pts = np.concatenate([[0], np.cumsum(durations_ms)])  # (12,) ms
    path = write_clip(tmp_path / "vfr.mp4", astronaut_frames(12, 48, 64), pts=pts, time_base=MS,
                      options={"g": "4", "keyint_min": "4", "sc_threshold": "0"})  # fmt: skip
    for kwargs in ({}, {"seek": False}, {"backend": "opencv"}):
        video = read_video(path, 12, **kwargs)
        np.testing.assert_array_equal(video.indices, np.arange(12))
        np.testing.assert_allclose(video.times, pts / 1000, atol=1e-9, err_msg=str(kwargs))


# ---- caps ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_16k_frame_size_is_refused_before_decoding(tmp_path, backend):
    path = write_declared_size_vp8(tmp_path / "16k.webm", 15360, 8640)
    with pytest.raises(VideoTooLarge, match=r"header frame size 15360x8640 .* max_pixels"):
        read_video(path, 32, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_hour_video_is_refused_before_decoding(tmp_path, backend):
    path = write_long_declared_mkv(tmp_path / "10h.mkv", 10 * 3600)
    with pytest.raises(VideoTooLarge, match=r"duration 36,000 s is over max_duration_s"):
        read_video(path, 32, backend=backend)
    assert issubclass(VideoTooLarge, VideoDecodeError)


def test_duration_cap_holds_when_the_header_lies(tmp_path):
    """The Matroska Duration element rewritten to 40 ms: the packets' pts still span 10 hours."""
    path = write_long_declared_mkv(tmp_path / "10h.mkv", 10 * 3600)
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # EBML Duration, 8-byte float, in ms
    assert struct.unpack_from(">d", data, at + 3)[0] > 3.6e7
    struct.pack_into(">d", data, at + 3, 40.0)
    path.write_bytes(bytes(data))
    with av.open(str(path)) as c:
        assert c.duration < 1_000_000  # the header now says 40 ms
    with pytest.raises(VideoTooLarge, match=r"pts duration 36,000 s"):
        read_video(path, 32)


def test_caps_are_configurable(tmp_path):
    path = write_video(tmp_path / "v.mp4", index_frames(50), fps=25)  # 64x48, 2 s
    with pytest.raises(VideoTooLarge, match="max_pixels=3,000"):
        read_video(path, 8, max_pixels=3000)
    with pytest.raises(VideoTooLarge, match="max_duration_s=1 s"):
        read_video(path, 8, max_duration_s=1.0)
    assert read_video(path, 8, max_pixels=64 * 48, max_duration_s=2.5).num_frames == 50


# ---- wrong headers and bad files ------------------------------------------------------------------------


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("header_n", [50, 5])
def test_wrong_header_frame_count_is_resampled_from_true_count(tmp_path, header_n, backend):
    path = _avi_with_header_count(tmp_path, 20, header_n)
    video = read_video(path, 8, backend=backend)
    assert video.num_frames == 20
    np.testing.assert_array_equal(video.indices, sample_indices(20, 8))
    _check_levels(video, 20)


def test_opencv_alone_reads_what_pyav_cannot(tmp_path):
    """The fallback when PyAV cannot read a file: OpenCV counts frames, applies its rotation, times from its pts."""
    path = write_clip(tmp_path / "r.mp4", _stored_sideways(astronaut_frames(10, 64, 48), 90), rotation=90)
    alone = _read_opencv(str(path), 4, "r.mp4", _Limits(10**8, 1e4), None, None, 0)
    checked = read_video(path, 4, backend="pyav")
    assert alone.backend == "opencv" and alone.rotation == 90 and alone.num_frames == 10
    np.testing.assert_array_equal(alone.indices, checked.indices)
    np.testing.assert_allclose(alone.times, checked.times)
    for x, y in zip(alone.frames, checked.frames):
        np.testing.assert_array_equal(x, y)


def test_truncated_file_raises_decode_error_naming_it(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, index_frames(30), fps=25)
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        read_video(bad, 8)


def test_garbage_payload_in_a_valid_container_raises_decode_error(tmp_path):
    """Every packet's bytes replaced by noise: the libraries' errors come out as one VideoDecodeError."""
    source = write_clip(tmp_path / "src.mkv", astronaut_frames(12, 48, 64))
    garbled = write_garbled_copy(source, tmp_path / "garbled.mkv")
    with pytest.raises(VideoDecodeError, match=r"garbled.mkv: pyav: no decodable video frames; opencv: "):
        read_video(garbled, 4)


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
