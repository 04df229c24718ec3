"""Explanations of a verdict: which sampled frames (*when*) and which face pixels (*where*) drive the fake logit.

Plain PyTorch (no Ray, no MLflow). Inputs are one video's face crops and the features the
extraction computed from them, plus the trained :class:`~raydf.models.fusion.FusionClassifier`
and the :class:`~raydf.features.FeatureExtractor` that made the features::

    crops   (T, S, S, 3) uint8   face crops (S = 256 in the report)
    content (K, 2048)    float32 one slow_r50 vector per 16-frame clip, K = T // 16
    style   (T, 512)     float32 one pSp level-9 code per sampled frame
    valid   (T,)         bool    whether MTCNN found a face in that frame

**When** -- integrated gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep
Networks", ICML 2017) of the fake logit with respect to both feature sequences, from a baseline
to the video's features along the straight line. The baseline is the model's own feature
means (``content_mean``, ``style_mean``: the training split's averages), i.e. zero after the
model's standardisation -- "a video whose every feature is the average training feature".
The path integral is a Gauss-Legendre quadrature with ``steps`` nodes, so completeness
(``sum(scores) == logit - baseline_logit``) holds to quadrature error; the remaining gap is
reported. A style code's attribution (summed over its 512 dimensions) belongs to its frame;
a content clip's attribution (summed over 2048) is spread evenly over the ``clip_len``
sampled frames the clip was cut from (``raydf.models.content.content_clips``: frames
``k*L .. k*L+L-1``, or ``arange(L) % T`` when ``T < L``), so frames beyond ``K*L`` get
none. A frame without a face (``valid=False``) gets no style attribution (the model never
reads its code) and keeps its share of its clip's content attribution (the clip did see the
centre-crop fallback's pixels).

**Where** -- heat maps of the fake logit on the crop pixels of a few frames. Each chosen
frame's crop goes through the extractor's own pSp encoder (``raydf.models.style.style_input``
and the encoder as ``FeatureExtractor`` runs it) and its code replaces that frame's cached
style code; content features stay fixed (a slow_r50 backward costs ~3x its forward per
16-frame clip on CPU, and a clip mixes 16 frames). Two methods (:data:`WHERE_METHODS`):

* ``"smoothgrad"`` -- SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding
  noise", 2017): the gradient averaged over ``samples`` copies of the crops with Gaussian
  noise of std ``noise`` (fraction of the [0, 1] pixel range, the paper's 10-20%); a pixel's
  saliency is the largest absolute mean gradient over its RGB channels (Simonyan, Vedaldi &
  Zisserman, "Deep Inside Convolutional Networks", 2014). A sensitivity: where a small change
  would move the logit most.
* ``"neighbour_ig"`` -- integrated gradients (as above) on the pixels, from a reference crop
  to the frame: the mean of its nearest valid neighbouring frames. The attribution
  ``(x - ref) * mean gradient`` summed over RGB, smoothed by a Gaussian of sigma S/64, and
  its positive part kept: what in this frame, compared with its neighbours, pushes the
  verdict towards "fake" (a temporal-inconsistency detector's own question). Per frame the
  raw attributions sum to ``logit(frame) - logit(reference)`` (``HeatMaps.totals``).

Maps are scaled per frame to [0, 1] by their maximum. Frames are chosen by the *when*
scores: the ``top_k`` valid frames with the highest (most fake-pushing) attribution.

What the maps can and cannot show is measured in ``benchmarks/explain.py`` (results in
``benchmarks/RESULTS.md``): on the generated dataset with random-init extractors neither
method concentrates on the manipulated region more than a centred Gaussian does.

Example::

    ex = explain(model, extractor, crops, content, style, valid, top_k=4)
    ex.probability, ex.when.scores          # P(fake), (T,) per-frame attribution
    ex.where.frames, ex.where.maps          # (F,), (F, S, S) in [0, 1]
    json.dumps(ex.to_dict(map_size=32))
    png = overlay_png(crops[ex.where.frames[0]], ex.where.maps[0])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from raydf.features import FeatureExtractor
from raydf.models.content import num_clips
from raydf.models.style import style_input

log = logging.getLogger(__name__)

__all__ = [
    "FrameImportance",
    "HeatMaps",
    "Explanation",
    "frame_importance",
    "clip_frame_weights",
    "heat_maps",
    "WHERE_METHODS",
    "explain",
    "overlay_png",
]

IG_STEPS = 64  # Gauss-Legendre nodes; a trained demo model left gaps up to ~1% of the logit change at 32
IG_GAP_WARN = 0.01  # warn when the completeness gap exceeds this fraction of |logit - baseline_logit|
SMOOTHGRAD_SAMPLES = 8  # Smilkov et al. 2017 average 50; 8 keeps the faithful pSp affordable on CPU
SMOOTHGRAD_NOISE = 0.15  # std as a fraction of the pixel range (the paper's 10-20%)
PIXEL_IG_STEPS = 16  # neighbour_ig's Gauss-Legendre nodes per frame
WHERE_METHOD = "smoothgrad"
TOP_K = 4  # frames that get a heat map by default
MAP_SIZE = 32  # side of the heat maps in to_dict()


@dataclass(frozen=True, eq=False)
class FrameImportance:
    """*When*: integrated-gradients attribution of the fake logit to each sampled frame (logit units).

    ``scores = style_scores + content_scores``; ``scores.sum() ~= logit - baseline_logit``.
    """

    scores: np.ndarray  # (T,) float32
    style_scores: np.ndarray  # (T,) float32, 0 where valid is False
    content_scores: np.ndarray  # (T,) float32, each clip's attribution spread over its frames
    valid: np.ndarray  # (T,) bool, False: no face in that frame (centre-crop fallback)
    logit: float  # fake logit of the video
    baseline_logit: float  # fake logit of the baseline (feature means)
    steps: int

    @property
    def completeness_gap(self) -> float:
        """``sum(scores) - (logit - baseline_logit)``: the quadrature error of the path integral."""
        return float(self.scores.astype(np.float64).sum() - (self.logit - self.baseline_logit))

    def top_frames(self, k: int) -> np.ndarray:
        """The ``k`` valid frames with the highest scores, highest first (ties: earlier frame). (<=k,) int64."""
        candidates = np.flatnonzero(self.valid)
        order = np.argsort(-self.scores[candidates], kind="stable")
        return candidates[order[: max(k, 0)]].astype(np.int64)


@dataclass(frozen=True, eq=False)
class HeatMaps:
    """*Where*: heat maps on the face crops of a few frames (see :data:`WHERE_METHODS`)."""

    frames: np.ndarray  # (F,) int64 sampled-frame indices
    maps: np.ndarray  # (F, S, S) float32 in [0, 1]; all zero for a frame whose code the model ignores
    totals: np.ndarray  # (F,) float32 neighbour_ig: sum of the raw attributions = logit(frame) - logit(its
    # reference) up to quadrature error; NaN for SmoothGrad (a sensitivity, not an attribution)
    method: str
    samples: int  # SmoothGrad's
    noise: float  # SmoothGrad's
    steps: int  # neighbour_ig's
    seed: int


@dataclass(frozen=True, eq=False)
class Explanation:
    """A verdict and why: P(fake), per-frame attribution (when) and heat maps (where)."""

    probability: float
    when: FrameImportance
    where: HeatMaps

    @property
    def logit(self) -> float:
        return self.when.logit

    def to_dict(self, *, map_size: int = MAP_SIZE, decimals: int = 4) -> dict[str, Any]:
        """JSON-ready summary; heat maps area-downsampled to ``map_size`` x ``map_size``.

        Keys: ``probability``, ``logit``, ``when`` (``method``, ``baseline``, ``baseline_logit``,
        ``steps``, ``completeness_gap``, per-frame ``scores``/``style``/``content`` lists and
        ``valid``, ``top_frames``), ``where`` (``method``, ``samples``, ``noise``, ``seed``,
        ``frames``, ``size``, ``maps``: one ``map_size`` x ``map_size`` nested list per frame).
        """
        w, h = self.when, self.where
        small = [_downsample(m, map_size) for m in h.maps]
        return {
            "probability": round(self.probability, decimals),
            "logit": round(w.logit, decimals),
            "when": {
                "method": "integrated_gradients",
                "baseline": "feature_mean",
                "baseline_logit": round(w.baseline_logit, decimals),
                "steps": w.steps,
                "completeness_gap": float(f"{w.completeness_gap:.3g}"),
                "scores": _rounded(w.scores, decimals),
                "style": _rounded(w.style_scores, decimals),
                "content": _rounded(w.content_scores, decimals),
                "valid": [bool(v) for v in w.valid],
                "top_frames": [int(i) for i in w.top_frames(len(h.frames) or TOP_K)],
            },
            "where": {
                "method": h.method,
                "samples": h.samples,
                "noise": h.noise,
                "steps": h.steps,
                "seed": h.seed,
                "frames": [int(i) for i in h.frames],
                "totals": [None if not np.isfinite(v) else round(float(v), decimals) for v in h.totals],
                "size": map_size,
                "maps": [[_rounded(row, 3) for row in m] for m in small],
            },
        }


def _rounded(x: np.ndarray, decimals: int) -> list[float]:
    return [round(float(v), decimals) for v in x]


def _downsample(m: np.ndarray, size: int) -> np.ndarray:
    """(S, S) -> (size, size) by area averaging (values stay in [0, 1])."""
    if m.shape == (size, size):
        return m
    interp = cv2.INTER_AREA if m.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(m, np.float32), (size, size), interpolation=interp)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Dropout off while explaining; the caller's mode comes back afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.buffers())).device


def clip_frame_weights(num_frames: int, num_clips_: int, clip_len: int = 16) -> np.ndarray:
    """(K, T) float32: the share of clip k's attribution that frame t gets.

    Mirrors :func:`raydf.models.content.content_clips`: clip k holds sampled frames
    ``k*L .. k*L+L-1``; when ``T < L`` the single clip holds ``arange(L) % T`` (circular
    padding), so a frame appearing twice gets two shares. Each row sums to 1.
    """
    w = np.zeros((num_clips_, num_frames), np.float32)
    for k in range(num_clips_):
        frames = np.arange(k * clip_len, (k + 1) * clip_len) % num_frames
        np.add.at(w[k], frames, 1.0 / clip_len)
    return w


def frame_importance(
    model: nn.Module,
    content: np.ndarray,
    style: np.ndarray,
    valid: np.ndarray,
    *,
    clip_len: int = 16,
    steps: int = IG_STEPS,
    batch: int = 32,
) -> FrameImportance:
    """Integrated gradients of the fake logit over the feature sequences, summed per sampled frame.

    Method: Sundararajan et al., ICML 2017, with the model's feature means as the baseline and
    a ``steps``-node Gauss-Legendre quadrature of the path integral (see the module docstring).

    Args:
        model: a :class:`~raydf.models.fusion.FusionClassifier` (its mode is restored afterwards).
        content: (K, 2048) clip features.
        style: (T, 512) style codes.
        valid: (T,) face validity.
        clip_len: frames per content clip (``ContentConfig.clip_len``).
        steps: quadrature nodes (>= 1).
        batch: path points per forward pass (bounds memory for long T).

    Returns:
        A :class:`FrameImportance` with (T,) float32 scores.

    Raises:
        ValueError: shapes that do not fit together, or ``steps < 1``.
    """
    content = np.asarray(content, np.float32)
    style = np.asarray(style, np.float32)
    valid = np.asarray(valid, bool)
    if content.ndim != 2 or style.ndim != 2 or valid.shape != style.shape[:1]:
        raise ValueError(f"expected content (K, D), style (T, D), valid (T,); got {content.shape}, {style.shape}, {valid.shape}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t, k = style.shape[0], content.shape[0]
    dev = _device(model)
    c = torch.from_numpy(content).to(dev)[None]  # (1, K, 2048)
    s = torch.from_numpy(style).to(dev)[None]  # (1, T, 512)
    v = torch.from_numpy(valid).to(dev)[None]  # (1, T)
    c0 = model.content_mean.to(dev).expand_as(c)  # (1, K, 2048) baseline: zero after standardisation
    s0 = model.style_mean.to(dev).expand_as(s)  # (1, T, 512)
    # The model never reads the code of a frame without a face; pinning it to the baseline makes
    # its attribution exactly 0 whatever the store holds there (even NaN).
    s = torch.where(v[..., None], s, s0)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1.0) / 2.0, dtype=torch.float32, device=dev)  # (steps,) in (0, 1)
    weights = torch.tensor(weights / 2.0, dtype=torch.float32, device=dev)  # (steps,) sum to 1
    grad_c = torch.zeros_like(c)  # (1, K, 2048) weighted sum of gradients along the path
    grad_s = torch.zeros_like(s)  # (1, T, 512)
    with _eval_mode(model), torch.enable_grad():
        for i in range(0, steps, batch):
            a = alphas[i : i + batch, None, None]  # (b, 1, 1)
            cp = (c0 + a * (c - c0)).requires_grad_(True)  # (b, K, 2048)
            sp = (s0 + a * (s - s0)).requires_grad_(True)  # (b, T, 512)
            out = model(cp, sp, v.expand(a.shape[0], -1))  # (b,)
            gc, gs = torch.autograd.grad((out * weights[i : i + batch]).sum(), (cp, sp))
            grad_c += gc.sum(0, keepdim=True)
            grad_s += gs.sum(0, keepdim=True)
        with torch.no_grad():
            logits = model(torch.cat([c, c0]), torch.cat([s, s0]), v.expand(2, -1))  # (2,) video, baseline
    attr_c = ((c - c0) * grad_c)[0].sum(-1).double().cpu().numpy()  # (K,) per clip
    attr_s = ((s - s0) * grad_s)[0].sum(-1).double().cpu().numpy()  # (T,) per frame
    content_scores = attr_c @ clip_frame_weights(t, k, clip_len).astype(np.float64)  # (K,) @ (K, T) -> (T,)
    out = FrameImportance(
        scores=(attr_s + content_scores).astype(np.float32),
        style_scores=attr_s.astype(np.float32),
        content_scores=content_scores.astype(np.float32),
        valid=valid.copy(),
        logit=float(logits[0]),
        baseline_logit=float(logits[1]),
        steps=steps,
    )
    change = abs(out.logit - out.baseline_logit)
    if abs(out.completeness_gap) > IG_GAP_WARN * max(change, 1e-6):
        log.warning("integrated gradients with %d steps miss completeness by %.3g (logit change %.3g); raise steps", steps,
                    out.completeness_gap, change)  # fmt: skip
    return out


def _smoothgrad(ctx: _PixelContext, *, samples: int, noise: float, steps: int, seed: int) -> np.ndarray:
    """SmoothGrad saliency (Smilkov et al. 2017; Simonyan et al. 2014): (F, S, S) >= 0."""
    gen = torch.Generator().manual_seed(seed)  # CPU noise: identical on any device
    total = torch.zeros_like(ctx.x0)  # (F, S, S, 3) sum of gradients
    for _ in range(samples):
        eps = torch.randn(ctx.x0.shape, generator=gen) * noise if noise > 0 else torch.zeros_like(ctx.x0)
        x = (ctx.x0 + eps).requires_grad_(True)  # (F, S, S, 3) in [0, 1] (+ noise)
        (grad,) = torch.autograd.grad(ctx.logits(x[None])[0], x)
        total += grad.float()
    return (total / samples).abs().amax(dim=-1).cpu().numpy()  # (F, S, S) max over RGB


def _neighbour_ig(ctx: _PixelContext, *, samples: int, noise: float, steps: int, seed: int) -> np.ndarray:
    """Integrated gradients from the neighbouring frames (Sundararajan et al. 2017): (F, S, S) >= 0.

    Each frame's reference is the mean crop of its nearest valid neighbours (one on each side
    where there is one); the per-pixel attribution ``(x - ref) * mean gradient`` is summed over
    RGB, smoothed (Gaussian, sigma = S / 64, about the grain's scale) and its positive part --
    evidence for "fake" -- kept. A frame with no valid neighbour has no reference: zero map.
    """
    ref = ctx.neighbour_reference()  # (F, S, S, 3) in [0, 1]
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1.0) / 2.0, dtype=torch.float32)  # (steps,)
    weights = torch.tensor(weights / 2.0, dtype=torch.float32)  # (steps,)
    grad = torch.zeros_like(ctx.x0)  # (F, S, S, 3)
    for a, w in zip(alphas, weights):
        x = (ref + a * (ctx.x0 - ref)).requires_grad_(True)  # (F, S, S, 3) one point of each frame's path
        (g,) = torch.autograd.grad(ctx.logits(x[None])[0] * w, x)
        grad += g.float()
    attr = ((ctx.x0 - ref) * grad).sum(-1)  # (F, S, S) signed, logit units
    ctx.totals = attr.sum(dim=(1, 2)).double().cpu().numpy()  # (F,) ~ logit(frame) - logit(reference)
    sigma = ctx.x0.shape[1] / 64.0
    out = np.stack([cv2.GaussianBlur(a, (0, 0), sigma) for a in attr.cpu().numpy()]) if len(attr) else attr.numpy()
    return np.maximum(out, 0.0)


WHERE_METHODS = {"smoothgrad": _smoothgrad, "neighbour_ig": _neighbour_ig}


class _PixelContext:
    """The fake logit as a function of the chosen frames' crop pixels (style path; content fixed)."""

    def __init__(self, model: nn.Module, extractor: FeatureExtractor, crops: np.ndarray, content: np.ndarray,
                 style: np.ndarray, valid: np.ndarray, frames: np.ndarray) -> None:  # fmt: skip
        self.model, self.extractor = model, extractor
        self.crops, self.valid, self.frames = crops, valid, frames
        self.dev = _device(model)
        self.x0 = torch.from_numpy(crops[frames]).float().div_(255.0)  # (F, S, S, 3) in [0, 1]
        self.content = torch.from_numpy(content).to(self.dev)[None]  # (1, K, 2048)
        self.valid_t = torch.from_numpy(valid).to(self.dev)[None]  # (1, T)
        self.style = torch.from_numpy(style).to(self.dev)  # (T, 512)
        self.idx = torch.from_numpy(frames).to(self.dev)  # (F,)
        self.totals = np.full(len(frames), np.nan)  # (F,) set by methods with a completeness property

    def logits(self, x: Tensor) -> Tensor:
        """(P, F, S, S, 3) pixels in [0, 1] of the chosen frames -> (P,) fake logits."""
        p, f = x.shape[:2]
        fx = self.extractor
        faces = x.reshape(p * f, *x.shape[2:]).to(fx.device) * 255.0  # (P*F, S, S, 3)
        codes = _style_codes(fx.style_model, fx.style_cfg, faces, fx.dtype, fx.style_batch).to(self.dev)  # (P*F, 512)
        s = self.style[None].repeat(p, 1, 1)  # (P, T, 512)
        s[:, self.idx] = codes.reshape(p, f, -1)
        return self.model(self.content.expand(p, -1, -1), s, self.valid_t.expand(p, -1))  # (P,)

    def neighbour_reference(self) -> Tensor:
        """(F, S, S, 3) in [0, 1]: mean crop of each frame's nearest valid frames before and after."""
        ok = np.flatnonzero(self.valid)
        refs = []
        for t, x in zip(self.frames, self.x0):
            near = [ok[ok < t][-1:], ok[ok > t][:1]]
            near = np.concatenate(near)
            refs.append(torch.from_numpy(self.crops[near]).float().div_(255.0).mean(0) if near.size else x)
        return torch.stack(refs) if refs else torch.zeros_like(self.x0)


def heat_maps(
    model: nn.Module,
    extractor: FeatureExtractor,
    crops: np.ndarray,
    content: np.ndarray,
    style: np.ndarray,
    valid: np.ndarray,
    frames: np.ndarray | list[int],
    *,
    method: str = WHERE_METHOD,
    samples: int = SMOOTHGRAD_SAMPLES,
    noise: float = SMOOTHGRAD_NOISE,
    steps: int = PIXEL_IG_STEPS,
    seed: int = 0,
) -> HeatMaps:
    """Heat maps of the fake logit on the crops of ``frames``, through the style encoder.

    Each chosen frame's crop goes through the extractor's own style path and its code replaces
    the cached one; content stays fixed (see the module docstring). Methods
    (:data:`WHERE_METHODS`): ``"smoothgrad"`` (Smilkov et al. 2017 over Simonyan et al. 2014
    saliency; ``samples=1, noise=0`` is plain gradient saliency) and ``"neighbour_ig"``
    (integrated gradients from the mean of the neighbouring valid frames, positive part).
    Each map is scaled to [0, 1] by its maximum; a frame whose code the model ignores
    (no face) or with no positive evidence gets an all-zero map.

    Args:
        model: the fusion classifier (mode restored afterwards).
        extractor: the :class:`FeatureExtractor` whose style encoder made ``style`` (its
            settings: normalisation, input size, precision, device).
        crops: (T, S, S, 3) uint8 face crops.
        content: (K, 2048) clip features (held fixed).
        style: (T, 512) style codes; those of ``frames`` are recomputed from the pixels.
        valid: (T,) face validity.
        frames: distinct sampled-frame indices to explain (kept in the order given).
        method: a key of :data:`WHERE_METHODS`.
        samples: SmoothGrad's noisy copies (>= 1).
        noise: SmoothGrad's noise std, fraction of the [0, 1] pixel range (>= 0).
        steps: neighbour_ig's quadrature nodes (>= 1).
        seed: seeds SmoothGrad's noise; the same inputs and seed give the same maps.

    Returns:
        :class:`HeatMaps` with (F, S, S) float32 maps in [0, 1].

    Raises:
        ValueError: bad shapes, a frame index out of range or repeated, an unknown method or bad settings.
    """
    crops, content, style, valid = _check_inputs(crops, content, style, valid)
    frames = np.asarray(frames, np.int64).reshape(-1)
    t, size = crops.shape[0], crops.shape[1]
    if frames.size and (frames.min() < 0 or frames.max() >= t or len(set(frames.tolist())) < frames.size):
        raise ValueError(f"frames must be distinct indices in [0, {t}), got {frames.tolist()}")
    if method not in WHERE_METHODS:
        raise ValueError(f"unknown heat-map method {method!r}; known: {sorted(WHERE_METHODS)}")
    if samples < 1 or noise < 0 or steps < 1:
        raise ValueError(f"need samples >= 1, noise >= 0, steps >= 1; got {samples}, {noise}, {steps}")
    if method == "smoothgrad" and (samples == 1 or noise == 0):
        method = "gradient"
    sal = np.zeros((0, size, size), np.float32)
    totals = np.full(len(frames), np.nan)
    if frames.size:
        ctx = _PixelContext(model, extractor, crops, content, style, valid, frames)
        with _eval_mode(model), torch.enable_grad():
            sal = WHERE_METHODS["smoothgrad" if method == "gradient" else method](ctx, samples=samples, noise=noise, steps=steps, seed=seed)
        totals = ctx.totals
    peak = sal.reshape(len(frames), -1).max(axis=1) if frames.size else np.zeros(0, np.float32)  # (F,)
    maps = np.divide(sal, peak[:, None, None], out=np.zeros_like(sal), where=peak[:, None, None] > 0)
    return HeatMaps(frames, maps.astype(np.float32), totals.astype(np.float32), method, samples, noise, steps, seed)


def _style_codes(enc: nn.Module, scfg: Any, faces: Tensor, dtype: torch.dtype, batch: int) -> Tensor:
    """Differentiable twin of the extractor's style path: (N, S, S, 3) float 0..255 -> (N, 512) float32."""
    out = []
    for i in range(0, faces.shape[0], batch):
        # style_input divides in place; a fresh non-leaf tensor keeps autograd happy.
        x = style_input(faces[i : i + batch].clone(), mean=scfg.mean, std=scfg.std, size=enc.spec.input_size)  # (n, 3, 256, 256)
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        out.append(enc(x).float())  # (n, 512)
    return torch.cat(out)


def _check_inputs(
    crops: np.ndarray, content: np.ndarray, style: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    crops = np.asarray(crops)
    content = np.asarray(content, np.float32)
    style = np.asarray(style, np.float32)
    valid = np.asarray(valid, bool)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2] or crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 (T, S, S, 3), got {crops.dtype} {crops.shape}")
    t = crops.shape[0]
    if style.ndim != 2 or style.shape[0] != t or valid.shape != (t,) or content.ndim != 2:
        raise ValueError(f"need style (T, D), valid (T,), content (K, D) with T={t}; got {style.shape}, {valid.shape}, {content.shape}")
    return crops, content, style, valid


def explain(
    model: nn.Module,
    extractor: FeatureExtractor,
    crops: np.ndarray,
    content: np.ndarray,
    style: np.ndarray,
    valid: np.ndarray,
    *,
    frames: np.ndarray | list[int] | None = None,
    top_k: int = TOP_K,
    seed: int = 0,
    steps: int = IG_STEPS,
    method: str = WHERE_METHOD,
    samples: int = SMOOTHGRAD_SAMPLES,
    noise: float = SMOOTHGRAD_NOISE,
    map_steps: int = PIXEL_IG_STEPS,
) -> Explanation:
    """Explain one video's verdict: P(fake), which frames (IG) and which pixels (SmoothGrad).

    The entry point of ``raydf detect --explain``, the HTTP service and the evaluation
    artifacts. Deterministic: the same inputs and ``seed`` give the same explanation.

    Args:
        model: the trained :class:`~raydf.models.fusion.FusionClassifier` (``ModelBundle.model()``).
        extractor: the :class:`~raydf.features.FeatureExtractor` that computed the features
            (``FeatureStage.extractor`` in detect).
        crops: (T, S, S, 3) uint8 face crops of the video.
        content: (K, 2048) content features, K = T // clip_len (at least 1).
        style: (T, 512) style codes.
        valid: (T,) bool face validity.
        frames: sampled-frame indices that get heat maps; None: the ``top_k`` valid frames
            with the highest attribution.
        top_k: heat maps when ``frames`` is None (CPU cost grows linearly with it).
        seed: seeds the SmoothGrad noise.
        steps: integrated-gradients quadrature nodes.
        method: the heat-map method, a key of :data:`WHERE_METHODS`.
        samples: SmoothGrad samples. CPU cost: ``top_k * samples`` (SmoothGrad) or
            ``top_k * map_steps`` (neighbour_ig) pSp forward+backward passes; psp_ir_se50
            takes ~1.2 s per face for one on 2 cores, psp_tiny ~1/60 of that.
        noise: SmoothGrad noise std, fraction of the pixel range.
        map_steps: neighbour_ig's quadrature nodes.

    Returns:
        An :class:`Explanation`.

    Raises:
        ValueError: shapes that do not fit (crops vs features, K vs T) or bad settings.
    """
    crops, content, style, valid = _check_inputs(crops, content, style, valid)
    clip_len = extractor.content_cfg.clip_len
    if content.shape[0] != num_clips(crops.shape[0], clip_len):
        raise ValueError(f"content has {content.shape[0]} clips; T={crops.shape[0]} frames make {num_clips(crops.shape[0], clip_len)}")
    when = frame_importance(model, content, style, valid, clip_len=clip_len, steps=steps)
    chosen = when.top_frames(top_k) if frames is None else np.asarray(frames, np.int64)
    where = heat_maps(model, extractor, crops, content, style, valid, chosen, method=method, samples=samples, noise=noise,
                      steps=map_steps, seed=seed)  # fmt: skip
    prob = float(1.0 / (1.0 + np.exp(-when.logit)))
    log.info("explained a video: P(fake)=%.3f, IG completeness gap %.2g, heat maps for frames %s", prob, when.completeness_gap, chosen.tolist())
    return Explanation(probability=prob, when=when, where=where)


def overlay_png(crop: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45) -> bytes:
    """A PNG of ``heatmap`` (JET colour map) blended over ``crop``.

    Args:
        crop: (S, S, 3) uint8 RGB face crop.
        heatmap: (h, w) float in [0, 1], any size (resized bilinearly to the crop).
        alpha: weight of the colour map (0: crop only, 1: map only).

    Returns:
        PNG bytes (RGB, S x S), deterministic for the same inputs.

    Raises:
        ValueError: a crop that is not (H, W, 3) uint8, a heat map that is not 2-D, or alpha out of [0, 1].
    """
    crop = np.asarray(crop)
    heatmap = np.asarray(heatmap, np.float32)
    if crop.ndim != 3 or crop.shape[-1] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"crop must be (H, W, 3) uint8, got {crop.dtype} {crop.shape}")
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got {heatmap.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = crop.shape[:2]
    m = cv2.resize(np.clip(heatmap, 0.0, 1.0), (w, h), interpolation=cv2.INTER_LINEAR)  # (H, W)
    colour = cv2.applyColorMap((m * 255.0).round().astype(np.uint8), cv2.COLORMAP_JET)  # (H, W, 3) BGR
    bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
    out = cv2.addWeighted(colour, alpha, bgr, 1.0 - alpha, 0.0)
    ok, buf = cv2.imencode(".png", out)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
