"""Frozen configuration dataclasses, loadable from YAML.

Every constant of the report lives here as a default with a one-line source
note, so code paths carry no magic numbers. A config is built with
:func:`load_config` (YAML file or dict, unknown keys rejected) and never
mutated; derive a variant with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "VideoConfig",
    "FaceConfig",
    "ContentConfig",
    "StyleConfig",
    "ExtractConfig",
    "FusionConfig",
    "TrainConfig",
    "load_config",
    "to_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


@dataclass(frozen=True)
class VideoConfig:
    """Frame sampling."""

    num_frames: int = 32  # report: T=32 for FaceForensics++ (64 for Celeb-DF)
    backend: str = "auto"  # "opencv", "pyav" or "auto" (OpenCV, PyAV fallback)

    def __post_init__(self) -> None:
        _check(self.num_frames >= 1, f"num_frames must be >= 1, got {self.num_frames}")
        _check(self.backend in ("auto", "opencv", "pyav"), f"unknown video backend {self.backend!r}")


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


@dataclass(frozen=True)
class ExtractConfig:
    """The Ray Data extraction job."""

    video: VideoConfig = field(default_factory=VideoConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    layout: str = "auto"  # folders | ffpp | celebdf | dfdc | auto
    ffpp_compression: str = "c23"  # FF++ quality: raw | c23 | c40
    ffpp_methods: tuple[str, ...] = (
        "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection",
    )  # FF++ manipulation methods to include
    crop_actors: tuple[int, int] = (1, 1)  # (min, max) CPU face-crop actors
    feature_actors: tuple[int, int] = (1, 1)  # (min, max) feature actors
    cpus_per_crop_actor: float = 1.0
    cpus_per_feature_actor: float = 1.0
    gpus_per_feature_actor: float = 0.0  # 1 on a GPU cluster
    crop_resources: dict[str, float] = field(default_factory=dict)  # custom resources, e.g. {"cpu_node": 0.01}
    feature_resources: dict[str, float] = field(default_factory=dict)
    feature_batch_size: int = 2  # videos per feature-actor batch
    half_precision: bool = True  # fp16 on CUDA (V100 has no bf16); ignored on CPU
    # CPU feature precision: "fp32", or "bf16" on CPUs with native bf16 (avx512_bf16 / AMX): measured
    # 2x faster (benchmarks/RESULTS.md), features within the tolerance tested in tests/test_benchmarks.py
    cpu_precision: str = "fp32"
    rows_per_file: int = 64  # videos per Parquet part file
    feature_threads: int = 0  # torch threads per feature actor; 0 = every core of the node (Ray
    # would pin it to int(num_cpus)); the feature stage dominates, so it takes the idle cores
    crop_threads: int = 1  # torch threads per crop actor (MTCNN)

    def __post_init__(self) -> None:
        _check(self.layout in ("auto", "folders", "ffpp", "celebdf", "dfdc"), f"unknown layout {self.layout!r}")
        for name in ("crop_actors", "feature_actors"):
            lo, hi = getattr(self, name)
            _check(1 <= lo <= hi, f"{name} must be (min, max) with 1 <= min <= max, got {(lo, hi)}")
        _check(self.feature_batch_size >= 1, "feature_batch_size must be >= 1")
        _check(self.cpu_precision in ("fp32", "bf16"), f"cpu_precision must be fp32 or bf16, got {self.cpu_precision!r}")
        _check(self.rows_per_file >= 1, "rows_per_file must be >= 1")


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
    val_fraction: float = 0.2  # used only when the manifest has no val split
    test_fraction: float = 0.2  # used only when the manifest has no test split

    def __post_init__(self) -> None:
        _check(self.lr > 0 and self.batch_size >= 1 and self.max_epochs >= 1, "lr, batch_size, max_epochs must be positive")
        _check(self.t_0 >= 1 and self.t_mult >= 1, "t_0 and t_mult must be >= 1")
        _check(0.0 <= self.mixup_prob <= 1.0 and self.mixup_alpha >= 0.0, "mixup_prob in [0,1], mixup_alpha >= 0")
        _check(self.num_workers >= 1, "num_workers must be >= 1")


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
