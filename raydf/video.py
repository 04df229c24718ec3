"""Decode a video and sample T frames uniformly (circular padding for short videos).

What comes out (:class:`SampledVideo`): T upright RGB frames, each at its true size
(sizes may change mid-stream), the index of each frame in the decoded stream
(display order), its time in seconds from its pts, the exact frame count, and the
decoder that made the pixels. Only the sampled frames are converted to RGB and
kept, so memory holds T frames, never the whole video.

How PyAV (the default) finds the frames
---------------------------------------
1. **Caps.** The header's frame size and duration are checked against
   ``max_pixels`` and ``max_duration_s`` before anything is decoded
   (:class:`VideoTooLarge`); so is every decoded frame, and every packet's pts.
2. **Probe.** Every packet of the video stream is demuxed, none decoded (about 1%
   of the cost of decoding): the exact frame count, each frame's pts in display
   order and the keyframes. Packets flagged *discard* (edit lists) are not frames.
3. **Seek path.** For each sampled frame, PyAV seeks to the last keyframe at or
   before it (by pts) and decodes forward until that frame comes out, continuing
   without a seek when the decoder is already past that keyframe. Frames are
   matched by pts, so indices and pixels equal the sequential path's. For H.264,
   packets that no other frame references (``nal_ref_idc == 0``) and that are not
   sampled are not decoded. Cost: T keyframes and the reference frames of about
   half a keyframe interval each, independent of the video's length
   (``benchmarks/decode.py``).
4. **Sequential path.** Every frame is decoded in order and counted, a packet that
   does not decode is skipped (its frame is not counted); the sampled frames are
   kept (a second pass fetches missed ones when the probe's count was off). Slice
   threads only: frame threads would make which frames a corrupt stream loses
   depend on the machine's core count.

The seek path is used only where it can be trusted; the sequential path otherwise:

* the container has no index of its keyframes that FFmpeg seeks by: anything but
  MP4/MOV, Matroska/WebM and AVI (e.g. MPEG-TS, raw ``.h264``);
* the codec is not one whose packets each hold exactly one frame: anything but
  H.264, HEVC, VP8, VP9, AV1 and MJPEG (e.g. MPEG-4 Part 2 with packed B-frames);
* a packet has no pts, or two share one (AVI with B-frames, raw streams);
* the stream does not start with a keyframe, a frame precedes every keyframe, or
  a frame is decoded before the keyframe it would start from (streams cut out of
  a longer one, open GOPs at the start);
* demuxing stopped early (a truncated file);
* ``seek=False``.

While seeking, every packet must decode, every frame that comes out must carry a
pts the probe saw, and each sampled frame must come out; otherwise the video is
decoded again sequentially. Limitation: a corrupt packet in a keyframe interval
that no sampled frame needs is counted as a frame by the seek path, while the
sequential path would skip it (and number the later frames one lower).

Times are ``(pts - pts of frame 0) x time_base``: real seconds for variable frame
rates; ``index / fps`` only for streams without pts.

Orientation: the display matrix (rotation, then mirror) is applied to every frame,
by every backend, as FFmpeg's command line applies it (OpenCV's own rotation is
turned off: it ignores mirrors); ``rotation`` reports the counter-clockwise degrees
applied.

Backends
--------
``"pyav"``: PyAV only. ``"auto"``: PyAV, and OpenCV when PyAV cannot open or decode
the file (then OpenCV's frames are unchecked: its rotation, its frame count, sizes
as OpenCV scales them). ``"opencv"``: OpenCV's pixels, checked against PyAV's decode
of the same frames (twice the decoding): where OpenCV cannot decode the stream (AV1
here), scales frames whose size changes mid-stream to the first frame's size, or
finds other frames at the sampled times, PyAV's frames are returned
(``backend="pyav"``, with a warning). For 8-bit video the two give identical pixels
(the same FFmpeg swscale conversion; tested on H.264, HEVC, VP9, MJPEG); 10-bit
video differs by rounding.
"""

from __future__ import annotations

import array
import contextlib
import functools
import io
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from raydf.config import VideoConfig

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "VideoDecodeError",
    "VideoTooLarge",
    "SampledVideo",
    "sample_indices",
    "read_video",
    "decoder_identity",
]

BACKENDS = ("auto", "pyav", "opencv")
_DEFAULTS = VideoConfig()
# FFmpeg demuxers that seek by an index of every keyframe (MP4 stss, Matroska Cues, AVI idx1).
SEEK_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"})
# Codecs whose container packets each hold exactly one displayed frame.
SEEK_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mjpeg"})
# Codecs where FFmpeg's skip_frame=NONREF skips only frames no other frame references
# (H.264: nal_ref_idc == 0, ITU-T H.264 7.4.1). Not HEVC: its "non-reference" NAL types
# may still be referenced by higher temporal sub-layers.
_SKIP_NONREF_CODECS = frozenset({"h264"})
# Packets sent past a sampled frame's own packet before it must have come out
# (H.264 reorders at most 16 frames; frame threads add one frame each).
_MAX_OUTPUT_DELAY = 64
_NO_PTS = np.iinfo(np.int64).min


