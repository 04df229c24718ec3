"""A writer lease on a feature store: one live run per output, with epochs that fence old writers.

Layout (inside the output, ignored by Parquet readers because of the leading ``_``)::

    _raydf_lease/epoch-000000000007.json   one file per acquisition; the highest epoch is the lease

Every acquisition *creates* the next epoch's file with create-if-absent semantics, so of two
contenders for the same epoch exactly one succeeds:

- local filesystems: the record is written to a temp file and hard-linked to its name
  (``link(2)`` fails with ``EEXIST`` like ``O_EXCL``, and the file appears whole);
- S3: a conditional ``PutObject`` with ``If-None-Match: *`` (s3fs ``pipe_file(mode="create")``;
  S3 answers ``412 PreconditionFailed``, which s3fs raises as :class:`FileExistsError`).
  moto 5.2 implements the condition, so the tests exercise the same code path;
- other fsspec filesystems: ``pipe_file(mode="create")``, which is atomic only where the
  filesystem makes it so (a warning is logged).

Nothing else is ever conditional: only the holder writes its own epoch file (heartbeats,
release), and a newer epoch is a new file. The holder of the output is the record in the
highest epoch file, unless that record says ``released``. A run may take the lease when

- the record is released (the last run ended cleanly), or
- the holder is dead: same host, same boot, same PID namespace, and its PID is gone (or now
  names a process started at another time) -- taken over at once, so a rerun right after a
  kill proceeds; or
- the holder is stale: its heartbeat is older than ``stale_after_s`` (wall clocks of the
  hosts are assumed to agree to well within that timeout, as NTP gives).

Otherwise :func:`acquire` raises :class:`LeaseHeld` naming the holder (host, PID, since when).
A background thread rewrites the holder's record every ``heartbeat_s`` and notices when a
newer epoch superseded it; :meth:`Lease.check` raises :class:`LeaseLost` from then on, and the
store refuses to compact or rewrite under a lost lease. Epochs only grow: the newest epoch
file is never deleted (older ones are pruned), and a store whose lease folder was removed
starts above the highest epoch found in its part names (``min_epoch``).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "LEASE_DIR",
    "DEFAULT_STALE_AFTER_S",
    "LeaseRecord",
    "LeaseHeld",
    "LeaseLost",
    "Lease",
    "acquire",
    "current_record",
    "latest_epoch",
    "record_ended",
    "holder_state",
    "epoch_records",
]

LEASE_DIR = "_raydf_lease"
DEFAULT_STALE_AFTER_S = 300.0  # a holder silent this long is taken over (its heartbeat beats every tenth of it)
_KEEP_EPOCH_FILES = 8  # older epoch files are pruned on acquisition (the newest is never deleted)
_EPOCH_DIGITS = 12


class LeaseHeld(RuntimeError):
    """Another live run holds the output.

    Attributes:
        holder: the holder's :class:`LeaseRecord`.
    """

    def __init__(self, uri: str, holder: LeaseRecord, stale_after_s: float) -> None:
        self.holder = holder
        age = max(0.0, time.time() - holder.heartbeat)
        super().__init__(
            f"{uri} is being written by another run: {holder.describe()}; last heartbeat {age:.0f} s ago. "
            f"Wait for it to finish, stop it, or write to another output (a dead holder on this host is "
            f"taken over at once, a silent one after {stale_after_s:.0f} s)."
        )


class LeaseLost(RuntimeError):
    """This run's lease was taken over by a newer epoch; it must stop writing."""


@dataclass(frozen=True)
class LeaseRecord:
    """The content of one epoch file."""

    epoch: int
    host: str  # socket.gethostname()
    pid: int
    boot_id: str  # /proc/sys/kernel/random/boot_id ("" where unknown)
    pid_ns: str  # the PID namespace (readlink /proc/self/ns/pid; "" where unknown)
    pid_started: float | None  # process start time (psutil), guards against PID reuse
    since: float  # unix seconds the epoch was acquired
    heartbeat: float  # unix seconds of the last heartbeat
    token: str  # random, tells two acquisitions of one process apart
    released: bool = False

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.since))
        return f"host {self.host}, PID {self.pid}, epoch {self.epoch}, since {started}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseRecord:
        d = json.loads(data.decode())
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


