"""Source identity of input videos: what a stored feature row was made from.

A row in the feature store counts as done only while the identity it records matches the
input's current identity, so a re-encoded, replaced or moved video is extracted again.

- local files: ``os.stat`` (size + mtime; no ETag);
- object stores (S3, GCS, ...): one listing per parent prefix (fsspec ``ls(detail=True)``),
  taking the ETag where the store gives one (then ``mtime`` is null: the ETag names the
  content, so re-uploading the same bytes is not a change) and LastModified otherwise, so a
  dataset of 100k files costs one LIST page per 1,000 keys, not 100k HEAD requests. Parents
  holding fewer than ``min_list`` of the wanted files are asked per file (HEAD);
- HTTP(S) URLs (e.g. presigned): one HEAD (or GET) per file, since HTTP has no listing.

The URI inside an identity has its user info and query string removed, so a re-signed
presigned URL does not force re-extraction, and no credential is ever stored in a row.
Credentials travel in the environment (AWS_* variables, instance profiles), never in URIs.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from raydf import schema as S

log = logging.getLogger(__name__)

__all__ = ["SourceIdentity", "strip_uri", "source_identities", "manifest_identities", "with_source_columns"]


@dataclass(frozen=True)
class SourceIdentity:
    """What a feature row was made from.

    Attributes:
        uri: the input URI without user info and query string (:func:`strip_uri`).
        size: bytes.
        mtime: seconds since the epoch, or None where the store gives an ETag instead.
        etag: the object store's ETag ("" where the filesystem has none).
    """

    uri: str
    size: int
    mtime: float | None
    etag: str

    def columns(self) -> dict[str, Any]:
        """The identity as :data:`raydf.schema.SOURCE_COLUMNS` values."""
        return {S.SOURCE_URI: self.uri, S.SOURCE_SIZE: self.size, S.SOURCE_MTIME: self.mtime, S.SOURCE_ETAG: self.etag}

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> SourceIdentity | None:
        """The identity a stored row records, or None where the row has none (an unreadable input)."""
        uri, size = row.get(S.SOURCE_URI), row.get(S.SOURCE_SIZE)
        if uri is None or size is None:
            return None
        return cls(uri=uri, size=int(size), mtime=row.get(S.SOURCE_MTIME), etag=row.get(S.SOURCE_ETAG) or "")


def _split_scheme(uri: str) -> tuple[str, str]:
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return scheme.lower(), rest
    return "", uri


def strip_uri(uri: str) -> str:
    """``uri`` without user info (``user:secret@``) and query string (``?X-Amz-Signature=...``).

    Local paths (no scheme, or ``file://``) are returned unchanged: ``?`` is a legal file name character.
    """
    scheme, rest = _split_scheme(uri)
    if scheme in ("", "file", "local"):
        return uri
    netloc, slash, path = rest.partition("/")
    netloc = netloc.rsplit("@", 1)[-1].split("?", 1)[0]
    path = path.split("?", 1)[0]
    return f"{scheme}://{netloc}{slash}{path}"


def _local_path(uri: str) -> str | None:
    scheme, rest = _split_scheme(uri)
    if scheme in ("file", "local"):
        return rest
    return uri if scheme == "" else None


def _as_timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return parsedate_to_datetime(str(value)).timestamp()
        except (TypeError, ValueError):
            return None


def _from_entry(uri: str, entry: Mapping[str, Any]) -> SourceIdentity | None:
    """An fsspec ``info``/``ls(detail=True)`` entry -> identity (None for a directory or an entry without size)."""
    if entry.get("type") == "directory" or entry.get("size") is None:
        return None
    etag = entry.get("ETag") or entry.get("etag") or entry.get("md5Hash") or ""
    mtime = None
    if not etag:
        for key in ("LastModified", "last_modified", "Last-Modified", "mtime", "updated", "modified", "created"):
            mtime = _as_timestamp(entry.get(key))
            if mtime is not None:
                break
    return SourceIdentity(uri=strip_uri(uri), size=int(entry["size"]), mtime=mtime, etag=str(etag))


def _stat_local(uri: str, path: str) -> SourceIdentity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return SourceIdentity(uri=uri, size=st.st_size, mtime=st.st_mtime, etag="")


def source_identities(uris: Iterable[str], *, min_list: int = 4, max_workers: int = 16) -> dict[str, SourceIdentity | None]:
    """The current identity of every input URI, with few requests.

    Args:
        uris: input URIs (local paths, ``file://``, ``s3://``, ``gs://``, ``http(s)://`` ...).
        min_list: an object-store prefix holding at least this many of the URIs is listed once;
            fewer are asked one HEAD each.
        max_workers: parallel listings/HEADs.

    Returns:
        URI (as given) -> :class:`SourceIdentity`, or None where the input is missing or unreadable.
    """
    import fsspec

    uris = list(dict.fromkeys(uris))
    log.debug("source identities: looking up %d inputs", len(uris))
    out: dict[str, SourceIdentity | None] = {}
    remote: dict[tuple[str, str], list[str]] = defaultdict(list)  # (scheme, parent) -> uris
    singles: list[str] = []
    for uri in uris:
        local = _local_path(uri)
        if local is not None:
            out[uri] = _stat_local(uri, local)
            continue
        scheme, _ = _split_scheme(uri)
        if scheme in ("http", "https"):
            singles.append(uri)
        else:
            remote[(scheme, posixpath.dirname(strip_uri(uri)))].append(uri)
    listed: list[tuple[str, list[str]]] = []
    for (_, parent), group in remote.items():
        if len(group) >= min_list:
            listed.append((parent, group))
        else:
            singles.extend(group)

    def list_parent(item: tuple[str, list[str]]) -> dict[str, SourceIdentity | None]:
        parent, group = item
        fs, path = fsspec.core.url_to_fs(parent)
        fs.invalidate_cache(path)
        try:
            entries = {fs._strip_protocol(e["name"]).rstrip("/"): e for e in fs.ls(path, detail=True)}
        except FileNotFoundError:
            entries = {}
        res = {}
        for uri in group:
            entry = entries.get(fs._strip_protocol(strip_uri(uri)))
            res[uri] = _from_entry(uri, entry) if entry is not None else None
        return res

    def info_one(uri: str) -> dict[str, SourceIdentity | None]:
        scheme, _ = _split_scheme(uri)
        target = uri if scheme in ("http", "https") else strip_uri(uri)  # a presigned URL needs its query to be read
        try:
            fs, path = fsspec.core.url_to_fs(target)
            fs.invalidate_cache(path)
            return {uri: _from_entry(uri, fs.info(path))}
        except (FileNotFoundError, PermissionError, OSError) as exc:
            log.debug("no identity for %s: %s", strip_uri(uri), exc)
            return {uri: None}

    if listed or singles:
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            for res in pool.map(list_parent, listed):
                out.update(res)
            for res in pool.map(info_one, singles):
                out.update(res)
    log.info("source identities of %d inputs: %d listings, %d single look-ups", len(uris), len(listed), len(singles))
    return {uri: out[uri] for uri in uris}


def manifest_identities(manifest: pa.Table, **kwargs: Any) -> dict[str, SourceIdentity | None]:
    """``video_id`` -> current identity of its ``uri`` for every manifest row (see :func:`source_identities`)."""
    ids = manifest.column(S.VIDEO_ID).to_pylist()
    uris = manifest.column(S.URI).to_pylist()
    found = source_identities(uris, **kwargs)
    return {vid: found[uri] for vid, uri in zip(ids, uris)}


def with_source_columns(manifest: pa.Table, identities: Mapping[str, SourceIdentity | None]) -> pa.Table:
    """``manifest`` with :data:`raydf.schema.SOURCE_COLUMNS` appended from ``identities`` (by video id).

    Capture identities *before* the videos are read: a file that changes during extraction
    then carries the older identity and is extracted again by the next run.
    """
    rows = [identities.get(v) for v in manifest.column(S.VIDEO_ID).to_pylist()]
    out = manifest
    for col in S.SOURCE_COLUMNS:
        if col in out.column_names:
            out = out.drop_columns([col])
    for col in S.SOURCE_COLUMNS:
        values = [None if r is None else r.columns()[col] for r in rows]
        out = out.append_column(S.FEATURE_SCHEMA.field(col), pa.array(values, S.FEATURE_SCHEMA.field(col).type))
    return out