class VideoDecodeError(RuntimeError):
    """The file is not a decodable video (missing, truncated, no video stream...)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot decode video {source}: {reason}")
        self.source = source
        self.reason = reason


class VideoTooLarge(VideoDecodeError):
    """The video's frame size or duration is over a cap (``max_pixels``, ``max_duration_s``)."""


@dataclass(frozen=True, eq=False)
class SampledVideo:
    """T uniformly sampled frames of one video, upright, each at its true size."""

    frames: tuple[np.ndarray, ...]  # T upright RGB uint8 frames, each (H_t, W_t, 3); sizes may differ
    indices: np.ndarray  # (T,) int32 frame indices into the decoded stream (display order)
    times: np.ndarray  # (T,) float64 seconds of each sampled frame, from its pts (0 = frame 0, the stream start)
    num_frames: int  # true number of decodable frames
    fps: float  # average frame rate (frames per second)
    backend: str  # "pyav" | "opencv": the decoder that produced the frames
    rotation: int  # degrees (counter-clockwise) applied to make frames upright: 0, 90, 180, 270

    @property
    def uniform(self) -> bool:
        """True when every frame has the same size."""
        return len({f.shape for f in self.frames}) <= 1

    def stack(self) -> np.ndarray:
        """The frames as one ``(T, H, W, 3)`` uint8 array.

        Raises:
            ValueError: the frames differ in size (the message names the sizes and where they change).
        """
        if not self.uniform:
            sizes = [f"{f.shape[1]}x{f.shape[0]}" for f in self.frames]
            changes = [f"frame {int(self.indices[t])}: {sizes[t]}" for t in range(len(sizes)) if t == 0 or sizes[t] != sizes[t - 1]]
            raise ValueError(f"sampled frames differ in size (W x H), cannot stack: {', '.join(changes)}")
        return np.stack(self.frames)  # (T, H, W, 3) uint8


def sample_indices(num_frames: int, num_samples: int) -> np.ndarray:
    """Indices of ``num_samples`` frames out of ``num_frames``.

    ``n >= T``: ``round(linspace(0, n - 1, T))`` (uniform, first and last frame included);
    ``n < T``: circular padding ``arange(T) % n`` (the report's duplication of short videos).
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_frames >= num_samples:
        return np.round(np.linspace(0, num_frames - 1, num_samples)).astype(np.int32)
    return (np.arange(num_samples) % num_frames).astype(np.int32)


@functools.lru_cache(maxsize=None)
def decoder_identity(backend: str = "auto") -> str:
    """Versions of the libraries that may decode (and colour-convert) with ``backend``.

    The feature store records this string: a different decoder or swscale can change pixels.
    PyAV always takes part (it probes, and checks OpenCV); OpenCV may decode with ``"auto"``
    (fallback) and ``"opencv"``.

    Returns:
        e.g. ``"pyav=18.1.0 ffmpeg=8.1.2 avcodec=62.28.102 swscale=9.5.102 opencv=5.0.0
        opencv-avcodec=62.28.101 opencv-swscale=9.5.101"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; known: {BACKENDS}")
    import av

    libs = av.library_versions
    parts = [
        f"pyav={av.__version__}",
        f"ffmpeg={av.ffmpeg_version_info}",
        "avcodec=" + ".".join(map(str, libs["libavcodec"])),
        "swscale=" + ".".join(map(str, libs["libswscale"])),
    ]
    if backend in ("auto", "opencv"):
        import cv2

        parts.append(f"opencv={cv2.__version__}")
        for lib, version in re.findall(r"\b(avcodec|swscale):\s+YES \(([\d.]+)\)", cv2.getBuildInformation()):
            parts.append(f"opencv-{lib}={version}")
    return " ".join(parts)


# ---- input ---------------------------------------------------------------------------------------


def _label(source: Any, name: str | None) -> str:
    if name:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)


