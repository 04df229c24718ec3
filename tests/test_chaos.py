"""Chaos: the extraction driver SIGKILLed at random points of random histories, rerun after each kill.

Each history runs the real driver (:func:`raydf.extract.run_extraction` in a subprocess that
joins the session's Ray cluster) again and again on one output, local or ``s3://`` (moto).
Between runs the history changes its inputs at random: a video's file is replaced by other
bytes (a new source identity: it must be extracted again) or its split changes in the manifest
(the stored rows must be refreshed). Each run but the last is SIGKILLed, with its whole process
group, at a point drawn by a seeded RNG.

**Knowing where a kill landed without changing the driver.** The driver subprocess runs
:func:`driver_main`, which adds one logging handler to the ``raydf`` logger at DEBUG: every
record goes to a marker file, and the records that open a phase (the lease, ``ensure_config``,
compaction, source identities, ``done``, the Ray Data pipeline, the manifest refresh, the
summary, the release) move the handler's current phase. The kill is sent by a timer thread of
the same handler, armed when the target phase opens (after a random delay), or -- for kills
among the part writes -- when the store's listing shows the k-th part of this run's epoch.
The killer holds the handler's lock while it writes the ``kill`` line and sends SIGKILL, so
no phase can open in between: the line names the phase the driver was in.

**What must hold.** After every run (killed or not) the store's resolved view holds each
(video_id, track_id) once, every part is readable, and the set of ok keys never shrinks for
inputs whose identity did not change. A rerun right after a kill takes the dead holder's lease
over at once. After the last run, a plain Parquet read of the output holds every input exactly
once, with the right status and the identity of its current file, the lease is released and no
temp file is left.

``make test`` runs 4 kills per backend (at least one among the part writes and one inside a
compaction); ``make chaos`` runs ``RAYDF_CHAOS_KILLS`` (default 20) per backend, at least 3 of
each; ``RAYDF_CHAOS_SEED`` picks another history.

Also here: two ``pipelines/extract.py`` drivers started together on one output (one wins, the
other names it), and a Ray Train worker SIGKILLed mid-training (each epoch logged once to MLflow
and TensorBoard after the resume).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from raydf import schema as S

REPO = Path(__file__).resolve().parents[1]
PLAN_ENV = "RAYDF_CHAOS_PLAN"
KILLS = int(os.environ.get("RAYDF_CHAOS_KILLS", "4"))
SEED = int(os.environ.get("RAYDF_CHAOS_SEED", "20261130"))
# At least this many kills among the part writes and inside compactions, per backend.
MIN_EACH = min(3, max(1, KILLS // 6))
RUN_TIMEOUT_S = 300.0
CFG = {"style": {"config": "psp_tiny"}, "video": {"num_frames": 8}, "rows_per_file": 2, "feature_batch_size": 1}

# ---- the driver subprocess ------------------------------------------------------------------------
# (regex on a raydf log message, the phase it opens)
MARKERS: tuple[tuple[str, str], ...] = (
    (r"^acquiring the lease on ", "lease"),
    (r"^lease on .*: epoch (?P<epoch>\d+) \(", "lease acquired"),
    (r"^ensure_config .*: begin", "ensure_config"),
    (r"^ensure_config .*: done", "after ensure_config"),
    (r"^compact .*: begin", "compaction"),
    (r"^compact .*: (?P<rewrites>\d+) parts to rewrite, (?P<deletes>\d+) to delete", "compaction"),
    (r"^compact .*: done", "after compaction"),
    (r"^source identities: looking up", "identities"),
    (r"^done .*: begin", "done"),
    (r"videos in manifest, .* to process$", "pipeline"),
    (r"^refresh .*: begin", "manifest refresh"),
    (r"^refresh .*: (?P<rewrites>\d+) parts to rewrite", "manifest refresh"),
    (r"^refresh .*: done", "summary"),
    (r"^releasing the lease", "release"),
    (r"^released the lease", "after release"),
    (r"^extraction finished", "finished"),
)
_MARKERS = tuple((re.compile(rx), phase) for rx, phase in MARKERS)


def _count_parts(output: str, epoch: int | None) -> int:
    """Committed parts of ``epoch`` in ``output``, from one listing (not through raydf)."""
    if epoch is None:
        return 0
    prefix = f"part-{epoch:012d}-"
    if output.startswith("s3://"):
        import boto3

        bucket, _, key = output[len("s3://") :].partition("/")
        client = boto3.client("s3")
        resp = client.list_objects_v2(Bucket=bucket, Prefix=f"{key.rstrip('/')}/{prefix}")
        return sum(1 for o in resp.get("Contents", []) if o["Key"].endswith(".parquet"))
    try:
        return sum(1 for n in os.listdir(output) if n.startswith(prefix) and n.endswith(".parquet"))
    except FileNotFoundError:
        return 0


class ChaosLog(logging.Handler):
    """Writes every raydf record to the marker file, follows the phase, and kills on plan.

    Plan keys: ``target`` (a phase name, ``"parts"``, ``"start"`` or None), ``delay_s``,
    ``k`` (parts: kill once this many parts of the run's epoch are listed), ``output``.
    """

    def __init__(self, path: str, plan: dict[str, Any]) -> None:
        super().__init__(level=logging.DEBUG)
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        self.plan = plan
        self.t0 = time.monotonic()
        self.phase = "start"
        self.detail: dict[str, Any] = {}
        self.epoch: int | None = None
        self.compactions = 0
        self.armed = False
        self._write({"event": "start", "plan": plan, "pid": os.getpid()})
        if plan.get("target") == "start":
            self._arm()

    def _write(self, rec: dict[str, Any]) -> None:
        rec["t"] = round(time.monotonic() - self.t0, 4)
        self.file.write(json.dumps(rec) + "\n")

    def emit(self, record: logging.LogRecord) -> None:  # runs under self.lock
        msg = record.getMessage()
        rec: dict[str, Any] = {"event": "log", "level": record.levelname, "logger": record.name, "msg": msg[:400]}
        for rx, phase in _MARKERS:
            m = rx.search(msg)
            if m is None:
                continue
            groups = {k: int(v) for k, v in m.groupdict().items() if v is not None}
            if phase == "lease acquired":
                self.epoch = groups["epoch"]
            if phase == "compaction" and not groups:
                self.compactions += 1
                self.detail = {"compaction": "before writes" if self.compactions == 1 else "after writes"}
            elif phase != self.phase:
                self.detail = {}
            self.detail.update(groups)
            self.phase = phase
            rec["phase"] = phase
            break
        if self.phase in ("compaction", "manifest refresh"):
            if ": wrote " in msg:
                self.detail["written"] = self.detail.get("written", 0) + 1
                self.detail["ops"] = self.detail.get("ops", 0) + 1
            elif ": deleting " in msg:
                self.detail["deleting"] = True
                self.detail["ops"] = self.detail.get("ops", 0) + 1
        self._write(rec)
        self._maybe_arm()

    def _maybe_arm(self) -> None:
        target = self.plan.get("target")
        if self.armed or target is None:
            return
        if target == "parts":
            if self.phase == "pipeline":
                self.armed = True
                threading.Thread(target=self._watch_parts, daemon=True).start()
        elif target in ("compaction", "manifest refresh"):
            # One with work to do (its plan line names the parts it rewrites and deletes). The kill
            # is timed from one of its operations, drawn at random: the plan line (0), the i-th
            # rewrite written (i), or the start of the deletes (rewrites + 1).
            d = self.detail
            rewrites, deletes = d.get("rewrites", 0), d.get("deletes", d.get("rewrites", 0))
            if self.phase == target and rewrites + deletes > 0:
                anchor = min(rewrites + int(deletes > 0), int(self.plan["anchor"] * (rewrites + 1 + int(deletes > 0))))
                if d.get("ops", 0) >= anchor:
                    self._arm()
        elif self.phase == target:
            self._arm()

    def _arm(self) -> None:
        self.armed = True
        if not self.plan.get("delay_s"):
            self.kill()  # right here, before the next operation
            return
        timer = threading.Timer(float(self.plan.get("delay_s", 0.0)), self.kill)
        timer.daemon = True
        timer.start()

    def _watch_parts(self) -> None:
        k = int(self.plan["k"])
        while _count_parts(self.plan["output"], self.epoch) < k:
            time.sleep(0.01)
        time.sleep(float(self.plan.get("delay_s", 0.0)))
        self.kill()

    def kill(self) -> None:
        """SIGKILL this driver's process group, first writing the phase it is in."""
        self.acquire()  # no phase can open between the kill line and the kill
        try:
            rec = {"event": "kill", "phase": self.phase, "detail": self.detail, "epoch": self.epoch}
            if self.phase == "pipeline":
                rec["parts_of_epoch"] = _count_parts(self.plan["output"], self.epoch)
            self._write(rec)
            self.file.flush()
            os.fsync(self.file.fileno())
            os.killpg(os.getpgid(0), signal.SIGKILL)
        finally:
            self.release()


def driver_main() -> int:
    """A chaos driver: one :func:`raydf.extract.run_extraction` under the plan in ``$RAYDF_CHAOS_PLAN``."""
    plan = json.loads(os.environ[PLAN_ENV])
    handler = ChaosLog(plan["log"], plan)
    logging.basicConfig(level=logging.WARNING)
    raydf_log = logging.getLogger("raydf")
    raydf_log.setLevel(logging.DEBUG)
    raydf_log.addHandler(handler)

    from raydf.config import ExtractConfig, load_config
    from raydf.extract import run_extraction

    summary = run_extraction(plan["input"], plan["output"], load_config(ExtractConfig, plan["cfg"]), track=False)
    with handler.lock:
        handler._write({"event": "summary", "ok": summary.ok, "error": summary.error, "processed": summary.processed})
    return 0


# ---- one run as seen from the test --------------------------------------------------------------------
@dataclass
class RunRecord:
    n: int
    target: str | None
    plan: dict[str, Any]
    returncode: int
    wall_s: float
    events: list[dict[str, Any]]
    stderr: str
    parts_after: int | None = None  # parts of the killed run's epoch once the driver was dead

    @property
    def kill(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == "kill"), None)

    @property
    def phase(self) -> str:
        """The phase a kill landed in (``part writes`` once a part of the run was committed)."""
        k = self.kill
        if k is None:
            return "completed"
        if k["phase"] == "pipeline":
            return "part writes" if k.get("parts_of_epoch", 0) >= 1 else "pipeline before its first part"
        return k["phase"]

    def logged(self, pattern: str) -> bool:
        return any(re.search(pattern, e.get("msg", "")) for e in self.events)

    def describe(self) -> str:
        k = self.kill
        where = self.phase
        if k is not None and k.get("detail"):
            where += f" {k['detail']}"
        if k is not None and "parts_of_epoch" in k:
            where += f" (parts of its epoch: {k['parts_of_epoch']} at the kill, {self.parts_after} once it was dead)"
        return f"run {self.n}: aimed at {self.target}, {where} ({self.wall_s:.1f}s)"


