"""The writer lease: one live run per output, dead holders taken over at once, silent ones after the timeout.

Other holders are real processes (a child Python that acquires the lease and then dies, waits,
or pauses inside a part write); both backends: a local directory and S3 (moto).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from raydf import lease as L
from raydf.store import FeatureStore, LeaseHeld, LeaseLost
from tests.store_helpers import group, identity, rows_of, table

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import os, signal, sys
from raydf.store import FeatureStore
store = FeatureStore(sys.argv[1])
lease = store.acquire_lease(heartbeat_s=3600)
print("epoch", lease.epoch, flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
for line in sys.stdin:
    if line.strip() == "check":
        try:
            lease.check()
            print("held", flush=True)
        except Exception as exc:
            print(type(exc).__name__, flush=True)
        try:
            store.check_epoch(lease.epoch)
            print("sink may write", flush=True)
        except Exception as exc:
            print("sink", type(exc).__name__, flush=True)
"""

PAUSED_WRITER = """
import sys
from fsspec.implementations.local import LocalFileSystem
from raydf.store import FeatureStore
from tests.store_helpers import group, identity, table

class PausedBeforeRename(LocalFileSystem):
    cachable = False
    def mv(self, a, b, **kw):
        print("paused", a, flush=True)
        sys.stdin.readline()
        return super().mv(a, b, **kw)

store = FeatureStore(sys.argv[1])
lease = store.acquire_lease(heartbeat_s=3600)
print("epoch", lease.epoch, flush=True)
part = FeatureStore(sys.argv[1], filesystem=PausedBeforeRename()).write_part(
    table(group("v", "ok", 1, identity("v"), marker="old run")), epoch=lease.epoch, seq=1)
print("part", part.name, flush=True)
sys.stdin.readline()
"""


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "features")
    s3 = request.getfixturevalue("s3")
    return f"s3://{s3.make_bucket('lease')}/features"


class Child:
    """A Python child process running one of the scripts above."""

    def __init__(self, script: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
        )

    def line(self) -> str:
        out = self.proc.stdout.readline().strip()
        if not out:
            raise AssertionError(f"child ended: {self.proc.stderr.read()[-3000:]}")
        return out

    def say(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


def _epoch(line: str) -> int:
    word, value = line.split()
    assert word == "epoch", line
    return int(value)


def test_a_second_run_fails_fast_naming_the_holder(output):
    store = FeatureStore(output)
    with store.acquire_lease(heartbeat_s=3600) as lease:
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld) as err:
            FeatureStore(output).acquire_lease()
        assert time.monotonic() - t0 < 10  # no waiting for the holder
        msg = str(err.value)
        assert f"host {socket.gethostname()}" in msg and f"PID {os.getpid()}" in msg and "since" in msg
        assert err.value.holder.epoch == lease.epoch and err.value.holder.pid == os.getpid()
        assert store.holder().token == lease.record.token
    with FeatureStore(output).acquire_lease(heartbeat_s=3600) as after:  # released: the next run proceeds at once
        assert after.epoch == lease.epoch + 1 and after.took_over is None


def test_a_dead_holder_is_taken_over_at_once(output):
    child = Child(HOLDER, output, "die")
    try:
        dead_epoch = _epoch(child.line())
        child.proc.wait(timeout=30)
        assert child.proc.returncode == -signal.SIGKILL
    finally:
        child.end()
    with FeatureStore(output).acquire_lease(heartbeat_s=3600) as lease:
        assert lease.epoch == dead_epoch + 1
        assert lease.took_over is not None and lease.took_over.pid == child.proc.pid


def test_a_silent_live_holder_is_taken_over_only_after_the_timeout(output):
    child = Child(HOLDER, output, "wait")
    try:
        held_epoch = _epoch(child.line())
        with pytest.raises(LeaseHeld, match=f"PID {child.proc.pid}") as err:
            FeatureStore(output).acquire_lease(stale_after_s=3600)  # alive, on this host: never "dead"
        silent_for = time.time() - err.value.holder.heartbeat
        with FeatureStore(output).acquire_lease(stale_after_s=silent_for / 2, heartbeat_s=3600) as lease:
            assert lease.epoch == held_epoch + 1 and lease.took_over.pid == child.proc.pid
            child.say("check")
            assert child.line() == "LeaseLost"  # the old run learns it lost the output
            assert child.line() == "sink LeaseLost"  # and its sink stops writing
    finally:
        child.end()


def test_the_heartbeat_keeps_a_live_lease(tmp_path):
    store = FeatureStore(str(tmp_path / "out"))
    with store.acquire_lease(stale_after_s=0.4, heartbeat_s=0.05) as lease:
        first = store.holder().heartbeat
        deadline = time.monotonic() + 10
        while store.holder().heartbeat == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.holder().heartbeat > first
        time.sleep(0.5)  # longer than the timeout: only the heartbeat keeps the lease
        with pytest.raises(LeaseHeld):
            FeatureStore(str(tmp_path / "out")).acquire_lease(stale_after_s=0.4)
        lease.check()


