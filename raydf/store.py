"""The feature store: a directory of Parquet parts in which every (video, track) is present once.

Layout of an output (a local path or ``s3://bucket/prefix``)::

    _raydf_extract.json                     feature config + extractor provenance + layout version
    _raydf_lease/epoch-<12 digits>.json     the writer lease, one file per run (raydf.lease)
    part-<epoch:12>-<seq:19>-<rev:4>-<uuid:16>.parquet
                                            a whole part (:data:`raydf.schema.FEATURE_SCHEMA`)
    .tmp-e<epoch:12>-<uuid>                 a local file being written (renamed into place)
    _raydf_broken/<part name>               unreadable parts moved aside by compaction

Plain ``pyarrow.parquet.read_table(output)`` reads exactly the parts (names starting with
``_`` or ``.`` are skipped); after :meth:`FeatureStore.compact` each (video_id, track_id) is
there once. :meth:`FeatureStore.read` and :meth:`FeatureStore.iter_parts` give the resolved
view at any time, compacted or not.

**Writes.** A run holds the output's lease (:meth:`FeatureStore.acquire_lease`); its *epoch*
grows with every run. A part is written whole: locally a temp file renamed into place, on an
object store one PUT. Its name holds ``epoch`` and ``seq`` (one write call of one run, e.g. the
nanosecond clock of the sink's write), a revision ``rev`` and a random suffix, so names are
never reused. The rows of one video from one write call -- its *group*: tracks ``0..n-1``, or a
single error row with track 0 -- always sit in one part. The *tag* ``(epoch, seq)`` orders
groups: a later epoch outranks every earlier one, so a superseded run's late parts never win
over a newer run's rows.

**Which group of a video wins** (the same rule for readers, "done" and compaction). Order the
video's groups by tag. The newest group names the current *source identity* (the input's URI,
size, mtime, ETag as recorded in :data:`raydf.schema.SOURCE_COLUMNS`). Among the newest run of
consecutive groups with that identity, the newest ``ok`` group wins, else the newest group.
Groups of other identities, and groups older than a change of identity, lose: a replaced input
is extracted again and its old rows go, even if the new result is an error. (A source that
changes back to an old identity is new content to the store: the rule must not depend on
whether a compaction ran between the changes.) Within the winning group, duplicate rows of one
track (a retried write, or a rewrite that crashed before removing its original) are one row:
the one with the highest ``rev``.

**Compaction** (under the lease) keeps exactly the winning rows: parts without winners are
deleted, parts with some are rewritten with the same tag and ``rev + 1`` under a new name. All
new parts are written before any old part is deleted, so a crash in between leaves duplicates
that resolve exactly as before. It deletes only parts it listed and judged, and ``.tmp-`` files
of earlier epochs whose run has ended (released, or its process dead on this host) -- never
those of a process alive on this host; a writer on another host (a shared mount) is judged by
age: its temp files go once untouched for the lease timeout. :meth:`FeatureStore.refresh_manifest` brings label,
split and the other manifest columns of stored rows in line with the current manifest the same
way (rewriting only parts whose rows differ).

**A run, in order** (what :func:`raydf.extract.run_extraction` does)::

    store = FeatureStore(output_uri)
    with store.acquire_lease(stale_after_s=...) as lease:     # LeaseHeld names a live holder
        store.ensure_config(lease, feature_config, provenance)
        store.compact(lease)
        identities = manifest_identities(manifest)             # raydf.sources, before any read
        store.refresh_manifest(lease, manifest)
        done = store.done(identities)
        todo = with_source_columns(<manifest rows not in done>, identities)
        ds.write_datasink(FeatureSink(output_uri, epoch=lease.epoch, rows_per_file=..., metadata=...))
        store.compact(lease)                                   # LeaseLost if taken over meanwhile
        status = store.status_table()
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from raydf import lease as L
from raydf import schema as S
from raydf.config import dict_diff as _diff
from raydf.sources import SourceIdentity

log = logging.getLogger(__name__)

__all__ = [
    "FeatureStore",
    "PartInfo",
    "CompactReport",
    "ExtractConfigMismatch",
    "LeaseHeld",
    "LeaseLost",
    "part_name",
    "SCHEMA_VERSION",
]

LeaseHeld = L.LeaseHeld
LeaseLost = L.LeaseLost

SCHEMA_VERSION = "raydf.features/2"  # rows keyed by (video_id, track_id), source identity columns
CONFIG_FILE = "_raydf_extract.json"
BROKEN_DIR = "_raydf_broken"
PART_PREFIX = "part-"
TMP_PREFIX = ".tmp-"
META_EPOCH = b"raydf.epoch"
META_SEQ = b"raydf.seq"
META_REV = b"raydf.rev"
_PART_RE = re.compile(r"^part-(\d{12})-(\d{19})-(\d{4})-([0-9a-f]{16})\.parquet$")
_TMP_RE = re.compile(r"^\.tmp-e(\d{12})-[0-9a-f]+$")
KEY_COLUMNS = (S.VIDEO_ID, S.TRACK_ID, S.STATUS, *S.SOURCE_COLUMNS)
REFRESH_COLUMNS = tuple(c for c in S.MANIFEST_COLUMNS if c not in (S.VIDEO_ID, S.URI))  # label, split, metadata


class ExtractConfigMismatch(RuntimeError):
    """The output already holds features made with another config, other weights or another layout."""


@dataclass(frozen=True, order=True)
class PartInfo:
    """One committed part; ordered by (epoch, seq, rev, name)."""

    epoch: int  # the writing run's lease epoch
    seq: int  # the write call within the run (a newer call has a larger seq)
    rev: int  # 0 as written; +1 for each rewrite by compaction or a manifest refresh
    name: str
    rows: int | None = field(default=None, compare=False)  # known when this process wrote it

    @property
    def tag(self) -> tuple[int, int]:
        """The order of the groups this part holds."""
        return (self.epoch, self.seq)


@dataclass(frozen=True)
class CompactReport:
    """What :meth:`FeatureStore.compact` did and what the store holds after it."""

    parts: int  # parts after compaction
    rows: int  # rows after compaction (one per (video, track))
    videos: int
    superseded: int  # rows removed
    rewritten: int  # parts rewritten without their superseded rows
    removed: int  # parts deleted whole
    quarantined: int  # unreadable parts moved to _raydf_broken/
    tmp_removed: int  # temp files of ended runs removed


def part_name(epoch: int, seq: int, rev: int = 0) -> str:
    """A fresh part file name (never reused: it ends in a random suffix)."""
    if not (0 <= epoch < 10**12 and 0 <= seq < 10**19 and 0 <= rev < 10**4):
        raise ValueError(f"part tag out of range: epoch={epoch} seq={seq} rev={rev}")
    return f"{PART_PREFIX}{epoch:012d}-{seq:019d}-{rev:04d}-{uuid.uuid4().hex[:16]}.parquet"


def parse_part_name(name: str) -> PartInfo | None:
    m = _PART_RE.match(posixpath.basename(name))
    if m is None:
        return None
    return PartInfo(epoch=int(m.group(1)), seq=int(m.group(2)), rev=int(m.group(3)), name=posixpath.basename(name))


# ---- the winner rule ----------------------------------------------------------------------------------------
Identity = tuple[Any, Any, Any, str]  # (source_uri, source_size, source_mtime, source_etag)


class _Row(NamedTuple):
    part: PartInfo
    row: int
    video: str
    track: int
    ok: bool
    identity: Identity


@dataclass(frozen=True)
class _Index:
    parts: list[PartInfo]
    winners: dict[str, list[_Row]]  # video -> the winning group's rows, one per track
    kept: dict[str, list[int]]  # part name -> sorted winning row numbers
    counts: dict[str, int]  # part name -> rows it holds


def _winning_groups(rows: list[_Row]) -> dict[str, list[_Row]]:
    """Apply the module's rule: video -> rows of its winning group (one per track)."""
    groups: dict[str, dict[tuple[int, int], list[_Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[r.video][r.part.tag].append(r)
    out = {}
    for video, by_tag in groups.items():
        tags = sorted(by_tag)  # oldest .. newest

        def ident(tag: tuple[int, int]) -> Identity:
            return min(by_tag[tag], key=lambda r: r.track).identity

        def ok(tag: tuple[int, int]) -> bool:
            return all(r.ok for r in by_tag[tag])

        current = ident(tags[-1])
        run = []  # newest first
        for tag in reversed(tags):
            if ident(tag) != current:
                break
            run.append(tag)
        chosen = next((t for t in run if ok(t)), run[0])
        best: dict[int, _Row] = {}
        for r in by_tag[chosen]:
            if r.track not in best or (r.part.rev, r.part.name) > (best[r.track].part.rev, best[r.track].part.name):
                best[r.track] = r
        out[video] = [best[t] for t in sorted(best)]
    return out


# ---- the store -------------------------------------------------------------------------------------------
class FeatureStore:
    """Exactly-once Parquet feature directory on a local filesystem or S3 (any fsspec filesystem).

    Args:
        uri: the output (local path, ``file://`` or ``s3://bucket/prefix``).
        filesystem: an fsspec filesystem to use instead of the one ``uri`` names (``uri`` is then a path on it).
    """

    def __init__(self, uri: str, *, filesystem: Any = None) -> None:
        import fsspec

        self.uri = uri.rstrip("/")
        if filesystem is None:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        else:
            self.fs, self.root = filesystem, filesystem._strip_protocol(self.uri)
        self.root = self.root.rstrip("/")
        self._local = L._is_local(self.fs)

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    # ---- the lease ---------------------------------------------------------------------------------------
    def acquire_lease(self, *, stale_after_s: float = L.DEFAULT_STALE_AFTER_S, heartbeat_s: float | None = None) -> L.Lease:
        """Take the writer lease (see :mod:`raydf.lease`); use it as a context manager.

        Raises:
            LeaseHeld: a live run holds this output (the message names host, PID and since when).
        """
        parts = self.parts()
        return L.acquire(
            self.fs, self.root, self.uri, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s,
            min_epoch=max((p.epoch for p in parts), default=0),
        )

    def holder(self) -> L.LeaseRecord | None:
        """The lease record of the newest epoch (the holder, or the last one if released)."""
        return L.current_record(self.fs, self.root)

    def check_epoch(self, epoch: int) -> None:
        """Fence for writers without the lease object (the sink): fail if a newer epoch holds the output.

        Raises:
            LeaseLost: a run with a newer epoch took the output over.
        """
        latest = L.latest_epoch(self.fs, self.root)
        if latest > epoch:
            raise LeaseLost(f"{self.uri}: epoch {epoch} was superseded by epoch {latest}; this run's writes stop")

    # ---- config ------------------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any] | None:
        """The stored extraction config (``feature_config``, ``provenance``, ``schema``), or None."""
        try:
            return json.loads(self.fs.cat_file(self._path(CONFIG_FILE)).decode())
        except FileNotFoundError:
            return None

    def ensure_config(self, lease: L.Lease, feature_config: dict[str, Any], provenance: dict[str, str]) -> None:
        """Record the config on first use; refuse to mix features made with anything else.

        Raises:
            ExtractConfigMismatch: naming the keys that differ (or the other layout version).
            LeaseLost: ``lease`` no longer holds the output.
        """
        lease.check()
        log.debug("ensure_config %s: begin", self.uri)
        wanted = {"feature_config": feature_config, "provenance": provenance, "schema": SCHEMA_VERSION}
        have = self.read_config()
        if have is None:
            names, _ = self._listing()
            if names:
                raise ExtractConfigMismatch(f"{self.uri} holds part files but no {CONFIG_FILE}: not a raydf output")
            self._put(CONFIG_FILE, json.dumps(wanted, indent=2, sort_keys=True).encode(), epoch=lease.epoch)
            log.debug("ensure_config %s: done (recorded)", self.uri)
            return
        if have.get("schema") != SCHEMA_VERSION:
            raise ExtractConfigMismatch(
                f"{self.uri} holds features in layout {have.get('schema')!r}; this raydf writes {SCHEMA_VERSION!r} "
                f"(rows keyed by video and track, with source identities). Write to a new output."
            )
        diffs = _diff(have, wanted)
        if diffs:
            raise ExtractConfigMismatch(
                f"{self.uri} already holds features extracted with a different config or weights "
                f"({'; '.join(diffs[:6])}). Write to a new output, or delete it to start over."
            )
        log.debug("ensure_config %s: done (matches)", self.uri)

    # ---- listing, writing, reading parts -----------------------------------------------------------------
    def _listing(self) -> tuple[list[str], list[dict[str, Any]]]:
        """(part-like file names, entries of local temp files)."""
        self.fs.invalidate_cache(self.root)  # s3fs caches listings; other processes write here
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return [], []
        names, tmps = [], []
        for e in entries:
            base = posixpath.basename(e["name"].rstrip("/"))
            if base.startswith(PART_PREFIX) and base.endswith(".parquet"):
                names.append(base)
            elif base.startswith(TMP_PREFIX):
                tmps.append(e)
        return sorted(names), tmps

    def parts(self) -> list[PartInfo]:
        """Committed parts, oldest first. Part-like files with foreign names are ignored (logged)."""
        names, _ = self._listing()
        out = []
        for n in names:
            info = parse_part_name(n)
            if info is None:
                log.warning("%s: ignoring %s (not a part name of layout %s)", self.uri, n, SCHEMA_VERSION)
            else:
                out.append(info)
        return sorted(out)

    def list_parts(self) -> list[str]:
        """Names of the committed parts, oldest first."""
        return [p.name for p in self.parts()]

    def _put(self, name: str, data: bytes, *, epoch: int) -> None:
        """Write a file whole: local temp file + rename, or one PUT."""
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)
            tmp = self._path(f"{TMP_PREFIX}e{epoch:012d}-{uuid.uuid4().hex}")
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, self._path(name))  # atomic rename on one filesystem
        else:
            self.fs.pipe_file(self._path(name), data)  # one PUT: all or nothing

    def write_part(self, table: pa.Table, *, epoch: int, seq: int | None = None, rev: int = 0) -> PartInfo:
        """Commit ``table`` as one part under the tag ``(epoch, seq)``.

        Args:
            table: feature rows (:data:`raydf.schema.FEATURE_SCHEMA`; schema metadata is kept).
                Each video's rows here are its whole group: one row per track, no duplicates.
            epoch: the writing run's lease epoch.
            seq: the write call within the run (default: the nanosecond clock).
            rev: 0 for new rows; rewrites use the original's ``rev + 1``.

        Returns:
            The committed part.

        Raises:
            ValueError: a (video_id, track_id) key occurs twice in ``table``.
        """
        if epoch < 1:
            raise ValueError(f"parts are written under a lease epoch >= 1, got {epoch}")
        seq = time.time_ns() if seq is None else seq
        meta = dict(table.schema.metadata or {})
        table = table.select(list(S.FEATURE_COLUMNS)).cast(S.FEATURE_SCHEMA)
        keys = list(zip(table.column(S.VIDEO_ID).to_pylist(), table.column(S.TRACK_ID).to_pylist()))
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"a part holds (video_id, track_id) = {dup} twice")
        meta.update({META_EPOCH: str(epoch).encode(), META_SEQ: str(seq).encode(), META_REV: str(rev).encode()})
        table = table.replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        info = PartInfo(epoch=epoch, seq=seq, rev=rev, name=part_name(epoch, seq, rev), rows=table.num_rows)
        self._put(info.name, sink.getvalue().to_pybytes(), epoch=epoch)
        return info

    def write_rows(self, table: pa.Table, *, epoch: int, seq: int | None = None, rows_per_file: int = 64) -> list[PartInfo]:
        """Commit one write call's rows as parts of about ``rows_per_file`` rows, never splitting a video.

        All parts get the same tag ``(epoch, seq)``. Returns the committed parts in order.
        """
        if not table.num_rows:
            return []
        seq = time.time_ns() if seq is None else seq
        table = table.sort_by([(S.VIDEO_ID, "ascending"), (S.TRACK_ID, "ascending")])
        vids = table.column(S.VIDEO_ID).to_pylist()
        out, start = [], 0
        while start < len(vids):
            end = min(start + max(1, rows_per_file), len(vids))
            while end < len(vids) and vids[end] == vids[end - 1]:
                end += 1  # keep the video's group whole
            out.append(self.write_part(table.slice(start, end - start), epoch=epoch, seq=seq))
            start = end
        return out

    def read_part(self, part: PartInfo | str, columns: list[str] | None = None) -> pa.Table:
        """All rows of one part as stored (superseded rows included), ``columns`` only if given."""
        name = part.name if isinstance(part, PartInfo) else part
        with self.fs.open(self._path(name), "rb") as f:
            return pq.read_table(f, columns=columns)

    # ---- the resolved view -------------------------------------------------------------------------------
    def _index(self) -> tuple[_Index, list[PartInfo]]:
        """Key columns of every part and the winners; (index, unreadable parts)."""
        for attempt in range(4):
            parts = self.parts()
            vanished = False
            broken: list[PartInfo] = []

            def read_keys(p: PartInfo) -> pa.Table | None | Exception:
                try:
                    return self.read_part(p, list(KEY_COLUMNS))
                except FileNotFoundError:
                    return None
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # not a Parquet file
                    return exc

            if self._local or len(parts) < 4:
                tables = [read_keys(p) for p in parts]
            else:
                with ThreadPoolExecutor(max_workers=16) as pool:
                    tables = list(pool.map(read_keys, parts))
            rows: list[_Row] = []
            counts: dict[str, int] = {}
            for p, t in zip(parts, tables):
                if t is None:
                    vanished = True  # removed by a compaction since the listing: list again
                    break
                if isinstance(t, Exception):
                    log.warning("%s: unreadable part %s (%s)", self.uri, p.name, t)
                    broken.append(p)
                    continue
                counts[p.name] = t.num_rows
                vids, tracks, status, uris, sizes, mtimes, etags = (t.column(c).to_pylist() for c in KEY_COLUMNS)
                for i, (v, tr, st, u, sz, mt, et) in enumerate(zip(vids, tracks, status, uris, sizes, mtimes, etags)):
                    rows.append(_Row(p, i, v, tr or 0, st == S.STATUS_OK, (u, sz, mt, et or "")))
            if vanished and attempt < 3:
                continue
            if vanished:
                raise FileNotFoundError(f"{self.uri}: parts keep vanishing while being read (a compaction is running)")
            winners = _winning_groups(rows)
            kept: dict[str, list[int]] = defaultdict(list)
            for group in winners.values():
                for r in group:
                    kept[r.part.name].append(r.row)
            return _Index(parts=[p for p in parts if p not in broken], winners=winners, kept={k: sorted(v) for k, v in kept.items()}, counts=counts), broken
        raise AssertionError("unreachable")

    def iter_parts(self, columns: list[str] | None = None, *, resolved: bool = True) -> Iterator[pa.Table]:
        """Stream the store one part at a time (bounded memory), ``columns`` only.

        Args:
            columns: columns to read (default: all).
            resolved: yield only winning rows, each (video_id, track_id) once (the default);
                False yields every stored row.

        Yields:
            One table per part that holds rows to yield.
        """
        if not resolved:
            for p in self.parts():
                yield self.read_part(p, columns)
            return
        index, _ = self._index()
        for p in index.parts:
            rows = index.kept.get(p.name)
            if not rows:
                continue
            t = self.read_part(p, columns)
            yield t if len(rows) == t.num_rows else t.take(pa.array(rows, pa.int64()))

    def read(self, columns: list[str] | None = None, *, resolved: bool = True) -> pa.Table:
        """All rows as one table: the winning row of each (video_id, track_id) unless ``resolved=False``.

        A part removed by a concurrent compaction between listing and reading makes the read
        start over (a few times), so a reader never misses rows that moved to a rewritten part.
        """
        for attempt in range(4):
            try:
                tables = list(self.iter_parts(columns, resolved=resolved))
                break
            except FileNotFoundError:
                if attempt == 3:
                    raise
                log.info("%s: a part vanished while reading (a compaction is running); reading again", self.uri)
        if not tables:
            empty = S.FEATURE_SCHEMA.empty_table()
            return empty if columns is None else empty.select(columns)
        return pa.concat_tables([t.replace_schema_metadata(None) for t in tables])

    def status_table(self) -> pa.Table:
        """The light columns of every winning row (no feature arrays): keys, status, error, identity, timings."""
        cols = [S.VIDEO_ID, S.TRACK_ID, S.STATUS, S.ERROR, S.NOTE, S.FACE_VALID, *S.SOURCE_COLUMNS, *S.TIMING_COLUMNS]
        return self.read(cols)

    def done(self, identities: Mapping[str, SourceIdentity | None]) -> set[str]:
        """Video ids whose stored result is final for their current input.

        Args:
            identities: video_id -> the input's current identity (:func:`raydf.sources.manifest_identities`);
                None (a missing input) is never done.

        Returns:
            The ids whose winning group is ``ok`` and was made from exactly that identity.
        """
        log.debug("done %s: begin", self.uri)
        index, _ = self._index()
        out = set()
        for vid, ident in identities.items():
            group = index.winners.get(vid)
            if ident is None or not group or not all(r.ok for r in group):
                continue
            if group[0].identity == (ident.uri, ident.size, ident.mtime, ident.etag or ""):
                out.add(vid)
        log.debug("done %s: %d of %d inputs done", self.uri, len(out), len(identities))
        return out

    def digest(self) -> str:
        """Fingerprint of the committed content (config + part names, which are never reused)."""
        h = hashlib.sha256(json.dumps(self.read_config(), sort_keys=True).encode())
        for name in self.list_parts():
            h.update(name.encode())
        return h.hexdigest()

    # ---- maintenance under the lease -----------------------------------------------------------------------
    def _rewrite_then_delete(self, lease: L.Lease, rewrites: list[tuple[PartInfo, pa.Table]], deletes: list[PartInfo], what: str) -> list[PartInfo]:
        """Write every replacement part, then (still holding the lease) delete the old ones."""
        written = []
        for old, table in rewrites:
            written.append(self.write_part(table, epoch=old.epoch, seq=old.seq, rev=old.rev + 1))
            log.debug("%s %s: wrote %s (replaces %s)", what, self.uri, written[-1].name, old.name)
        if deletes:
            lease.check()
            log.debug("%s %s: deleting %d parts", what, self.uri, len(deletes))
            self.fs.rm([self._path(p.name) for p in deletes])
            log.debug("%s %s: deleted %d parts", what, self.uri, len(deletes))
        return written

    def _quarantine(self, parts: list[PartInfo]) -> None:
        for p in parts:
            self.fs.makedirs(self._path(BROKEN_DIR), exist_ok=True)
            self.fs.mv(self._path(p.name), self._path(f"{BROKEN_DIR}/{p.name}"))

    def _remove_ended_tmp(self, lease: L.Lease) -> int:
        """Delete temp files of earlier epochs whose run has ended (released, or dead on this host), and,
        where liveness cannot be known (another host), those untouched for the lease timeout."""
        if not self._local:
            return 0  # object stores take whole PUTs: no temp files
        _, tmps = self._listing()
        if not tmps:
            return 0
        records = L.epoch_records(self.fs, self.root)
        now = time.time()
        doomed = []
        for e in tmps:
            m = _TMP_RE.match(posixpath.basename(e["name"]))
            if m is None:
                continue
            epoch = int(m.group(1))
            if epoch >= lease.epoch:
                continue
            state = L.holder_state(records[epoch]) if epoch in records else "unknown"
            age = now - float(e.get("mtime") or e.get("created") or now)
            if state == "ended" or (state == "unknown" and age > lease.stale_after_s):
                doomed.append(e["name"])
        if doomed:
            self.fs.rm(doomed)
        return len(doomed)

    def compact(self, lease: L.Lease) -> CompactReport:
        """Keep exactly the winning row of each (video_id, track_id); see the module docstring.

        Raises:
            LeaseLost: ``lease`` no longer holds the output (nothing is deleted then).
        """
        lease.check()
        log.debug("compact %s: begin (epoch %d)", self.uri, lease.epoch)
        tmp_removed = self._remove_ended_tmp(lease)
        index, broken = self._index()
        if broken:
            lease.check()
            self._quarantine(broken)
        rewrites, deletes = [], []
        superseded = 0
        kept_rows = 0
        for p in index.parts:
            keep, n = index.kept.get(p.name, []), index.counts[p.name]
            kept_rows += len(keep)
            if not keep:
                deletes.append(p)
                superseded += n
            elif len(keep) < n:
                table = self.read_part(p)
                rewrites.append((p, table.take(pa.array(keep, pa.int64()))))
                deletes.append(p)
                superseded += n - len(keep)
        log.debug("compact %s: %d parts to rewrite, %d to delete", self.uri, len(rewrites), len(deletes))
        self._rewrite_then_delete(lease, rewrites, deletes, "compact")
        if superseded:
            log.info("compacted %s: %d superseded rows, %d parts rewritten, %d removed", self.uri, superseded, len(rewrites), len(deletes) - len(rewrites))
        log.debug("compact %s: done", self.uri)
        return CompactReport(
            parts=len(index.parts) - len(deletes) + len(rewrites),
            rows=kept_rows,
            videos=len(index.winners),
            superseded=superseded,
            rewritten=len(rewrites),
            removed=len(deletes) - len(rewrites),
            quarantined=len(broken),
            tmp_removed=tmp_removed,
        )

    def refresh_manifest(self, lease: L.Lease, manifest: pa.Table) -> int:
        """Make label, split and the other manifest columns of stored rows match ``manifest``.

        Only :data:`REFRESH_COLUMNS` change (``video_id`` and ``uri`` stay: a moved input is a new
        identity and is extracted again); rows of videos not in ``manifest`` are left alone; only
        parts whose rows differ are rewritten (same tag, ``rev + 1``).

        Returns:
            The number of rows changed.

        Raises:
            LeaseLost: ``lease`` no longer holds the output.
        """
        lease.check()
        log.debug("refresh %s: begin", self.uri)
        cols = [c for c in REFRESH_COLUMNS if c in manifest.column_names]
        want = {}
        mcols = {c: manifest.column(c).cast(S.FEATURE_SCHEMA.field(c).type).to_pylist() for c in cols}
        for i, vid in enumerate(manifest.column(S.VIDEO_ID).to_pylist()):
            want[vid] = tuple(mcols[c][i] for c in cols)
        rewrites, changed = [], 0
        for p in self.parts():
            t = self.read_part(p, [S.VIDEO_ID, *cols])
            have = {c: t.column(c).to_pylist() for c in cols}
            vids = t.column(S.VIDEO_ID).to_pylist()
            diff = [i for i, v in enumerate(vids) if v in want and tuple(have[c][i] for c in cols) != want[v]]
            if not diff:
                continue
            changed += len(diff)
            full = self.read_part(p)
            for j, c in enumerate(cols):
                values = [want[v][j] if v in want else have[c][i] for i, v in enumerate(vids)]
                full = full.set_column(full.schema.get_field_index(c), S.FEATURE_SCHEMA.field(c), pa.array(values, S.FEATURE_SCHEMA.field(c).type))
            rewrites.append((p, full))
        log.debug("refresh %s: %d parts to rewrite", self.uri, len(rewrites))
        self._rewrite_then_delete(lease, rewrites, [p for p, _ in rewrites], "refresh")
        if changed:
            log.info("%s: %d rows brought in line with the manifest (%d parts rewritten)", self.uri, changed, len(rewrites))
        log.debug("refresh %s: done", self.uri)
        return changed
