"""Helpers for the feature store tests: tiny feature rows and a filesystem that crashes on cue."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from raydf import schema as S
from raydf.sources import SourceIdentity


class InjectedCrash(Exception):
    """Stands for the process dying at this point (raised instead of the operation)."""


def identity(vid: str, version: int = 0) -> SourceIdentity:
    """A distinct identity per (video, version): a replaced file has another size and mtime."""
    return SourceIdentity(uri=f"/data/{vid}.mp4", size=1000 + version, mtime=1.7e9 + version, etag="")


def group(vid: str, status: str, tracks: int, ident: SourceIdentity | None, *, marker: str = "", label: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """One extraction's rows of one video: tracks 0..n-1 when ok, one track-0 row when an error."""
    n = tracks if status == S.STATUS_OK else 1
    src = ident.columns() if ident is not None else {c: None for c in S.SOURCE_COLUMNS}
    return [
        {
            S.VIDEO_ID: vid, S.URI: ident.uri if ident else f"/data/{vid}.mp4", S.LABEL: label, S.SPLIT: split,
            S.TRACK_ID: t, S.STATUS: status, S.ERROR: "" if status == S.STATUS_OK else "cannot decode",
            S.NOTE: marker, **src,
        }
        for t in range(n)
    ]


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return S.feature_table(rows)


def rows_of(store, columns=(S.VIDEO_ID, S.TRACK_ID, S.STATUS, S.NOTE), resolved: bool = True) -> list[tuple]:
    t = store.read(list(columns), resolved=resolved)
    return sorted(zip(*(t.column(c).to_pylist() for c in columns)))


class CrashingFS:
    """Wraps an fsspec filesystem and raises :class:`InjectedCrash` at its k-th operation
    (``arm(k)``) or at its k-th operation of one kind (``arm((kind, k))``, kinds as in :data:`KINDS`).

    Counted operations: listing, opening, renaming, deleting (one path at a time, so a crash
    can fall between two deletes of one call), creating directories, whole-file reads and
    writes. A crash while opening a local file for writing leaves a torn file behind, as a
    killed writer would; an object-store PUT (``pipe_file``) is all-or-nothing.
    """

    KINDS = ("ls", "open-r", "open-w", "mv", "rm", "makedirs", "pipe_file", "cat_file")

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.crash_at: int | tuple[str, int] | None = None
        self.ops = 0
        self.by_kind: dict[str, int] = {}
        self.crashed_in: str | None = None

    @property
    def protocol(self) -> Any:
        return self._inner.protocol

    def _strip_protocol(self, path: str) -> str:
        return self._inner._strip_protocol(path)

    def invalidate_cache(self, path: str | None = None) -> None:
        self._inner.invalidate_cache(path)

    def arm(self, crash_at: int | tuple[str, int] | None) -> None:
        self.ops, self.by_kind, self.crash_at, self.crashed_in = 0, {}, crash_at, None

    def _tick(self, what: str, torn=None) -> None:
        self.ops += 1
        kind = what.split()[0]
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        due = self.ops == self.crash_at if isinstance(self.crash_at, int) else (
            self.crash_at is not None and self.crash_at == (kind, self.by_kind[kind])
        )
        if due:
            if torn is not None:
                torn()
            self.crashed_in = what
            raise InjectedCrash(f"crash at operation {self.ops}: {what}")

    def ls(self, path, detail=False, **kw):
        self._tick(f"ls {path}")
        return self._inner.ls(path, detail=detail, **kw)

    def open(self, path, mode="rb", **kw):
        torn, kind = None, "open-w" if "w" in mode else "open-r"
        if "w" in mode and "file" in (self.protocol if isinstance(self.protocol, tuple) else (self.protocol,)):

            def torn() -> None:
                with self._inner.open(path, "wb") as f:
                    f.write(b"PAR1 torn")

        self._tick(f"{kind} {path}", torn)
        return self._inner.open(path, mode, **kw)

    def mv(self, a, b, **kw):
        self._tick(f"mv {a} {b}")
        return self._inner.mv(a, b, **kw)

    def rm(self, paths, **kw):
        for p in paths if isinstance(paths, list) else [paths]:
            self._tick(f"rm {p}")  # one delete at a time: a crash can fall between two
            self._inner.rm(p, **kw)

    def rm_file(self, path):
        self._tick(f"rm {path}")
        return self._inner.rm_file(path)

    def makedirs(self, path, exist_ok=False):
        self._tick(f"makedirs {path}")
        return self._inner.makedirs(path, exist_ok=exist_ok)

    def pipe_file(self, path, data, **kw):
        self._tick(f"pipe_file {path}")
        return self._inner.pipe_file(path, data, **kw)

    def cat_file(self, path, **kw):
        self._tick(f"cat_file {path}")
        return self._inner.cat_file(path, **kw)
