"""Media files the tests need that raydf.synth does not make."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
