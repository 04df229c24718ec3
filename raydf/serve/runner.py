"""``raydf serve``: the detection service on the local Ray (or a running cluster), until stopped.

On a cluster, prefer the Serve config (``serve deploy infra/serve.yaml``): it names the same
application builder with the cluster's resources.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from raydf.serve.config import ServeConfig

log = logging.getLogger(__name__)

__all__ = ["ServiceHandle", "start", "serve_forever", "fit_to_cluster"]


def fit_to_cluster(cfg: ServeConfig, cpus: float) -> ServeConfig:
    """Scale the deployments' logical CPUs down so one replica of each fits ``cpus`` (a small laptop).

    Only Ray's bookkeeping changes: the replicas keep their torch thread counts.
    """
    want = cfg.crop.num_cpus + cfg.features.num_cpus + cfg.ingress.num_cpus
    if want <= cpus or want == 0:
        return cfg
    f = cpus / want
    log.warning("one replica of each deployment asks for %.2f CPUs, the cluster has %.2f: scaling the requests by %.2f", want, cpus, f)

    def scaled(r: Any) -> Any:
        return replace(r, num_cpus=round(r.num_cpus * f, 3))

    return replace(cfg, crop=scaled(cfg.crop), features=scaled(cfg.features), ingress=scaled(cfg.ingress))


class ServiceHandle:
    """A running service: its URL, and how to stop it (and the local Ray it started)."""

    def __init__(self, url: str, *, owns_cluster: bool, connected: bool, app_name: str) -> None:
        self.url, self.owns_cluster, self.connected, self.app_name = url, owns_cluster, connected, app_name

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            if not self.owns_cluster:  # a shared cluster: take only our application down
                serve.delete(self.app_name)
        finally:
            # The local Ray this process started goes down with every Serve actor in it: no graceful
            # drain of the controller (serve.shutdown() waits up to 30 s for it on a busy machine).
            if self.connected:
                ray.shutdown()


def start(cfg: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          ray_kwargs: dict[str, Any] | None = None) -> ServiceHandle:  # fmt: skip
    """Start Serve with the detection application and wait until its replicas are up.

    Args:
        cfg: the service's configuration.
        host, port: where Serve's HTTP proxy listens (loopback by default).
        address: a running Ray cluster to join (``auto``, ``ray://...``); None starts a local Ray.
        ray_kwargs: more ``ray.init`` arguments.

    Returns:
        A handle whose ``stop()`` shuts the service (and the local Ray it started) down.
    """
    import ray
    from ray import serve

    from raydf.serve.app import APP_NAME, build_app

    started = not ray.is_initialized()
    if started:
        kwargs = {"include_dashboard": False, **(ray_kwargs or {})}
        if address:
            kwargs["address"] = address
        ray.init(**kwargs)
    try:
        if not address:
            cfg = fit_to_cluster(cfg, float(ray.cluster_resources().get("CPU", 0.0)))
        serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
    except BaseException:
        if started:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        raise
    shown = f"[{host}]" if ":" in host else host
    return ServiceHandle(f"http://{shown}:{port}", owns_cluster=started and not address, connected=started, app_name=APP_NAME)


def serve_forever(handle: ServiceHandle) -> None:
    """Block until interrupted (Ctrl-C, or SIGTERM turned into SystemExit), then stop the service."""
    try:
        while True:
            time.sleep(3600)
    finally:
        handle.stop()
