"""``decode``: sampling T=32 frames from a 10-minute clip against a 10-second one.

Two H.264 clips of the same content and encoder settings, as web/phone video is made:
640x480 at 25 fps, a keyframe every 2 s, up to 3 B-frames (x264 ``veryfast``), a
sub-pixel camera pan (slight roll and zoom) over ``skimage.data.astronaut()`` with sensor
grain, at ~1 Mbit/s (x264 ABR). One is 10 s long (250 frames), the other 10 minutes
(15,000 frames); both are generated once (about 3 minutes on 2 cores) and cached under
``benchmarks/out/decode/`` (git-ignored).

``raydf.video.read_video(clip, 32, threads=1)`` runs on both, interleaved rep by rep, in
one process with one decoder thread (a crop actor's one CPU). The ratio is the median over
reps of (10-minute CPU-s) / (10-second CPU-s): sampling must cost about the same whatever
the length (target <= 3). For contrast, the sequential path (``seek=False``: decode every
frame, what ``read_video`` did before) runs on both clips; on the 10-minute one its frames
are checked equal to the seek path's (indices, times, pixels).

Cost model: the seek path decodes, for each sampled frame, its keyframe and the reference
frames between them (about half a keyframe interval x the share of reference frames), plus
a demux of every packet (no decoding). :func:`required_frames` counts, from the stream's NAL
headers, the frames any decoder returning exactly these frames must decode: the floor of the
ratio in frames.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SuiteResult, Timing, environment, median, timed

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CACHE = HERE / "out" / "decode"  # git-ignored (/benchmarks/out/)
FPS, WIDTH, HEIGHT, GOP_S, T = 25, 640, 480, 2, 32
BITRATE = "1M"  # web 480p / phone SD (x264 ABR with a 1 s VBV buffer)
SHORT_S, LONG_S = 10, 600


def make_clip(path: Path, seconds: int) -> Path:
    """A ``seconds``-long H.264 MP4 at ~1 Mbit/s: a grainy, sub-pixel camera pan over the astronaut (cached)."""
    import av
    import cv2
    import skimage.data

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = cv2.resize(skimage.data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    grain = rng.normal(0.0, 4.0, size=(HEIGHT + 64, WIDTH + 64, 3)).astype(np.float32)  # shifted per frame
    tmp = path.with_suffix(".part.mp4")
    t0 = time.perf_counter()
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        gop = str(GOP_S * FPS)
        stream.codec_context.options = {
            "preset": "veryfast", "b": BITRATE, "maxrate": BITRATE, "bufsize": BITRATE,
            "g": gop, "keyint_min": gop, "sc_threshold": "0",
        }  # fmt: skip
        for i in range(seconds * FPS):
            t = i / FPS
            x = 192 + 180 * np.sin(2 * np.pi * t / 7.0)  # sub-pixel camera path, slight roll and zoom
            y = 272 + 250 * np.sin(2 * np.pi * t / 11.0)
            m = cv2.getRotationMatrix2D((x + WIDTH / 2, y + HEIGHT / 2), 2.0 * np.sin(t), 1.0 + 0.05 * np.sin(t / 3))
            m[:, 2] -= (x, y)
            view = cv2.warpAffine(scene, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
            dy, dx = rng.integers(0, 64, size=2)
            frame = np.clip(view + grain[dy : dy + HEIGHT, dx : dx + WIDTH], 0, 255).astype(np.uint8)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp.rename(path)
    log.info("generated %s (%d s, %.1f MB) in %.0f s", path, seconds, path.stat().st_size / 1e6, time.perf_counter() - t0)
    return path


def _sampling_stats(path: Path, **kwargs) -> dict[str, int | str]:  # noqa: ANN003
    """Which path read_video took and how many packets it sent to the decoder (its debug record)."""
    from raydf.video import read_video

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if hasattr(record, "decode_path"):
                records.append(record)

    logger = logging.getLogger("raydf.video")
    handler, level, propagate = Keep(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the debug record is for this handler only
    try:
        read_video(path, T, threads=1, **kwargs)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    r = records[-1]
    return {"path": r.decode_path, "packets decoded": r.packets_sent, "frames": r.num_frames}


def required_frames(path: Path, t: int) -> tuple[int, int]:
    """(frames, keyframes) any exact decoder must decode to sample ``t`` frames of an H.264 MP4.

    Each sampled frame needs the keyframe at or before it and every reference frame
    (``nal_ref_idc > 0``) between them in decode order; the union over the sampled frames,
    counted from the stream's own NAL headers (4-byte lengths, as MP4 stores H.264).
    """
    import av

    from raydf.video import sample_indices

    rows = []  # (pts, keyframe, reference) in decode order
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            data, ref, at = bytes(packet), False, 0
            while at + 5 <= len(data):
                size, header = int.from_bytes(data[at : at + 4], "big"), data[at + 4]
                if header & 0x1F in (1, 5):  # the picture's first slice
                    ref = bool(header >> 5 & 3)
                    break
                at += 4 + size
            rows.append((packet.pts, packet.is_keyframe, ref))
    display = np.argsort([r[0] for r in rows])  # display index -> decode position
    keys = np.flatnonzero([r[1] for r in rows])
    needed, used_keys = set(), set()
    for i in sample_indices(len(rows), t):
        own = int(display[i])
        key = int(keys[keys <= own].max())
        used_keys.add(key)
        needed.update(q for q in range(key, own + 1) if rows[q][2] or q in (key, own))
    return len(needed), len(used_keys)


def run(*, quick: bool, workdir: str) -> SuiteResult:  # noqa: ARG001 - the clips are cached, not per run
    import torch

    from raydf.video import decoder_identity, read_video

    result = SuiteResult("decode")
    reps, seq_reps = (5, 1) if quick else (9, 2)
    short = make_clip(CACHE / f"clip_{SHORT_S}s_{WIDTH}x{HEIGHT}_gop{GOP_S}s_{BITRATE}.mp4", SHORT_S)
    long = make_clip(CACHE / f"clip_{LONG_S}s_{WIDTH}x{HEIGHT}_gop{GOP_S}s_{BITRATE}.mp4", LONG_S)
    capability = torch.backends.cpu.get_cpu_capability()
    result.config.update({
        "T": T, "clips": f"{WIDTH}x{HEIGHT} H.264 @ {FPS} fps, keyframe every {GOP_S} s, x264 veryfast {BITRATE}bit/s",
        "short_s": SHORT_S, "long_s": LONG_S, "reps": reps, "decoder_threads": 1, "cpu_capability": capability,
        "decoder": decoder_identity("pyav"),
    })  # fmt: skip

    # Equal quality: the seek path returns exactly the sequential path's frames.
    seq_time, sequential = timed(lambda: read_video(long, T, threads=1, seek=False))
    seeked = read_video(long, T, threads=1)
    same = (
        np.array_equal(seeked.indices, sequential.indices)
        and np.array_equal(seeked.times, sequential.times)
        and all(np.array_equal(a, b) for a, b in zip(seeked.frames, sequential.frames))
    )
    if not same:
        raise AssertionError("the seek path's frames differ from the sequential path's")

    runs: dict[str, list[Timing]] = {"short": [], "long": [], "short sequential": [], "long sequential": [seq_time]}
    fns = {
        "short": lambda: read_video(short, T, threads=1),
        "long": lambda: read_video(long, T, threads=1),
        "short sequential": lambda: read_video(short, T, threads=1, seek=False),
    }
    for fn in fns.values():
        fn()  # warm-up: imports, page cache
    for rep in range(reps):
        for name, fn in fns.items():
            runs[name].append(timed(fn)[0])
        if rep < seq_reps - 1:
            runs["long sequential"].append(timed(lambda: read_video(long, T, threads=1, seek=False))[0])
    per_rep = [lg.cpu / sh.cpu for sh, lg in zip(runs["short"], runs["long"])]
    cpu = {k: median([t.cpu for t in v]) for k, v in runs.items()}
    wall = {k: median([t.wall for t in v]) for k, v in runs.items()}

    stats = {
        "short": _sampling_stats(short),
        "long": _sampling_stats(long),
        "short sequential": _sampling_stats(short, seek=False),
        "long sequential": _sampling_stats(long, seek=False),
    }
    result.ratio(
        f"T={T} decode CPU-s: {LONG_S // 60}-minute clip / {SHORT_S}-second clip",
        median(per_rep),
        3.0,
        "<=",
        f"{cpu['long']:.3f} vs {cpu['short']:.3f} CPU-s, 1 decoder thread, {capability}",
    )
    (need_long, keys_long), (need_short, keys_short) = required_frames(long, T), required_frames(short, T)
    result.ratio(
        f"T={T} frames any exact decoder must decode: {LONG_S // 60}-minute clip / {SHORT_S}-second clip",
        need_long / need_short,
        detail=f"{need_long} ({keys_long} keyframes) vs {need_short} ({keys_short} keyframes): each sampled frame's keyframe "
        "and the reference frames between them",
    )
    result.ratio(
        f"T={T} decode CPU-s on the {LONG_S // 60}-minute clip: sequential (every frame) / seek",
        cpu["long sequential"] / cpu["long"],
        detail=f"{cpu['long sequential']:.2f} vs {cpu['long']:.3f} CPU-s; frames identical",
    )
    result.ratio(
        f"before (sequential path): T={T} decode CPU-s, {LONG_S // 60}-minute clip / {SHORT_S}-second clip",
        cpu["long sequential"] / cpu["short sequential"],
        detail=f"{cpu['long sequential']:.2f} vs {cpu['short sequential']:.3f} CPU-s: cost grew with the length",
    )
    result.tables["T=32 from each clip (median over reps, 1 decoder thread)"] = [
        {
            "clip": f"{SHORT_S if k.startswith('short') else LONG_S} s",
            "path": stats[k]["path"],
            "frames": stats[k]["frames"],
            "packets decoded": stats[k]["packets decoded"],
            "CPU-s": round(cpu[k], 4),
            "wall s": round(wall[k], 4),
            "reps": len(runs[k]),
        }
        for k in ("short", "long", "short sequential", "long sequential")
    ]
    env = environment()
    result.notes += [
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores, load average {env['loadavg_start'][0]:.1f} at "
        f"start), CPU capability (torch.backends.cpu.get_cpu_capability()) {capability}. Decoder: {decoder_identity('pyav')}.",
        f"Clips: {short.stat().st_size / 1e6:.1f} MB and {long.stat().st_size / 1e6:.1f} MB. 'packets decoded' counts the "
        "packets sent to the decoder (non-reference H.264 frames among them are skipped by it unless sampled).",
        f"Floor of the ratio for any decoder returning exactly these frames: the {LONG_S // 60}-minute clip needs "
        f"{keys_long} keyframes and each sampled frame's reference chain (about half a keyframe interval) decoded, the "
        f"{SHORT_S}-second clip holds all {T} samples in {keys_short} keyframe intervals: {need_long / need_short:.2f}x the "
        "frames, and a keyframe costs several predicted frames; the demux of every packet adds ~7% to the 10-minute cost.",
    ]
    return result
