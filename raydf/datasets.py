"""Input manifests: one row per video, built from the official dataset layouts.

A manifest is a :data:`raydf.schema.MANIFEST_SCHEMA` table (``video_id``, ``uri``,
``label``, ``dataset``, ``split``, ``source_id``, ``method``, ``compression``,
``meta``). :func:`build_manifest` walks a dataset root, local or any fsspec URL
(``s3://bucket/prefix``; s3fs takes credentials and ``AWS_ENDPOINT_URL`` from the
environment), once, and hands the files to one of the layouts in the :data:`LAYOUTS`
registry (its names are :data:`raydf.schema.LAYOUT_NAMES`):

``ffpp`` (FaceForensics++)
    ``original_sequences/{youtube,actors}/<comp>/videos`` and
    ``manipulated_sequences/<method>/<comp>/videos``; one compression and a set of
    methods per manifest. Splits come from ``splits/{train,val,test}.json`` (lists of
    ``[id, id]`` pairs): an original takes the split of the pair holding its id, a fake
    ``a_b`` the split of the pair ``{a, b}`` (either order). Actors originals and
    DeepFakeDetection fakes are in no split (``""``) and are only included when
    DeepFakeDetection is among the methods. ``video_id`` =
    ``<dataset>/{original|actors|<method>}/<comp>/<stem>``; ``source_id`` of a fake
    ``a_b`` is ``a`` (the target video it is rendered on), of a DeepFakeDetection fake
    ``01_02__scene__HASH`` it is ``01__scene`` (its actors original).
``celebdf`` (Celeb-DF v2)
    ``Celeb-real``, ``YouTube-real`` (real), ``Celeb-synthesis`` (fake). Videos in
    ``List_of_testing_videos.txt`` get split ``"test"``, all others ``""`` so the
    trainer carves train/val from them by ``source_id``. ``video_id`` =
    ``<dataset>/<folder>/<stem>``; ``source_id`` of ``idA_idB_NNNN`` is ``idA_NNNN``.
``dfdc`` (DFDC)
    ``metadata.json`` beside the videos of each part folder (and/or one at the root).
    DFDC's own ``"split": "train"`` marks the competition's training release, not a
    protocol split, so such rows get ``""`` (the trainer splits them by ``source_id``,
    keeping an original with its fakes); ``"val"`` / ``"test"`` are kept. ``video_id`` =
    ``<dataset>/<path relative to root without extension>``; ``source_id`` = stem of
    ``original`` for a fake, own stem for a real video.
``folders``
    ``real/`` and ``fake/`` (what ``raydf make-dataset`` writes). ``metadata.jsonl`` at
    the root, when present, supplies ``video_id``, ``source_id``, ``method`` (or
    ``family``) and ``split`` per ``file`` (its other scalar fields go to ``meta``; ``video_id``
    is taken as written there, e.g. ``0003_blend``); otherwise ``video_id`` =
    ``<dataset>/<path relative to root without extension>``, ``source_id`` is the part
    of a fake's stem before the first ``_`` (``0003_blend`` -> ``0003``), and the part
    after it is the method when it starts with a letter.

Videos are files whose extension, in any case, is one of :data:`VIDEO_EXTENSIONS`
(the containers FFmpeg/PyAV decode). Symbolic links to files and folders are followed
(a link back into its own ancestors is not).

Same stems (the id rule): ids are made from file stems, so two videos of one folder
with one stem (``clip.mp4`` beside ``clip.mov``) would share an id; both then take
their whole file name instead (``.../clip.mov``, ``.../clip.mp4``), whatever the order
they were found in, and every other id stays stem-based (so a file added beside
``clip.mp4`` later renames its id). Ids that still repeat (two ``metadata.jsonl``
lines giving one ``video_id``, a user manifest) raise :class:`DuplicateVideoIdError`
naming the files (:func:`check_unique_ids`).

What the walk leaves out (the skip rule), counted by :class:`SkipReason`, never
silently: files inside a folder whose name starts with ``.`` and files whose name
starts with ``.`` (``hidden``); files named ``._*`` or inside ``__MACOSX/``, the
AppleDouble companions macOS writes beside real files on foreign volumes and in zips
(``appledouble``); files in a layout's video folders without a video extension
(``not_video``); files outside the layout's folders and files (``outside_layout``);
FaceForensics++ videos of a compression or method not asked for (``not_selected``);
DFDC videos named in no ``metadata.json`` (``not_in_metadata``); broken links, entries
that are not regular files, local files this process may not read, folders that
cannot be listed and links back to an ancestor folder (``unreadable``). Folder names
are tested below the root only, and before the file name (``.cache/._x.mp4`` is
hidden). The layout's own files (``splits/*.json``, ``List_of_testing_videos.txt``,
``metadata.json``, ``metadata.jsonl``) are read, not skipped. :func:`build_manifest`
logs one line per reason (INFO; WARNING for ``not_in_metadata`` and ``unreadable``)
and attaches a :class:`SkipReport` to the table it returns; read it with
:func:`skip_report`.

``method`` is ``""`` exactly for real videos; fakes whose method the layout does not
name get :data:`UNKNOWN_METHOD`. A user may also pass a manifest file (``.parquet`` /
``.csv``) instead of a root: see :func:`read_manifest`.

Malformed layout files (``splits/*.json``, ``List_of_testing_videos.txt``,
``metadata.json``, ``metadata.jsonl``, manifest CSV) raise :class:`ManifestError`
naming the file and 1-based line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raydf.schema import (
    COMPRESSION,
    DATASET,
    FAKE,
    FFPP_METHODS,
    LABEL,
    LAYOUT_NAMES,
    MANIFEST_COLUMNS,
    MANIFEST_SCHEMA,
    META,
    METHOD,
    REAL,
    SOURCE_ID,
    SPLIT,
    SPLITS,
    URI,
    VIDEO_ID,
)

log = logging.getLogger(__name__)

__all__ = [
    "ManifestError",
    "DuplicateVideoIdError",
    "Layout",
    "LAYOUTS",
    "LAYOUT_NAMES",
    "FFPP_METHODS",
    "FFPP_COMPRESSIONS",
    "UNKNOWN_METHOD",
    "VIDEO_EXTENSIONS",
    "SkipReason",
    "SkipReport",
    "detect_layout",
    "build_manifest",
    "read_manifest",
    "write_manifest",
    "check_unique_ids",
    "skip_report",
]

FFPP_COMPRESSIONS = ("raw", "c23", "c40")
UNKNOWN_METHOD = "unknown"  # a fake whose manipulation method the layout does not name
# Every container FFmpeg (PyAV) decodes that users bring videos in; matched case-insensitively.
VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
    ".ts", ".mts", ".m2ts", ".3gp", ".flv", ".wmv", ".ogv",
)
MANIFEST_SUFFIXES = (".parquet", ".csv")
REQUIRED_COLUMNS = (VIDEO_ID, URI, LABEL)  # the rest of MANIFEST_COLUMNS have defaults

_VIDEO_EXTENSIONS = frozenset(VIDEO_EXTENSIONS)
_APPLEDOUBLE_DIR = "__MACOSX"  # where macOS zips keep the ._* companions
_SKIP_EXAMPLES = 3  # paths kept per skip reason
_SKIPS_KEY = b"raydf.manifest_skips"  # Arrow schema metadata of a built manifest; read by skip_report() only

_FFPP_DFD = "DeepFakeDetection"  # the actors method: not in the official pair splits
_FFPP_PAIR = re.compile(r"^(?P<target>[^_]+)_(?P<donor>[^_]+)$")  # 071_054
_FFPP_DFD_NAME = re.compile(r"^(?P<target>\d+)_(?P<donor>\d+)__(?P<scene>.+)__(?P<tag>[^_]+)$")  # 01_02__scene__YVGY8LOK
_FFPP_VIDEO_FOLDER = re.compile(  # any FF++ video folder, selected or not
    rf"^(original_sequences/(youtube|actors)|manipulated_sequences/({'|'.join(map(re.escape, FFPP_METHODS))}))"
    rf"/({'|'.join(FFPP_COMPRESSIONS)})/videos$"
)

_CELEBDF_REAL = ("Celeb-real", "YouTube-real")
_CELEBDF_FAKE = ("Celeb-synthesis",)
_CELEBDF_TEST_LIST = "List_of_testing_videos.txt"
_CELEBDF_TEST_LABELS = {"1": REAL, "0": FAKE}  # the test list's convention is 1 = real, the reverse of ours
_CELEBDF_SYNTHESIS = re.compile(r"^(?P<target>id\d+)_(?P<donor>id\d+)_(?P<clip>\d+)$")  # id0_id1_0000

_DFDC_METADATA = "metadata.json"
_DFDC_LABELS = {"REAL": REAL, "FAKE": FAKE}

_FOLDER_LABELS = {"real": REAL, "fake": FAKE}
_FOLDER_METADATA = "metadata.jsonl"
_FOLDER_CONSUMED_KEYS = {"file", "label", VIDEO_ID, SOURCE_ID, METHOD, SPLIT}  # the rest goes to META

_LABEL_WORDS = {"0": REAL, "1": FAKE, "real": REAL, "fake": FAKE}


class ManifestError(ValueError):
    """A dataset root or manifest file cannot be turned into a valid manifest.

    Attributes:
        source: the offending file, directory or URI.
        line: 1-based line in ``source``, or None when not applicable.
        reason: what is wrong.
    """

    def __init__(self, source: str, reason: str, line: int | None = None) -> None:
        where = f"{source}, line {line}" if line is not None else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


class DuplicateVideoIdError(ManifestError):
    """Several manifest rows share a ``video_id``.

    Attributes:
        duplicates: each repeated ``video_id`` -> the URIs of its rows, sorted.
    """

    def __init__(self, source: str, duplicates: Mapping[str, Sequence[str]]) -> None:
        shown = "; ".join(f"{vid!r} in {', '.join(uris)}" for vid, uris in list(duplicates.items())[:5])
        more = f"; and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        super().__init__(source, f"{len(duplicates)} duplicate video_id(s): {shown}{more}")
        self.duplicates = MappingProxyType({vid: tuple(uris) for vid, uris in duplicates.items()})


# ---- what a walk leaves out --------------------------------------------------------------------


class SkipReason(StrEnum):
    """Why a file under a dataset root is not in its manifest (see the module's skip rule)."""

    HIDDEN = "hidden"
    APPLEDOUBLE = "appledouble"
    NOT_VIDEO = "not_video"
    OUTSIDE_LAYOUT = "outside_layout"
    NOT_SELECTED = "not_selected"
    NOT_IN_METADATA = "not_in_metadata"
    UNREADABLE = "unreadable"

    @property
    def description(self) -> str:
        return _SKIP_DESCRIPTIONS[self]


_SKIP_DESCRIPTIONS = {
    SkipReason.HIDDEN: "hidden file(s) (the name or a folder starts with '.')",
    SkipReason.APPLEDOUBLE: "AppleDouble file(s) (._* or under __MACOSX/)",
    SkipReason.NOT_VIDEO: "file(s) without a video extension",
    SkipReason.OUTSIDE_LAYOUT: "file(s) outside the layout's folders",
    SkipReason.NOT_SELECTED: "FaceForensics++ video(s) of another compression or method than selected",
    SkipReason.NOT_IN_METADATA: "video(s) in no metadata.json",
    SkipReason.UNREADABLE: "unreadable entr(ies) (broken link, not a regular file, no read permission, unlistable folder or link loop)",
}
_WARN_REASONS = frozenset({SkipReason.NOT_IN_METADATA, SkipReason.UNREADABLE})  # a sign of a broken download


@dataclass(frozen=True)
class SkipReport:
    """Files under a dataset root that a manifest leaves out, counted by :class:`SkipReason`.

    Attributes:
        counts: reason -> number of files (reasons with none are absent), in :class:`SkipReason` order.
        examples: reason -> up to 3 URIs of such files, in walk order (sorted paths).
    """

    counts: Mapping[SkipReason, int] = field(default_factory=dict)
    examples: Mapping[SkipReason, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts = {SkipReason(k): int(v) for k, v in self.counts.items() if v}
        counts = {reason: counts[reason] for reason in SkipReason if reason in counts}  # the enum's order
        object.__setattr__(self, "counts", MappingProxyType(counts))
        examples = {SkipReason(k): tuple(v) for k, v in self.examples.items()}
        object.__setattr__(self, "examples", MappingProxyType({k: examples.get(k, ()) for k in self.counts}))

    @property
    def total(self) -> int:
        """Number of files left out, all reasons together."""
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """One plain-words line per reason, e.g. ``"2 hidden file(s) (...), e.g. /data/real/.a.mp4"``."""
        out = []
        for reason, n in self.counts.items():
            line = f"{n} {reason.description}"
            if self.examples[reason]:
                line += f", e.g. {', '.join(self.examples[reason])}"
            out.append(line)
        return out

    def to_json(self) -> str:
        """``{"counts": {reason: n}, "examples": {reason: [uri, ...]}}``."""
        return json.dumps(
            {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}, sort_keys=False
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SkipReport:
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: not a skip report (unknown reason, wrong shape).
        """
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("counts"), dict):
            raise ValueError(f"not a skip report: {text!r}")
        return cls(data["counts"], data.get("examples") or {})


def skip_report(manifest: pa.Table) -> SkipReport:
    """The files :func:`build_manifest` left out of ``manifest`` (counts and examples per reason).

    Args:
        manifest: a table returned by :func:`build_manifest` (the report rides in its Arrow
            schema metadata, so take it before transforming the table).

    Returns:
        The report; an empty one for a table read from a manifest file (no walk) or one whose
        schema metadata was dropped.
    """
    metadata = manifest.schema.metadata or {}
    return SkipReport.from_json(metadata[_SKIPS_KEY]) if _SKIPS_KEY in metadata else SkipReport()


class _Skips:
    """Collects skipped files of one walk; paths relative to the root, reported as URIs."""

    def __init__(self, root: _Root) -> None:
        self._root = root
        self._counts: Counter[SkipReason] = Counter()
        self._examples: dict[SkipReason, list[str]] = defaultdict(list)

    def add(self, reason: SkipReason, rel: str) -> None:
        self._counts[reason] += 1
        if len(self._examples[reason]) < _SKIP_EXAMPLES:
            self._examples[reason].append(self._root.uri(rel))

    def report(self) -> SkipReport:
        return SkipReport(dict(self._counts), {k: tuple(v) for k, v in self._examples.items()})


# ---- public API --------------------------------------------------------------------------------


def detect_layout(root: str) -> str:
    """Name the layout of a dataset root from its first two levels.

    Args:
        root: local directory or fsspec URL (``s3://bucket/prefix``).

    Returns:
        One of :data:`LAYOUTS` (= :data:`raydf.schema.LAYOUT_NAMES`).

    Raises:
        ManifestError: ``root`` is missing, fits no layout, or fits several.
    """
    r = _Root.open(root)
    return _detect(r, r.walk(maxdepth=2))


def build_manifest(
    root: str,
    layout: str = "auto",
    *,
    ffpp_compression: str = "c23",
    ffpp_methods: Sequence[str] | str = FFPP_METHODS,
    dataset_name: str | None = None,
) -> pa.Table:
    """Build the manifest of a dataset root (or load a manifest file).

    The root is walked once (every file, following links); what the layout does not take is
    counted by :class:`SkipReason`, logged one line per reason and attached to the table
    (:func:`skip_report`).

    Args:
        root: dataset directory, local or fsspec URL; a path ending in ``.parquet`` or
            ``.csv`` is read with :func:`read_manifest` instead (``layout`` is then ignored).
        layout: one of :data:`LAYOUTS`, or ``"auto"`` for :func:`detect_layout`.
        ffpp_compression: FaceForensics++ compression, one of :data:`FFPP_COMPRESSIONS`.
        ffpp_methods: FaceForensics++ manipulation methods to include (subset of
            :data:`FFPP_METHODS`; a comma-separated string is accepted).
        dataset_name: value of the ``dataset`` column and prefix of generated video ids;
            defaults to the layout name.

    Returns:
        A table with exactly :data:`raydf.schema.MANIFEST_SCHEMA`, sorted by ``video_id``,
        carrying its :class:`SkipReport`.

    Raises:
        ManifestError: malformed layout files, no videos found (the message lists what was
            left out and why).
        DuplicateVideoIdError: two rows share a ``video_id`` (names their files).
        ValueError: unknown layout, compression or method.
    """
    if root.lower().endswith(MANIFEST_SUFFIXES):
        return read_manifest(root, dataset_name=dataset_name)
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: auto, {', '.join(LAYOUTS)}")
    if ffpp_compression not in FFPP_COMPRESSIONS:
        raise ValueError(f"unknown FaceForensics++ compression {ffpp_compression!r}; known: {FFPP_COMPRESSIONS}")
    methods = _parse_methods(ffpp_methods)

    r = _Root.open(root)
    listing = r.walk()
    if layout == "auto":
        layout = _detect(r, listing)
        log.info("%s: detected layout %r", r.display, layout)
    skips = _Skips(r)
    files = _screen(listing, skips)
    request = _Request(dataset=dataset_name or layout, ffpp_compression=ffpp_compression, ffpp_methods=methods)
    rows = LAYOUTS[layout].rows(r, files, skips, request)
    report = skips.report()
    for reason, line in zip(report.counts, report.lines()):
        log.log(logging.WARNING if reason in _WARN_REASONS else logging.INFO, "%s: left out %s", r.display, line)
    if not rows:
        left_out = f"; left out {'; '.join(report.lines())}" if report.total else ""
        raise ManifestError(r.display, f"no videos found for layout {layout!r}{left_out}")
    table = _to_table(rows, r.display, report)
    log.info(
        "%s: %d videos (%d fake), %d files left out", r.display, len(rows), sum(row[LABEL] for row in rows), report.total
    )
    return table


def read_manifest(path: str, *, dataset_name: str | None = None) -> pa.Table:
    """Read and validate a user-supplied manifest (Parquet or CSV, local or fsspec URL).

    ``video_id``, ``uri`` and ``label`` are required; missing optional columns get
    defaults (``dataset`` = ``dataset_name`` or ``"custom"``, ``split`` = ``""``,
    ``source_id`` = ``video_id``, ``method`` = ``""`` for real / :data:`UNKNOWN_METHOD`
    for fake, ``compression`` = ``""``) and unknown columns are folded into ``meta``.
    Labels may be ``0``/``1`` or ``real``/``fake``. A relative ``uri`` is resolved
    against the manifest's directory.

    Args:
        path: a ``.parquet`` or ``.csv`` file.
        dataset_name: ``dataset`` value for rows that have none.

    Returns:
        A table with exactly :data:`raydf.schema.MANIFEST_SCHEMA`, sorted by ``video_id``
        (its :func:`skip_report` is empty: nothing was walked).

    Raises:
        ManifestError: unreadable file, missing columns, bad values (CSV: with the line).
        DuplicateVideoIdError: two rows share a ``video_id`` (names their URIs).
    """
    fs, fpath = fsspec.core.url_to_fs(path)
    base = posixpath.dirname(fpath)
    base = base if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(base)
    if fpath.lower().endswith(".parquet"):
        try:
            table = pq.read_table(fpath, filesystem=fs)
        except (OSError, pa.ArrowException) as exc:
            raise ManifestError(path, f"cannot read Parquet manifest: {exc}") from exc
        columns = table.column_names
        records: Iterable[tuple[int | None, str, dict[str, Any]]] = (
            (None, f"row {i}: ", rec) for i, rec in enumerate(table.to_pylist())
        )
    elif fpath.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(_read_text(fs, fpath, path)))
        columns = list(reader.fieldnames or [])
        records = ((reader.line_num, "", rec) for rec in reader)
    else:
        raise ManifestError(path, f"a manifest file must end in one of {MANIFEST_SUFFIXES}")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(
            path,
            f"missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)} "
            f"and may have {[c for c in MANIFEST_COLUMNS if c not in REQUIRED_COLUMNS]}",
        )
    try:
        rows = [_manifest_record(rec, path, line, prefix, base, dataset_name) for line, prefix, rec in records]
    except csv.Error as exc:  # only the CSV branch raises it; reader is bound there
        raise ManifestError(path, f"malformed CSV: {exc}", line=reader.line_num) from exc
    if not rows:
        raise ManifestError(path, "manifest has no rows")
    return _to_table(rows, path)


def write_manifest(table: pa.Table, path: str) -> None:
    """Write a manifest as Parquet or CSV (by suffix), local or fsspec URL.

    Args:
        table: a table with the :data:`raydf.schema.MANIFEST_SCHEMA` columns.
        path: destination ending in ``.parquet`` or ``.csv``.

    Raises:
        ManifestError: missing columns or an unsupported suffix.
    """
    if not path.lower().endswith(MANIFEST_SUFFIXES):
        raise ManifestError(path, f"a manifest file must end in one of {MANIFEST_SUFFIXES}")
    missing = [c for c in MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(path, f"table lacks manifest column(s) {missing}")
    table = table.select(list(MANIFEST_COLUMNS)).cast(MANIFEST_SCHEMA)
    fs, fpath = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(posixpath.dirname(fpath), exist_ok=True)
    if fpath.lower().endswith(".parquet"):
        pq.write_table(table, fpath, filesystem=fs)
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(zip(*(table.column(c).to_pylist() for c in MANIFEST_COLUMNS)))
    with fs.open(fpath, "w", encoding="utf-8") as f:
        f.write(buf.getvalue())


def check_unique_ids(table: pa.Table, source: str = "manifest") -> None:
    """Refuse a manifest in which two rows share a ``video_id`` (the feature store's key).

    Every path that builds or reads a manifest here calls it; call it on a manifest made
    elsewhere before extracting it.

    Args:
        table: a table with at least the ``video_id`` and ``uri`` columns.
        source: where the table came from, for the message (a root, a file, ``"manifest"``).

    Raises:
        DuplicateVideoIdError: naming each repeated id and the URIs of its rows.
        ManifestError: the table lacks ``video_id`` or ``uri``, or a row has a null ``video_id``.
    """
    missing = [c for c in (VIDEO_ID, URI) if c not in table.column_names]
    if missing:
        raise ManifestError(source, f"table lacks manifest column(s) {missing}")
    if table[VIDEO_ID].null_count:
        raise ManifestError(source, f"{table[VIDEO_ID].null_count} row(s) have no video_id")
    counts = pc.value_counts(table[VIDEO_ID])  # struct<values, counts>, one per distinct id
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(repeated) == 0:
        return
    rows = table.select([VIDEO_ID, URI]).filter(pc.is_in(table[VIDEO_ID], value_set=repeated))
    uris: dict[str, list[str]] = defaultdict(list)
    for video_id, uri in zip(rows[VIDEO_ID].to_pylist(), rows[URI].to_pylist()):
        uris[video_id].append(uri)
    raise DuplicateVideoIdError(source, {vid: sorted(uris[vid]) for vid in sorted(uris)})


# ---- filesystem access -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listing:
    """Every entry under a root, as paths relative to it."""

    files: tuple[str, ...]  # regular files (links followed), sorted
    dirs: frozenset[str]  # names of the folders directly under the root
    unreadable: tuple[str, ...]  # broken links, non-regular files, unlistable folders, link loops


@dataclass(frozen=True)
class _Root:
    """A dataset root on some fsspec filesystem; ``rel`` paths are relative to it, ``/``-separated."""

    fs: fsspec.AbstractFileSystem
    path: str  # the filesystem's path (no protocol), no trailing slash
    display: str  # the root as the user wrote it, for messages

    @classmethod
    def open(cls, root: str) -> _Root:
        fs, path = fsspec.core.url_to_fs(root)
        path = path.rstrip("/") or "/"
        fs.invalidate_cache(path)  # s3fs caches listings per process; a re-run must see new uploads
        if not fs.isdir(path):
            raise ManifestError(root, "dataset root is not an existing directory")
        return cls(fs, path, root)

    def full(self, rel: str) -> str:
        return f"{self.path.rstrip('/')}/{rel}" if rel else self.path

    def rel(self, path: str) -> str:
        prefix = self.path.rstrip("/") + "/"
        return path[len(prefix) :] if path.startswith(prefix) else ""

    def uri(self, rel: str) -> str:
        """Full URI of ``rel``: an absolute local path, or ``protocol://...``."""
        path = self.full(rel)
        return path if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(path)

    def read_text(self, rel: str) -> str:
        return _read_text(self.fs, self.full(rel), self.uri(rel))

    def walk(self, maxdepth: int | None = None) -> _Listing:
        """List every file under the root (``maxdepth`` 1 = the root's own files only)."""
        if isinstance(self.fs, LocalFileSystem):
            return self._walk_local(maxdepth)
        # object stores: one flat listing (s3fs pages 1,000 keys a request); no links there
        entries = self.fs.find(self.path, maxdepth=maxdepth, withdirs=False, detail=True)
        files, unreadable = [], []
        for name, info in entries.items():
            rel = self.rel(name)
            if rel:
                (files if info["type"] == "file" else unreadable).append(rel)
        dirs = frozenset(rel.split("/", 1)[0] for rel in files + unreadable if "/" in rel)
        return _Listing(tuple(sorted(files)), dirs, tuple(sorted(unreadable)))

    def _walk_local(self, maxdepth: int | None) -> _Listing:
        # os.walk, not fsspec: fsspec's local listing types a link as "other" and does not descend
        # into linked folders, and it drops unlistable folders silently.
        files: list[str] = []
        unreadable: list[str] = []
        dirs: set[str] = set()

        def failed(exc: OSError) -> None:
            unreadable.append(self.rel(exc.filename) if isinstance(exc.filename, str) else "")

        for here, subdirs, names in os.walk(self.path, onerror=failed, followlinks=True):
            rel_here = self.rel(here)
            depth = rel_here.count("/") + 1 if rel_here else 0
            if depth == 0:
                dirs.update(subdirs)
            real = os.path.realpath(here)
            keep = []
            for d in subdirs:
                link = os.path.join(here, d)
                target = os.path.realpath(link)
                if os.path.islink(link) and (real == target or real.startswith(target.rstrip("/") + "/")):
                    unreadable.append(posixpath.join(rel_here, d))  # a link to an ancestor: a loop
                else:
                    keep.append(d)
            subdirs[:] = keep if maxdepth is None or depth + 1 < maxdepth else []
            for name in names:
                path = os.path.join(here, name)
                readable = os.path.isfile(path) and os.access(path, os.R_OK)
                (files if readable else unreadable).append(posixpath.join(rel_here, name))
        return _Listing(tuple(sorted(files)), frozenset(dirs), tuple(sorted(unreadable)))


def _read_text(fs: fsspec.AbstractFileSystem, path: str, display: str) -> str:
    try:
        with fs.open(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    except FileNotFoundError as exc:
        raise ManifestError(display, "file not found") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(display, f"not UTF-8 text ({exc})") from exc


def _load_json(r: _Root, rel: str) -> tuple[Any, str]:
    """Parse a JSON file; a syntax error becomes a ManifestError with its line."""
    text = r.read_text(rel)
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        raise ManifestError(r.uri(rel), f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from exc


_WS = re.compile(r"[ \t\n\r]*")


def _entry_line(text: str, index: int) -> int:
    """1-based line where the ``index``-th element (array) or key (object) of valid JSON starts.

    Only called to report an error, so the second parse costs nothing on the happy path.
    """
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end()
    is_object = text[pos] == "{"
    pos = _WS.match(text, pos + 1).end()
    for _ in range(index):
        if is_object:
            _, pos = decoder.raw_decode(text, pos)  # the key
            pos = _WS.match(text, _WS.match(text, pos).end() + 1).end()  # past ':'
        _, pos = decoder.raw_decode(text, pos)
        pos = _WS.match(text, pos).end()
        pos = _WS.match(text, pos + 1).end()  # past ','
    return text.count("\n", 0, pos) + 1


# ---- the walk, shared by every layout ----------------------------------------------------------


def _hidden(rel: str) -> SkipReason | None:
    """The skip rule for names: a folder decides before the file name (``.cache/._x.mp4`` is hidden)."""
    *folders, name = rel.split("/")
    for folder in folders:
        if folder.startswith("."):
            return SkipReason.HIDDEN
        if folder == _APPLEDOUBLE_DIR:
            return SkipReason.APPLEDOUBLE
    if name.startswith("._"):
        return SkipReason.APPLEDOUBLE
    if name.startswith("."):
        return SkipReason.HIDDEN
    return None


def _screen(listing: _Listing, skips: _Skips) -> list[str]:
    """The visible, readable files of a walk (sorted); the rest is counted in ``skips``."""
    for rel in listing.unreadable:
        skips.add(_hidden(rel) or SkipReason.UNREADABLE, rel)
    visible = []
    for rel in listing.files:
        reason = _hidden(rel)
        if reason:
            skips.add(reason, rel)
        else:
            visible.append(rel)
    return visible


def _is_video(rel: str) -> bool:
    return posixpath.splitext(rel)[1].lower() in _VIDEO_EXTENSIONS


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _take_videos(
    files: Iterable[str],
    skips: _Skips,
    folder_of: Callable[[str], str | None],
    *,
    read: Iterable[str] = (),
    elsewhere: Callable[[str], SkipReason] = lambda rel: SkipReason.OUTSIDE_LAYOUT,
) -> dict[str, list[str]]:
    """Videos of the layout's video folders, by folder; every other file is counted in ``skips``.

    Args:
        files: visible files (relative paths, sorted).
        skips: the walk's skip counts.
        folder_of: a file's video folder (any key), or None when it is in none.
        read: the layout's own files (read, not skipped).
        elsewhere: the reason for a file in no video folder.
    """
    read = set(read)
    videos: dict[str, list[str]] = defaultdict(list)
    for rel in files:
        if rel in read:
            continue
        folder = folder_of(rel)
        if folder is None:
            skips.add(elsewhere(rel), rel)
        elif _is_video(rel):
            videos[folder].append(rel)
        else:
            skips.add(SkipReason.NOT_VIDEO, rel)
    return videos


def _id_names(paths: Iterable[str]) -> dict[str, str]:
    """path -> the last part of its video id: its stem, or its file name where stems collide.

    Within one folder, every file whose stem (or, once qualified, name) another file's id
    would repeat takes its whole name; repeated until the names are unique. The result
    depends on the set of paths only, not their order; a folder without collisions keeps
    plain stems.
    """
    by_folder: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        by_folder[posixpath.dirname(path)].append(path)
    names: dict[str, str] = {}
    for group in by_folder.values():
        qualified: set[str] = set()
        while True:
            ids = {p: posixpath.basename(p) if p in qualified else _stem(p) for p in group}
            counts = Counter(ids.values())
            clash = {p for p, i in ids.items() if counts[i] > 1} - qualified
            if not clash:  # file names are unique in a folder, so a clash always has an unqualified member
                break
            qualified |= clash
        names.update(ids)
    return names


def _id_path(rel: str, names: Mapping[str, str]) -> str:
    """``rel`` with its file part replaced by its id name (no extension unless it collides)."""
    return posixpath.join(posixpath.dirname(rel), names[rel])


@dataclass(frozen=True)
class _Request:
    """What :func:`build_manifest` asks of a layout."""

    dataset: str
    ffpp_compression: str
    ffpp_methods: tuple[str, ...]


@dataclass(frozen=True)
class _Top:
    """What detection looks at: the visible entries of a root's first two levels."""

    dirs: frozenset[str]  # folders directly under the root
    files: frozenset[str]  # files at the root and one folder down (relative paths)

    @classmethod
    def of(cls, listing: _Listing) -> _Top:
        return cls(
            frozenset(d for d in listing.dirs if not d.startswith(".") and d != _APPLEDOUBLE_DIR),
            frozenset(rel for rel in listing.files if rel.count("/") <= 1 and not _hidden(rel)),
        )


def _detect(r: _Root, listing: _Listing) -> str:
    top = _Top.of(listing)
    fits = {name: layout.detect(top) for name, layout in LAYOUTS.items()}
    best = max(fits.values())
    found = [name for name, fit in fits.items() if fit and fit == best]
    if len(found) > 1:
        raise ManifestError(r.display, f"dataset root fits several layouts {found}; pass the layout explicitly")
    if not found:
        expected = ", ".join(f"{layout.expects} ({name})" for name, layout in LAYOUTS.items())
        raise ManifestError(r.display, f"no known dataset layout: expected {expected}")
    return found[0]


def _parse_methods(methods: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in FFPP_METHODS]
    if unknown or not methods:
        raise ValueError(f"FaceForensics++ methods must be a non-empty subset of {FFPP_METHODS}, got {list(methods)}")
    return tuple(dict.fromkeys(methods))


def _row(
    r: _Root,
    rel: str,
    *,
    video_id: str,
    label: int,
    dataset: str,
    split: str,
    source_id: str,
    method: str,
    compression: str = "",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        VIDEO_ID: video_id,
        URI: r.uri(rel),
        LABEL: label,
        DATASET: dataset,
        SPLIT: split,
        SOURCE_ID: source_id,
        METHOD: method,
        COMPRESSION: compression,
        META: json.dumps(meta or {}, sort_keys=True),
    }


# ---- FaceForensics++ ---------------------------------------------------------------------------


def _ffpp_detect(top: _Top) -> int:
    return 2 if top.dirs & {"original_sequences", "manipulated_sequences"} else 0


def _ffpp_splits(r: _Root, found: set[str]) -> tuple[dict[frozenset[str], str], dict[str, str]]:
    """(pair -> split, id -> split) from ``splits/{train,val,test}.json``."""
    pair_split: dict[frozenset[str], str] = {}
    id_split: dict[str, tuple[str, str]] = {}  # id -> (split, file it came from)
    for split in SPLITS:
        rel = f"splits/{split}.json"
        if rel not in found:
            log.warning("%s: missing; FaceForensics++ videos of its pairs get split ''", r.uri(rel))
            continue
        pairs, text = _load_json(r, rel)
        if not isinstance(pairs, list):
            raise ManifestError(r.uri(rel), 'expected a JSON list of pairs like [["071", "054"], ...]', line=1)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) and v for v in pair)):
                raise ManifestError(
                    r.uri(rel),
                    f'entry {i} must be a pair of video ids like ["071", "054"], got {pair!r}',
                    line=_entry_line(text, i),
                )
            for vid in pair:
                if vid in id_split and id_split[vid][0] != split:
                    raise ManifestError(
                        r.uri(rel),
                        f"video id {vid!r} is also in {id_split[vid][1]} (split {id_split[vid][0]!r})",
                        line=_entry_line(text, i),
                    )
                id_split[vid] = (split, r.uri(rel))
            pair_split[frozenset(pair)] = split
    return pair_split, {vid: s for vid, (s, _) in id_split.items()}


def _ffpp_rows(r: _Root, files: Sequence[str], skips: _Skips, req: _Request) -> list[dict[str, Any]]:
    comp = req.ffpp_compression
    pair_split, id_split = _ffpp_splits(r, set(files))
    folders: dict[str, tuple[str, str]] = {}  # selected video folder -> (id tag, origin or method)
    if any(m != _FFPP_DFD for m in req.ffpp_methods):
        folders[f"original_sequences/youtube/{comp}/videos"] = ("original", "youtube")
    if _FFPP_DFD in req.ffpp_methods:  # actors originals are the real side of DeepFakeDetection only
        folders[f"original_sequences/actors/{comp}/videos"] = ("actors", "actors")
    for method in req.ffpp_methods:
        folders[f"manipulated_sequences/{method}/{comp}/videos"] = (method, method)
    videos = _take_videos(
        files,
        skips,
        lambda rel: d if (d := posixpath.dirname(rel)) in folders else None,
        read=(f"splits/{split}.json" for split in SPLITS),
        elsewhere=lambda rel: (
            SkipReason.NOT_SELECTED if _FFPP_VIDEO_FOLDER.match(posixpath.dirname(rel)) else SkipReason.OUTSIDE_LAYOUT
        ),
    )

    rows = []
    for folder, (tag, kind) in folders.items():
        paths = videos.get(folder, [])
        if not paths:
            log.warning("%s: no videos", r.uri(folder))
        names = _id_names(paths)
        unparsed = 0
        for rel in paths:
            stem = _stem(rel)
            video_id = f"{req.dataset}/{tag}/{comp}/{names[rel]}"
            if folder.startswith("original_sequences/"):
                split = id_split.get(stem, "") if kind == "youtube" else ""
                rows.append(
                    _row(
                        r,
                        rel,
                        video_id=video_id,
                        label=REAL,
                        dataset=req.dataset,
                        split=split,
                        source_id=stem,
                        method="",
                        compression=comp,
                        meta={"origin": kind},
                    )
                )
                continue
            split, source_id, meta = "", stem, {}
            if kind == _FFPP_DFD:
                m = _FFPP_DFD_NAME.match(stem)
                if m:
                    source_id = f"{m['target']}__{m['scene']}"
                    meta = {"target": m["target"], "donor": m["donor"], "scene": m["scene"]}
            else:
                m = _FFPP_PAIR.match(stem)
                if m:
                    split = pair_split.get(frozenset((m["target"], m["donor"])), "")
                    source_id = m["target"]
                    meta = {"target": m["target"], "donor": m["donor"]}
            unparsed += m is None
            rows.append(
                _row(
                    r,
                    rel,
                    video_id=video_id,
                    label=FAKE,
                    dataset=req.dataset,
                    split=split,
                    source_id=source_id,
                    method=kind,
                    compression=comp,
                    meta=meta,
                )
            )
        if unparsed:
            log.warning(
                "%s: %d file names not in the expected pattern; source_id = own stem, split ''", r.uri(folder), unparsed
            )
    return rows


# ---- Celeb-DF v2 -------------------------------------------------------------------------------


def _celebdf_detect(top: _Top) -> int:
    return 2 if top.dirs & set(_CELEBDF_REAL + _CELEBDF_FAKE) else 0


def _celebdf_test_list(r: _Root, found: set[str]) -> set[str]:
    """Relative paths listed in ``List_of_testing_videos.txt`` (label checked against folder)."""
    if _CELEBDF_TEST_LIST not in found:
        log.warning("%s: missing; no Celeb-DF video gets split 'test'", r.uri(_CELEBDF_TEST_LIST))
        return set()
    where = r.uri(_CELEBDF_TEST_LIST)
    listed = set()
    for lineno, line in enumerate(r.read_text(_CELEBDF_TEST_LIST).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in _CELEBDF_TEST_LABELS:
            raise ManifestError(where, f"expected '<1 real | 0 fake> <folder>/<file>.mp4', got {line!r}", line=lineno)
        rel = parts[1].removeprefix("./")
        folder = rel.split("/", 1)[0]
        if "/" not in rel or folder not in _CELEBDF_REAL + _CELEBDF_FAKE:
            raise ManifestError(where, f"unknown Celeb-DF folder in {rel!r}", line=lineno)
        listed_real = _CELEBDF_TEST_LABELS[parts[0]] == REAL
        if listed_real != (folder in _CELEBDF_REAL):
            raise ManifestError(
                where,
                f"label {parts[0]} ({'real' if listed_real else 'fake'}) disagrees with folder {folder!r} of {rel!r}",
                line=lineno,
            )
        listed.add(rel)
    return listed


def _celebdf_rows(r: _Root, files: Sequence[str], skips: _Skips, req: _Request) -> list[dict[str, Any]]:
    test = _celebdf_test_list(r, set(files))
    folders = _CELEBDF_REAL + _CELEBDF_FAKE
    videos = _take_videos(
        files, skips, lambda rel: d if (d := posixpath.dirname(rel)) in folders else None, read=(_CELEBDF_TEST_LIST,)
    )
    rows, seen = [], set()
    for folder in folders:
        label = REAL if folder in _CELEBDF_REAL else FAKE
        paths = videos.get(folder, [])
        names = _id_names(paths)
        for rel in paths:
            stem = _stem(rel)
            seen.add(rel)
            source_id, meta = stem, {}
            m = _CELEBDF_SYNTHESIS.match(stem) if label == FAKE else None
            if m:
                source_id = f"{m['target']}_{m['clip']}"
                meta = {"target": m["target"], "donor": m["donor"]}
            rows.append(
                _row(
                    r,
                    rel,
                    video_id=f"{req.dataset}/{_id_path(rel, names)}",
                    label=label,
                    dataset=req.dataset,
                    split="test" if rel in test else "",
                    source_id=source_id,
                    method="" if label == REAL else folder,
                    meta=meta,
                )
            )
    missing = len(test - seen)
    if missing:
        log.warning("%s: %d listed test videos are not on disk", r.uri(_CELEBDF_TEST_LIST), missing)
    return rows


# ---- DFDC --------------------------------------------------------------------------------------


def _dfdc_detect(top: _Top) -> int:
    if _DFDC_METADATA in top.files:
        return 2
    # only part folders (dfdc_train_part_N/metadata.json): counts when no layout fits better
    return 1 if any(rel.count("/") == 1 and posixpath.basename(rel) == _DFDC_METADATA for rel in top.files) else 0


@dataclass(frozen=True)
class _DfdcEntry:
    label: int
    original: str | None
    split: str | None
    metadata: str  # the metadata.json URI
    index: int  # position in that file, for error lines


def _dfdc_entries(r: _Root, rel: str) -> dict[str, _DfdcEntry]:
    data, text = _load_json(r, rel)
    where = r.uri(rel)
    if not isinstance(data, dict):
        raise ManifestError(where, 'expected a JSON object {"<file>.mp4": {"label": "REAL"|"FAKE", ...}}', line=1)
    entries = {}
    for i, (name, entry) in enumerate(data.items()):
        label = entry.get("label") if isinstance(entry, dict) else None
        original = entry.get("original") if isinstance(entry, dict) else None
        split = entry.get("split") if isinstance(entry, dict) else None
        problem = None
        if not isinstance(entry, dict):
            problem = f"entry {name!r} must be an object, got {entry!r}"
        elif not isinstance(label, str) or label.upper() not in _DFDC_LABELS:
            problem = f'entry {name!r} needs "label": "REAL" or "FAKE", got {label!r}'
        elif original is not None and not isinstance(original, str):
            problem = f'entry {name!r}: "original" must be a file name or null, got {original!r}'
        elif split is not None and not isinstance(split, str):
            problem = f'entry {name!r}: "split" must be a string, got {split!r}'
        elif "/" in name or not name:
            problem = f"entry {name!r} must be a bare file name"
        if problem:
            raise ManifestError(where, problem, line=_entry_line(text, i))
        entries[name] = _DfdcEntry(_DFDC_LABELS[label.upper()], original, split, where, i)
    return entries


def _dfdc_rows(r: _Root, files: Sequence[str], skips: _Skips, req: _Request) -> list[dict[str, Any]]:
    # part files first, so they win over a top-level one
    metadata = [rel for rel in files if rel.count("/") == 1 and posixpath.basename(rel) == _DFDC_METADATA]
    if _DFDC_METADATA in files:
        metadata.append(_DFDC_METADATA)
    videos = _take_videos(  # videos at the root and in part folders
        files, skips, lambda rel: posixpath.dirname(rel) if rel.count("/") <= 1 else None, read=metadata
    )
    on_disk = {rel for paths in videos.values() for rel in paths}
    by_name: dict[str, list[str]] = defaultdict(list)
    for rel in sorted(on_disk):
        by_name[posixpath.basename(rel)].append(rel)

    claimed: dict[str, _DfdcEntry] = {}
    missing = 0
    for meta_rel in metadata:
        folder = posixpath.dirname(meta_rel)
        for name, entry in _dfdc_entries(r, meta_rel).items():
            rel = posixpath.join(folder, name)
            if rel not in on_disk and not folder and len(by_name.get(name, [])) == 1:
                rel = by_name[name][0]  # a merged top-level metadata.json for videos in part folders
            if rel not in on_disk:
                missing += 1
                continue
            if rel in claimed:
                if claimed[rel].label != entry.label:
                    raise ManifestError(
                        entry.metadata,
                        f"{name!r} has label {entry.label} here but {claimed[rel].label} in {claimed[rel].metadata}",
                        line=_entry_line(r.read_text(meta_rel), entry.index),
                    )
                continue
            claimed[rel] = entry
    if missing:
        log.warning("%s: %d videos listed in metadata.json are not on disk; skipped", r.display, missing)
    for rel in sorted(on_disk - set(claimed)):
        skips.add(SkipReason.NOT_IN_METADATA, rel)

    names = _id_names(claimed)
    rows = []
    for rel, entry in claimed.items():
        stem = _stem(rel)
        source_id = _stem(entry.original) if entry.label == FAKE and entry.original else stem
        meta = {"part": posixpath.dirname(rel), "original": entry.original, "dfdc_split": entry.split}
        rows.append(
            _row(
                r,
                rel,
                video_id=f"{req.dataset}/{_id_path(rel, names)}",
                label=entry.label,
                dataset=req.dataset,
                split=entry.split if entry.split in ("val", "test") else "",
                source_id=source_id,
                method="" if entry.label == REAL else UNKNOWN_METHOD,
                meta={k: v for k, v in meta.items() if v},
            )
        )
    return rows


# ---- plain folders -----------------------------------------------------------------------------


def _folders_detect(top: _Top) -> int:
    return 2 if top.dirs & set(_FOLDER_LABELS) else 0


def _parse_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value in (REAL, FAKE) else None
    if isinstance(value, str):
        return _LABEL_WORDS.get(value.strip().lower())
    return None


def _folder_metadata(r: _Root, found: set[str]) -> dict[str, tuple[int, dict[str, Any]]]:
    """``file`` -> (line, entry) from the optional ``metadata.jsonl``."""
    if _FOLDER_METADATA not in found:
        return {}
    where = r.uri(_FOLDER_METADATA)
    entries: dict[str, tuple[int, dict[str, Any]]] = {}
    for lineno, line in enumerate(r.read_text(_FOLDER_METADATA).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(where, f"invalid JSON: {exc.msg} (column {exc.colno})", line=lineno) from exc
        if not isinstance(entry, dict):
            raise ManifestError(where, f"expected one JSON object per line, got {entry!r}", line=lineno)
        file = entry.get("file")
        if not isinstance(file, str) or file.removeprefix("./").split("/", 1)[0] not in _FOLDER_LABELS:
            raise ManifestError(where, f'"file" must be a path under real/ or fake/, got {file!r}', line=lineno)
        file = file.removeprefix("./")
        folder_label = _FOLDER_LABELS[file.split("/", 1)[0]]
        if "label" in entry and _parse_label(entry["label"]) != folder_label:
            raise ManifestError(where, f"label {entry['label']!r} disagrees with the folder of {file!r}", line=lineno)
        if (entry.get(SPLIT) or "") not in ("", *SPLITS):
            raise ManifestError(where, f"split must be one of {SPLITS} or '', got {entry[SPLIT]!r}", line=lineno)
        if file in entries:
            raise ManifestError(where, f"{file!r} is listed twice (first on line {entries[file][0]})", line=lineno)
        entries[file] = (lineno, entry)
    return entries


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _folder_rows(r: _Root, files: Sequence[str], skips: _Skips, req: _Request) -> list[dict[str, Any]]:
    described = _folder_metadata(r, set(files))
    has_metadata = bool(described)
    videos = _take_videos(
        files,
        skips,
        lambda rel: top if "/" in rel and (top := rel.split("/", 1)[0]) in _FOLDER_LABELS else None,
        read=(_FOLDER_METADATA,),
    )
    found: dict[str, tuple[int, dict[str, Any]]] = {}  # video -> (label, its metadata.jsonl entry or {})
    for folder, label in _FOLDER_LABELS.items():
        for rel in videos.get(folder, []):
            found[rel] = (label, described.pop(rel, (0, {}))[1])
    names = _id_names(rel for rel, (_, entry) in found.items() if not entry.get(VIDEO_ID))
    rows = []
    unlisted = 0
    for rel, (label, entry) in found.items():
        stem = _stem(rel)
        source_id, method = stem, ""
        if label == FAKE:
            head, _, tail = stem.partition("_")
            source_id = head if tail else stem
            method = tail if tail[:1].isalpha() else UNKNOWN_METHOD
        split, meta = "", {}
        if entry:
            source_id = str(entry.get(SOURCE_ID) or source_id)
            if label == FAKE:
                method = str(entry.get(METHOD) or entry.get("family") or method)
            split = entry.get(SPLIT) or ""
            # scalars only: per-frame ground truth (boxes, manipulation, ...) stays in metadata.jsonl
            meta = {k: v for k, v in entry.items() if k not in _FOLDER_CONSUMED_KEYS and _is_scalar(v)}
        elif has_metadata:
            unlisted += 1
        video_id = str(entry.get(VIDEO_ID) or f"{req.dataset}/{_id_path(rel, names)}")
        rows.append(
            _row(
                r,
                rel,
                video_id=video_id,
                label=label,
                dataset=req.dataset,
                split=split,
                source_id=source_id,
                method=method,
                meta=meta,
            )
        )
    if unlisted:
        log.warning("%s: %d videos are not in %s; ids derived from file names", r.display, unlisted, _FOLDER_METADATA)
    if described:
        log.warning("%s: %d files listed in %s are not on disk; skipped", r.display, len(described), _FOLDER_METADATA)
    return rows


# ---- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A dataset layout of the :data:`LAYOUTS` registry; add one here (and its name to
    :data:`raydf.schema.LAYOUT_NAMES`) to support a new dataset.

    Attributes:
        name: the layout's name, as in :data:`raydf.schema.LAYOUT_NAMES`.
        expects: what its root holds, for the message when a root fits no layout.
        detect: how a root's first two levels fit it: 0 not, 1 weakly (only when no layout
            fits strongly), 2 strongly; two layouts fitting equally is an error.
        rows: the manifest rows of a walked root, given its visible files (relative paths,
            sorted); counts what it leaves out in the skip collector.
    """

    name: str
    expects: str
    detect: Callable[[_Top], int]
    rows: Callable[[_Root, Sequence[str], _Skips, _Request], list[dict[str, Any]]]


LAYOUTS: Mapping[str, Layout] = MappingProxyType(
    {
        layout.name: layout
        for layout in (
            Layout("ffpp", "original_sequences/ or manipulated_sequences/", _ffpp_detect, _ffpp_rows),
            Layout("celebdf", "Celeb-real/ YouTube-real/ Celeb-synthesis/", _celebdf_detect, _celebdf_rows),
            Layout("dfdc", "[*/]metadata.json", _dfdc_detect, _dfdc_rows),
            Layout("folders", "real/ and fake/", _folders_detect, _folder_rows),
        )
    }
)  # name -> Layout, in raydf.schema.LAYOUT_NAMES order; iterating gives the names


# ---- manifest files ----------------------------------------------------------------------------


def _manifest_record(
    rec: dict[str, Any], path: str, line: int | None, prefix: str, base: str, dataset_name: str | None
) -> dict[str, Any]:
    def fail(reason: str) -> ManifestError:
        return ManifestError(path, prefix + reason, line=line)

    if None in rec:
        raise fail("more fields than the header has columns")
    video_id, uri = rec.get(VIDEO_ID), rec.get(URI)
    if not isinstance(video_id, str) or not video_id:
        raise fail(f"empty or non-string video_id {video_id!r}")
    if not isinstance(uri, str) or not uri:
        raise fail(f"empty or non-string uri for {video_id!r}")
    if "://" not in uri and not uri.startswith("/"):
        uri = posixpath.join(base, uri)
    label = _parse_label(rec.get(LABEL))
    if label is None:
        raise fail(f"label must be 0/1 or real/fake, got {rec.get(LABEL)!r}")
    split = rec.get(SPLIT) or ""
    if split not in ("", *SPLITS):
        raise fail(f"split must be one of {SPLITS} or '', got {split!r}")
    meta_text = rec.get(META) or "{}"
    try:
        meta = json.loads(meta_text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise fail(f"meta is not JSON: {meta_text!r}") from exc
    if not isinstance(meta, dict):
        raise fail(f"meta must be a JSON object, got {meta_text!r}")
    meta.update({k: v for k, v in rec.items() if k not in MANIFEST_COLUMNS and v not in (None, "")})
    return {
        VIDEO_ID: video_id,
        URI: uri,
        LABEL: label,
        DATASET: str(rec.get(DATASET) or dataset_name or "custom"),
        SPLIT: split,
        SOURCE_ID: str(rec.get(SOURCE_ID) or video_id),
        METHOD: "" if label == REAL else str(rec.get(METHOD) or UNKNOWN_METHOD),
        COMPRESSION: str(rec.get(COMPRESSION) or ""),
        META: json.dumps(meta, sort_keys=True, default=str),  # Parquet extras may be dates etc.
    }


def _to_table(rows: list[dict[str, Any]], source: str, report: SkipReport | None = None) -> pa.Table:
    table = pa.Table.from_pylist(sorted(rows, key=lambda row: row[VIDEO_ID]), schema=MANIFEST_SCHEMA)
    check_unique_ids(table, source)
    if report is not None:
        table = table.replace_schema_metadata({_SKIPS_KEY: report.to_json().encode()})
    return table