def test_of_two_contenders_for_a_takeover_exactly_one_wins(output):
    store = FeatureStore(output)
    child = Child(HOLDER, output, "die")
    try:
        _epoch(child.line())
        child.proc.wait(timeout=30)
    finally:
        child.end()
    for round_ in range(3):  # a dead holder, then released leases
        barrier = threading.Barrier(4)
        won, lost = [], []

        def contend() -> None:
            barrier.wait()
            try:
                won.append(FeatureStore(output).acquire_lease(heartbeat_s=3600))
            except LeaseHeld as exc:
                lost.append(exc)

        threads = [threading.Thread(target=contend) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 3, (round_, won, lost)
        assert all(e.holder.epoch == won[0].epoch for e in lost)
        won[0].release()
    assert store.holder().released


def test_tmp_files_of_a_live_writer_survive_another_runs_compaction(tmp_path):
    root = str(tmp_path / "out")
    writer = Child(PAUSED_WRITER, root)
    try:
        old_epoch = _epoch(writer.line())
        paused = writer.line()
        assert paused.startswith("paused ")
        tmp = Path(paused.split()[1])
        assert tmp.exists() and tmp.name.startswith(".tmp-")
        store = FeatureStore(root)
        with pytest.raises(LeaseHeld):
            store.acquire_lease()  # the live writer holds the output: no compaction by anyone else
        silent_for = time.time() - store.holder().heartbeat
        with store.acquire_lease(stale_after_s=silent_for / 2, heartbeat_s=3600) as lease:  # taken over as silent
            store.write_part(table(group("v", "ok", 1, identity("v"), marker="new run")), epoch=lease.epoch, seq=1)
            report = store.compact(lease)
            assert report.tmp_removed == 0 and tmp.exists()  # its process is alive on this host
            writer.say("go")
            assert writer.line().startswith("part ")  # the old run's rename still lands ...
            store.compact(lease)
            assert rows_of(store, resolved=False) == [("v", 0, "ok", "new run")]  # ... and loses to the newer epoch
            # the holder's own in-flight write (its current epoch) survives its own compaction too
            own_tmp = Path(root) / f".tmp-e{lease.epoch:012d}-{'ab' * 16}"
            own_tmp.write_bytes(b"in flight")
            store.compact(lease)
            assert own_tmp.exists()
    finally:
        writer.end()
    assert old_epoch < lease.epoch


def test_a_dead_writers_tmp_files_are_removed(tmp_path):
    root = str(tmp_path / "out")
    writer = Child(PAUSED_WRITER, root)
    try:
        _epoch(writer.line())
        tmp = Path(writer.line().split()[1])
        writer.proc.kill()
        writer.proc.wait(timeout=30)
    finally:
        writer.end()
    store = FeatureStore(root)
    with store.acquire_lease(heartbeat_s=3600) as lease:  # dead: taken over at once
        assert lease.took_over is not None
        assert store.compact(lease).tmp_removed == 1 and not tmp.exists()


def test_epochs_grow_past_existing_parts_and_old_epoch_files_are_pruned(tmp_path):
    root = tmp_path / "out"
    store = FeatureStore(str(root))
    store.write_part(table(group("a", "ok", 1, identity("a"))), epoch=41, seq=1)  # a store whose lease folder is gone
    epochs = []
    for _ in range(12):
        with store.acquire_lease(heartbeat_s=3600) as lease:
            epochs.append(lease.epoch)
    assert epochs == list(range(42, 54))
    kept = sorted(p.name for p in (root / L.LEASE_DIR).iterdir())
    assert len(kept) <= 9 and kept[-1] == f"epoch-{53:012d}.json"


def test_dead_means_this_host_and_boot_and_pid_gone_or_reused():
    import psutil

    me = L._new_record(1)
    assert not L.record_ended(me)  # this process is alive
    assert L.record_ended(replace(me, released=True))
    assert L.record_ended(replace(me, pid_started=me.pid_started - 1000))  # the PID now names a later process
    assert L.record_ended(replace(me, boot_id="another-boot"))  # this host rebooted since
    assert not L.record_ended(replace(me, host="another-host", pid=2**22 + 7))  # elsewhere: only the heartbeat tells
    assert not L.record_ended(replace(me, pid_ns="pid:[1]", pid=2**22 + 7))  # another container on this host
    gone = max(psutil.pids()) + 1000
    assert L.record_ended(replace(me, pid=gone, pid_started=None))


def test_released_and_lost_leases_refuse_to_guard_writes(tmp_path):
    store = FeatureStore(str(tmp_path / "out"))
    lease = store.acquire_lease(heartbeat_s=3600)
    lease.release()
    with pytest.raises(LeaseLost):
        store.compact(lease)
    lease2 = store.acquire_lease(heartbeat_s=3600)
    lease3 = store.acquire_lease(stale_after_s=0.0, heartbeat_s=3600)  # takes lease2 over as silent
    with pytest.raises(LeaseLost, match=f"epoch {lease3.epoch}"):
        store.compact(lease2)
    assert lease2.lost
    lease2.release()  # a superseded lease does not mark the newer epoch released
    assert not store.holder().released
    lease3.release()
    assert store.holder().released
