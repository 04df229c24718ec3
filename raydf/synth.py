"""A generated deepfake dataset: paired real/fake H.264 videos of one real face.

Every real video is a virtual camera moving smoothly over ``skimage.data.astronaut()``
(pan, zoom, slight roll, lighting drift, mild sensor grain), 20-60 frames long by
default, every sixth one very short (1-8 frames). Its fake shares the motion, length,
grain and encoder settings and differs only inside a soft ellipse over the face,
manipulated by one of two families:

``blend`` (FaceSwap-like)
    a geometric variant of the face (mirrored, rescaled, rotated, shifted) is
    pasted through a feathered elliptical mask; its blend weight and offset
    jitter from frame to frame.
``flicker`` (NeuralTextures-like)
    the face is re-rendered slightly blurred, wobbled by a warp whose phase
    jitters from frame to frame, and tinted by a colour gradient across the face
    whose strength wanders from frame to frame.

Both families re-match the face box's per-channel mean and standard deviation to
the real frame's, the jitter is smooth (AR(1)) rather than white, and the grain
shared by a pair keeps the encoder busy, so face statistics, frame differences and
file sizes cannot tell real from fake while the face region carries a consistent
spatial and temporal artefact. ``SynthConfig.strength`` scales every artefact.

Ground-truth face boxes are the box ``facenet_pytorch.MTCNN(keep_all=True)`` draws on
the astronaut image (:data:`ASTRONAUT_FACE_BOX`), carried through each frame's
similarity transform: centre mapped, size scaled by the zoom.

Layout written by :func:`make_dataset`::

    OUT/real/0000.mp4  OUT/fake/0000_blend.mp4  OUT/real/0001.mp4  OUT/fake/0001_flicker.mp4 ...
    OUT/metadata.jsonl   one JSON object per video (see make_dataset)

Generation is deterministic: same arguments, byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "ASTRONAUT_FACE_BOX",
    "FAMILIES",
    "METADATA_FILE",
    "SynthConfig",
    "Motion",
    "make_dataset",
    "read_metadata",
    "SynthError",
    "write_video",
    "write_noface_video",
]

# facenet_pytorch 2.5.3 MTCNN(keep_all=True).detect(astronaut()) -> one face, p=0.99999, image pixels.
ASTRONAUT_FACE_BOX = (181.05, 62.16, 267.75, 172.05)
FAMILIES = ("blend", "flicker")
GENERATOR = "raydf.synth"  # recorded in every video's metadata: models trained on it carry a warning
METADATA_FILE = "metadata.jsonl"
_ROUND = 3  # decimals kept in metadata floats (byte-identical JSON across platforms)


class SynthError(ValueError):
    """An argument of the generator is out of range."""


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator beyond the dataset's shape (see :func:`make_dataset`).

    Ranges are ``(low, high)`` and drawn uniformly per video.
    """

    # --- lengths -------------------------------------------------------------------------------
    short_every: int = 6  # every 6th video (index 5, 11, ...) is very short; 0 = none
    short_frames: tuple[int, int] = (1, 8)  # length range of the very short ones
    # --- camera motion (source -> frame similarity transform) --------------------------------
    zoom: tuple[float, float] = (0.8, 1.15)  # base scale; astronaut's face box is 87x110 px at 1.0
    zoom_drift: tuple[float, float] = (0.02, 0.12)  # relative zoom amplitude
    max_rotation_deg: float = 4.0  # |roll| bound: MTCNN boxes stay upright boxes
    pan: tuple[float, float] = (0.2, 1.0)  # pan amplitude, fraction of the room the face has
    motion_hz: tuple[float, float] = (0.1, 0.45)  # temporal frequency of pan/zoom/roll
    border_px: float = 6.0  # the face box keeps this far from the frame edge
    # --- photometry (applied to real and fake alike) ------------------------------------------
    light_drift: tuple[float, float] = (0.02, 0.10)  # gain amplitude of the lighting drift
    tint_drift: float = 0.03  # per-channel colour temperature drift amplitude
    grain_sigma: tuple[float, float] = (3.0, 5.0)  # sensor grain std (luma), 8-bit levels
    # --- manipulation (fakes) -----------------------------------------------------------------
    strength: float = 1.0  # scales every artefact below; 0 gives fakes equal to their reals
    mask_axes: tuple[float, float] = (0.46, 0.56)  # ellipse semi-axes, fraction of box w, h
    mask_feather: float = 0.35  # soft edge width, fraction of the ellipse radius
    jitter_rho: float = 0.9  # frame-to-frame correlation of the per-frame jitter (0 = white)
    blend_alpha: tuple[float, float] = (0.65, 0.95)  # per-frame blend weight of the swapped face
    blend_offset_px: float = 1.0  # offset jitter std of the swapped face, frame px
    variant_scale: tuple[float, float] = (0.92, 1.08)  # swapped face: size relative to the original
    variant_rotation_deg: float = 6.0  # swapped face: |rotation|
    variant_shift: float = 0.04  # swapped face: |shift|, fraction of the box
    flicker_blur_px: float = 1.2  # re-rendered face blur (Gaussian sigma, frame px)
    flicker_warp_px: float = 1.5  # warp amplitude, frame px; its phase jitters per frame
    flicker_tint: float = 0.10  # colour gradient std across the face; jitters per frame
    # --- encoder -----------------------------------------------------------------------------
    crf: int = 23
    preset: str = "fast"

    def __post_init__(self) -> None:
        ranges = ("short_frames", "zoom", "zoom_drift", "pan", "motion_hz", "light_drift", "grain_sigma")
        for name in ranges + ("blend_alpha", "variant_scale", "mask_axes"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise SynthError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.short_frames[0] < 1:
            raise SynthError(f"short_frames must be >= 1, got {self.short_frames}")
        if self.zoom[0] <= 0:
            raise SynthError(f"zoom must be positive, got {self.zoom}")
        if not (0.0 <= self.blend_alpha[0] and self.blend_alpha[1] <= 1.0):
            raise SynthError(f"blend_alpha must lie in [0, 1], got {self.blend_alpha}")
        if self.strength < 0:
            raise SynthError(f"strength must be >= 0, got {self.strength}")
        if self.short_every < 0:
            raise SynthError(f"short_every must be >= 0, got {self.short_every}")
        if not 0.0 <= self.jitter_rho < 1.0:
            raise SynthError(f"jitter_rho must be in [0, 1), got {self.jitter_rho}")
        if self.crf < 0 or self.crf > 51:
            raise SynthError(f"crf must be in [0, 51], got {self.crf}")


@dataclass(frozen=True)
class Motion:
    """One video's camera path: ``p_frame = s R(theta) (p_src - face_centre) + q``.

    Every quantity is ``base + amp * sin(2 pi hz t + phase)`` with ``t`` in seconds, so the
    path is smooth and, for the pan, bounded inside the frame for any length.
    """

    zoom: float
    zoom_amp: float  # relative
    zoom_hz: float
    zoom_phase: float
    roll_deg: float
    roll_amp_deg: float
    roll_hz: float
    roll_phase: float
    centre: tuple[float, float]  # face centre in frame px, middle of the pan
    pan_amp: tuple[float, float]  # px
    pan_hz: tuple[float, float]
    pan_phase: tuple[float, float]
    light_amp: float
    light_hz: float
    light_phase: float
    tint_amp: tuple[float, float, float]
    tint_phase: tuple[float, float, float]
    grain_sigma: float

    def at(self, t: np.ndarray) -> dict[str, np.ndarray]:
        """Per-frame parameters at times ``t`` (seconds, shape (T,)) -> arrays of shape (T,) / (T, 2) / (T, 3)."""
        two_pi = 2.0 * math.pi
        scale = self.zoom * (1.0 + self.zoom_amp * np.sin(two_pi * self.zoom_hz * t + self.zoom_phase))
        roll = self.roll_deg + self.roll_amp_deg * np.sin(two_pi * self.roll_hz * t + self.roll_phase)
        q = np.stack(
            [self.centre[k] + self.pan_amp[k] * np.sin(two_pi * self.pan_hz[k] * t + self.pan_phase[k]) for k in (0, 1)],
            axis=-1,
        )  # (T, 2)
        gain = 1.0 + self.light_amp * np.sin(two_pi * self.light_hz * t + self.light_phase)
        tint = 1.0 + np.stack(
            [self.tint_amp[c] * np.sin(two_pi * self.light_hz * t + self.tint_phase[c]) for c in range(3)], axis=-1
        )  # (T, 3)
        return {"scale": scale, "roll_deg": roll, "centre": q, "gain": gain, "tint": tint}


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def write_video(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 25,
    *,
    crf: int = 23,
    preset: str = "fast",
) -> Path:
    """Encode RGB frames to an H.264 MP4 (libx264, yuv420p), deterministically.

    The encoder runs single-threaded with bit-exact flags, so the same frames always
    give the same bytes. Odd widths/heights (which yuv420p cannot hold) are padded by
    one replicated row/column.

    Args:
        path: output ``.mp4``; parent folders are created.
        frames: uint8 RGB, a ``(T, H, W, 3)`` array or an iterable of ``(H, W, 3)`` arrays
            (stream large frames, e.g. 4K, without holding the whole video).
        fps: frame rate (an integer or a float such as 29.97).
        crf: x264 constant rate factor (lower = bigger, better).
        preset: x264 speed preset.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no frames, a frame that is not ``(H, W, 3)`` uint8, or frames of different sizes.
    """
    import av
    from av.codec.context import Flags

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    container = av.open(str(path), mode="w", options={"fflags": "+bitexact"})
    count = 0
    try:
        stream = None
        size = None
        for frame in frames:
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"{path}: frame {count} must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
            if size is None:
                size = frame.shape[:2]
                stream = container.add_stream("libx264", rate=rate)
                stream.width = size[1] + size[1] % 2
                stream.height = size[0] + size[0] % 2
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = 1 / rate
                stream.codec_context.thread_count = 1
                # One thread, and no macroblock-tree rate control: x264's mbtree float code gives
                # run-to-run different bitstreams for identical input (measured with x264 core 165).
                stream.codec_context.options = {"crf": str(crf), "preset": preset, "threads": "1", "mbtree": "0"}
                stream.codec_context.flags |= Flags.bitexact  # no version strings that vary
            elif frame.shape[:2] != size:
                raise ValueError(f"{path}: frame {count} is {frame.shape[:2]}, the first frame was {size}")
            if size[0] % 2 or size[1] % 2:
                frame = np.pad(frame, ((0, size[0] % 2), (0, size[1] % 2), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = count
            for packet in stream.encode(vf):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode(None):
            container.mux(packet)
    except BaseException:
        container.close()
        path.unlink(missing_ok=True)
        raise
    container.close()
    return path


def write_noface_video(
    path: str | Path,
    num_frames: int,
    *,
    width: int = 320,
    height: int = 240,
    fps: float = 25,
    seed: int = 0,
) -> Path:
    """Write a video with no face: a drifting textured background with moving shapes.

    Useful as a fixture for "no face found" paths (every frame should yield no detection).

    Args:
        path: output ``.mp4``.
        num_frames: number of frames (>= 1).
        width: frame width in pixels.
        height: frame height in pixels.
        fps: frame rate.
        seed: seeds the texture, the shapes and their paths.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import cv2

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng([seed, 0x0F_ACE])
    # Smooth noise texture larger than the frame, panned over time.
    tex = rng.normal(0.0, 1.0, size=(height // 4 + 16, width // 4 + 16, 3)).astype(np.float32)
    tex = cv2.GaussianBlur(tex, (0, 0), 2.0)
    tex = cv2.resize(tex, (tex.shape[1] * 4, tex.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    tex = 110.0 + 35.0 * tex / (tex.std() + 1e-6)  # (H+64, W+64, 3)
    shapes = [
        {
            "kind": int(rng.integers(0, 2)),  # 0 rectangle, 1 circle
            "colour": tuple(float(c) for c in rng.uniform(20, 235, 3)),
            "size": float(rng.uniform(0.06, 0.18) * min(width, height)),
            "start": rng.uniform(0.1, 0.9, 2) * (width, height),
            "velocity": rng.uniform(-3.0, 3.0, 2),
        }
        for _ in range(4)
    ]

    def frames() -> Iterator[np.ndarray]:
        for i in range(num_frames):
            ox, oy = int(32 + 24 * math.sin(0.05 * i)), int(32 + 24 * math.cos(0.04 * i))
            img = np.ascontiguousarray(tex[oy : oy + height, ox : ox + width])  # (H, W, 3) float32
            for s in shapes:
                cx, cy = (s["start"] + s["velocity"] * i) % (width, height)
                r = int(s["size"])
                if s["kind"] == 0:
                    cv2.rectangle(img, (int(cx - r), int(cy - r)), (int(cx + r), int(cy + r)), s["colour"], -1)
                else:
                    cv2.circle(img, (int(cx), int(cy)), r, s["colour"], -1)
            yield np.clip(img, 0, 255).astype(np.uint8)

    return write_video(path, frames(), fps)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _source() -> np.ndarray:
    from skimage import data

    return data.astronaut().astype(np.float32)  # (512, 512, 3)


def _box_geometry() -> tuple[np.ndarray, np.ndarray]:
    x1, y1, x2, y2 = ASTRONAUT_FACE_BOX
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2]), np.array([x2 - x1, y2 - y1])  # centre, (w, h)


def _draw_motion(rng: np.random.Generator, cfg: SynthConfig, width: int, height: int) -> Motion:
    _, box_wh = _box_geometry()
    zoom = rng.uniform(*cfg.zoom)
    zoom_amp = rng.uniform(*cfg.zoom_drift)
    roll = rng.uniform(-0.5, 0.5) * cfg.max_rotation_deg
    roll_amp = rng.uniform(0.0, cfg.max_rotation_deg - abs(roll))
    # Room the face centre has so that the whole (largest, rotated) box stays inside the frame.
    s_max = zoom * (1.0 + zoom_amp)
    rot = math.radians(cfg.max_rotation_deg)
    half = 0.5 * s_max * np.array(
        [box_wh[0] * math.cos(rot) + box_wh[1] * math.sin(rot), box_wh[1] * math.cos(rot) + box_wh[0] * math.sin(rot)]
    )
    room = np.array([width / 2, height / 2]) - half - cfg.border_px  # (2,) half-range of the centre
    if np.any(room < 0):
        raise SynthError(f"a {width}x{height} frame is too small for the face at zoom {s_max:.2f}; lower zoom")
    # Pan: half the room for the path middle, half for the sinusoid, so any phase stays inside.
    centre = np.array([width / 2, height / 2]) + rng.uniform(-0.5, 0.5, 2) * room
    pan_amp = rng.uniform(*cfg.pan, 2) * 0.5 * room
    return Motion(
        zoom=float(zoom),
        zoom_amp=float(zoom_amp),
        zoom_hz=float(rng.uniform(*cfg.motion_hz)),
        zoom_phase=float(rng.uniform(0, 2 * math.pi)),
        roll_deg=float(roll),
        roll_amp_deg=float(roll_amp),
        roll_hz=float(rng.uniform(*cfg.motion_hz)),
        roll_phase=float(rng.uniform(0, 2 * math.pi)),
        centre=(float(centre[0]), float(centre[1])),
        pan_amp=(float(pan_amp[0]), float(pan_amp[1])),
        pan_hz=tuple(float(v) for v in rng.uniform(*cfg.motion_hz, 2)),
        pan_phase=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, 2)),
        light_amp=float(rng.uniform(*cfg.light_drift)),
        light_hz=float(rng.uniform(*cfg.motion_hz)),
        light_phase=float(rng.uniform(0, 2 * math.pi)),
        tint_amp=tuple(float(v) for v in rng.uniform(-cfg.tint_drift, cfg.tint_drift, 3)),
        tint_phase=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, 3)),
        grain_sigma=float(rng.uniform(*cfg.grain_sigma)),
    )


def _similarity(scale: float, roll_deg: float, centre_src: np.ndarray, centre_dst: np.ndarray) -> np.ndarray:
    """2x3 matrix mapping source px to frame px: ``scale R (p - centre_src) + centre_dst``."""
    a = math.radians(roll_deg)
    rs = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.hstack([rs, (centre_dst - rs @ centre_src)[:, None]])


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine ``outer o inner``."""
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def _ellipse_mask(shape: tuple[int, int], centre: np.ndarray, axes: np.ndarray, roll_deg: float, feather: float) -> np.ndarray:
    """Soft elliptical mask (h, w) float32 in [0, 1]: 1 inside, smoothstep over ``feather`` of the radius."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = math.radians(roll_deg)
    dx, dy = xs - centre[0], ys - centre[1]
    u = (math.cos(a) * dx + math.sin(a) * dy) / axes[0]
    v = (-math.sin(a) * dx + math.cos(a) * dy) / axes[1]
    r = np.sqrt(u * u + v * v)
    x = np.clip((1.0 - r) / max(feather, 1e-6), 0.0, 1.0)
    return (x * x * (3.0 - 2.0 * x)).astype(np.float32)


def _match_stats(img: np.ndarray, ref: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Affinely map each channel of ``img`` so its (``weight``-weighted) mean/std equal ``ref``'s. (h, w, 3)."""
    if weight is None:
        mu_i, sd_i = img.mean((0, 1)), img.std((0, 1)) + 1e-6
        mu_r, sd_r = ref.mean((0, 1)), ref.std((0, 1))
    else:
        w = weight[..., None] / (float(weight.sum()) + 1e-6)
        mu_i, mu_r = (img * w).sum((0, 1)), (ref * w).sum((0, 1))
        sd_i = np.sqrt((np.square(img - mu_i) * w).sum((0, 1))) + 1e-6
        sd_r = np.sqrt((np.square(ref - mu_r) * w).sum((0, 1)))
    return (img - mu_i) * (sd_r / sd_i) + mu_r


def _restore_stats(fake: np.ndarray, ref: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Retone the manipulated pixels so each channel's mean/std over the region equal ``ref``'s.

    Solves, per channel, for ``d, b`` in ``f' = f + w ((d) (f - c) + b)`` (only pixels the
    manipulation touched move, in proportion to their weight ``w``) such that ``mean(f')`` and
    ``std(f')`` hit the reference: one linear and one quadratic equation, closed form.

    Args:
        fake: (h, w, 3) float32 manipulated region.
        ref: (h, w, 3) float32 the same region of the real frame.
        weight: (h, w) float32 in [0, 1], how much each pixel was manipulated.
    """
    w = weight.reshape(-1).astype(np.float64)
    mw = w.mean()
    if mw < 1e-6:
        return fake
    out = fake.copy()
    for ch in range(fake.shape[2]):
        f = fake[..., ch].reshape(-1).astype(np.float64)
        r = ref[..., ch].reshape(-1)
        mu_t, var_t = float(r.mean()), float(r.var())
        c = float((w * f).sum() / w.sum())
        g = w * (f - c)  # d's direction; h = w is b's
        # mean: mean(f) + d mean(g) + b mean(w) = mu_t  ->  b = b0 + b1 d
        b0, b1 = (mu_t - f.mean()) / mw, -g.mean() / mw
        # var(f + d g + b w) = var_t with b substituted: (f + b0 w) + d (g + b1 w)
        p, q = f + b0 * w, g + b1 * w
        qa, qb, qc = q.var(), 2.0 * np.mean((p - p.mean()) * (q - q.mean())), p.var() - var_t
        disc = qb * qb - 4.0 * qa * qc
        if qa < 1e-9 or disc < 0:  # no exact solution: fix the mean only
            d = 0.0
        else:
            roots = ((-qb + math.sqrt(disc)) / (2 * qa), (-qb - math.sqrt(disc)) / (2 * qa))
            d = min(roots, key=abs)
        out[..., ch] = (f + d * g + (b0 + b1 * d) * w).reshape(fake.shape[:2])
    return out


def _grain(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Sensor grain (H, W, 3): per-pixel luma noise plus weaker, coarser chroma noise."""
    import cv2

    h, w = shape
    luma = rng.standard_normal(shape, dtype=np.float32)[..., None] * sigma  # (H, W, 1)
    # Chroma at half resolution, as yuv420p stores it anyway.
    chroma = rng.standard_normal(((h + 1) // 2, (w + 1) // 2, 3), dtype=np.float32) * (sigma / 3.0)
    chroma = cv2.resize(chroma, (w, h), interpolation=cv2.INTER_NEAREST)  # (H, W, 3)
    return luma + chroma


def _smooth_jitter(rng: np.random.Generator, n: int, dims: int, rho: float) -> np.ndarray:
    """(n, dims) stationary AR(1) noise, unit variance, lag-1 correlation ``rho``."""
    z = rng.standard_normal((n, dims))
    out = np.empty_like(z)
    out[0] = z[0]
    for t in range(1, n):
        out[t] = rho * out[t - 1] + math.sqrt(1.0 - rho * rho) * z[t]
    return out


@dataclass
class _Variant:
    """A fake's per-video manipulation parameters (what metadata records)."""

    family: str
    params: dict[str, Any] = field(default_factory=dict)
    per_frame: dict[str, list] = field(default_factory=dict)


def _draw_variant(rng: np.random.Generator, cfg: SynthConfig, family: str, n: int) -> _Variant:
    k = cfg.strength
    if family == "blend":
        lo, hi = cfg.blend_alpha
        z = _smooth_jitter(rng, n, 3, cfg.jitter_rho)  # (n, 3): alpha, dx, dy
        alpha = np.clip((lo + hi) / 2 + (hi - lo) / 4 * z[:, 0], lo, hi) * min(k, 1.0)
        return _Variant(
            family,
            params={
                "mirror": True,
                "scale": float(1.0 + (rng.uniform(*cfg.variant_scale) - 1.0) * k),
                "rotation_deg": float(rng.uniform(-1, 1) * cfg.variant_rotation_deg * k),
                "shift": [float(v) for v in rng.uniform(-1, 1, 2) * cfg.variant_shift * k],
            },
            per_frame={"alpha": alpha.tolist(), "offset": (z[:, 1:] * cfg.blend_offset_px * k).tolist()},
        )
    if family == "flicker":
        z = _smooth_jitter(rng, n, 5, cfg.jitter_rho)  # (n, 5): warp phase x/y, tint gradient r/g/b
        return _Variant(
            family,
            params={
                "blur_px": cfg.flicker_blur_px * k,
                "warp_px": cfg.flicker_warp_px * k,
                "warp_freq": rng.uniform(0.6, 1.6, 2).tolist(),  # cycles across the face
                "tint": cfg.flicker_tint * k,
                "tint_dir": rng.uniform(0, 2 * math.pi, 3).tolist(),
            },
            per_frame={"warp_phase": (z[:, :2] * math.pi).tolist(), "tint_amp": (z[:, 2:] * cfg.flicker_tint * k).tolist()},
        )
    raise SynthError(f"unknown manipulation family {family!r}; known: {FAMILIES}")


def _manipulate(
    clean: np.ndarray,
    i: int,
    variant: _Variant,
    src: np.ndarray,
    m_frame: np.ndarray,
    photometric: np.ndarray,
    box: np.ndarray,
    roll_deg: float,
    cfg: SynthConfig,
) -> np.ndarray:
    """Frame ``i`` of the fake: ``clean`` (H, W, 3) float32 (before grain) with its face region manipulated."""
    import cv2

    h, w = clean.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    # Work in a window around the face: the mask, the warps and the statistics all live there.
    pad = 0.2 * max(bw, bh) + 4
    x0, y0 = max(int(box[0] - pad), 0), max(int(box[1] - pad), 0)
    x1, y1 = min(int(math.ceil(box[2] + pad)), w), min(int(math.ceil(box[3] + pad)), h)
    win = clean[y0:y1, x0:x1]  # (h', w', 3)
    centre = np.array([(box[0] + box[2]) / 2 - x0, (box[1] + box[3]) / 2 - y0])
    axes = np.array([cfg.mask_axes[0] * bw, cfg.mask_axes[1] * bh])
    mask = _ellipse_mask(win.shape[:2], centre, axes, roll_deg, cfg.mask_feather)  # (h', w')
    if variant.family == "blend":
        p, pf = variant.params, variant.per_frame
        fc, fwh = _box_geometry()
        # Source-space variant: mirror about the face's vertical axis, rescale, rotate, shift.
        flip = np.array([[-1.0, 0.0, 2 * fc[0]], [0.0, 1.0, 0.0]]) if p["mirror"] else np.eye(2, 3)
        g = _compose(_similarity(p["scale"], p["rotation_deg"], fc, fc + np.asarray(p["shift"]) * fwh), flip)
        m = _compose(m_frame, g)
        m[:, 2] += np.asarray(pf["offset"][i]) - (x0, y0)
        swapped = cv2.warpAffine(src, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        swapped = _match_stats(swapped * photometric, win, mask)  # colour-correct as face swappers do
        weight = pf["alpha"][i] * mask
    else:
        p, pf = variant.params, variant.per_frame
        rendered = cv2.GaussianBlur(win, (0, 0), p["blur_px"]) if p["blur_px"] > 0 else win.copy()
        ys, xs = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
        u, v = (xs - centre[0]) / bw, (ys - centre[1]) / bh  # face-normalised coordinates
        (fx, fy), (px, py) = p["warp_freq"], pf["warp_phase"][i]
        map_x = xs + mask * p["warp_px"] * np.sin(2 * math.pi * fy * v + px)
        map_y = ys + mask * p["warp_px"] * np.sin(2 * math.pi * fx * u + py)
        rendered = cv2.remap(rendered, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT101)  # fmt: skip
        # A colour gradient across the face whose strength wanders from frame to frame.
        grad = np.stack(
            [a * (math.cos(d) * u + math.sin(d) * v) for a, d in zip(pf["tint_amp"][i], p["tint_dir"])], axis=-1
        )  # (h', w', 3)
        swapped = _match_stats(rendered * (1.0 + grad), win, mask)
        weight = mask
    fake = win + weight[..., None] * (swapped - win)
    # Keep the face box's per-channel mean/std those of the real frame (coarse statistics stay honest).
    bx0, by0 = max(int(box[0]) - x0, 0), max(int(box[1]) - y0, 0)
    bx1, by1 = min(int(math.ceil(box[2])) - x0, x1 - x0), min(int(math.ceil(box[3])) - y0, y1 - y0)
    region = (slice(by0, by1), slice(bx0, bx1))
    fake[region] = _restore_stats(fake[region], win[region], weight[region])
    out = clean.copy()
    out[y0:y1, x0:x1] = fake
    return out


def _render_pair(
    motion: Motion,
    num_frames: int,
    *,
    width: int,
    height: int,
    fps: float,
    variant: _Variant | None,
    grain_seed: Sequence[int],
    cfg: SynthConfig,
) -> tuple[list[np.ndarray], list[np.ndarray] | None, np.ndarray]:
    """Render one real video and (if ``variant``) its fake.

    Args:
        motion: the camera path (see :class:`Motion`).
        num_frames: T.
        width: frame width.
        height: frame height.
        fps: frame rate (motion is defined in seconds).
        variant: the fake's manipulation, or None for the real only.
        grain_seed: seeds the grain; real and fake share it.
        cfg: generator knobs.

    Returns:
        ``(real_frames, fake_frames or None, boxes)``: lists of T ``(H, W, 3)`` uint8 RGB frames,
        and the ground-truth face boxes ``(T, 4)`` float64 ``x1, y1, x2, y2`` in frame px.
    """
    import cv2

    src = _source()  # (512, 512, 3) float32
    fc, fwh = _box_geometry()
    p = motion.at(np.arange(num_frames) / fps)
    rng = np.random.default_rng(list(grain_seed))
    reals: list[np.ndarray] = []
    fakes: list[np.ndarray] | None = None if variant is None else []
    boxes = []
    for i in range(num_frames):
        m = _similarity(float(p["scale"][i]), float(p["roll_deg"][i]), fc, p["centre"][i])
        photometric = (p["gain"][i] * p["tint"][i]).astype(np.float32)  # (3,)
        clean = cv2.warpAffine(src, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        clean *= photometric  # (H, W, 3) float32
        half = 0.5 * float(p["scale"][i]) * fwh
        box = np.concatenate([p["centre"][i] - half, p["centre"][i] + half])  # (4,)
        boxes.append(box)
        grain = _grain(rng, (height, width), motion.grain_sigma)
        reals.append(np.clip(clean + grain, 0, 255).round().astype(np.uint8))
        if fakes is not None and cfg.strength == 0:
            fakes.append(reals[-1])  # no manipulation at all: the fake is bit-identical to its real
        elif fakes is not None:
            fake = _manipulate(clean, i, variant, src, m, photometric, box, float(p["roll_deg"][i]), cfg)
            fakes.append(np.clip(fake + grain, 0, 255).round().astype(np.uint8))
    return reals, fakes, np.asarray(boxes)


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, _ROUND) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _rounded(obj.tolist())
    if isinstance(obj, np.generic):
        return _rounded(obj.item())
    return obj


def _lengths(rng: np.random.Generator, videos: int, min_frames: int, max_frames: int, cfg: SynthConfig) -> list[int]:
    lengths = []
    for i in range(videos):
        if cfg.short_every and i % cfg.short_every == cfg.short_every - 1:
            lengths.append(int(rng.integers(cfg.short_frames[0], cfg.short_frames[1] + 1)))
        else:
            lengths.append(int(rng.integers(min_frames, max_frames + 1)))
    return lengths


def make_dataset(
    out: str | Path,
    *,
    videos: int,
    seed: int,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    min_frames: int = 20,
    max_frames: int = 60,
    families: Sequence[str] = FAMILIES,
    config: SynthConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Generate ``videos`` real videos and one paired fake each under ``out``.

    Pair ``i`` uses family ``families[i % len(families)]``. Every ``config.short_every``-th
    video is very short (``config.short_frames``, 1-8 frames by default); the others have
    ``min_frames``..``max_frames`` frames. Pair ``i`` depends only on the arguments and ``i``,
    so a larger dataset extends a smaller one with the same seed.

    ``out/metadata.jsonl`` holds one JSON object per video (a real, then its fake), written
    last, with keys: ``video_id`` ("0003" / "0003_blend"), ``file`` ("real/0003.mp4"),
    ``label`` (0 real, 1 fake), ``source_id`` (the real's id; a real's own id), ``family``
    ("" for reals), ``num_frames``, ``fps``, ``width``, ``height``, ``seed`` (the dataset's),
    ``boxes`` (per-frame ``[x1, y1, x2, y2]`` floats, frame px), ``motion`` (the :class:`Motion`
    fields), ``manipulation`` (``{}`` for reals; family parameters and per-frame jitter for
    fakes) and ``codec``.

    Args:
        out: output folder.
        videos: number of real videos (>= 1); as many fakes are written.
        seed: dataset seed; everything derives from it.
        width: frame width (even).
        height: frame height (even).
        fps: frame rate.
        min_frames: shortest regular video.
        max_frames: longest regular video.
        families: manipulation families to alternate, from :data:`FAMILIES`.
        config: further knobs (motion, grain, manipulation strength, encoder); defaults if None.
        overwrite: replace an existing dataset in ``out`` (its mp4s and metadata) instead of failing.

    Returns:
        The metadata path ``out/metadata.jsonl``.

    Raises:
        SynthError: an argument is out of range or a family is unknown.
        FileExistsError: ``out`` already holds a dataset and ``overwrite`` is False.
    """
    cfg = config or SynthConfig()
    if videos < 1:
        raise SynthError(f"videos must be >= 1, got {videos}")
    if not 1 <= min_frames <= max_frames:
        raise SynthError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    if width % 2 or height % 2 or width < 64 or height < 64:
        raise SynthError(f"width and height must be even and >= 64, got {width}x{height}")
    families = tuple(families)
    if not families or any(f not in FAMILIES for f in families):
        raise SynthError(f"families must be a non-empty subset of {FAMILIES}, got {families}")
    out = Path(out)
    meta_path = out / METADATA_FILE
    existing = [meta_path, *out.glob("real/*.mp4"), *out.glob("fake/*.mp4")]
    if any(p.exists() for p in existing):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a dataset; pass overwrite=True to replace it")
        for p in existing:
            p.unlink(missing_ok=True)
    (out / "real").mkdir(parents=True, exist_ok=True)
    (out / "fake").mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    lengths = _lengths(np.random.default_rng([seed, 0]), videos, min_frames, max_frames, cfg)
    codec = {"codec": "libx264", "pix_fmt": "yuv420p", "crf": cfg.crf, "preset": cfg.preset}
    common = {"fps": fps, "width": width, "height": height, "seed": seed, "codec": codec, "generator": GENERATOR}
    records = []
    for i in tqdm(range(videos), desc="make-dataset", unit="pair", disable=None):
        rng = np.random.default_rng([seed, 1, i])
        n = lengths[i]
        family = families[i % len(families)]
        motion = _draw_motion(rng, cfg, width, height)
        variant = _draw_variant(rng, cfg, family, n)
        reals, fakes, boxes = _render_pair(
            motion, n, width=width, height=height, fps=fps, variant=variant, grain_seed=(seed, 2, i), cfg=cfg
        )
        real_id, fake_id = f"{i:04d}", f"{i:04d}_{family}"
        write_video(out / "real" / f"{real_id}.mp4", reals, fps, crf=cfg.crf, preset=cfg.preset)
        write_video(out / "fake" / f"{fake_id}.mp4", fakes, fps, crf=cfg.crf, preset=cfg.preset)
        shared = {"num_frames": n, "boxes": boxes, "motion": asdict(motion), **common}
        records.append({"video_id": real_id, "file": f"real/{real_id}.mp4", "label": 0, "source_id": real_id,
                        "family": "", "manipulation": {}, **shared})  # fmt: skip
        manipulation = {"family": family, "strength": cfg.strength, **variant.params, "per_frame": variant.per_frame}
        records.append({"video_id": fake_id, "file": f"fake/{fake_id}.mp4", "label": 1, "source_id": real_id,
                        "family": family, "manipulation": manipulation, **shared})  # fmt: skip
    tmp = meta_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(_rounded(r), sort_keys=True) + "\n" for r in records))
    tmp.replace(meta_path)
    log.info("wrote %d real + %d fake videos (%d frames) to %s", videos, videos, 2 * sum(lengths), out)
    return meta_path


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """Read a dataset's metadata: ``path`` is ``metadata.jsonl`` or the dataset folder."""
    path = Path(path)
    if path.is_dir():
        path = path / METADATA_FILE
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]