# ---- who we are -------------------------------------------------------------------------------------
def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_ns(pid: int | str = "self") -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def _process_started(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # psutil missing, or no such process
        return None


def _pid_alive(pid: int, started: float | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if started is not None:
        now_started = _process_started(pid)
        if now_started is not None and abs(now_started - started) > 1.0:
            return False  # the PID was reused by a later process
    return True


def _new_record(epoch: int) -> LeaseRecord:
    now = time.time()
    pid = os.getpid()
    return LeaseRecord(
        epoch=epoch,
        host=socket.gethostname(),
        pid=pid,
        boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
        pid_ns=_pid_ns(),
        pid_started=_process_started(pid),
        since=now,
        heartbeat=now,
        token=uuid.uuid4().hex,
    )


def holder_state(record: LeaseRecord) -> str:
    """``"ended"`` (released, or dead on this host), ``"alive"`` (a live process on this host) or
    ``"unknown"`` (another host or container: only the heartbeat's age can tell)."""
    if record.released:
        return "ended"
    host, boot = socket.gethostname(), _read_text("/proc/sys/kernel/random/boot_id")
    if record.host != host:
        return "unknown"
    if record.boot_id and record.boot_id != boot:
        return "ended"  # this host rebooted since: every process of that boot is gone
    if record.boot_id != boot or record.pid_ns != _pid_ns():
        return "unknown"  # another container on this host
    return "alive" if _pid_alive(record.pid, record.pid_started) else "ended"


def record_ended(record: LeaseRecord) -> bool:
    """True when the record's run is known to be over: released, or dead on this host."""
    return holder_state(record) == "ended"


# ---- the lease folder on any filesystem ----------------------------------------------------------------
def _epoch_name(epoch: int) -> str:
    return f"epoch-{epoch:0{_EPOCH_DIGITS}d}.json"


def _parse_epoch(name: str) -> int | None:
    base = posixpath.basename(name)
    if base.startswith("epoch-") and base.endswith(".json"):
        digits = base[len("epoch-") : -len(".json")]
        if digits.isdigit():
            return int(digits)
    return None


def _is_local(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _is_s3(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "s3" in protocols or "s3a" in protocols


class _Folder:
    """The lease folder: list epochs, read, create-if-absent, overwrite own record."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.dir = posixpath.join(root, LEASE_DIR)
        self.local = _is_local(fs)
        if not self.local and not _is_s3(fs):
            log.warning("lease on %s: create-if-absent is atomic only if this filesystem makes pipe_file(mode='create') so", type(fs).__name__)

    def path(self, epoch: int) -> str:
        return posixpath.join(self.dir, _epoch_name(epoch))

    def epochs(self) -> list[int]:
        self.fs.invalidate_cache(self.dir)  # s3fs caches listings; other processes write here
        try:
            names = self.fs.ls(self.dir, detail=False)
        except FileNotFoundError:
            return []
        return sorted(e for e in (_parse_epoch(n) for n in names) if e is not None)

    def read(self, epoch: int) -> LeaseRecord | None:
        try:
            return LeaseRecord.from_json(self.fs.cat_file(self.path(epoch)))
        except FileNotFoundError:
            return None

    def create(self, record: LeaseRecord) -> bool:
        """Create the record's epoch file unless it exists; True if this call created it."""
        target = self.path(record.epoch)
        data = record.to_json()
        if self.local:
            self.fs.makedirs(self.dir, exist_ok=True)
            tmp = posixpath.join(self.dir, f".tmp-{uuid.uuid4().hex}")
            self.fs.pipe_file(tmp, data)
            try:
                self.fs.link(tmp, target)  # atomic, fails if the name exists; the file appears whole
            except FileExistsError:
                return False
            finally:
                self.fs.rm_file(tmp)
            return True
        try:
            self.fs.pipe_file(target, data, mode="create")  # S3: PutObject If-None-Match: *
        except FileExistsError:
            return False
        return True

    def overwrite(self, record: LeaseRecord) -> None:
        """Replace the holder's own record (heartbeat, release): only the holder writes it."""
        target = self.path(record.epoch)
        if self.local:
            tmp = posixpath.join(self.dir, f".tmp-{uuid.uuid4().hex}")
            self.fs.pipe_file(tmp, record.to_json())
            self.fs.mv(tmp, target)  # rename(2) replaces atomically
        else:
            self.fs.pipe_file(target, record.to_json())  # one PUT

    def prune(self, below: int) -> None:
        for e in self.epochs():
            if e < below:
                try:
                    self.fs.rm_file(self.path(e))
                except FileNotFoundError:
                    pass


def latest_epoch(fs: Any, root: str) -> int:
    """The highest epoch ever acquired on the output at ``root`` (0 if none)."""
    epochs = _Folder(fs, root).epochs()
    return epochs[-1] if epochs else 0


def current_record(fs: Any, root: str) -> LeaseRecord | None:
    """The record of the highest epoch (the holder, or the last holder if released), or None."""
    folder = _Folder(fs, root)
    for epoch in reversed(folder.epochs()):
        rec = folder.read(epoch)
        if rec is not None:
            return rec
    return None


def epoch_records(fs: Any, root: str) -> dict[int, LeaseRecord]:
    """The records still kept in the lease folder, by epoch."""
    folder = _Folder(fs, root)
    out = {}
    for epoch in folder.epochs():
        rec = folder.read(epoch)
        if rec is not None:
            out[epoch] = rec
    return out


# ---- the lease ----------------------------------------------------------------------------------------
class Lease:
    """A held lease; use as a context manager (released on exit) or call :meth:`release`.

    Attributes:
        uri: the output it guards.
        epoch: this run's epoch; parts written under it outrank every earlier epoch's.
        record: the record as acquired.
        took_over: the previous holder's record when this acquisition took over a live-looking
            (dead or stale) holder, else None.
    """

    def __init__(self, uri: str, folder: _Folder, record: LeaseRecord, *, heartbeat_s: float, stale_after_s: float, took_over: LeaseRecord | None) -> None:
        self.uri = uri
        self.epoch = record.epoch
        self.record = record
        self.stale_after_s = stale_after_s
        self.took_over = took_over
        self._folder = folder
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name=f"raydf-lease-{self.epoch}", daemon=True)
        self._thread.start()

    # heartbeat ----------------------------------------------------------------------------------------
    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if self._superseded():
                    return
                with self._lock:
                    if self._stop.is_set():
                        return
                    self.record = replace(self.record, heartbeat=time.time())
                    self._folder.overwrite(self.record)
            except Exception as exc:  # a network hiccup: try again next beat
                log.warning("lease heartbeat on %s failed: %s", self.uri, exc)

    def _superseded(self) -> bool:
        epochs = self._folder.epochs()
        newer = [e for e in epochs if e > self.epoch]
        if newer:
            holder = self._folder.read(newer[-1])
            who = holder.describe() if holder else f"epoch {newer[-1]}"
            self._lost = f"the lease on {self.uri} (epoch {self.epoch}) was taken over by {who}"
            log.error("%s; this run stops writing", self._lost)
            return True
        return False

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this lease is still the newest epoch (one listing).

        Raises:
            LeaseLost: a newer epoch took the output over, or the lease was released.
        """
        if self._ended:
            raise LeaseLost(f"the lease on {self.uri} (epoch {self.epoch}) was released")
        if self._lost is not None or self._superseded():
            raise LeaseLost(self._lost)

    # ending -------------------------------------------------------------------------------------------
    def _stop_heartbeat(self) -> None:
        with self._lock:
            self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def release(self) -> None:
        """Mark the epoch released so the next run proceeds at once (idempotent)."""
        if self._ended:
            return
        log.debug("releasing the lease on %s (epoch %d)", self.uri, self.epoch)
        self._ended = True
        self._stop_heartbeat()
        try:
            if not self._superseded():
                self._folder.overwrite(replace(self.record, heartbeat=time.time(), released=True))
                log.debug("released the lease on %s (epoch %d)", self.uri, self.epoch)
        except Exception as exc:
            log.warning("could not release the lease on %s (it goes stale after %.0f s): %s", self.uri, self.stale_after_s, exc)

    def abandon(self) -> None:
        """Stop the heartbeat without releasing, as a crashed run leaves its lease (for tests and tools)."""
        self._ended = True
        self._stop_heartbeat()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire(
    fs: Any,
    root: str,
    uri: str,
    *,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    heartbeat_s: float | None = None,
    min_epoch: int = 0,
) -> Lease:
    """Take the writer lease on the output at ``root``, or fail fast naming its holder.

    Args:
        fs: the output's fsspec filesystem.
        root: the output's path on ``fs``.
        uri: the output's URI (for messages).
        stale_after_s: a holder whose heartbeat is older than this (seconds) is taken over.
        heartbeat_s: heartbeat period (default ``stale_after_s / 10``).
        min_epoch: the new epoch is above this too (the highest epoch found in the store's parts).

    Returns:
        The held :class:`Lease` (its heartbeat thread runs until release).

    Raises:
        LeaseHeld: a live holder (or a contender that won the same epoch) holds the output.
    """
    log.debug("acquiring the lease on %s", uri)
    folder = _Folder(fs, root)
    heartbeat_s = heartbeat_s if heartbeat_s is not None else max(stale_after_s / 10.0, 0.05)
    for _ in range(16):
        epochs = folder.epochs()
        top = epochs[-1] if epochs else 0
        previous = folder.read(top) if top else None
        if top and previous is None:
            continue  # pruned or replaced under us: look again
        took_over = None
        if previous is not None and not previous.released:
            stale = time.time() - previous.heartbeat > stale_after_s
            if not (record_ended(previous) or stale):
                raise LeaseHeld(uri, previous, stale_after_s)
            took_over = previous
            log.warning("taking over %s from %s (%s)", uri, previous.describe(), "stale" if stale else "dead")
        record = _new_record(max(top, min_epoch) + 1)
        if not folder.create(record):
            continue  # another contender created this epoch first: judge it like any holder
        if folder.epochs()[-1] != record.epoch:  # a contender that started from a higher min_epoch won
            continue
        folder.prune(record.epoch - _KEEP_EPOCH_FILES)
        log.info("lease on %s: epoch %d (%s)", uri, record.epoch, record.describe())
        return Lease(uri, folder, record, heartbeat_s=heartbeat_s, stale_after_s=stale_after_s, took_over=took_over)
    holder = current_record(fs, root)
    if holder is None:
        raise RuntimeError(f"could not acquire the lease on {uri}: the lease folder keeps changing")
    raise LeaseHeld(uri, holder, stale_after_s)