@contextlib.contextmanager
def _as_file(source: str | os.PathLike | bytes, suffix: str = ".mp4") -> Iterator[str]:
    """Yield a local path for ``source``; bytes are spilled to a temp file (OpenCV needs a path)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        tmpdir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, path = tempfile.mkstemp(suffix=suffix, dir=tmpdir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(source)
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    else:
        yield os.fspath(source)


@dataclass(frozen=True)
class _Limits:
    max_pixels: int
    max_duration_s: float

    def pixels(self, label: str, width: int, height: int, where: str) -> None:
        if width * height > self.max_pixels:
            raise VideoTooLarge(
                label, f"{where} frame size {width}x{height} = {width * height:,} pixels is over max_pixels={self.max_pixels:,}"
            )

    def duration(self, label: str, seconds: float, where: str) -> None:
        if seconds > self.max_duration_s:
            raise VideoTooLarge(label, f"{where} duration {seconds:,.0f} s is over max_duration_s={self.max_duration_s:,.0f} s")


def read_video(
    source: str | os.PathLike | bytes,
    num_frames: int,
    *,
    backend: str = _DEFAULTS.backend,
    name: str | None = None,
    max_pixels: int = _DEFAULTS.max_pixels,
    max_duration_s: float = _DEFAULTS.max_duration_s,
    seek: bool = _DEFAULTS.seek,
    threads: int = _DEFAULTS.threads,
) -> SampledVideo:
    """Decode ``source`` and return ``num_frames`` uniformly sampled, upright RGB frames.

    Frame ``t`` is frame ``sample_indices(n, T)[t]`` of the ``n`` decodable frames in
    display order (see the module docstring for how they are found without decoding
    every frame, and when every frame is decoded instead).

    Args:
        source: a local path, or the file's bytes (as Ray Data's ``read_binary_files`` gives them).
        num_frames: T (32 for FaceForensics++, 64 for Celeb-DF in the report).
        backend: ``"auto"`` (PyAV; OpenCV if PyAV cannot decode the file), ``"pyav"`` or
            ``"opencv"`` (OpenCV's pixels where it decodes the stream faithfully, PyAV's otherwise).
        name: how to name the video in errors and logs (defaults to the path).
        max_pixels: largest frame (width x height) accepted, from the header and each frame.
        max_duration_s: longest video accepted, in seconds, from the header and the pts.
        seek: decode only the keyframe intervals of the sampled frames where seeking is trusted.
        threads: decoder threads (0: FFmpeg's choice, one per core).

    Returns:
        A :class:`SampledVideo` of ``num_frames`` frames.

    Raises:
        VideoTooLarge: the frame size or duration is over a cap (nothing large was decoded).
        VideoDecodeError: the file is missing, empty, truncated, not a video, or has no
            decodable frames; any error of the decoding libraries is wrapped in it.
        ValueError: ``num_frames < 1`` or an unknown ``backend`` (caller errors, not media errors).
    """
    label = _label(source, name)
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; known: {BACKENDS}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise VideoDecodeError(label, "empty file (0 bytes)")
    else:
        p = Path(source)
        if not p.exists():
            raise VideoDecodeError(label, "no such file")
        if p.stat().st_size == 0:
            raise VideoDecodeError(label, "empty file (0 bytes)")
    limits = _Limits(int(max_pixels), float(max_duration_s))
    try:
        return _read(source, num_frames, label, backend, limits, seek, threads)
    except VideoDecodeError:
        raise
    except Exception as exc:  # av, cv2 and numpy raise many types; callers see one
        raise VideoDecodeError(label, f"{type(exc).__name__}: {exc}") from exc


def _read(source: Any, num_frames: int, label: str, backend: str, limits: _Limits, seek: bool, threads: int) -> SampledVideo:
    try:
        video, kept = _read_pyav(source, num_frames, label, limits, seek, threads)
    except VideoTooLarge:
        raise
    except VideoDecodeError as exc:
        if backend == "pyav":
            raise
        with _as_file(source, suffix=Path(label).suffix or ".mp4") as path:
            try:
                return _read_opencv(path, num_frames, label, limits, None, None, threads)  # type: ignore[return-value]
            except VideoTooLarge:
                raise
            except VideoDecodeError as cv_exc:
                raise VideoDecodeError(label, f"pyav: {exc.reason}; opencv: {cv_exc.reason}") from exc
    if backend != "opencv":
        return video
    with _as_file(source, suffix=Path(label).suffix or ".mp4") as path:
        try:
            checked = _read_opencv(path, num_frames, label, limits, video, kept, threads)
        except VideoTooLarge:
            raise
        except Exception as exc:  # VideoDecodeError, cv2.error...: PyAV's frames are in hand
            reason = exc.reason if isinstance(exc, VideoDecodeError) else f"{type(exc).__name__}: {exc}"
            log.warning("%s: OpenCV cannot decode it (%s); returning PyAV's frames", label, reason)
            return video
    return video if checked is None else checked


# ---- orientation ---------------------------------------------------------------------------------


def _orientation(matrix: np.ndarray | None) -> tuple[int, bool]:
    """(k, mirror) of an FFmpeg display matrix: rotate k x 90 degrees counter-clockwise, then mirror.

    The matrix (9 int32, 16.16 fixed point, FFmpeg ``libavutil/display.h``) maps a decoded
    pixel (x, y) (y down) to the display: x' = a x + c y, y' = b x + d y with
    a, b, c, d = m[0], m[1], m[3], m[4]. Angles between multiples of 90 degrees are rounded
    to the nearest (FFmpeg's command line would rotate by the exact angle and pad).
    """
    if matrix is None:
        return 0, False
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
    if abs(a) >= abs(c):  # no transpose: x' = a x, y' = d y
        a, b, c, d = np.sign(a) or 1.0, 0.0, 0.0, np.sign(d) or 1.0
    else:  # transpose: x' = c y, y' = b x
        a, b, c, d = 0.0, np.sign(b) or 1.0, np.sign(c) or 1.0, 0.0
    mirror = a * d - b * c < 0
    if mirror:  # matrix = hflip . R with R = (-a, b, -c, d)
        a, c = -a, -c
    rotations = {(1, 0, 0, 1): 0, (0, -1, 1, 0): 1, (-1, 0, 0, -1): 2, (0, 1, -1, 0): 3}
    return rotations[(int(a), int(b), int(c), int(d))], bool(mirror)


def _display_matrix(frame: Any) -> np.ndarray | None:
    from av.sidedata.sidedata import Type

    sd = frame.side_data.get(Type.DISPLAYMATRIX)
    return None if sd is None else np.frombuffer(bytes(sd), dtype=np.int32)  # (9,) 16.16 fixed point


def _upright(rgb: np.ndarray, k: int, mirror: bool) -> np.ndarray:
    out = np.rot90(rgb, k) if k else rgb  # (H, W, 3) -> (W, H, 3) for odd k
    if mirror:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


@dataclass
class _Kept:
    """One sampled frame as decoded."""

    rgb: np.ndarray  # (H, W, 3) uint8, upright
    pts: int | None
    decoded_hw: tuple[int, int]  # (H, W) before orientation
    k: int  # quarter turns counter-clockwise applied
    mirror: bool


def _keep(frame: Any) -> _Kept:
    k, mirror = _orientation(_display_matrix(frame))
    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
    return _Kept(_upright(rgb, k, mirror), frame.pts, (frame.height, frame.width), k, mirror)


# ---- PyAV ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    """What demuxing (no decoding) says about the video stream."""

    format: str
    codec: str
    time_base: Fraction | None
    fps: float
    num_frames: int  # packets that are frames (not discarded): exact when no_seek is None
    pts: np.ndarray | None  # (N,) int64 pts of each frame in display order; None without pts
    decode_pos: np.ndarray | None  # (N,) decode-order position of each frame's packet
    start: np.ndarray | None  # (N,) decode-order position of the keyframe to decode each frame from
    position: dict[int, int]  # pts -> decode-order position, every packet
    packet_pts: np.ndarray | None  # (P,) int64 pts of every packet in decode order
    keys: np.ndarray | None  # (K,) decode-order positions of the keyframes
    no_seek: str | None  # why seeking cannot be trusted (None: it can)


def _open_av(source: Any, label: str) -> Any:
    import av

    target = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    try:
        return av.open(target)
    except Exception as exc:  # InvalidDataError, OSError, ...
        raise VideoDecodeError(label, f"PyAV cannot open the file ({type(exc).__name__}: {exc})") from exc


def _video_stream(container: Any, label: str) -> Any:
    """The video stream FFmpeg would pick, never cover art (``attached_pic``) when there is a video."""
    import av

    streams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        raise VideoDecodeError(label, "no video stream (audio-only or not a video)")
    best = container.streams.best("video")
    return best if best in streams else streams[0]


def _header_duration(container: Any, stream: Any) -> float:
    """Longest duration (seconds) the header declares: the container's or the stream's."""
    seconds = [0.0]
    if container.duration:
        seconds.append(container.duration / 1_000_000)  # AV_TIME_BASE
    if stream.duration and stream.time_base:
        seconds.append(float(stream.duration * stream.time_base))
    return max(seconds)


def _probe(container: Any, stream: Any, label: str, limits: _Limits, seek: bool) -> _Probe:
    import av

    cc = stream.codec_context
    limits.pixels(label, cc.width, cc.height, "header")
    limits.duration(label, _header_duration(container, stream), "header")
    tb = stream.time_base
    pts_a, key_a, discard_a = array.array("q"), bytearray(), bytearray()
    first = None
    truncated = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            pts = packet.pts
            pts_a.append(_NO_PTS if pts is None else pts)
            key_a.append(packet.is_keyframe)
            discard_a.append(packet.is_discard)
            if first is None:
                first = pts
            elif pts is not None and tb and len(pts_a) % 256 == 0:  # stop early on a header that lies
                limits.duration(label, float(abs(pts - first) * tb), "pts")
    except av.error.FFmpegError as exc:  # a truncated or corrupt file: the packets before it are real
        truncated = f"demuxing stopped early ({type(exc).__name__}: {exc})"
        log.warning("%s: %s after %d packets", label, truncated, len(pts_a))
    if not pts_a:
        raise VideoDecodeError(label, "no video packets")
    fmt = container.format.name
    codec = stream.codec.canonical_name
    pts_all = np.frombuffer(pts_a, dtype=np.int64)  # (P,) decode order
    known = pts_all[pts_all != _NO_PTS]
    if len(known) and tb:
        limits.duration(label, float((known.max() - known.min()) * tb), "pts")
    keys = np.frombuffer(bytes(key_a), dtype=np.uint8).astype(bool)  # (P,)
    frames = ~np.frombuffer(bytes(discard_a), dtype=np.uint8).astype(bool)  # (P,)
    n = int(frames.sum())
    if n == 0:
        raise VideoDecodeError(label, "every video packet is flagged discard")
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    common = dict(format=fmt, codec=codec, time_base=tb, fps=fps, num_frames=n)

    def untrusted(reason: str) -> _Probe:
        return _Probe(**common, pts=None, decode_pos=None, start=None, position={}, packet_pts=None, keys=None, no_seek=reason)

    if (pts_all == _NO_PTS).any() or not tb:
        return untrusted("packets without pts")
    if len(np.unique(pts_all)) != len(pts_all):
        return untrusted("packets share a pts")
    frame_pos = np.flatnonzero(frames)  # (N,) decode positions of frame packets
    order = np.argsort(pts_all[frame_pos], kind="stable")
    pts = pts_all[frame_pos][order]  # (N,) display order
    decode_pos = frame_pos[order]  # (N,)
    position = {int(p): i for i, p in enumerate(pts_all.tolist())}
    if fps <= 0 and n > 1 and pts[-1] > pts[0]:
        fps = float((n - 1) / ((pts[-1] - pts[0]) * tb))
        common["fps"] = fps
    reason = None
    key_pos = np.flatnonzero(keys)  # (K,)
    if not seek:
        reason = "seek=False"
    elif truncated:
        reason = truncated
    elif fmt not in SEEK_CONTAINERS:
        reason = f"container {fmt!r} has no keyframe index to seek by"
    elif codec not in SEEK_CODECS:
        reason = f"codec {codec!r} may not hold exactly one frame per packet"
    elif len(key_pos) == 0 or key_pos[0] != 0:
        reason = "the stream does not start with a keyframe"
    start = None
    if reason is None:
        key_pts = pts_all[key_pos]
        if (np.diff(key_pts) <= 0).any():
            reason = "keyframe pts are not increasing"
        else:
            which = np.searchsorted(key_pts, pts, side="right") - 1  # (N,) last keyframe at or before each frame
            if (which < 0).any():
                reason = "a frame precedes every keyframe (open GOP at the start)"
            else:
                start = key_pos[which]
                if (start > decode_pos).any():
                    reason = "a frame is decoded before the keyframe it would start from"
    if reason is not None:
        start = None
    return _Probe(**common, pts=pts, decode_pos=decode_pos, start=start, position=position, packet_pts=pts_all, keys=key_pos,
                  no_seek=reason)  # fmt: skip


class _Untrusted(Exception):
    """The seek path met something the probe did not predict; decode sequentially instead."""


def _read_pyav(
    source: Any, num_frames: int, label: str, limits: _Limits, seek: bool, threads: int
) -> tuple[SampledVideo, list[_Kept]]:
    container, stream = _open_decoder(source, label, threads)
    kept: dict[int, _Kept] | None = None
    try:
        probe = _probe(container, stream, label, limits, seek)
        path, decoded, n = "sequential", 0, probe.num_frames
        if probe.no_seek is None:
            try:
                kept, decoded = _decode_seek(container, stream, label, probe, sample_indices(n, num_frames), limits)
                path = "seek"
            except _Untrusted as exc:
                log.warning("%s: seeking gave unexpected frames (%s); decoding every frame", label, exc)
        else:
            log.debug("%s: decoding every frame: %s", label, probe.no_seek)
    finally:
        container.close()
    if kept is None:
        kept, n, decoded = _decode_sequential(source, label, probe, num_frames, limits, threads)
    indices = sample_indices(n, num_frames)
    log.debug(
        "%s: %s path sent %d packets of %d frames to the decoder",
        label, path, decoded, n, extra={"decode_path": path, "packets_sent": decoded, "num_frames": n},
    )  # fmt: skip
    return _assemble(kept, indices, n, probe, "pyav"), [kept[int(i)] for i in indices]


def _assemble(kept: dict[int, _Kept], indices: np.ndarray, n: int, probe: _Probe, backend: str) -> SampledVideo:
    frames = [kept[int(i)] for i in indices]
    times = _times(frames, indices, probe)
    rotations = {f.k * 90 for f in frames}
    if len(rotations) > 1:
        log.warning("display rotation changes mid-stream: %s", sorted(rotations))
    return SampledVideo(
        frames=tuple(f.rgb for f in frames),
        indices=indices,
        times=times,
        num_frames=n,
        fps=probe.fps,
        backend=backend,
        rotation=frames[0].k * 90,
    )


def _times(frames: list[_Kept], indices: np.ndarray, probe: _Probe) -> np.ndarray:
    """(T,) float64 seconds of each frame from its pts, 0 at the first frame (frame 0 is always sampled)."""
    first = next(f.pts for f, i in zip(frames, indices) if i == 0)
    if probe.time_base and first is not None and all(f.pts is not None for f in frames):
        return np.array([float((f.pts - first) * probe.time_base) for f in frames], dtype=np.float64)
    fps = probe.fps or 25.0  # no pts: nominal rate (25 fps when even that is unknown)
    return indices.astype(np.float64) / fps


def _open_decoder(source: Any, label: str, threads: int, *, frame_threads: bool = True) -> tuple[Any, Any]:
    """(container, video stream) ready to decode: other streams discarded, decoder threads set.

    Frame threads report a frame's decoding error when a later frame is received, so which
    frames a corrupt stream loses would depend on the thread count; slice threads (or one
    thread) report it for the packet that caused it.
    """
    import av

    container = _open_av(source, label)
    try:
        stream = _video_stream(container, label)
        for other in container.streams:
            if other.index != stream.index:
                other.discard = av.stream.Discard.all  # the demuxer skips their data
        stream.codec_context.thread_type = "AUTO" if frame_threads else "SLICE"
        stream.codec_context.thread_count = threads  # 0: FFmpeg's choice
    except BaseException:
        container.close()
        raise
    return container, stream


def _decode_seek(
    container: Any, stream: Any, label: str, probe: _Probe, indices: np.ndarray, limits: _Limits
) -> tuple[dict[int, _Kept], int]:
    """Seek to each sampled frame's keyframe and decode forward; frames matched by pts.

    Returns:
        ({display index: frame}, number of packets sent to the decoder).

    Raises:
        _Untrusted: a frame came out that the probe did not list, or a sampled frame never came out.
    """
    import av

    assert probe.pts is not None and probe.start is not None and probe.decode_pos is not None
    wanted = sorted({int(i) for i in indices})
    index_of_pts = {int(probe.pts[i]): i for i in wanted}
    kept: dict[int, _Kept] = {}
    decoded = 0  # packets sent to the decoder
    cc = stream.codec_context
    skip_nonref = probe.codec in _SKIP_NONREF_CODECS
    packets: Iterator[Any] | None = None
    sent = -1  # decode position of the last packet sent to the decoder

    def decode(packet: Any) -> list[Any]:
        try:
            return cc.decode(packet)
        except av.error.FFmpegError as exc:  # the sequential path skips such a packet and counts on
            where = "draining" if packet is None else f"packet with pts {packet.pts}"
            raise _Untrusted(f"{where} does not decode ({type(exc).__name__}: {exc})") from exc

    def take(frames: list[Any]) -> None:
        for frame in frames:
            limits.pixels(label, frame.width, frame.height, "decoded")
            if frame.pts is None or frame.pts not in probe.position:
                raise _Untrusted(f"a frame came out with pts {frame.pts}, not a packet's")
            i = index_of_pts.get(frame.pts)
            if i is not None and i not in kept:
                kept[i] = _keep(frame)

    for n, i in enumerate(wanted):
        if i in kept:
            continue
        key, own = int(probe.start[i]), int(probe.decode_pos[i])
        if packets is None or key > sent + 1:
            packets = _seek(container, stream, probe, key)
            sent = key - 1
        # After this frame's own packet, drain the decoder rather than feed it more packets when
        # the next sampled frame needs a seek anyway: the frame comes out without the reorder delay.
        later = [j for j in wanted[n + 1 :] if j not in kept][:1]
        drain_after_own = not later or int(probe.start[later[0]]) > own + 1
        while i not in kept:
            packet = next(packets, None)
            if packet is None or packet.size == 0:
                take(decode(None))  # drain at the end of the stream
                packets = None
                if i not in kept:
                    raise _Untrusted(f"frame {i} did not come out by the end of the stream")
                break
            pos = probe.position.get(packet.pts)
            if pos != sent + 1:
                raise _Untrusted(f"packet with pts {packet.pts} out of the probed order")
            sent = pos
            decoded += 1
            if skip_nonref:
                cc.skip_frame = "DEFAULT" if packet.pts in index_of_pts else "NONREF"
            take(decode(packet))
            if sent >= own and i not in kept and drain_after_own:
                take(decode(None))  # the decoder is flushed by the next seek
                packets = None
                if i not in kept:
                    raise _Untrusted(f"frame {i} did not come out when the decoder was drained")
            if sent > own + _MAX_OUTPUT_DELAY and i not in kept:
                raise _Untrusted(f"frame {i} did not come out {_MAX_OUTPUT_DELAY} packets after its own")
    return kept, decoded


def _seek(container: Any, stream: Any, probe: _Probe, key: int) -> Iterator[Any]:
    """Position the demuxer so that the next packet is the one at decode position ``key``.

    Seeks backward to the keyframe's pts (then to earlier keyframes', if the demuxer
    lands past it) and skips, undecoded, the packets before it.
    """
    assert probe.keys is not None and probe.packet_pts is not None
    earlier = probe.keys[: np.searchsorted(probe.keys, key)][::-1][:2]
    for target in [key, *earlier.tolist()]:
        container.seek(int(probe.packet_pts[target]), backward=True, stream=stream)  # also flushes the decoder
        packets = container.demux(stream)
        for packet in packets:
            if packet.size == 0:
                break
            pos = probe.position.get(packet.pts)
            if pos is None:
                raise _Untrusted(f"after seeking, a packet with pts {packet.pts} the probe did not see")
            if pos == key:
                return _chain(packet, packets)
            if pos > key:
                break  # landed past the keyframe: try an earlier one
    raise _Untrusted(f"seeking cannot reach the keyframe at decode position {key}")


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _decode_sequential(
    source: Any, label: str, probe: _Probe, num_frames: int, limits: _Limits, threads: int
) -> tuple[dict[int, _Kept], int, int]:
    """Decode every frame in order, keep the sampled ones; frames that fail to decode are not counted.

    Returns:
        ({display index: frame}, number of frames decoded, packets sent to the decoder in all passes).
    """
    import av

    sent = 0

    def run(wanted: set[int], kept: dict[int, _Kept]) -> int:
        nonlocal sent
        container, stream = _open_decoder(source, label, threads, frame_threads=False)  # the same frames on any machine
        count = 0
        try:
            cc = stream.codec_context
            errors = 0

            def take(frames: list[Any]) -> None:
                nonlocal count
                for frame in frames:
                    limits.pixels(label, frame.width, frame.height, "decoded")
                    if count in wanted and count not in kept:
                        kept[count] = _keep(frame)
                    count += 1

            try:
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue
                    sent += 1
                    try:
                        take(cc.decode(packet))
                    except av.error.InvalidDataError as exc:  # one bad packet: its frame is lost, not the video
                        errors += 1
                        log.debug("%s: packet at pts %s does not decode (%s)", label, packet.pts, exc)
                take(cc.decode(None))
            except av.error.FFmpegError as exc:  # a truncated file: the frames before it are real
                log.warning("%s: decoding stopped after %d frames (%s: %s)", label, count, type(exc).__name__, exc)
            if errors:
                log.warning("%s: %d packets did not decode; their frames are not counted", label, errors)
        finally:
            container.close()
        return count

    kept: dict[int, _Kept] = {}
    count = run(set(sample_indices(probe.num_frames, num_frames).tolist()), kept)
    if count == 0:
        raise VideoDecodeError(label, "no decodable video frames")
    if count != probe.num_frames:
        log.debug("%s: %d packets but %d frames decode; resampling", label, probe.num_frames, count)
    missing = set(sample_indices(count, num_frames).tolist()) - kept.keys()
    if missing:
        run(missing, kept)
        if missing - kept.keys():
            raise VideoDecodeError(label, f"frames {sorted(missing - kept.keys())[:5]} vanished on the second pass")
    return kept, count, sent


# ---- OpenCV ----------------------------------------------------------------------------------------


def _read_opencv(
    path: str,
    num_frames: int,
    label: str,
    limits: _Limits,
    reference: SampledVideo | None,
    reference_frames: list[_Kept] | None,
    threads: int,
) -> SampledVideo | None:
    """OpenCV's frames; checked against ``reference`` (PyAV's) when given.

    Returns None when OpenCV's frames disagree with the reference (sizes, times, count):
    the caller then uses the reference.
    """
    import cv2

    params = [cv2.CAP_PROP_N_THREADS, threads] if threads > 0 else []
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        raise VideoDecodeError(label, "OpenCV cannot open the file")
    try:
        if reference is None:
            return _opencv_alone(cap, path, num_frames, label, limits, params)
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)  # the display matrix is applied below, as for PyAV
        assert reference_frames is not None
        return _opencv_checked(cap, label, limits, reference, reference_frames)
    finally:
        cap.release()


def _opencv_checked(cap: Any, label: str, limits: _Limits, ref: SampledVideo, ref_frames: list[_Kept]) -> SampledVideo | None:
    """Grab the reference's frames with OpenCV (seeking when far), checking each frame's time and size."""
    import cv2

    limits.pixels(label, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), "header")
    by_index = {int(i): (float(t), f) for i, t, f in zip(ref.indices, ref.times, ref_frames)}
    interval = 1.0 / ref.fps if ref.fps > 0 else 0.04
    kept: dict[int, np.ndarray] = {}
    origin_ms = None
    pos = 0  # index of the next frame grab() returns
    for i in sorted(by_index):
        t, frame = by_index[i]
        if i - pos > 2 * max(ref.fps, 1.0):  # far ahead: let OpenCV seek (it decodes from a keyframe before)
            cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            pos = i
        while pos <= i:
            if not cap.grab():
                log.warning("%s: OpenCV ran out of frames at %d of %d; returning PyAV's frames", label, pos, ref.num_frames)
                return None
            pos += 1
        ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        if origin_ms is None:
            origin_ms = ms  # frame 0 is always sampled, and first
        if abs((ms - origin_ms) / 1000.0 - t) > interval / 2:
            log.warning("%s: OpenCV's frame %d is at %.3f s, PyAV's at %.3f s; returning PyAV's frames",
                        label, i, (ms - origin_ms) / 1000.0, t)  # fmt: skip
            return None
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
            log.warning("%s: OpenCV cannot retrieve frame %d; returning PyAV's frames", label, i)
            return None
        if bgr.shape[:2] != frame.decoded_hw:
            log.warning("%s: OpenCV gives frame %d as %dx%d, its true size is %dx%d (OpenCV scales frames whose size "
                        "changes mid-stream); returning PyAV's frames", label, i, bgr.shape[1], bgr.shape[0],
                        frame.decoded_hw[1], frame.decoded_hw[0])  # fmt: skip
            return None
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # (H, W, 3) uint8
        kept[i] = _upright(rgb, frame.k, frame.mirror)
    return SampledVideo(
        frames=tuple(kept[int(i)] for i in ref.indices),
        indices=ref.indices,
        times=ref.times,
        num_frames=ref.num_frames,
        fps=ref.fps,
        backend="opencv",
        rotation=ref.rotation,
    )


def _opencv_alone(cap: Any, path: str, num_frames: int, label: str, limits: _Limits, params: list[int]) -> SampledVideo:
    """OpenCV without PyAV's reference (PyAV cannot read the file): OpenCV's rotation, counted frames."""
    import cv2

    limits.pixels(label, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), "header")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    hint = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if fps > 0:
        limits.duration(label, hint / fps, "header")
    rotation = (360 - int(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0)) % 360  # OpenCV turns clockwise

    def grab_all(capture: Any, wanted: set[int], kept: dict[int, tuple[np.ndarray, float]]) -> int:
        count = 0
        while capture.grab():
            if count in wanted and count not in kept:
                ok, bgr = capture.retrieve()
                if ok and bgr is not None:
                    limits.pixels(label, bgr.shape[1], bgr.shape[0], "decoded")
                    kept[count] = (cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), capture.get(cv2.CAP_PROP_POS_MSEC))
            count += 1
        return count

    kept: dict[int, tuple[np.ndarray, float]] = {}
    count = grab_all(cap, set(sample_indices(hint, num_frames).tolist()) if hint > 0 else set(), kept)
    if count == 0:
        raise VideoDecodeError(label, "no decodable video frames")
    indices = sample_indices(count, num_frames)
    missing = set(indices.tolist()) - kept.keys()
    if missing:
        again = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
        try:
            grab_all(again, missing, kept)
        finally:
            again.release()
        if missing - kept.keys():
            raise VideoDecodeError(label, f"frames {sorted(missing - kept.keys())[:5]} vanished on the second pass")
    origin = kept[0][1]
    return SampledVideo(
        frames=tuple(kept[int(i)][0] for i in indices),
        indices=indices,
        times=np.array([(kept[int(i)][1] - origin) / 1000.0 for i in indices], dtype=np.float64),
        num_frames=count,
        fps=fps,
        backend="opencv",
        rotation=rotation,
    )
