"""Decode a video and sample T frames uniformly (circular padding for short videos).

OpenCV decodes; PyAV is the fallback for what OpenCV cannot open. The header's
frame count is only a hint: frames are counted while they are grabbed, and when
the true count differs the indices are recomputed from it. Only the sampled
frames are converted to RGB and kept (``grab``/``retrieve``), so memory holds T
frames, never the whole video.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["VideoDecodeError", "SampledVideo", "sample_indices", "read_video"]


class VideoDecodeError(RuntimeError):
    """The file is not a decodable video (missing, truncated, no video stream...)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot decode video {source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class SampledVideo:
    """T uniformly sampled frames of one video."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: np.ndarray  # (T,) int32 frame indices into the decoded stream
    num_frames: int  # true number of decodable frames
    fps: float
    backend: str  # "opencv" | "pyav"


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


def read_video(
    source: str | os.PathLike | bytes,
    num_frames: int,
    *,
    backend: str = "auto",
    name: str | None = None,
) -> SampledVideo:
    """Decode ``source`` and return ``num_frames`` uniformly sampled RGB frames.

    Args:
        source: a local path, or the file's bytes (as Ray Data's ``read_binary_files`` gives them).
        num_frames: T (32 for FaceForensics++, 64 for Celeb-DF in the report).
        backend: ``"auto"`` (OpenCV, then PyAV), ``"opencv"`` or ``"pyav"``.
        name: how to name the video in errors (defaults to the path).

    Raises:
        VideoDecodeError: the file is missing, empty, truncated, not a video, or has no frames.
    """
    label = name or (os.fspath(source) if not isinstance(source, (bytes, bytearray, memoryview)) else "<bytes>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise VideoDecodeError(label, "empty file (0 bytes)")
    else:
        p = Path(source)
        if not p.exists():
            raise VideoDecodeError(label, "no such file")
        if p.stat().st_size == 0:
            raise VideoDecodeError(label, "empty file (0 bytes)")
    if backend not in ("auto", "opencv", "pyav"):
        raise ValueError(f"unknown video backend {backend!r}")

    with _as_file(source, suffix=Path(label).suffix or ".mp4") as path:
        reasons = []
        if backend in ("auto", "opencv"):
            try:
                return _read_opencv(path, num_frames, label)
            except VideoDecodeError as exc:
                if backend == "opencv":
                    raise
                reasons.append(f"opencv: {exc.reason}")
        try:
            return _read_pyav(path, num_frames, label)
        except VideoDecodeError as exc:
            reasons.append(f"pyav: {exc.reason}")
        raise VideoDecodeError(label, "; ".join(reasons))


def _read_opencv(path: str, num_frames: int, label: str) -> SampledVideo:
    import cv2

    def open_capture() -> cv2.VideoCapture:
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise VideoDecodeError(label, "OpenCV cannot open the file")
        return cap

    cap = open_capture()
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        hint = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        wanted = set(sample_indices(hint, num_frames).tolist()) if hint > 0 else set()
        kept: dict[int, np.ndarray] = {}
        count = 0
        while cap.grab():
            if count in wanted:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None:
                    kept[count] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            count += 1
    finally:
        cap.release()
    if count == 0:
        raise VideoDecodeError(label, "no decodable video frames")
    if count != hint:
        log.debug("%s: header says %d frames, stream has %d; resampling", label, hint, count)
    indices = sample_indices(count, num_frames)
    missing = sorted(set(indices.tolist()) - kept.keys())
    if missing:
        # The header was wrong (or a frame failed to convert): one more pass for the missing ones.
        cap = open_capture()
        try:
            todo = set(missing)
            i = 0
            while todo and cap.grab():
                if i in todo:
                    ok, bgr = cap.retrieve()
                    if not ok or bgr is None:
                        raise VideoDecodeError(label, f"frame {i} cannot be decoded")
                    kept[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    todo.discard(i)
                i += 1
            if todo:
                raise VideoDecodeError(label, f"frames {sorted(todo)[:5]} vanished on the second pass")
        finally:
            cap.release()
    frames = np.stack([kept[i] for i in indices.tolist()])  # (T, H, W, 3) uint8
    return SampledVideo(frames=frames, indices=indices, num_frames=count, fps=fps, backend="opencv")


def _read_pyav(path: str, num_frames: int, label: str) -> SampledVideo:
    import av

    def open_container():  # noqa: ANN202 - av types
        try:
            container = av.open(path)
        except Exception as exc:  # av raises many error types (InvalidDataError, OSError...)
            raise VideoDecodeError(label, f"PyAV cannot open the file ({type(exc).__name__}: {exc})") from exc
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(label, "no video stream (audio-only or not a video)")
        return container

    def decode(container, wanted: set[int], kept: dict[int, np.ndarray]) -> int:  # noqa: ANN001
        count = 0
        try:
            for frame in container.decode(video=0):
                if count in wanted:
                    kept[count] = frame.to_ndarray(format="rgb24")
                count += 1
        except Exception as exc:  # a corrupt packet mid-stream ends the usable stream
            log.warning("%s: decoding stopped after %d frames (%s)", label, count, exc)
        return count

    container = open_container()
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0.0)
        hint = int(stream.frames or 0)
        kept: dict[int, np.ndarray] = {}
        count = decode(container, set(sample_indices(hint, num_frames).tolist()) if hint > 0 else set(), kept)
    finally:
        container.close()
    if count == 0:
        raise VideoDecodeError(label, "no decodable video frames")
    indices = sample_indices(count, num_frames)
    missing = set(indices.tolist()) - kept.keys()
    if missing:
        container = open_container()
        try:
            decode(container, missing, kept)
        finally:
            container.close()
        if missing - kept.keys():
            raise VideoDecodeError(label, "frames vanished on the second pass")
    frames = np.stack([kept[i] for i in indices.tolist()])  # (T, H, W, 3) uint8
    return SampledVideo(frames=frames, indices=indices, num_frames=count, fps=fps, backend="pyav")
