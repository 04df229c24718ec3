"""Media files the tests need that raydf.synth does not make.

Every video is made here with PyAV's encoders from ``skimage.data.astronaut()`` (a real
face, shipped offline): rotated (display matrix), resized mid-stream, variable frame rate,
capped sizes and durations, other codecs and containers.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

# The astronaut's face in skimage.data.astronaut() (512 x 512), as (top, bottom, left, right) of
# a portrait window around it: MTCNN finds the face in it, upright, and in no other orientation.
PORTRAIT_WINDOW = (0, 320, 100, 340)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def astronaut_frames(n: int, height: int, width: int, *, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(n, H, W, 3) uint8 frames of the astronaut: a window that drifts two source pixels a frame.

    Args:
        n: number of frames.
        height, width: frame size.
        window: (top, bottom, left, right) of the astronaut to show, ``right + 32 <= 512`` (default:
            the whole image less the drift); :data:`PORTRAIT_WINDOW` frames the face.
    """
    from skimage.data import astronaut

    image = astronaut()  # (512, 512, 3) uint8
    top, bottom, left, right = window or (0, 480, 0, 480)
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        dx = (2 * i) % 32  # real motion for the encoders, a few pixels
        frames[i] = _resize(image[top:bottom, left + dx : right + dx], height, width)
    return frames


def write_clip(
    path: str | Path,
    frames: np.ndarray | Sequence[np.ndarray],
    codec: str = "libx264",
    *,
    fps: int = 25,
    container: str | None = None,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    rotation: int | None = None,
    hflip: bool = False,
    vflip: bool = False,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
) -> Path:
    """Encode RGB frames with one of PyAV's encoders.

    Args:
        path: output file; its suffix picks the container unless ``container`` is given.
        frames: (T, H, W, 3) uint8 RGB, all the same size (see :func:`write_resizing_clip`).
        codec: a PyAV encoder: libx264, libx265, libvpx, libvpx-vp9, libsvtav1, mjpeg, ...
        fps: nominal frame rate.
        container: FFmpeg muxer name (``"mpegts"``, ``"matroska"``...).
        pix_fmt: the encoder's pixel format (``yuvj420p`` for mjpeg, ``yuv420p10le`` for 10-bit).
        options: encoder options (e.g. ``{"g": "12"}``: a keyframe every 12 frames).
        rotation: display rotation, degrees counter-clockwise (``VideoStream.set_display_rotation``);
            ``hflip``/``vflip`` mirror after it.
        pts: per-frame pts in ``time_base`` units (variable frame rate); default ``0, 1, 2...``
            in units of ``1 / fps``.
        time_base: the encoder's time base for ``pts``.
    """
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    path = Path(path)
    frames = np.asarray(frames)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if options:
            stream.codec_context.options = dict(options)
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i if pts is None else int(pts[i])
            if time_base is not None:
                vf.time_base = time_base
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_resizing_clip(
    path: str | Path,
    segments: Sequence[np.ndarray],
    codec: str,
    *,
    fps: int = 25,
    options: dict[str, str] | None = None,
) -> Path:
    """A video whose frame size changes mid-stream: each segment encoded at its own size, one stream.

    Each (n_i, H_i, W_i, 3) segment gets its own encoder (starting with a keyframe that carries
    the new size in-band); the container declares the first segment's size, as a camera or a
    stream recorder that switches resolution writes it.
    """
    import av

    os.environ.setdefault("SVT_LOG", "1")
    path = Path(path)
    rate = Fraction(fps)
    with av.open(str(path), "w") as out:
        stream = None
        count = 0
        for frames in segments:
            height, width = frames.shape[1:3]
            encoder = av.CodecContext.create(codec, "w")
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            encoder.time_base, encoder.framerate = 1 / rate, rate
            if options:
                encoder.options = dict(options)
            if stream is None:
                stream = out.add_stream(codec, rate=fps)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.codec_context.time_base = 1 / rate
            packets = []
            for frame in frames:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                vf.pts = count
                count += 1
                packets += encoder.encode(vf)
            packets += encoder.encode(None)
            for packet in packets:
                packet.stream = stream
                out.mux(packet)
    return path


def write_declared_size_vp8(path: str | Path, width: int, height: int, frames: int = 3) -> Path:
    """A WebM whose header and VP8 keyframes declare ``width x height`` over 64 x 48 payloads.

    Cheap to make at any declared size (VP8 holds 14-bit sizes, up to 16383): the stream is
    encoded at 64 x 48, remuxed into a track that declares the size, and the size fields of
    each keyframe header (RFC 6386 9.1) rewritten. Nothing of that size is ever allocated here.
    """
    import av

    path = Path(path)
    small = write_clip(path.with_suffix(".small.webm"), np.full((frames, 48, 64, 3), 100, np.uint8), "libvpx")
    with av.open(str(small)) as src, av.open(str(path), "w") as out:
        source = src.streams.video[0]
        stream = out.add_stream_from_template(source)
        stream.codec_context.width, stream.codec_context.height = width, height
        for packet in src.demux(source):
            if packet.size == 0:
                continue
            data = bytearray(bytes(packet))
            if packet.is_keyframe:
                assert data[3:6] == b"\x9d\x01\x2a", "not a VP8 keyframe start code"
                struct.pack_into("<HH", data, 6, width, height)
            patched = av.Packet(bytes(data))
            patched.pts, patched.dts, patched.time_base = packet.pts, packet.dts, packet.time_base
            patched.is_keyframe = packet.is_keyframe
            patched.stream = stream
            out.mux(patched)
    small.unlink()
    return path


def write_garbled_copy(source: str | Path, path: str | Path, packets: set[int] | None = None, seed: int = 0) -> Path:
    """A remux of ``source`` whose packets (decode-order positions; None: all) carry noise.

    The first 4 bytes of each garbled packet are kept (an H.264/HEVC NAL length in MP4/Matroska),
    so the decoder meets a NAL of the right length with random content.
    """
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        source_stream = src.streams.video[0]
        stream = out.add_stream_from_template(source_stream)
        position = 0
        for packet in src.demux(source_stream):
            if packet.size == 0:
                continue
            data = bytes(packet)
            if packets is None or position in packets:
                data = data[:4] + rng.integers(0, 256, len(data) - 4, dtype=np.uint8).tobytes()
            copy = av.Packet(data)
            copy.pts, copy.dts, copy.time_base, copy.is_keyframe = packet.pts, packet.dts, packet.time_base, packet.is_keyframe
            copy.stream = stream
            out.mux(copy)
            position += 1
    return Path(path)


def write_long_declared_mkv(path: str | Path, seconds: float) -> Path:
    """A two-frame Matroska file whose second frame is ``seconds`` after the first (header duration too)."""
    ms = Fraction(1, 1000)
    frames = astronaut_frames(2, 48, 64)
    return write_clip(path, frames, "libx264", pts=[0, int(seconds * 1000)], time_base=ms, container="matroska")


def write_audio_only(path: Path, frames: int = 10) -> Path:
    """An MP4 with one AAC audio stream and no video stream."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(frames):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def folder_subset(generated: Path, dest: Path, per_label: int = 2) -> Path:
    """The first ``per_label`` videos of each of ``generated``'s real/ and fake/ folders, copied
    into ``dest`` (the ``folders`` layout): a job under test without the whole set's compute."""
    for label in ("real", "fake"):
        (dest / label).mkdir(parents=True)
        for p in sorted((generated / label).glob("*.mp4"))[:per_label]:
            shutil.copy(p, dest / label / p.name)
    return dest