def run_driver(cluster, n: int, work: Path, plan: dict[str, Any]) -> RunRecord:
    log = work / f"run{n:03d}.jsonl"
    plan = {**plan, "log": str(log)}
    env = {**cluster.driver_env(), PLAN_ENV: json.dumps(plan), "PYTHONPATH": str(REPO)}
    err = work / f"run{n:03d}.stderr"
    t0 = time.monotonic()
    with open(err, "wb") as errf:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.test_chaos import driver_main; sys.exit(driver_main())"],
            env=env, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=errf,
        )  # fmt: skip
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    events = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    return RunRecord(n, plan.get("target"), plan, rc, time.monotonic() - t0, events, err.read_text(errors="replace"))


# ---- the inputs of a history -------------------------------------------------------------------------
@dataclass
class Inputs:
    """The history's videos (local files or S3 objects) and its manifest CSV."""

    backend: str
    root: str  # local dir or s3://bucket/prefix holding <video_id>.mp4
    manifest: Path
    s3: Any
    pool: list[bytes]  # contents a video can be replaced with
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # video_id -> manifest row
    broken: set[str] = field(default_factory=set)  # inputs that are not videos (error rows expected)

    def uri(self, vid: str) -> str:
        return f"{self.root}/{vid}.mp4"

    def put(self, vid: str, data: bytes) -> None:
        if self.backend == "s3":
            bucket, _, key = self.uri(vid)[len("s3://") :].partition("/")
            self.s3.client.put_object(Bucket=bucket, Key=key, Body=data)
        else:
            path = Path(self.uri(vid))
            old = path.stat().st_mtime if path.exists() else 0.0
            path.write_bytes(data)
            os.utime(path, (old + 10.0, max(old + 10.0, time.time())))  # a new mtime even on a coarse clock

    def get(self, vid: str) -> bytes:
        if self.backend == "s3":
            bucket, _, key = self.uri(vid)[len("s3://") :].partition("/")
            return self.s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return Path(self.uri(vid)).read_bytes()

    def identity(self, vid: str) -> tuple:
        """What the stored row of ``vid`` must record for its current file (size, mtime, etag)."""
        if self.backend == "s3":
            bucket, _, key = self.uri(vid)[len("s3://") :].partition("/")
            head = self.s3.client.head_object(Bucket=bucket, Key=key)
            return (head["ContentLength"], None, head["ETag"].strip('"'))
        st = os.stat(self.uri(vid))
        return (st.st_size, st.st_mtime, "")

    def write_manifest(self) -> None:
        import pandas as pd

        pd.DataFrame(list(self.rows.values())).to_csv(self.manifest, index=False)


