"""Live scoring: frames a client streams over ``/v1/stream``, scored over a rolling window.

The protocol (one WebSocket; JSON in text messages, frames in binary ones)::

    client -> {"type": "start", "every": 8, "name": "webcam"}     optional, first; k = every
    server -> {"type": "ready", "window": T, "every": k, "model": {...}}
    client -> {"type": "frame", "time_s": 0.04}                   optional: the next frame's time
    client -> <binary: one JPEG (or PNG/WebP) frame>              ... as the clip plays
    server -> {"type": "score", "fake_probability": p, "label": "fake"|"real", "frames_received": n,
               "window": {"first": i0, "last": i1, "start_s": t0, "end_s": t1, "frames": T},
               "face_valid_fraction": f, "latency_s": s, "skipped": m, "threshold": 0.5}
    client -> {"type": "end"}                                     the last window is scored, then
    server -> {"type": "done", "frames_received": n, "updates": u, "skipped": m}

Every ``every`` frames the window of the last T frames (the model's T; fewer are padded
circularly, as :func:`raydf.video.sample_indices` pads a short video) is scored by the same
two deployments as an upload. ``latency_s`` runs from the arrival of the window's newest
frame to the moment its score is sent. While one update is being computed, later due
updates collapse into one on the newest window (``skipped`` counts the collapsed ones), so a
slow model never builds a queue. Errors arrive as ``{"type": "error", "status": ..,
"message": ..}``; a frame error does not end the stream: a frame that is not an image (or is
over the size caps) is refused as it arrives, from its header, and never enters the window.
"""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass

import numpy as np

from raydf.serve.errors import ServiceError
from raydf.video import sample_indices

__all__ = ["StreamFrame", "WindowSnapshot", "RollingWindow", "check_frame", "decode_frame", "FRAME_FORMATS", "SUBPROTOCOL", "TOKEN_PROTOCOL_PREFIX"]

SUBPROTOCOL = "raydf.stream.v1"
# A browser cannot set headers on a WebSocket: it may offer the token as a second subprotocol.
TOKEN_PROTOCOL_PREFIX = "raydf.token."
FRAME_FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class StreamFrame:
    data: bytes  # the encoded frame as the client sent it
    index: int  # 0-based position in the stream
    time_s: float
    arrival: float  # time.perf_counter() when it arrived


@dataclass(frozen=True)
class WindowSnapshot:
    """The T frames an update scores (padded circularly when fewer have arrived)."""

    frames: tuple[bytes, ...]  # T encoded frames
    indices: np.ndarray  # (T,) int32 stream positions
    times: np.ndarray  # (T,) float64 seconds
    newest_arrival: float  # perf_counter of the newest frame's arrival
    received: int  # frames received when the snapshot was taken


class RollingWindow:
    """The last ``size`` frames of a stream; says when an update is due (every ``every`` frames)."""

    def __init__(self, size: int, every: int) -> None:
        if size < 1 or every < 1:
            raise ValueError(f"window size and every must be >= 1, got {size}, {every}")
        self.size, self.every = size, every
        self._frames: deque[StreamFrame] = deque(maxlen=size)
        self.received = 0

    def push(self, data: bytes, time_s: float, arrival: float) -> bool:
        """Add a frame; True when an update is due."""
        self._frames.append(StreamFrame(data, self.received, float(time_s), arrival))
        self.received += 1
        return self.received % self.every == 0

    def __len__(self) -> int:
        return len(self._frames)

    def snapshot(self) -> WindowSnapshot:
        """The window as T frames (``sample_indices`` pads a short one circularly)."""
        if not self._frames:
            raise ValueError("no frames in the window")
        frames = list(self._frames)
        pick = sample_indices(len(frames), self.size)  # (T,)
        chosen = [frames[i] for i in pick]
        return WindowSnapshot(
            frames=tuple(f.data for f in chosen),
            indices=np.asarray([f.index for f in chosen], np.int32),
            times=np.asarray([f.time_s for f in chosen], np.float64),
            newest_arrival=frames[-1].arrival,
            received=self.received,
        )


def _open(data: bytes, max_pixels: int):  # noqa: ANN202 - a PIL image, header read, pixels not decoded
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ServiceError(415, "a frame must be a JPEG, PNG or WebP image") from exc
    except Exception as exc:  # PIL's decompression-bomb guard and its other refusals
        raise ServiceError(413 if "pixels" in str(exc) else 422, f"frame refused: {exc}") from exc
    if img.format not in FRAME_FORMATS:
        raise ServiceError(415, f"a frame must be a JPEG, PNG or WebP image, got {img.format}")
    w, h = img.size
    if w * h > max_pixels:
        raise ServiceError(413, f"frame size {w}x{h} = {w * h:,} pixels is over max_pixels={max_pixels:,}")
    return img


def check_frame(data: bytes, *, max_pixels: int) -> tuple[int, int]:
    """(width, height) of a streamed frame, from its header only (the ingress checks each frame as it arrives).

    Raises:
        ServiceError: 415 not an image of :data:`FRAME_FORMATS`; 413 over ``max_pixels``.
    """
    return _open(data, max_pixels).size


def decode_frame(data: bytes, *, max_pixels: int) -> np.ndarray:
    """One streamed frame -> (H, W, 3) uint8 RGB.

    Raises:
        ServiceError: 415 not an image of :data:`FRAME_FORMATS`; 413 over ``max_pixels`` (checked from
            the header, before decoding); 422 an image that does not decode.
    """
    img = _open(data, max_pixels)
    try:
        return np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
    except Exception as exc:  # truncated or corrupt image data
        raise ServiceError(422, f"frame does not decode: {type(exc).__name__}: {exc}") from exc
