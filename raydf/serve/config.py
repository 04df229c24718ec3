"""The detection service's configuration: one frozen dataclass, from flags or a Serve config's ``args``.

``raydf serve`` builds a :class:`ServeConfig` from its flags; a Serve config file
(``infra/serve.yaml``) passes the same keys as the application's ``args``
(:func:`raydf.serve.app.app_builder` reads them with :func:`load_config`, unknown keys refused).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from raydf.config import ConfigError, _check, load_config, to_dict

__all__ = ["ReplicaConfig", "BatchConfig", "StreamConfig", "ServeConfig", "ConfigError", "serve_config"]

DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # an upload's largest size: a 10-minute 1080p H.264 clip at ~3 Mbit/s
# A request's JSON body ({"uri": ...}) is small; anything larger is not one.
MAX_JSON_BYTES = 64 * 1024
# A streamed frame (one JPEG) is small; 8 MiB holds a 4K JPEG at high quality.
MAX_FRAME_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ReplicaConfig:
    """Resources and autoscaling of one deployment (Ray Serve ``ray_actor_options`` + ``autoscaling_config``)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0  # 1 on a GPU node: the feature deployment then computes on CUDA
    resources: dict[str, float] = field(default_factory=dict)  # custom resources (e.g. {"raydf_gpu": 0.01})
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0  # Serve's autoscaling target per replica
    max_ongoing_requests: int = 8  # requests a replica takes at once (>= the batch size for the feature deployment)
    threads: int = 0  # torch intra-op threads in the replica; 0 = every core of its node (as ExtractConfig.feature_threads)

    def __post_init__(self) -> None:
        _check(self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus and num_gpus must be >= 0")
        _check(0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1,
               f"need 0 <= min_replicas <= max_replicas, max_replicas >= 1; got {self.min_replicas}, {self.max_replicas}")  # fmt: skip
        _check(self.target_ongoing_requests > 0, "target_ongoing_requests must be > 0")
        _check(self.max_ongoing_requests >= 1, "max_ongoing_requests must be >= 1")
        _check(self.threads >= 0, "threads must be >= 0")

    @property
    def torch_threads(self) -> int:
        """Threads in the replica (read where it runs: 0 means that node's cores)."""
        return self.threads or len(os.sched_getaffinity(0))

    def actor_options(self) -> dict[str, Any]:
        """``ray_actor_options`` of the deployment."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts

    def autoscaling(self) -> dict[str, Any]:
        """``autoscaling_config`` of the deployment."""
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": max(self.min_replicas, 1),
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }


@dataclass(frozen=True)
class BatchConfig:
    """``@serve.batch`` of the feature deployment: crop rows of several requests through the extractors at once."""

    max_batch_size: int = 4  # requests per batch (a V100 takes 16+; 2 cores gain little past 4)
    batch_wait_timeout_s: float = 0.05  # how long a batch waits to fill (latency traded for throughput)

    def __post_init__(self) -> None:
        _check(self.max_batch_size >= 1, "max_batch_size must be >= 1")
        _check(self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s must be >= 0")


@dataclass(frozen=True)
class StreamConfig:
    """Live scoring over a WebSocket: a rolling window of the model's T frames, rescored every ``every`` frames."""

    every: int = 8  # k: frames between two updates (a client may ask for another k)
    max_frame_bytes: int = MAX_FRAME_BYTES
    fps: float = 25.0  # frame times assumed when a client sends none

    def __post_init__(self) -> None:
        _check(self.every >= 1, "stream every must be >= 1")
        _check(self.max_frame_bytes >= 1024, "max_frame_bytes must be >= 1024")
        _check(self.fps > 0, "fps must be > 0")


def _crop_defaults() -> ReplicaConfig:
    # One MTCNN thread, as a crop actor of the pipeline (ExtractConfig.crop_threads).
    return ReplicaConfig(num_cpus=1.0, target_ongoing_requests=2.0, max_ongoing_requests=4, threads=1)


def _feature_defaults() -> ReplicaConfig:
    # Every core: the feature stage dominates, so it takes the cores the crop replica leaves idle
    # (as the pipeline's feature actors, ExtractConfig.feature_threads = 0).
    return ReplicaConfig(num_cpus=1.0, target_ongoing_requests=4.0, max_ongoing_requests=16, threads=0)


def _ingress_defaults() -> ReplicaConfig:
    # The ingress only parses requests and awaits the other two (no torch): it reserves no CPU
    # locally; the cluster config gives it a share of a CPU node.
    return ReplicaConfig(num_cpus=0.0, target_ongoing_requests=32.0, max_ongoing_requests=256)


@dataclass(frozen=True)
class ServeConfig:
    """Everything the service's deployments need (the ``args`` of ``infra/serve.yaml``)."""

    model: str | None = None  # bundle path, runs:/..., models:/..., or None: the newest trained model
    tracking_uri: str | None = None
    style_weights: str | None = None
    content_weights: str | None = None
    token_file: str | None = None  # a file holding the bearer token; None: no token asked
    allow_uri_prefixes: tuple[str, ...] = ()  # {"uri": ...} requests are refused unless under one of these
    max_bytes: int = DEFAULT_MAX_BYTES  # largest upload (or object behind a uri), bytes
    explain: bool = False  # explanations unless a request says otherwise (slower)
    crop: ReplicaConfig = field(default_factory=_crop_defaults)
    features: ReplicaConfig = field(default_factory=_feature_defaults)
    ingress: ReplicaConfig = field(default_factory=_ingress_defaults)
    batch: BatchConfig = field(default_factory=BatchConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    model_retry_s: float = 2.0  # with no model yet, look again at most this often (503 meanwhile)

    def __post_init__(self) -> None:
        _check(self.max_bytes >= 1, f"max_bytes must be >= 1, got {self.max_bytes}")
        _check(self.model_retry_s >= 0, "model_retry_s must be >= 0")
        for p in self.allow_uri_prefixes:
            _check("://" in p and not p.endswith("://"), f"allow_uri_prefixes: {p!r} must be a URI prefix with a scheme and a location, e.g. s3://bucket/videos/")
        _check(self.features.max_ongoing_requests >= self.batch.max_batch_size,
               "features.max_ongoing_requests must be >= batch.max_batch_size (a replica could never fill a batch)")  # fmt: skip

    def to_args(self) -> dict[str, Any]:
        """The config as a Serve application's ``args`` (plain YAML/JSON values)."""
        return to_dict(self)


def serve_config(source: str | dict[str, Any] | None = None, **overrides: Any) -> ServeConfig:
    """A :class:`ServeConfig` from a YAML file, a dict (a Serve config's ``args``) or defaults.

    Raises:
        ConfigError: unknown keys, wrong types or out-of-range values.
    """
    return load_config(ServeConfig, source, **overrides)