def make_inputs(backend: str, tmp: Path, generated: Path, s3: Any, *, videos: int, broken: bool) -> Inputs:
    files = sorted(generated.glob("real/*.mp4")) + sorted(generated.glob("fake/*.mp4"))
    files = sorted(files, key=lambda p: p.stat().st_size)  # the smallest: quick to decode
    pool = [p.read_bytes() for p in files]
    if backend == "s3":
        root = f"s3://{s3.make_bucket('chaos')}/videos"
    else:
        root = str(tmp / "videos")
        Path(root).mkdir()
    inp = Inputs(backend=backend, root=root, manifest=tmp / "manifest.csv", s3=s3, pool=pool)
    for i in range(videos):
        vid = f"v{i}"
        inp.put(vid, pool[i])
        inp.rows[vid] = {S.VIDEO_ID: vid, S.URI: inp.uri(vid), S.LABEL: i % 2, S.DATASET: "chaos", S.SPLIT: "train"}
    if broken:
        inp.put("broken", b"this is not a video\n" * 64)
        inp.rows["broken"] = {S.VIDEO_ID: "broken", S.URI: inp.uri("broken"), S.LABEL: 0, S.DATASET: "chaos", S.SPLIT: "test"}
        inp.broken.add("broken")
    inp.write_manifest()
    return inp


