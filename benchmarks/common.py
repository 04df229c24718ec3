"""What every suite shares: timers, the matmul peak, FLOP counting, ratios and their report.

Rules every suite follows (the machine is shared and its load varies):

* a ratio is made of two measurements taken in the same run, interleaved rep by rep,
  and the reported value is the median over reps of the per-rep ratio;
* "CPU-seconds" are process CPU time (``time.process_time``, all threads of this
  process), measured with one torch thread unless a suite says otherwise;
* the matmul peak is a 2048 x 2048 fp32 ``torch.mm`` at the thread count of the
  measurement it is compared with, measured right before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Ratio",
    "SuiteResult",
    "Timing",
    "timed",
    "repeat",
    "torch_threads",
    "local_ray",
    "matmul_peak",
    "count_flops",
    "median",
    "environment",
]


@dataclass
class Ratio:
    """One benchmark ratio and its target (``op`` is ``">="`` or ``"<="``; no target: informational)."""

    name: str
    value: float
    target: float | None = None
    op: str = ">="
    detail: str = ""

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.value != self.value:  # NaN never passes
            return None if self.target is None else False
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class SuiteResult:
    """What a suite measured: headline ratios, supporting tables (rows of dicts) and notes."""

    suite: str
    ratios: list[Ratio] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    def ratio(self, name: str, value: float, target: float | None = None, op: str = ">=", detail: str = "") -> Ratio:
        r = Ratio(name, float(value), target, op, detail)
        self.ratios.append(r)
        return r

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "ratios": [r.to_dict() for r in self.ratios],
            "tables": self.tables,
            "notes": self.notes,
            "config": self.config,
            "wall_s": self.wall_s,
        }


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds
    cpu: float  # process CPU seconds (all threads)


def timed(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    """Run ``fn`` once: its wall and process-CPU seconds, and its result."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return Timing(time.perf_counter() - w0, time.process_time() - c0), out


def repeat(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[Timing]]:
    """Interleave several measurements: warm each up, then ``reps`` rounds of one call each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[Timing]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            out[k].append(timed(fn)[0])
    return out


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch intra-op threads set to ``n`` (0 = every core this process may use) for a block."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n or cores())
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cores() -> int:
    return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """A local Ray on every core for a block (the running one, if the caller started Ray already)."""
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


_PEAK_N = 2048


def matmul_peak(*, size: int = _PEAK_N, calls: int = 3) -> Timing:
    """Time ``calls`` fp32 ``size x size`` matmuls at the current torch thread count; GFLOP/s = flops / wall."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # first call allocates / JITs the kernel

    def run() -> None:
        for _ in range(calls):
            torch.mm(a, b)

    return timed(run)[0]


def matmul_flops(*, size: int = _PEAK_N, calls: int = 3) -> float:
    return 2.0 * size**3 * calls


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs executed by ``fn`` (``torch.utils.flop_counter.FlopCounterMode``: convs, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def environment() -> dict[str, Any]:
    """Machine and versions, for RESULTS.md."""
    import importlib.metadata as md

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("torch", "torchvision", "ray", "opencv-python", "facenet-pytorch", "pytorchvideo", "numpy", "pyarrow", "av"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    mem_gb = None
    with contextlib.suppress(OSError, ValueError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": cores(),
        "memory_gib": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "loadavg_start": os.getloadavg(),
    }


def dump_json(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)
