"""Self-blended pseudo-fakes: a real face blended with a slightly altered copy of itself.

Detectors trained only on the fakes of one dataset learn that dataset's generators and
fail on the next one. Self-Blended Images (SBI; Shiohara & Yamasaki, "Detecting Deepfakes
with Self-Blended Images", CVPR 2022) instead trains on pseudo-fakes made from real faces:
a face is blended into itself after a small colour, frequency and geometric change, so the
only cue left is what every face swap shares, a blending boundary and a statistical
mismatch between the inner face and its surroundings (the blending-boundary idea of Face
X-ray; Li et al., "Face X-ray for More General Face Forgery Detection", CVPR 2020).

This module makes such a pseudo-fake for a whole *video*: the T sampled frames of one real
video and the face boxes of its main track go in, T frames come out in which the face
region of every frame with a face is self-blended. What is done to each frame:

1. **Source.** The frame is resampled with a small scale about the face-box centre and a
   small translation (SBI's ``Affine``), its high frequencies are blurred away or boosted
   (SBI's ``Downscale``/``Sharpen``, here one continuous unsharp-mask amount), and its
   colour is jittered: contrast about the face's mean, saturation, brightness and a
   per-channel RGB shift (SBI's ``RandomBrightnessContrast``/``HueSaturationValue``/``RGBShift``).
2. **Mask.** Landmarks are not available (raydf keeps MTCNN boxes only), so SBI's
   landmark convex hull is replaced by an ellipse inside the face box, its radius deformed
   by a few low radial harmonics (a per-video face-hull shape) and made convex, then
   blurred with a Gaussian and scaled by a blend ratio ``alpha`` (SBI's ``dynamic_blend``).
3. **Blend.** ``out = frame + mask * (source - frame)``.

Unlike SBI, which blends single images, every parameter **drifts smoothly over the
sampled frames**: parameter ``p`` at frame ``t`` is ``low + (high - low) * u(t)`` with
``u(t) = c + d * (sin(2 pi f1 t + phi1) + sin(2 pi f2 t + phi2)) / 2``, ``c`` drawn in
``[d, 1 - d]``, ``d = drift_amplitude``, periods ``1/f`` in ``drift_period`` sampled frames.
So the temporal path has a flicker of blend and colour to learn, and the frame-to-frame
change of every parameter is bounded by :meth:`SelfBlendConfig.max_step` (a fraction of
its range). The ranges are narrower than SBI's so that the fake stays subtle (a mean
absolute difference of a few grey levels over the face box; the tests hold it under 12).

Every change lies inside the face box grown by ``margin / 2`` of its long side on each
side, which lies inside the square crop :func:`raydf.faces.expand_box` cuts with the same
margin, so the real video's boxes remain valid for cropping its pseudo-fake. Frames without
a face (NaN box, invalid flag, or a box smaller than ``min_face_px``) are returned
unchanged. Everything is deterministic given the seed; :func:`blend_seed` derives a
per-video seed from the video id that is stable across processes and machines.

This differs from :mod:`raydf.synth`'s ``blend`` family, which pastes a *mirrored,
rotated* copy of a rendered face with white-ish per-frame jitter and then restores the face
box's colour statistics: here the copy is the frame itself, un-mirrored, and the colour
mismatch is kept on purpose, as SBI does.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from raydf.config import SELF_BLEND_RANGES as _RANGES
from raydf.config import SelfBlendConfig

log = logging.getLogger(__name__)

__all__ = [
    "PSEUDO_METHOD",
    "SelfBlendConfig",
    "SelfBlend",
    "self_blend",
    "blend_seed",
    "pseudo_video_id",
    "DRIFTING_PARAMS",
]

PSEUDO_METHOD = "self_blend"
_VERSION = 1  # bump when the same seed would give different pixels
_ROUND = 4  # decimals kept in the JSON parameters
_POLY_SHIFT = 4  # fractional bits of the mask polygon's vertices (1/16 px)
_POLY_POINTS = 72  # vertices of the deformed ellipse before its convex hull


_PER_CHANNEL = {"rgb_shift": 3}  # parameters with one value per RGB channel
DRIFTING_PARAMS: tuple[str, ...] = tuple(name for name, _ in _RANGES)


@dataclass(frozen=True)
class SelfBlend:
    """A video's self-blended pseudo-fake.

    Attributes:
        frames: T frames, each ``(H_t, W_t, 3)`` uint8 RGB like its input; a frame without a
            face is the input frame itself, not a copy (a view when the input was one
            ``(T, H, W, 3)`` array). ``np.stack`` them when sizes agree.
        applied: ``(T,)`` bool, True where the frame's face was blended.
        params: JSON-ready description for the row's ``meta``: ``method``, ``version``,
            ``seed``, ``mask_harmonics`` (per video: ``k``, ``amplitude``, ``phase``),
            ``applied`` (T bools) and ``per_frame`` (name -> T floats, or T ``[r, g, b]``
            lists for ``rgb_shift``; defined for every frame, used where ``applied``),
            floats rounded to 4 decimals.
    """

    frames: tuple[np.ndarray, ...]
    applied: np.ndarray  # (T,) bool
    params: dict[str, Any]


def blend_seed(video_id: str, seed: int) -> int:
    """A per-video seed in ``[0, 2**63)``, stable across processes, platforms and Python versions.

    SHA-256 of ``"{seed}/{video_id}"`` (Python's ``hash`` is salted per process, so it is not used).
    """
    digest = hashlib.sha256(f"{int(seed)}/{video_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def pseudo_video_id(real_id: str) -> str:
    """The video id of ``real_id``'s pseudo-fake: ``"{real_id}/self_blend"``."""
    return f"{real_id}/{PSEUDO_METHOD}"


def _drift(rng: np.random.Generator, num_frames: int, dims: int, cfg: SelfBlendConfig) -> np.ndarray:
    """(T, dims) smooth paths in [0, 1]: ``c + d (sin(2 pi f1 t + p1) + sin(2 pi f2 t + p2)) / 2``."""
    d = cfg.drift_amplitude
    centre = rng.uniform(d, 1.0 - d, dims)  # (dims,)
    freq = 1.0 / rng.uniform(cfg.drift_period[0], cfg.drift_period[1], (2, dims))  # cycles per frame
    phase = rng.uniform(0.0, 2.0 * math.pi, (2, dims))
    t = np.arange(num_frames, dtype=np.float64)[:, None, None]  # (T, 1, 1)
    waves = np.sin(2.0 * math.pi * freq[None] * t + phase[None])  # (T, 2, dims)
    return centre[None] + d * waves.mean(axis=1)  # (T, dims)


def _draw(rng: np.random.Generator, num_frames: int, cfg: SelfBlendConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-video draws: per-frame parameters (name -> (T,) or (T, 3)) and mask harmonics (K, 2) amp, phase."""
    k = len(cfg.mask_harmonics)
    harmonics = np.stack(
        [rng.uniform(0.0, cfg.mask_deform / max(k, 1), k), rng.uniform(0.0, 2.0 * math.pi, k)], axis=-1
    )  # (K, 2): sum of amplitudes <= mask_deform
    dims = [_PER_CHANNEL.get(name, 1) for name, _ in _RANGES]
    unit = _drift(rng, num_frames, sum(dims), cfg)  # (T, P)
    per_frame: dict[str, np.ndarray] = {}
    col = 0
    for (name, field_name), n in zip(_RANGES, dims):
        lo, hi = getattr(cfg, field_name)
        values = lo + (hi - lo) * unit[:, col : col + n]  # (T, n)
        per_frame[name] = values if n > 1 else values[:, 0]
        col += n
    return per_frame, harmonics


def _usable(box: np.ndarray, ok: bool, cfg: SelfBlendConfig) -> bool:
    if not ok or not np.all(np.isfinite(box)):
        return False
    return bool(box[2] - box[0] >= cfg.min_face_px and box[3] - box[1] >= cfg.min_face_px)


def _mask(
    shape: tuple[int, int],
    origin: tuple[int, int],
    box: np.ndarray,
    p: dict[str, float],
    harmonics: np.ndarray,
    cfg: SelfBlendConfig,
) -> np.ndarray:
    """Soft face mask on a canvas: (h, w) float32 in [0, alpha].

    Args:
        shape: canvas (height, width) in pixels.
        origin: frame coordinates (x, y) of the canvas's top-left pixel.
        box: face box x1, y1, x2, y2 in frame pixels.
        p: this frame's parameters.
        harmonics: (K, 2) per-video amplitude and phase of each radial harmonic.
        cfg: generator constants.
    """
    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
    cx = 0.5 * float(box[0] + box[2]) - origin[0]
    cy = 0.5 * float(box[1] + box[3]) + p["mask_offset_y"] * bh - origin[1]
    theta = np.linspace(0.0, 2.0 * math.pi, _POLY_POINTS, endpoint=False)  # (N,)
    radius = np.ones_like(theta)
    for k, (amp, phase) in zip(cfg.mask_harmonics, harmonics):
        radius += amp * np.cos(k * theta + phase)
    pts = np.stack(
        [cx + p["mask_axis_x"] * bw * radius * np.cos(theta), cy + p["mask_axis_y"] * bh * radius * np.sin(theta)],
        axis=-1,
    )  # (N, 2) canvas px
    hull = cv2.convexHull(np.round(pts * (1 << _POLY_SHIFT)).astype(np.int32))  # (M, 1, 2), convex like SBI's hull
    canvas = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(canvas, hull, 255, lineType=cv2.LINE_AA, shift=_POLY_SHIFT)
    sigma = p["mask_softness"] * min(bw, bh)
    soft = cv2.GaussianBlur(canvas.astype(np.float32) * (1.0 / 255.0), (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return soft * np.float32(p["alpha"])  # (h, w)


def _blend_frame(
    frame: np.ndarray, box: np.ndarray, p: dict[str, Any], harmonics: np.ndarray, cfg: SelfBlendConfig
) -> np.ndarray:
    """One frame (H, W, 3) uint8 with its face region self-blended; a new array."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = x2 - x1, y2 - y1
    grow = 0.5 * cfg.margin * max(bw, bh)
    # Allowed region (window), in frame px; the canvas is the window, cut to the frame plus room
    # for the mask blur so a face partly outside the frame still gets the blur of its whole mask.
    pad = int(math.ceil(4.0 * cfg.mask_softness[1] * min(bw, bh))) + 2
    wx0, wy0 = max(math.ceil(x1 - grow), -pad), max(math.ceil(y1 - grow), -pad)
    wx1, wy1 = min(math.floor(x2 + grow), width + pad), min(math.floor(y2 + grow), height + pad)
    fx0, fy0, fx1, fy1 = max(wx0, 0), max(wy0, 0), min(wx1, width), min(wy1, height)  # window cut to the frame
    if fx1 <= fx0 or fy1 <= fy0:
        return frame  # the face box lies wholly outside the frame
    mask = _mask((wy1 - wy0, wx1 - wx0), (wx0, wy0), box, p, harmonics, cfg)
    mask = mask[fy0 - wy0 : fy1 - wy0, fx0 - wx0 : fx1 - wx0]  # (h, w)

    # Source: the frame scaled by s about the box centre and shifted by t.
    # Blended pixel q takes the frame at c + (q - c - t) / s (inverse map, window px -> frame px).
    s = float(p["scale"])
    cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    tx, ty = float(p["translate_x"]) * bw, float(p["translate_y"]) * bh
    inv = np.array(
        [[1.0 / s, 0.0, (fx0 - cx - tx) / s + cx], [0.0, 1.0 / s, (fy0 - cy - ty) / s + cy]], dtype=np.float64
    )
    source = cv2.warpAffine(
        frame,
        inv,
        (fx1 - fx0, fy1 - fy0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT101,
    ).astype(np.float32)  # (h, w, 3)
    # Frequency: unsharp mask, negative amounts blend toward the blurred image.
    blur = cv2.GaussianBlur(source, (0, 0), max(cfg.sharpen_sigma * max(bw, bh), 0.5), borderType=cv2.BORDER_REFLECT101)
    source += np.float32(p["sharpness"]) * (source - blur)
    # Colour: contrast about the face's mean, saturation about each pixel's grey, offsets.
    weight = mask / (float(mask.sum()) + 1e-6)
    mean = np.tensordot(weight, source, axes=([0, 1], [0, 1]))  # (3,) mask-weighted mean
    source = (source - mean) * np.float32(p["contrast"]) + mean
    grey = source.mean(axis=2, keepdims=True)  # (h, w, 1)
    source = grey + (source - grey) * np.float32(p["saturation"])
    source += np.float32(p["brightness"]) + np.asarray(p["rgb_shift"], np.float32)  # (3,) broadcast

    window = frame[fy0:fy1, fx0:fx1].astype(np.float32)  # (h, w, 3)
    blended = window + mask[..., None] * (source - window)
    out = frame.copy()
    out[fy0:fy1, fx0:fx1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def _rounded(values: np.ndarray) -> list:
    return (np.round(values, _ROUND) + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0


def self_blend(
    frames: Sequence[np.ndarray],
    boxes: np.ndarray,
    *,
    seed: int,
    valid: np.ndarray | None = None,
    cfg: SelfBlendConfig = SelfBlendConfig(),
) -> SelfBlend:
    """Make a video's self-blended pseudo-fake (SBI, Shiohara & Yamasaki, CVPR 2022; see the module doc).

    Args:
        frames: T frames, each ``(H_t, W_t, 3)`` uint8 RGB (sizes may differ), or a
            ``(T, H, W, 3)`` array. Not modified.
        boxes: ``(T, 4)`` face boxes ``x1, y1, x2, y2`` of the main track in each frame's
            full-resolution pixels; NaN rows (or ``valid`` False) where no face was found.
            A box may reach outside its frame.
        seed: seeds every draw; use :func:`blend_seed` for a per-video seed. The draws do
            not depend on which frames have faces, only on ``seed`` and T.
        valid: optional ``(T,)`` bool; False marks a frame without a face whatever its box
            (e.g. :class:`raydf.faces.FaceCrops` ``valid`` with its zero boxes).
        cfg: ranges and constants.

    Returns:
        A :class:`SelfBlend`: the blended frames, which frames were blended, and the
        JSON-ready parameters.

    Raises:
        ValueError: a frame is not ``(H, W, 3)`` uint8, or ``boxes`` / ``valid`` do not
            have T rows.
    """
    num_frames = len(frames)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (num_frames, 4):
        raise ValueError(f"boxes must be ({num_frames}, 4) for {num_frames} frames, got {boxes.shape}")
    if valid is None:
        valid = np.ones(num_frames, bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != (num_frames,):
        raise ValueError(f"valid must be ({num_frames},) for {num_frames} frames, got {valid.shape}")
    for i, frame in enumerate(frames):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame {i} must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")

    rng = np.random.default_rng(int(seed))
    per_frame, harmonics = _draw(rng, num_frames, cfg)
    out: list[np.ndarray] = []
    applied = np.zeros(num_frames, bool)
    for i, frame in enumerate(frames):
        if not _usable(boxes[i], bool(valid[i]), cfg):
            out.append(frame)
            continue
        p = {name: values[i] for name, values in per_frame.items()}
        blended = _blend_frame(frame, boxes[i], p, harmonics, cfg)
        applied[i] = blended is not frame
        out.append(blended)
    log.debug("self-blended %d of %d frames (seed %d)", int(applied.sum()), num_frames, seed)
    params = {
        "method": PSEUDO_METHOD,
        "version": _VERSION,
        "seed": int(seed),
        "mask_harmonics": {
            "k": list(cfg.mask_harmonics),
            "amplitude": _rounded(harmonics[:, 0]),
            "phase": _rounded(harmonics[:, 1]),
        },
        "applied": applied.tolist(),
        "per_frame": {name: _rounded(values) for name, values in per_frame.items()},
    }
    return SelfBlend(frames=tuple(out), applied=applied, params=params)