# ---- the history --------------------------------------------------------------------------------------
TARGETS_BEFORE_WRITES = ("start", "lease", "ensure_config", "identities", "done")
TARGETS_AFTER_WRITES = ("manifest refresh", "summary", "release")
PRIOR_S = {  # how long a phase lasts (local, s3) until the history has measured it
    "start": (6.0, 6.0), "lease": (0.01, 0.05), "ensure_config": (0.01, 0.05), "identities": (0.01, 0.05),
    "done": (0.02, 0.2), "summary": (0.02, 0.2), "release": (0.01, 0.05),
}  # fmt: skip


class History:
    """Random mutations, runs and kills on one output; checks after every run."""

    def __init__(self, inputs: Inputs, output: str, cluster: Any, work: Path, rng: random.Random) -> None:
        self.inp, self.output, self.cluster, self.work, self.rng = inputs, output, cluster, work, rng
        self.runs: list[RunRecord] = []
        self.ok_keys: dict[str, set[tuple[str, int]]] = {}  # video -> ok keys seen since its identity last changed
        self.durations: dict[str, list[float]] = {}
        self.replaced = 0
        self.resplit = 0

    # -- the store as the test sees it
    def view(self) -> list[dict[str, Any]]:
        from raydf.store import FeatureStore

        cols = [S.VIDEO_ID, S.TRACK_ID, S.STATUS, S.SPLIT, *S.SOURCE_COLUMNS]
        return FeatureStore(self.output).read(cols).to_pylist()

    def leftover(self) -> bool:
        """Whether the store holds superseded rows (a compaction at the start of a run has work)."""
        from raydf.store import FeatureStore

        store = FeatureStore(self.output)
        if not store.parts():
            return False
        return store.read([S.VIDEO_ID], resolved=False).num_rows > store.read([S.VIDEO_ID]).num_rows

    def todo(self) -> set[str]:
        from raydf.sources import manifest_identities
        from raydf.store import FeatureStore
        import pyarrow as pa

        manifest = pa.Table.from_pylist(list(self.inp.rows.values()))
        return set(self.inp.rows) - FeatureStore(self.output).done(manifest_identities(manifest))

    # -- mutations
    def replace(self, vid: str) -> None:
        """Give ``vid`` other bytes (another video of the pool): a new source identity."""
        current = self.inp.get(vid)
        data = self.rng.choice([p for p in self.inp.pool if p != current])
        self.inp.put(vid, data)
        self.ok_keys.pop(vid, None)  # its rows may now go: a changed input is extracted again
        self.replaced += 1

    def change_split(self, vid: str) -> None:
        row = self.inp.rows[vid]
        row[S.SPLIT] = self.rng.choice([s for s in S.SPLITS if s != row[S.SPLIT]])
        self.inp.write_manifest()
        self.resplit += 1

    def good(self) -> list[str]:
        return sorted(v for v in self.inp.rows if v not in self.inp.broken)

    def prepare(self, target: str | None) -> None:
        """Mutate the inputs so that ``target`` has work to be killed in (and at random besides)."""
        if target == "parts":
            todo = self.todo()
            done = [v for v in self.good() if v not in todo]
            need = max(0, 3 - len(todo - self.inp.broken))
            for vid in self.rng.sample(done, min(need, len(done))):
                self.replace(vid)
        elif target == "compaction" and not self.leftover():
            done = [v for v in self.good() if v not in self.todo()]
            # a done input replaced: its old group goes in the compaction after the writes
            self.replace(self.rng.choice(done or self.good()))
        elif target == "manifest refresh":
            for vid in self.rng.sample(self.good(), 2):
                self.change_split(vid)
        if self.rng.random() < 0.3:
            self.change_split(self.rng.choice(self.good()))

    def delay(self, target: str) -> float:
        seen = self.durations.get(target)
        prior = PRIOR_S.get(target, (0.05, 0.2))[self.inp.backend == "s3"]
        return self.rng.uniform(0.0, 0.8 * (sorted(seen)[len(seen) // 2] if seen else prior))

    def plan(self, target: str | None) -> dict[str, Any]:
        plan: dict[str, Any] = {"target": target, "input": str(self.inp.manifest), "output": self.output, "cfg": CFG}
        if target == "parts":
            # parts of about rows_per_file rows: kill after the k-th, before the last
            n_parts = max(2, (len(self.todo()) + 1) // CFG["rows_per_file"])  # (a broken input's row too)
            plan["k"] = self.rng.randint(1, n_parts - 1)
            plan["delay_s"] = self.rng.uniform(0.0, 0.05)
        elif target in ("compaction", "manifest refresh"):
            plan["anchor"] = self.rng.random()
            # at the drawn operation's boundary, or a little later (inside the next operation, if the
            # scheduler is quick enough: a loaded machine runs the timer late and the kill may miss)
            timed = KILLS > 4 and self.rng.random() < 0.5
            plan["delay_s"] = self.rng.uniform(0.0, 0.01 if self.inp.backend == "local" else 0.05) if timed else 0.0
        elif target is not None:
            plan["delay_s"] = self.delay(target)
        return plan

    def learn(self, run: RunRecord) -> None:
        """How long each phase lasted in the run's log: how long a later kill may wait inside it."""
        opened: tuple[str, float] | None = None
        for e in run.events:
            phase = e.get("phase")
            if phase is None or (opened is not None and phase == opened[0]):
                continue
            if opened is not None:
                self.durations.setdefault(opened[0], []).append(e["t"] - opened[1])
            opened = (phase, e["t"])
        start = next((e["t"] for e in run.events if e.get("phase") == "lease"), None)
        if start is not None:
            self.durations.setdefault("start", []).append(start)

    # -- one step
    def step(self, target: str | None) -> RunRecord:
        self.prepare(target)
        run = run_driver(self.cluster, len(self.runs) + 1, self.work, self.plan(target))
        self.runs.append(run)
        if run.kill is not None and "parts_of_epoch" in run.kill:
            run.parts_after = _count_parts(self.output, run.kill["epoch"])
        self.learn(run)
        print(run.describe(), flush=True)
        if run.kill is None:
            assert run.returncode == 0, f"run {run.n} failed (rc {run.returncode}):\n{run.stderr[-4000:]}"
        else:
            assert run.returncode == -signal.SIGKILL, f"run {run.n}: rc {run.returncode}\n{run.stderr[-4000:]}"
        if run.logged(r"^lease on "):
            assert not run.logged(r"^taking over .*\(stale\)$"), f"run {run.n} waited for a stale lease"
            prev = self.runs[-2] if len(self.runs) > 1 else None
            if prev is not None and prev.kill is not None and prev.phase not in ("start", "lease", "release", "after release", "finished"):
                # the killed run held the lease: its dead holder is taken over at once
                assert run.logged(r"^taking over .*\(dead\)$"), f"run {run.n} did not take over the dead run {prev.n}"
        self.check()
        return run

    def check(self) -> None:
        """After every run: each key once, readable parts, and no ok row of an unchanged input lost."""
        rows = self.view()
        keys = [(r[S.VIDEO_ID], r[S.TRACK_ID]) for r in rows]
        assert len(keys) == len(set(keys)), "a (video, track) key is present twice in the resolved view"
        ok_now: dict[str, set] = {}
        for r in rows:
            if r[S.STATUS] == S.STATUS_OK:
                ok_now.setdefault(r[S.VIDEO_ID], set()).add((r[S.VIDEO_ID], r[S.TRACK_ID]))
        for vid, before in self.ok_keys.items():
            lost = before - ok_now.get(vid, set())
            assert not lost, f"after run {len(self.runs)}: ok rows {sorted(lost)} of an unchanged input were lost"
        for vid, keys_now in ok_now.items():
            self.ok_keys.setdefault(vid, set()).update(keys_now)

    def final_check(self) -> None:
        from raydf.store import FeatureStore

        store = FeatureStore(self.output)
        raw = store.read([S.VIDEO_ID, S.TRACK_ID, S.STATUS, S.SPLIT, *S.SOURCE_COLUMNS], resolved=False).to_pylist()
        keys = [(r[S.VIDEO_ID], r[S.TRACK_ID]) for r in raw]
        assert len(keys) == len(set(keys)), "after the last run the stored parts hold a key twice"
        assert sorted(r[S.VIDEO_ID] for r in raw) == sorted(self.inp.rows), "not every input is present exactly once"
        for r in raw:
            vid = r[S.VIDEO_ID]
            want = S.STATUS_ERROR if vid in self.inp.broken else S.STATUS_OK
            assert r[S.STATUS] == want, (vid, r)
            assert r[S.SPLIT] == self.inp.rows[vid][S.SPLIT], f"{vid}: the split was not refreshed"
            size, mtime, etag = self.inp.identity(vid)
            if vid not in self.inp.broken or r[S.SOURCE_SIZE] is not None:
                assert r[S.SOURCE_SIZE] == size and (r[S.SOURCE_ETAG] or "").strip('"') == etag, (vid, r)
                assert mtime is None or r[S.SOURCE_MTIME] == pytest.approx(mtime), (vid, r)
        holder = store.holder()
        assert holder is not None and holder.released
        if self.inp.backend == "local":
            assert sorted(p.name for p in Path(self.output).glob("*.parquet")) == store.list_parts()
            assert not list(Path(self.output).glob(".tmp-*")), "temp files of ended runs were left behind"
            table = pq.read_table(self.output)  # plain Parquet: every input once
            assert sorted(table.column(S.VIDEO_ID).to_pylist()) == sorted(self.inp.rows)

    def breakdown(self) -> Counter:
        return Counter(r.phase for r in self.runs if r.kill is not None)


def _targets(rng: random.Random, kills: int) -> list[str]:
    """The history's kill targets: part writes first (the output is empty), MIN_EACH compactions, the rest at random."""
    rest = ["parts"] * (MIN_EACH - 1) + ["compaction"] * MIN_EACH
    extra = kills - 1 - len(rest)
    if kills <= 4:  # make test: the other kills where no further pipeline run is needed
        rest += [rng.choice(TARGETS_BEFORE_WRITES + TARGETS_AFTER_WRITES) for _ in range(extra)]
    else:
        rest += [rng.choice(TARGETS_BEFORE_WRITES + ("compaction", "parts", "parts") + TARGETS_AFTER_WRITES) for _ in range(extra)]
    if kills > 4:
        rng.shuffle(rest)
    return ["parts", *rest]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_random_kills_of_the_extraction_driver_lose_nothing(backend, tmp_path, ray_cluster, s3, generated_dataset):
    rng = random.Random(f"{SEED}-{backend}")
    big = KILLS > 4
    inputs = make_inputs(backend, tmp_path, generated_dataset, s3, videos=6 if big else 4, broken=big)
    output = f"s3://{s3.make_bucket('chaos-out')}/features" if backend == "s3" else str(tmp_path / "features")
    work = tmp_path / "runs"
    work.mkdir()
    history = History(inputs, output, ray_cluster, work, rng)
    t0 = time.monotonic()
    planned = _targets(rng, KILLS)
    print(f"\nchaos {backend}: seed {SEED}, {KILLS} kills, targets {planned}")
    for target in planned:
        history.step(target)
    # Kills that missed their phase are made up for (bounded), so the minimum of each kind holds.
    for _ in range(2 * KILLS):
        counts = history.breakdown()
        kills = sum(counts.values())
        short = [t for t, phase in (("parts", "part writes"), ("compaction", "compaction")) if counts[phase] < MIN_EACH]
        if kills >= KILLS and not short:
            break
        history.step(short[0] if short else rng.choice(TARGETS_BEFORE_WRITES))
    last = history.step(None)
    assert last.kill is None
    history.final_check()

    counts = history.breakdown()
    print(f"chaos {backend}: {sum(counts.values())} kills in {len(history.runs)} runs ({time.monotonic() - t0:.0f}s), "
          f"{history.replaced} inputs replaced, {history.resplit} splits changed; kills by phase: {dict(sorted(counts.items()))}")  # fmt: skip
    assert sum(counts.values()) >= KILLS
    assert counts["part writes"] >= MIN_EACH and counts["compaction"] >= MIN_EACH, counts


# ---- metrics exactly once after a Train worker is killed ------------------------------------------------
def _tensorboard_steps(directory: Path, tag: str) -> list[int]:
    """Every step of ``tag`` in every event file under ``directory``, as written (duplicates kept:
    TensorBoard's EventAccumulator would drop out-of-order repeats and hide them)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for f in sorted(directory.rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            steps.extend(event.step for v in event.summary.value if v.tag == tag)
    return sorted(steps)


@pytest.mark.slow
@pytest.mark.integration
def test_each_epoch_is_logged_once_after_a_train_worker_is_killed(extracted, ray_cluster, tmp_path):
    """A Train worker SIGKILLed after a registered checkpoint; training resumes from it. MLflow's
    history of ``val_loss`` and the TensorBoard event files hold each epoch exactly once."""
    import mlflow

    from raydf.config import TrainConfig, load_config
    from raydf.train import run_training

    epochs = 4
    cfg = load_config(TrainConfig, {
        "model": {"gru_hidden": 32, "d_model": 32, "transformer_heads": 2, "ff_dim": 64, "fc_hidden": 16, "transformer_layers": 1},
        "max_epochs": epochs, "batch_size": 4, "lr": 1e-3, "num_workers": 1, "cpus_per_worker": 0.5, "max_failures": 2,
        "patience": 50, "val_fraction": 0.25, "test_fraction": 0.25,
    })  # fmt: skip
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = run_training(str(extracted.features), cfg, storage_path=str(tmp_path / "rr"), name="once",
                                         tracking_uri=tracking, full_report=False)  # fmt: skip
        except BaseException as exc:  # surfaced below
            box["error"] = exc

    thread = threading.Thread(target=fit)
    thread.start()
    snapshot = tmp_path / "rr" / "once" / "checkpoint_manager_snapshot.json"  # what the controller has registered
    killed_after = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and thread.is_alive():
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["epoch"]
        except (OSError, ValueError, KeyError, TypeError):
            latest = None
        if latest is not None and latest >= 1:
            workers = [a for a in ray_cluster.list_actors() if a["class_name"] == "RayTrainWorker" and a["state"] == "ALIVE"]
            if workers:
                os.kill(workers[0]["pid"], signal.SIGKILL)
                killed_after = latest
                break
        time.sleep(0.2)
    thread.join(timeout=900)
    assert killed_after is not None and killed_after < epochs - 1, f"the kill missed the run (after epoch {killed_after})"
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.resumed_from >= killed_after, "training did not resume from the registered checkpoint"
    assert [h["epoch"] for h in result.history] == list(range(epochs))

    ml = sorted(m.step for m in mlflow.MlflowClient(tracking).get_metric_history(result.run_id, S.VAL_LOSS))
    tb = _tensorboard_steps(tmp_path / "rr" / "once" / "raydf" / "tensorboard", S.VAL_LOSS)
    assert (ml, tb) == (list(range(epochs)), list(range(epochs))), (
        f"val_loss steps after a kill once epoch {killed_after} was registered (resumed from {result.resumed_from}): "
        f"MLflow {ml}, TensorBoard {tb}"
    )


# ---- two writers, one output ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_two_concurrent_extractions_into_one_output_one_wins_the_other_names_it(backend, tmp_path, ray_cluster, s3, generated_dataset):
    """Two ``pipelines/extract.py`` drivers started together on one output: exactly one writes it,
    the other exits non-zero at once with a one-line error naming the holder's host and PID."""
    import socket

    inputs = make_inputs(backend, tmp_path, generated_dataset, s3, videos=2, broken=False)
    output = f"s3://{s3.make_bucket('two-writers')}/features" if backend == "s3" else str(tmp_path / "features")
    argv = [sys.executable, "pipelines/extract.py", "--input", str(inputs.manifest), "--output", output,
            "--style-config", "psp_tiny", "--frames", "8", "--no-track"]  # fmt: skip
    env = {**ray_cluster.driver_env(), "RAYDF_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(c == 0 for c in codes) == [False, True], f"return codes {codes}:\n" + "\n".join(o[1][-3000:] for o in outs)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = outs[loser][1]
    assert "is being written by another run" in err, err[-3000:]
    assert f"host {socket.gethostname()}, PID {procs[winner].pid}," in err, err[-3000:]
    assert "status: ok 2" in outs[winner][0]
    from raydf.store import FeatureStore

    rows = FeatureStore(output).read([S.VIDEO_ID, S.STATUS]).to_pylist()
    assert sorted(r[S.VIDEO_ID] for r in rows) == sorted(inputs.rows) and {r[S.STATUS] for r in rows} == {S.STATUS_OK}


def test_an_extraction_refused_by_the_lease_is_one_error_line(tmp_path):
    """``raydf extract`` into an output another live run holds: exit 2 and one plain error line naming
    the holder (as every other raydf error), before any Ray work."""
    import socket

    from raydf.store import FeatureStore

    videos = tmp_path / "videos"
    videos.mkdir()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"video_id,uri,label,dataset,split\nv,{videos / 'v.mp4'},0,x,train\n")
    out = tmp_path / "features"
    with FeatureStore(str(out)).acquire_lease(heartbeat_s=3600):  # this test process is the live holder
        proc = subprocess.run(
            [sys.executable, "-m", "raydf.cli", "extract", "--input", str(manifest), "--output", str(out), "--no-track"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "RAYDF_HOME": str(tmp_path / "home")},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode != 0
    assert f"host {socket.gethostname()}, PID {os.getpid()}," in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("raydf extract: error:"), proc.stderr[-3000:]
    assert proc.returncode == 2
