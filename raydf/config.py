"""Frozen configuration dataclasses, loadable from YAML.

Every constant of the report lives here as a default with a one-line source
note, so code paths carry no magic numbers. A config is built with
:func:`load_config` (YAML file or dict, unknown keys rejected) and never
mutated; derive a variant with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from raydf.schema import FFPP_METHODS, LAYOUT_NAMES

__all__ = [
    "ConfigError",
    "VideoConfig",
    "FaceConfig",
    "ContentConfig",
    "StyleConfig",
    "SelfBlendConfig",
    "ExtractConfig",
    "FusionConfig",
    "TrainConfig",
    "Provenance",
    "WeightsOrigin",
    "parse_provenance",
    "FeatureConfig",
    "StoreConfig",
    "PRECISIONS",
    "dict_diff",
    "load_config",
    "to_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


PRECISIONS = ("fp32", "bf16", "fp16")  # feature precisions a store or bundle can record
CPU_PRECISIONS = ("fp32", "bf16", "auto")
PSEUDO_FAKES = ("", "self-blend")  # ExtractConfig.pseudo_fakes


@dataclass(frozen=True)
class VideoConfig:
    """Frame sampling."""

    num_frames: int = 32  # report: T=32 for FaceForensics++ (64 for Celeb-DF)
    backend: str = "auto"  # "auto" (PyAV, OpenCV if PyAV cannot read the file), "pyav", or "opencv"
    # (OpenCV's pixels, checked against PyAV's; see raydf.video)
    max_pixels: int = 7680 * 4320  # 8K UHD, the largest consumer recording size; T=32 RGB frames of it are 3.2 GB
    max_duration_s: float = 2 * 3600.0  # a feature film; longer is a stream dump or a broken header
    seek: bool = True  # decode only the keyframe intervals of the sampled frames (cost independent of length)
    threads: int = 0  # decoder threads per video; 0 = FFmpeg's choice (one per core), 1 inside one-CPU actors

    def __post_init__(self) -> None:
        _check(self.num_frames >= 1, f"num_frames must be >= 1, got {self.num_frames}")
        _check(self.backend in ("auto", "opencv", "pyav"), f"unknown video backend {self.backend!r}")
        _check(self.max_pixels >= 1, f"max_pixels must be >= 1, got {self.max_pixels}")
        _check(self.max_duration_s > 0, f"max_duration_s must be > 0, got {self.max_duration_s}")
        _check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class FaceConfig:
    """MTCNN face detection, face tracks and crops (raydf.faces)."""

    crop_size: int = 256  # report: 256x256 crops
    margin: float = 0.2  # report: 20% margin expansion (box scaled by 1 + margin)
    min_face_size: int = 40  # smallest face searched for, in full-resolution pixels at every frame size (MTCNN's
    # first pyramid scale is 12 / this): DFDC's distant subjects are ~50-130 px; 20 (facenet's default) costs ~4x
    min_face_prob: float = 0.90  # MTCNN final-stage probability to accept a face
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN P/R/O-net defaults (facenet-pytorch)
    min_frame_side: int = 20  # frames with a shorter side are not searched (centre crop + note): MTCNN's
    # default minimum face; a smaller frame holds no face it can find
    max_tracks: int = 1  # face tracks returned per video, main face first (the report crops one face per video)
    link_distance: float = 1.0  # a detection joins a track if its centre is within this many box sizes of the
    # track's last box: sampled frames of a 10 s clip are ~0.3 s apart, a head moves less than its width
    link_size_ratio: float = 2.0  # ... and its side is within this factor of that box's: another person at
    # another distance does not join
    detect_batch: int = 16  # frames per MTCNN call (batched P/R/O-nets)
    detect_batch_mb: int = 512  # and at most this many MB of summed-area tables per call (~12 B/pixel, 24 above 8 Mpx)

    def __post_init__(self) -> None:
        _check(self.crop_size >= 16, f"crop_size too small: {self.crop_size}")
        _check(0.0 <= self.margin <= 2.0, f"margin must be in [0, 2], got {self.margin}")
        _check(self.min_face_size >= 12, f"min_face_size must be >= 12 (one P-Net window), got {self.min_face_size}")
        _check(0.0 <= self.min_face_prob <= 1.0, f"min_face_prob must be in [0, 1], got {self.min_face_prob}")
        _check(len(self.thresholds) == 3 and all(0.0 <= t <= 1.0 for t in self.thresholds),
               f"thresholds must be three probabilities, got {self.thresholds}")  # fmt: skip
        _check(self.min_frame_side >= 12, f"min_frame_side must be >= 12 (one P-Net window), got {self.min_frame_side}")
        _check(self.max_tracks >= 1, f"max_tracks must be >= 1, got {self.max_tracks}")
        _check(self.link_distance > 0, f"link_distance must be > 0, got {self.link_distance}")
        _check(self.link_size_ratio >= 1.0, f"link_size_ratio must be >= 1, got {self.link_size_ratio}")
        _check(self.detect_batch >= 1 and self.detect_batch_mb >= 1, "detect_batch and detect_batch_mb must be >= 1")


@dataclass(frozen=True)
class ContentConfig:
    """3D ResNet-50 (pytorchvideo slow_r50) content features."""

    weights: str | None = None  # path/URI of SLOW_8x8_R50.pyth; None = seeded random init
    seed: int = 0  # seed of the random init when no weights are given
    clip_len: int = 16  # report: clips of 16 frames
    size: int = 112  # report: 112x112
    mean: float = 0.45  # Kinetics normalisation (report)
    std: float = 0.225

    def __post_init__(self) -> None:
        _check(self.clip_len >= 1 and self.size >= 32, "clip_len >= 1 and size >= 32 required")


@dataclass(frozen=True)
class StyleConfig:
    """pSp encoder style features."""

    weights: str | None = None  # path/URI of psp_ffhq_encode.pt; None = seeded random init
    config: str = "psp_ir_se50"  # registered encoder configuration (see raydf.models.style)
    level: int = 9  # report: latent level 9 of 18
    seed: int = 0
    mean: float = 0.5  # StyleGAN normalisation (report)
    std: float = 0.5

    def __post_init__(self) -> None:
        _check(0 <= self.level < 18, f"style level must be in [0, 18), got {self.level}")


# Drifting per-frame parameters: (name in the JSON parameters, config field holding its range).
SELF_BLEND_RANGES: tuple[tuple[str, str], ...] = (
    ("brightness", "brightness"),
    ("contrast", "contrast"),
    ("saturation", "saturation"),
    ("rgb_shift", "rgb_shift"),
    ("sharpness", "sharpness"),
    ("scale", "scale"),
    ("translate_x", "translate_x"),
    ("translate_y", "translate_y"),
    ("alpha", "alpha"),
    ("mask_axis_x", "mask_axis_x"),
    ("mask_axis_y", "mask_axis_y"),
    ("mask_offset_y", "mask_offset_y"),
    ("mask_softness", "mask_softness"),
)


@dataclass(frozen=True)
class SelfBlendConfig:
    """Ranges and constants of the self-blend generator.

    Every ``(low, high)`` range bounds a parameter that drifts over the frames of a video
    (see the module docstring); SBI's own ranges are quoted for reference and narrowed so
    that the fake stays subtle. Fractions of the box are of the face box's width ``w`` /
    height ``h`` (MTCNN box, full-resolution pixels).
    """

    # --- source: colour (SBI: RGBShift +-20, HueSaturationValue +-0.3, RandomBrightnessContrast +-0.1)
    brightness: tuple[float, float] = (-8.0, 8.0)  # grey levels added to every channel
    contrast: tuple[float, float] = (0.9, 1.1)  # gain about the face's per-channel mean
    saturation: tuple[float, float] = (0.9, 1.1)  # gain of each pixel's distance from its grey
    rgb_shift: tuple[float, float] = (-8.0, 8.0)  # grey levels, drawn and drifting per channel
    # --- source: frequency (SBI: Downscale 0.25-0.5 or Sharpen alpha 0.2-0.5)
    sharpness: tuple[float, float] = (-0.8, 0.8)  # unsharp amount: -1 = fully blurred, > 0 sharpened
    sharpen_sigma: float = 0.006  # Gaussian sigma of that blur, fraction of the box's long side
    # (about 1.3 px of the 256-px crop that faces.py cuts from 1.2x the long side)
    # --- source: geometry (SBI: scale 0.95..1/0.95, translate x +-3 %, y +-1.5 % of the crop)
    scale: tuple[float, float] = (0.95, 1 / 0.95)  # source scale about the box centre (SBI's)
    translate_x: tuple[float, float] = (-0.03, 0.03)  # source shift, fraction of w (SBI's)
    translate_y: tuple[float, float] = (-0.015, 0.015)  # source shift, fraction of h (SBI's)
    # --- mask (SBI: landmark convex hull, elastic deformation, two Gaussian blurs, ratio {.25,.5,.75,1})
    alpha: tuple[float, float] = (0.5, 1.0)  # blend ratio, the mask's peak value
    mask_axis_x: tuple[float, float] = (0.36, 0.44)  # ellipse semi-axis, fraction of w
    mask_axis_y: tuple[float, float] = (0.36, 0.42)  # ellipse semi-axis, fraction of h
    mask_offset_y: tuple[float, float] = (0.0, 0.03)  # ellipse centre below the box centre, fraction of h
    # (an MTCNN box includes the forehead; the landmark hull SBI uses sits lower)
    mask_softness: tuple[float, float] = (0.015, 0.035)  # mask blur sigma, fraction of min(w, h)
    mask_harmonics: tuple[int, ...] = (2, 3, 4)  # radial harmonics deforming the ellipse (per video)
    mask_deform: float = 0.06  # bound of the summed harmonics, relative radius
    # --- drift over the sampled frames
    drift_amplitude: float = 0.25  # d: each parameter wanders c +- d of its range, c in [d, 1 - d]
    drift_period: tuple[float, float] = (16.0, 64.0)  # sampled frames per cycle of each sinusoid
    # --- where the edit may go
    margin: float = 0.2  # FaceConfig.margin: edits stay in the box grown by margin/2 x long side per side
    min_face_px: float = 8.0  # a box narrower or lower than this is no face: frame left unchanged

    def __post_init__(self) -> None:
        for name, _ in SELF_BLEND_RANGES:
            lo, hi = getattr(self, name)
            _check(lo <= hi, f"{name} must be (low, high) with low <= high, got {(lo, hi)}")
        _check(self.contrast[0] > 0 and self.saturation[0] >= 0, "contrast must be > 0 and saturation >= 0")
        _check(self.sharpness[0] >= -1.0, f"sharpness must be >= -1 (fully blurred), got {self.sharpness}")
        _check(self.sharpen_sigma > 0, f"sharpen_sigma must be > 0, got {self.sharpen_sigma}")
        _check(self.scale[0] > 0, f"scale must be positive, got {self.scale}")
        _check(0.0 <= self.alpha[0] and self.alpha[1] <= 1.0, f"alpha must lie in [0, 1], got {self.alpha}")
        _check(self.mask_axis_x[0] > 0 and self.mask_axis_y[0] > 0, "mask axes must be positive")
        _check(self.mask_softness[0] > 0, f"mask_softness must be positive, got {self.mask_softness}")
        _check(all(k >= 1 for k in self.mask_harmonics), f"mask_harmonics must be >= 1, got {self.mask_harmonics}")
        _check(0.0 <= self.mask_deform < 0.5, f"mask_deform must be in [0, 0.5), got {self.mask_deform}")
        _check(0.0 <= self.drift_amplitude <= 0.5, f"drift_amplitude must be in [0, 0.5], got {self.drift_amplitude}")
        lo, hi = self.drift_period
        _check(0 < lo <= hi, f"drift_period must be 0 < low <= high, got {self.drift_period}")
        _check(0.0 <= self.margin <= 2.0, f"margin must be in [0, 2], got {self.margin}")
        _check(self.min_face_px >= 1.0, f"min_face_px must be >= 1, got {self.min_face_px}")
        # The blurred mask must fade out (3 sigma) before the edge of the allowed region.
        room = 0.5 + self.margin / 2
        reach_x = self.mask_axis_x[1] * (1 + self.mask_deform) + 3 * self.mask_softness[1]
        drop = max(map(abs, self.mask_offset_y))
        reach_y = self.mask_axis_y[1] * (1 + self.mask_deform) + drop + 3 * self.mask_softness[1]
        _check(
            max(reach_x, reach_y) <= room,
            f"the mask reaches {max(reach_x, reach_y):.3f} of the box from its centre, beyond the "
            f"{room:.3f} that margin={self.margin} allows; shrink mask_axis_*, mask_offset_y or mask_softness",
        )

    def max_step(self) -> float:
        """Bound of any parameter's change between consecutive frames, as a fraction of its range.

        ``|u(t+1) - u(t)| <= d * (2 pi f1 + 2 pi f2) / 2 <= 2 pi d / min(drift_period)``
        (the mean-value theorem on each sinusoid).
        """
        return 2.0 * math.pi * self.drift_amplitude / self.drift_period[0]



@dataclass(frozen=True)
class ExtractConfig:
    """The Ray Data extraction job."""

    video: VideoConfig = field(default_factory=VideoConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    layout: str = "auto"  # folders | ffpp | celebdf | dfdc | auto
    ffpp_compression: str = "c23"  # FF++ quality: raw | c23 | c40
    ffpp_methods: tuple[str, ...] = FFPP_METHODS  # FF++ manipulation methods to include
    crop_actors: tuple[int, int] = (1, 1)  # (min, max) CPU face-crop actors
    feature_actors: tuple[int, int] = (1, 1)  # (min, max) feature actors
    cpus_per_crop_actor: float = 1.0
    cpus_per_feature_actor: float = 1.0
    gpus_per_feature_actor: float = 0.0  # 1 on a GPU cluster
    crop_resources: dict[str, float] = field(default_factory=dict)  # custom resources, e.g. {"cpu_node": 0.01}
    feature_resources: dict[str, float] = field(default_factory=dict)
    feature_batch_size: int = 2  # videos per feature-actor batch
    half_precision: bool = True  # fp16 on CUDA (V100 has no bf16); ignored on CPU
    # CPU feature precision: "fp32" (default: the same features on every machine), "bf16" (2x faster
    # where the CPU has native bf16, avx512_bf16 / AMX; 7-68x SLOWER where it is emulated, AVX2 only:
    # benchmarks/RESULTS.md), or "auto" (bf16 only where native, resolved once by the driver).
    cpu_precision: str = "fp32"
    rows_per_file: int = 64  # videos per Parquet part file
    # Pseudo-fakes (issue: generalisation): "self-blend" writes, for each real video, a paired
    # self-blended pseudo-fake row (raydf.pseudofake; Shiohara & Yamasaki, SBI, CVPR 2022).
    pseudo_fakes: str = ""
    self_blend: SelfBlendConfig = field(default_factory=SelfBlendConfig)
    pseudo_seed: int = 0  # seed of the pseudo-fakes (with the video id: raydf.pseudofake.blend_seed)
    # A video whose processing kills its actor this many times becomes an error row (quarantined)
    # instead of being retried forever (a decoder segfault, the OOM killer).
    max_crashes: int = 2
    # The output's lease: a holder that is dead on this host is taken over at once; a silent one
    # (no heartbeat, e.g. on another host) after this many seconds.
    lease_timeout_s: float = 300.0
    feature_threads: int = 0  # torch threads per feature actor; 0 = every core of the node (Ray
    # would pin it to int(num_cpus)); the feature stage dominates, so it takes the idle cores
    crop_threads: int = 1  # torch threads per crop actor (MTCNN)

    def __post_init__(self) -> None:
        _check(self.layout in ("auto", *LAYOUT_NAMES), f"unknown layout {self.layout!r}; known: auto, {', '.join(LAYOUT_NAMES)}")
        for name in ("crop_actors", "feature_actors"):
            lo, hi = getattr(self, name)
            _check(1 <= lo <= hi, f"{name} must be (min, max) with 1 <= min <= max, got {(lo, hi)}")
        _check(self.feature_batch_size >= 1, "feature_batch_size must be >= 1")
        _check(self.cpu_precision in CPU_PRECISIONS, f"cpu_precision must be one of {CPU_PRECISIONS}, got {self.cpu_precision!r}")
        _check(self.rows_per_file >= 1, "rows_per_file must be >= 1")
        _check(self.pseudo_fakes in PSEUDO_FAKES, f"pseudo_fakes must be one of {PSEUDO_FAKES}, got {self.pseudo_fakes!r}")
        _check(self.max_crashes >= 1, "max_crashes must be >= 1")
        _check(self.lease_timeout_s > 0, "lease_timeout_s must be > 0")


@dataclass(frozen=True)
class FusionConfig:
    """Sizes of the fusion classifier (StyleGRU + style attention + transformer)."""

    content_dim: int = 2048  # slow_r50 pooled features
    style_dim: int = 512  # pSp latent width
    gru_hidden: int = 256
    gru_layers: int = 1
    style_flow: bool = False  # feed first differences of style codes (StyleFlow variant)
    d_model: int = 256  # attention / transformer width
    transformer_layers: int = 2
    transformer_heads: int = 4
    ff_dim: int = 512
    fc_hidden: int = 128
    dropout: float = 0.1
    min_valid_fraction: float = 0.5  # videos with fewer valid faces are excluded

    def __post_init__(self) -> None:
        _check(self.d_model % self.transformer_heads == 0, "d_model must be divisible by transformer_heads")
        _check(0.0 <= self.min_valid_fraction <= 1.0, "min_valid_fraction must be in [0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    """The report's training recipe, plus distribution settings."""

    model: FusionConfig = field(default_factory=FusionConfig)
    lr: float = 1e-4
    weight_decay: float = 1e-2  # AdamW
    batch_size: int = 16
    max_epochs: int = 60
    t_0: int = 10  # report: CosineAnnealingWarmRestarts T_0=10
    t_mult: int = 2  # report: the period doubles after each restart
    eta_min_ratio: float = 0.01  # report: eta_min = lr / 100
    patience: int = 12  # report: early stopping patience 12 on validation loss
    mixup_alpha: float = 0.4  # lambda ~ Beta(alpha, alpha)
    mixup_prob: float = 0.7  # report: 70% of batches are mixed up
    balance_classes: bool = True  # pos_weight = n_real / n_fake (Celeb-DF is ~1:6)
    seed: int = 42
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # leave Ray Data a CPU on 2 cores
    # Materialise the train/val feature datasets in Ray's object store once, so an epoch does not
    # re-read and re-convert the Parquet (measured: 0.32 -> 0.95 of in-memory steps/s, benchmarks/ingest.py).
    # Features are small (~82 KB per video at T=32); turn off for stores larger than the object store.
    cache_features: bool = True
    max_failures: int = 2
    methods: tuple[str, ...] = ()  # train on fakes of these manipulation methods only (empty = all)
    # The fakes training sees: "dataset" (the store's own fakes, as the report), "pseudo" (self-blended
    # pseudo-fakes of the real videos only; SBI, CVPR 2022), or "both". Validation and test use the
    # dataset's fakes where there are any.
    fakes: str = "dataset"
    aggregation: str = "max"  # a video's score from its face tracks: "max" (DFDC's rule) or "mean"
    val_fraction: float = 0.2  # used only when the manifest has no val split
    test_fraction: float = 0.2  # used only when the manifest has no test split

    def __post_init__(self) -> None:
        _check(self.lr > 0 and self.batch_size >= 1 and self.max_epochs >= 1, "lr, batch_size, max_epochs must be positive")
        _check(self.t_0 >= 1 and self.t_mult >= 1, "t_0 and t_mult must be >= 1")
        _check(0.0 <= self.mixup_prob <= 1.0 and self.mixup_alpha >= 0.0, "mixup_prob in [0,1], mixup_alpha >= 0")
        _check(self.num_workers >= 1, "num_workers must be >= 1")
        _check(self.fakes in ("dataset", "pseudo", "both"), f"fakes must be dataset, pseudo or both, got {self.fakes!r}")
        _check(self.aggregation in ("max", "mean"), f"aggregation must be max or mean, got {self.aggregation!r}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated field type (nested dataclasses, tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}: expected a list, got {value!r}")
            return tuple(_coerce(args[0], v, where) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        try:
            if tp is bool and isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return tp(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot read {value!r} as {tp.__name__}") from exc
    return value


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_config(cls: type[T], source: str | Path | dict[str, Any] | None = None, **overrides: Any) -> T:
    """Build a frozen config of type ``cls`` from a YAML file, a dict, or defaults.

    Args:
        cls: the dataclass to build (e.g. :class:`ExtractConfig`).
        source: a YAML path, a mapping, or None for defaults.
        **overrides: top-level keys that win over ``source`` (None values are ignored).

    Raises:
        ConfigError: unknown keys, wrong types or out-of-range values.
    """
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a YAML mapping")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _from_dict(cls, data, cls.__name__)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


# ---- the store's identity: what extraction writes and training, detect and serve read ---------------
@dataclass(frozen=True)
class WeightsOrigin:
    """One extractor's provenance string, parsed: ``sha256:<hex>`` or ``random:<seed>:<config>``."""

    kind: str  # "sha256" | "random"
    seed: int | None = None  # random init only
    config: str | None = None  # random init only
    digest: str | None = None  # sha256 only


def parse_provenance(provenance: str) -> WeightsOrigin:
    """The one parser of provenance strings (``sha256:<hex>`` | ``random:<seed>:<config>``).

    Raises:
        ConfigError: any other form.
    """
    kind, _, rest = str(provenance).partition(":")
    if kind == "sha256" and rest:
        return WeightsOrigin(kind, digest=rest)
    if kind == "random":
        seed, _, config = rest.partition(":")
        try:
            return WeightsOrigin(kind, seed=int(seed), config=config)
        except ValueError:
            pass
    raise ConfigError(f"unknown weights provenance {provenance!r} (expected sha256:<hex> or random:<seed>:<config>)")


@dataclass(frozen=True)
class Provenance:
    """Where the weights of both extractors came from."""

    content: str  # sha256:<hex> of the weights file, or random:<seed>:<config>
    style: str

    def __post_init__(self) -> None:
        parse_provenance(self.content)
        parse_provenance(self.style)

    @property
    def pretrained(self) -> bool:
        """Both extractors have real (hashed) weights."""
        return parse_provenance(self.content).kind == "sha256" and parse_provenance(self.style).kind == "sha256"

    def random_parts(self) -> tuple[str, ...]:
        """Names of the extractors that are a seeded random init."""
        return tuple(w for w in ("content", "style") if parse_provenance(getattr(self, w)).kind == "random")

    def to_dict(self) -> dict[str, str]:
        return {"content": self.content, "style": self.style}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Provenance:
        return cls(content=d["content"], style=d["style"])


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that changes the numbers of extracted features (the feature identity).

    Weight files enter through :class:`Provenance` (their sha256), not their paths; actor
    counts and resources do not enter at all. Two runs may write into one store only when
    their feature configs and provenance are equal.
    """

    num_frames: int  # T
    faces: FaceConfig
    content: ContentConfig  # weights=None; a seed only matters for a random init
    style: StyleConfig
    precision: str  # "fp32" | "bf16" | "fp16", as resolved for the feature actors
    decoder: str  # the video decoders that may produce the pixels (library versions)
    pseudo_fakes: str = ""  # "" or "self-blend"
    self_blend: SelfBlendConfig | None = None  # the self-blend parameters and seed, when on
    pseudo_seed: int | None = None

    def __post_init__(self) -> None:
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def clip_len(self) -> int:
        return self.content.clip_len

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        return load_config(cls, d)


STORE_SCHEMA = "raydf.features/2"  # version of the store config below


@dataclass(frozen=True)
class StoreConfig:
    """What a feature store records once (``_raydf_extract.json``) and a model bundle carries."""

    features: FeatureConfig
    provenance: Provenance
    schema: str = STORE_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "feature_config": self.features.to_dict(), "provenance": self.provenance.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreConfig:
        """Raises ConfigError for a store written by another raydf version or not by raydf."""
        if not isinstance(d, dict) or d.get("schema") != STORE_SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"feature store config of schema {got!r}; this raydf reads {STORE_SCHEMA!r} (re-extract)")
        return cls(features=FeatureConfig.from_dict(d["feature_config"]), provenance=Provenance.from_dict(d["provenance"]))

    def diff(self, other: StoreConfig) -> list[str]:
        """``key: stored X, now Y`` for every leaf that differs (``self`` is the stored one)."""
        return dict_diff(self.to_dict(), other.to_dict())


def dict_diff(have: Any, want: Any, prefix: str = "") -> list[str]:
    """``a.b: stored X, now Y`` for every leaf of two nested dicts that differs."""
    if isinstance(have, dict) and isinstance(want, dict):
        out: list[str] = []
        for k in sorted(set(have) | set(want)):
            out += dict_diff(have.get(k), want.get(k), f"{prefix}{k}.")
        return out
    if have != want:
        return [f"{prefix.rstrip('.')}: stored {have!r}, now {want!r}"]
    return []
