"""Crash accounting and fault injection for the extraction stages.

:class:`CrashLedger` is a small Ray actor that the extraction driver starts for a run. A
stage tells it when it begins and ends work on a video; a begin that was never ended means
the process died holding that video (a decoder segfault, the OOM killer, ``os._exit``).
Ray Data restarts dead actors and retries their task forever by default, so a video that
kills its worker ``max_crashes`` times is *quarantined*: the stage writes an error row for
it instead of processing it again.

:class:`FaultPlan` is the test seam that proves it: tests hand ``run_extraction(faults=...)``
a plan naming videos for which a stage raises, fails its whole batch, or hard-exits its
process. It is empty in normal runs and costs one set lookup per video.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["FaultPlan", "InjectedFault", "CrashLedger", "LocalLedger"]


class InjectedFault(RuntimeError):
    """An exception raised on purpose by a :class:`FaultPlan`."""


@dataclass(frozen=True)
class FaultPlan:
    """Videos (by ``video_id``) for which a stage fails on purpose (tests only)."""

    decode_error: tuple[str, ...] = ()  # the crop stage raises an arbitrary exception while decoding
    feature_batch_error: tuple[str, ...] = ()  # a feature batch holding the video fails as a whole
    crop_exit: tuple[str, ...] = ()  # the crop actor's process exits hard (os._exit) holding the video

    def decode(self, video_id: str) -> None:
        if video_id in self.decode_error:
            raise InjectedFault(f"injected decoder failure on {video_id}")

    def feature_batch(self, video_ids: list[str]) -> None:
        bad = [v for v in video_ids if v in self.feature_batch_error]
        if bad:
            raise InjectedFault(f"injected failure of a feature batch of {len(video_ids)} video(s) holding {bad[0]}")

    def crop(self, video_id: str) -> None:
        if video_id in self.crop_exit:
            log.error("injected hard exit of the crop actor on %s", video_id)
            os._exit(70)


class LocalLedger:
    """In-process crash ledger (one process: a crash ends everything, so it only counts)."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def begin(self, key: str) -> int:
        """Record that work on ``key`` starts; returns how many earlier starts never ended."""
        prior = self._open[key]
        self._open[key] += 1
        return prior

    def end(self, key: str) -> None:
        self._open.pop(key, None)


class CrashLedger(LocalLedger):
    """The same, as a Ray actor shared by every stage actor of one extraction run."""

    @classmethod
    def start(cls, name: str):  # noqa: ANN206 - ray.actor.ActorHandle
        """A named, CPU-free actor of this job (it ends with the driver)."""
        import ray

        return ray.remote(num_cpus=0, max_restarts=-1)(cls).options(name=name, get_if_exists=True).remote()
