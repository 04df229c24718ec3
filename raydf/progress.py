"""Live progress of distributed work on the driver's terminal.

Ray Data actors and the Ray Train controller run in other processes, so they cannot draw
on the driver's terminal. They count into a :class:`ProgressBoard` (a tiny CPU-free Ray
actor), and the driver draws one tqdm bar per stage from its snapshots (:func:`watch`):
videos cropped, videos with features, training epochs with the current validation loss.
Bars are drawn only on a terminal (tqdm ``disable=None``); piped output stays clean and the
commands print a summary instead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ray.train import UserCallback

from raydf import schema as S

log = logging.getLogger(__name__)

__all__ = ["ProgressBoard", "Bar", "watch", "EpochProgress", "CROPPED", "FEATURED", "EPOCHS"]

POLL_S = 0.5  # how often the driver reads the board
# Board counters.
CROPPED, FEATURED, EPOCHS = "videos_cropped", "videos_featured", "epochs"


class ProgressBoard:
    """Counters and values that remote stages report to (run as a Ray actor)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._values: dict[str, Any] = {}

    def add(self, key: str, n: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + int(n)

    def set(self, key: str, value: Any) -> None:
        self._values[key] = value

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {"counts": dict(self._counts), "values": dict(self._values)}

    @classmethod
    def start(cls):  # noqa: ANN206 - ray.actor.ActorHandle
        """A CPU-free board actor of this job (it ends with the driver)."""
        import ray

        return ray.remote(num_cpus=0)(cls).remote()


@dataclass(frozen=True)
class Bar:
    """One bar: the board counter it follows, its total, and values shown beside it."""

    key: str
    desc: str
    unit: str
    total: int | None
    postfix: tuple[str, ...] = ()  # board values or counters shown as key=value


@contextlib.contextmanager
def watch(board: Any, bars: Sequence[Bar]) -> Iterator[None]:
    """Draw ``bars`` from ``board`` while the block runs (a daemon thread polls every 0.5 s).

    One bar redraws in place (``\r``); several bars move the cursor between lines and print a
    newline per update, so a command shows one bar at a time.
    """
    from tqdm.auto import tqdm

    from raydf.console import terminal

    out = terminal()
    drawn = [tqdm(total=b.total, desc=b.desc, unit=b.unit, disable=None, leave=True, dynamic_ncols=True, file=out) for b in bars]
    if all(d.disable for d in drawn):  # not a terminal: nothing to draw, no polling
        yield
        return
    stop = threading.Event()

    def update() -> None:
        import ray

        snap = ray.get(board.snapshot.remote(), timeout=30)
        for spec, bar in zip(bars, drawn):
            bar.n = snap["counts"].get(spec.key, 0)
            known = {**snap["counts"], **snap["values"]}
            post = {k: known[k] for k in spec.postfix if k in known}
            if post:
                bar.set_postfix({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in post.items()}, refresh=False)
            bar.refresh()

    def loop() -> None:
        while not stop.wait(POLL_S):
            try:
                update()
            except Exception as exc:  # a lost board ends the bars, never the run
                log.debug("progress: %s", exc)
                return

    thread = threading.Thread(target=loop, name="raydf-progress", daemon=True)
    thread.start()
    try:
        yield
        with contextlib.suppress(Exception):
            update()
    finally:
        stop.set()
        thread.join(timeout=5)
        for bar in drawn:
            bar.close()


class EpochProgress(UserCallback):
    """A Ray Train callback (it runs in the Train controller) that reports each epoch to a board."""

    def __init__(self, board: Any) -> None:
        self.board = board

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:  # noqa: ARG002
        if not metrics:
            return
        m = metrics[0]
        self.board.add.remote(EPOCHS, 1)
        for k in (S.VAL_LOSS, S.TRAIN_LOSS, S.VAL_AUC):
            if k in m:
                self.board.set.remote(k, float(m[k]))
