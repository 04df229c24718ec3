"""The feature store: a directory of Parquet part files with exactly-once semantics.

Layout of an output URI (local path or ``s3://bucket/prefix``)::

    _raydf_extract.json        extraction config + extractor provenance (written once)
    part-<sha1 of ids>.parquet one file per written bundle of videos (:data:`raydf.schema.FEATURE_SCHEMA`)

Parts are written whole (local: temp file + atomic rename; object stores: one PUT),
named deterministically from the video ids they hold, and tagged with the run's
sequence number. :meth:`FeatureStore.compact` makes the directory hold every
video at most once: an ``ok`` row beats an ``error`` row, a later run beats an
earlier one; files holding superseded rows are rewritten without them. It runs
before and after every extraction, so a run killed mid-way and rerun ends with
each input present exactly once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raydf import schema as S

log = logging.getLogger(__name__)

__all__ = ["FeatureStore", "ExtractConfigMismatch", "CompactReport", "part_name"]

CONFIG_FILE = "_raydf_extract.json"
PART_PREFIX = "part-"
META_RUN_SEQ = b"raydf.run_seq"


class ExtractConfigMismatch(RuntimeError):
    """The output already holds features made with another config or other weights."""


@dataclass(frozen=True)
class CompactReport:
    parts: int
    rows: int
    superseded: int
    rewritten: int
    removed_broken: int


def part_name(video_ids: list[str]) -> str:
    """Deterministic part file name from the set of video ids it holds."""
    digest = hashlib.sha1("\n".join(sorted(video_ids)).encode()).hexdigest()[:20]
    return f"{PART_PREFIX}{digest}.parquet"


class FeatureStore:
    """Exactly-once Parquet feature directory on any fsspec filesystem."""

    def __init__(self, uri: str) -> None:
        import fsspec

        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self._local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    # ---- config ------------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def read_config(self) -> dict[str, Any] | None:
        path = self._path(CONFIG_FILE)
        self.fs.invalidate_cache(self.root)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return json.loads(f.read().decode())

    def ensure_config(self, feature_config: dict[str, Any], provenance: dict[str, str]) -> None:
        """Record the config on first use; refuse to mix features made with anything else.

        Raises:
            ExtractConfigMismatch: naming the keys that differ.
        """
        wanted = {"feature_config": feature_config, "provenance": provenance, "schema": "raydf.features/1"}
        have = self.read_config()
        if have is None:
            if self.list_parts():
                raise ExtractConfigMismatch(f"{self.uri} holds part files but no {CONFIG_FILE}: not a raydf output")
            self.fs.makedirs(self.root, exist_ok=True)
            self._write_bytes(CONFIG_FILE, json.dumps(wanted, indent=2, sort_keys=True).encode())
            return
        diffs = _diff(have, wanted)
        if diffs:
            raise ExtractConfigMismatch(
                f"{self.uri} already holds features extracted with a different config or weights "
                f"({'; '.join(diffs[:6])}). Write to a new output, or delete it to start over."
            )

    # ---- parts -------------------------------------------------------------------------------
    def list_parts(self) -> list[str]:
        self.fs.invalidate_cache(self.root)  # s3fs caches listings; other processes write here
        if not self.fs.exists(self.root):
            return []
        names = [posixpath.basename(p) for p in self.fs.ls(self.root, detail=False)]
        return sorted(n for n in names if n.startswith(PART_PREFIX) and n.endswith(".parquet"))

    def _write_bytes(self, name: str, data: bytes) -> None:
        if self._local:
            tmp = self._path(f".tmp-{uuid.uuid4().hex}-{name}")
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, self._path(name))  # atomic rename on one filesystem
        else:
            with self.fs.open(self._path(name), "wb") as f:  # one PUT: all or nothing
                f.write(data)

    def write_part(self, table: pa.Table, run_seq: int) -> str:
        """Write one part atomically; returns its file name."""
        meta = dict(table.schema.metadata or {})
        meta[META_RUN_SEQ] = str(run_seq).encode()
        table = table.replace_schema_metadata(meta)
        name = part_name(table.column(S.VIDEO_ID).to_pylist())
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self._write_bytes(name, sink.getvalue().to_pybytes())
        return name

    def _read_part(self, name: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self._path(name), "rb") as f:
            return pq.read_table(f, columns=columns)

    def _run_seq(self, name: str) -> int:
        with self.fs.open(self._path(name), "rb") as f:
            meta = pq.read_schema(f).metadata or {}
        return int(meta.get(META_RUN_SEQ, b"0"))

    # ---- exactly once ------------------------------------------------------------------------
    def compact(self) -> CompactReport:
        """Keep one row per video (ok beats error, later run beats earlier); drop temp/broken files."""
        if self._local and self.fs.exists(self.root):
            for p in self.fs.ls(self.root, detail=False):
                if posixpath.basename(p).startswith(".tmp-"):
                    self.fs.rm(p)  # left by a killed writer; its rows were never committed
        index: list[tuple[str, int, str, bool, int]] = []  # (part, row, video_id, ok, seq)
        broken = 0
        for name in self.list_parts():
            try:
                t = self._read_part(name, [S.VIDEO_ID, S.STATUS])
                seq = self._run_seq(name)
            except Exception as exc:  # an unreadable part holds no committed rows
                log.warning("removing unreadable part %s: %s", name, exc)
                self.fs.rm(self._path(name))
                broken += 1
                continue
            for i, (vid, status) in enumerate(zip(t.column(0).to_pylist(), t.column(1).to_pylist())):
                index.append((name, i, vid, status == S.STATUS_OK, seq))
        best: dict[str, tuple[bool, int, str, int]] = {}
        for name, i, vid, ok, seq in index:
            key = (ok, seq, name, -i)
            if vid not in best or key > best[vid]:
                best[vid] = key
        losers: dict[str, set[int]] = defaultdict(set)
        for name, i, vid, ok, seq in index:
            if best[vid] != (ok, seq, name, -i):
                losers[name].add(i)
        for name, rows in losers.items():
            table = self._read_part(name)
            seq = self._run_seq(name)
            keep = pa.array([i not in rows for i in range(table.num_rows)])
            kept = table.filter(keep)
            if kept.num_rows:
                new = self.write_part(kept, seq)
                if new != name:
                    self.fs.rm(self._path(name))
            else:
                self.fs.rm(self._path(name))
        superseded = sum(len(r) for r in losers.values())
        if superseded:
            log.info("compacted %s: %d superseded rows in %d files", self.uri, superseded, len(losers))
        return CompactReport(parts=len(self.list_parts()), rows=len(best), superseded=superseded, rewritten=len(losers), removed_broken=broken)

    def status_table(self) -> pa.Table:
        """``video_id``, ``status`` and the light columns of every row (no feature arrays)."""
        cols = [S.VIDEO_ID, S.STATUS, S.ERROR, S.FACE_VALID, *S.TIMING_COLUMNS]
        tables = [self._read_part(n, cols) for n in self.list_parts()]
        if not tables:
            return pa.table({c: pa.array([], S.FEATURE_SCHEMA.field(c).type) for c in cols})
        return pa.concat_tables(tables)

    def done_ids(self) -> set[str]:
        t = self.status_table()
        return set(t.filter(pc.equal(t[S.STATUS], S.STATUS_OK)).column(S.VIDEO_ID).to_pylist())

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All rows (after :meth:`compact`, one per video)."""
        tables = [self._read_part(n, columns) for n in self.list_parts()]
        if not tables:
            return S.FEATURE_SCHEMA.empty_table() if columns is None else S.FEATURE_SCHEMA.empty_table().select(columns)
        return pa.concat_tables(tables)

    def iter_tables(self, columns: list[str] | None = None):  # noqa: ANN201 - Iterator[pa.Table]
        """Committed rows one part at a time (bounded memory), with only ``columns``."""
        for name in self.list_parts():
            yield self._read_part(name, columns)

    def digest(self) -> str:
        """Fingerprint of the committed content (part names + config)."""
        h = hashlib.sha256(json.dumps(self.read_config(), sort_keys=True).encode())
        for name in self.list_parts():
            h.update(name.encode())
        return h.hexdigest()


def _diff(have: Any, want: Any, prefix: str = "") -> list[str]:
    if isinstance(have, dict) and isinstance(want, dict):
        out = []
        for k in sorted(set(have) | set(want)):
            out += _diff(have.get(k), want.get(k), f"{prefix}{k}.")
        return out
    if have != want:
        return [f"{prefix.rstrip('.')}: stored {have!r}, now {want!r}"]
    return []
