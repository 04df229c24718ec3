"""Input manifests: one row per video, built from the official dataset layouts.

A manifest is a :data:`raydf.schema.MANIFEST_SCHEMA` table (``video_id``, ``uri``,
``label``, ``dataset``, ``split``, ``source_id``, ``method``, ``compression``,
``meta``). :func:`build_manifest` walks a dataset root, local or any fsspec URL
(``s3://bucket/prefix``; s3fs takes credentials and ``AWS_ENDPOINT_URL`` from the
environment), and understands four layouts:

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
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raydf.schema import (
    COMPRESSION,
    DATASET,
    FAKE,
    LABEL,
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
    "LAYOUTS",
    "FFPP_METHODS",
    "FFPP_COMPRESSIONS",
    "UNKNOWN_METHOD",
    "detect_layout",
    "build_manifest",
    "read_manifest",
    "write_manifest",
]

LAYOUTS = ("ffpp", "celebdf", "dfdc", "folders")
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")
FFPP_COMPRESSIONS = ("raw", "c23", "c40")
UNKNOWN_METHOD = "unknown"  # a fake whose manipulation method the layout does not name
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
MANIFEST_SUFFIXES = (".parquet", ".csv")
REQUIRED_COLUMNS = (VIDEO_ID, URI, LABEL)  # the rest of MANIFEST_COLUMNS have defaults

_FFPP_DFD = "DeepFakeDetection"  # the actors method: not in the official pair splits
_FFPP_PAIR = re.compile(r"^(?P<target>[^_]+)_(?P<donor>[^_]+)$")  # 071_054
_FFPP_DFD_NAME = re.compile(r"^(?P<target>\d+)_(?P<donor>\d+)__(?P<scene>.+)__(?P<tag>[^_]+)$")  # 01_02__scene__YVGY8LOK

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


# ---- public API --------------------------------------------------------------------------------


def detect_layout(root: str) -> str:
    """Name the layout of a dataset root from its top-level entries.

    Args:
        root: local directory or fsspec URL (``s3://bucket/prefix``).

    Returns:
        One of :data:`LAYOUTS`.

    Raises:
        ManifestError: ``root`` is missing, fits no layout, or fits several.
    """
    return _detect(_Root.open(root))


def build_manifest(
    root: str,
    layout: str = "auto",
    *,
    ffpp_compression: str = "c23",
    ffpp_methods: Sequence[str] | str = FFPP_METHODS,
    dataset_name: str | None = None,
) -> pa.Table:
    """Build the manifest of a dataset root (or load a manifest file).

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
        A table with exactly :data:`raydf.schema.MANIFEST_SCHEMA`, sorted by ``video_id``.

    Raises:
        ManifestError: malformed layout files, no videos found, duplicate video ids.
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
    if layout == "auto":
        layout = _detect(r)
        log.info("%s: detected layout %r", r.display, layout)
    dataset = dataset_name or layout
    if layout == "ffpp":
        rows = _ffpp_rows(r, dataset, ffpp_compression, methods)
    elif layout == "celebdf":
        rows = _celebdf_rows(r, dataset)
    elif layout == "dfdc":
        rows = _dfdc_rows(r, dataset)
    else:
        rows = _folder_rows(r, dataset)
    if not rows:
        raise ManifestError(r.display, f"no videos found for layout {layout!r}")
    table = _to_table(rows, r.display)
    log.info("%s: %d videos (%d fake)", r.display, len(rows), sum(row[LABEL] for row in rows))
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
        A table with exactly :data:`raydf.schema.MANIFEST_SCHEMA`, sorted by ``video_id``.

    Raises:
        ManifestError: unreadable file, missing columns, bad values (CSV: with the line),
            duplicate video ids.
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


# ---- filesystem access -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Root:
    """A dataset root on some fsspec filesystem; paths are the filesystem's (no protocol)."""

    fs: fsspec.AbstractFileSystem
    path: str
    display: str  # the root as the user wrote it, for messages

    @classmethod
    def open(cls, root: str) -> _Root:
        fs, path = fsspec.core.url_to_fs(root)
        path = path.rstrip("/") or "/"
        fs.invalidate_cache(path)  # s3fs caches listings per process; a re-run must see new uploads
        if not fs.isdir(path):
            raise ManifestError(root, "dataset root is not an existing directory")
        return cls(fs, path, root)

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def rel(self, path: str) -> str:
        return path[len(self.path) + 1 :]

    def uri(self, path: str) -> str:
        """Full URI of ``path``: an absolute local path, or ``protocol://...``."""
        return path if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(path)

    def children(self) -> tuple[set[str], set[str]]:
        """(directory names, file names) directly under the root."""
        dirs, files = set(), set()
        for entry in self.fs.ls(self.path, detail=True):
            name = posixpath.basename(entry["name"].rstrip("/"))
            (dirs if entry["type"] == "directory" else files).add(name)
        return dirs, files

    def isfile(self, path: str) -> bool:
        return self.fs.isfile(path)

    def videos(self, directory: str, recursive: bool = False) -> list[str]:
        """Sorted video files in ``directory`` ([] when it does not exist)."""
        try:
            if recursive:
                names = self.fs.find(directory)
            else:
                names = [e["name"] for e in self.fs.ls(directory, detail=True) if e["type"] == "file"]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.lower().endswith(VIDEO_EXTENSIONS))

    def read_text(self, path: str) -> str:
        return _read_text(self.fs, path, self.uri(path))


def _read_text(fs: fsspec.AbstractFileSystem, path: str, display: str) -> str:
    try:
        with fs.open(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    except FileNotFoundError as exc:
        raise ManifestError(display, "file not found") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(display, f"not UTF-8 text ({exc})") from exc


def _load_json(r: _Root, path: str) -> tuple[Any, str]:
    """Parse a JSON file; a syntax error becomes a ManifestError with its line."""
    text = r.read_text(path)
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        raise ManifestError(r.uri(path), f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from exc


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


# ---- layouts -----------------------------------------------------------------------------------


def _detect(r: _Root) -> str:
    dirs, files = r.children()
    found = []
    if dirs & {"original_sequences", "manipulated_sequences"}:
        found.append("ffpp")
    if dirs & set(_CELEBDF_REAL + _CELEBDF_FAKE):
        found.append("celebdf")
    if _DFDC_METADATA in files:
        found.append("dfdc")
    if dirs & set(_FOLDER_LABELS):
        found.append("folders")
    if not found and any(r.isfile(r.join(d, _DFDC_METADATA)) for d in sorted(dirs)):
        found.append("dfdc")  # only part folders (dfdc_train_part_N/metadata.json)
    if len(found) > 1:
        raise ManifestError(r.display, f"dataset root fits several layouts {found}; pass the layout explicitly")
    if not found:
        raise ManifestError(
            r.display,
            "no known dataset layout: expected original_sequences/ or manipulated_sequences/ (ffpp), "
            "Celeb-real/ YouTube-real/ Celeb-synthesis/ (celebdf), [*/]metadata.json (dfdc), "
            "or real/ and fake/ (folders)",
        )
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
    path: str,
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
        URI: r.uri(path),
        LABEL: label,
        DATASET: dataset,
        SPLIT: split,
        SOURCE_ID: source_id,
        METHOD: method,
        COMPRESSION: compression,
        META: json.dumps(meta or {}, sort_keys=True),
    }


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _ffpp_splits(r: _Root) -> tuple[dict[frozenset[str], str], dict[str, str]]:
    """(pair -> split, id -> split) from ``splits/{train,val,test}.json``."""
    pair_split: dict[frozenset[str], str] = {}
    id_split: dict[str, tuple[str, str]] = {}  # id -> (split, file it came from)
    for split in SPLITS:
        path = r.join("splits", f"{split}.json")
        if not r.isfile(path):
            log.warning("%s: missing; FaceForensics++ videos of its pairs get split ''", r.uri(path))
            continue
        pairs, text = _load_json(r, path)
        if not isinstance(pairs, list):
            raise ManifestError(r.uri(path), 'expected a JSON list of pairs like [["071", "054"], ...]', line=1)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) and v for v in pair)):
                raise ManifestError(
                    r.uri(path),
                    f'entry {i} must be a pair of video ids like ["071", "054"], got {pair!r}',
                    line=_entry_line(text, i),
                )
            for vid in pair:
                if vid in id_split and id_split[vid][0] != split:
                    raise ManifestError(
                        r.uri(path),
                        f"video id {vid!r} is also in {id_split[vid][1]} (split {id_split[vid][0]!r})",
                        line=_entry_line(text, i),
                    )
                id_split[vid] = (split, r.uri(path))
            pair_split[frozenset(pair)] = split
    return pair_split, {vid: s for vid, (s, _) in id_split.items()}


def _ffpp_rows(r: _Root, dataset: str, compression: str, methods: tuple[str, ...]) -> list[dict[str, Any]]:
    pair_split, id_split = _ffpp_splits(r)
    origins = []  # actors originals are the real side of DeepFakeDetection only
    if any(m != _FFPP_DFD for m in methods):
        origins.append(("youtube", "original"))
    if _FFPP_DFD in methods:
        origins.append(("actors", "actors"))

    rows = []
    for origin, tag in origins:
        directory = r.join("original_sequences", origin, compression, "videos")
        files = r.videos(directory)
        if not files:
            log.warning("%s: no videos", r.uri(directory))
        for path in files:
            stem = _stem(path)
            rows.append(
                _row(
                    r,
                    path,
                    video_id=f"{dataset}/{tag}/{compression}/{stem}",
                    label=REAL,
                    dataset=dataset,
                    split=id_split.get(stem, "") if origin == "youtube" else "",
                    source_id=stem,
                    method="",
                    compression=compression,
                    meta={"origin": origin},
                )
            )

    for method in methods:
        directory = r.join("manipulated_sequences", method, compression, "videos")
        files = r.videos(directory)
        if not files:
            log.warning("%s: no videos", r.uri(directory))
        unparsed = 0
        for path in files:
            stem = _stem(path)
            split, source_id, meta = "", stem, {}
            if method == _FFPP_DFD:
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
                    path,
                    video_id=f"{dataset}/{method}/{compression}/{stem}",
                    label=FAKE,
                    dataset=dataset,
                    split=split,
                    source_id=source_id,
                    method=method,
                    compression=compression,
                    meta=meta,
                )
            )
        if unparsed:
            log.warning(
                "%s: %d file names not in the expected pattern; source_id = own stem, split ''", r.uri(directory), unparsed
            )
    return rows


def _celebdf_test_list(r: _Root) -> set[str]:
    """Relative paths listed in ``List_of_testing_videos.txt`` (label checked against folder)."""
    path = r.join(_CELEBDF_TEST_LIST)
    if not r.isfile(path):
        log.warning("%s: missing; no Celeb-DF video gets split 'test'", r.uri(path))
        return set()
    listed = set()
    for lineno, line in enumerate(r.read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in _CELEBDF_TEST_LABELS:
            raise ManifestError(r.uri(path), f"expected '<1 real | 0 fake> <folder>/<file>.mp4', got {line!r}", line=lineno)
        rel = parts[1].removeprefix("./")
        folder = rel.split("/", 1)[0]
        if "/" not in rel or folder not in _CELEBDF_REAL + _CELEBDF_FAKE:
            raise ManifestError(r.uri(path), f"unknown Celeb-DF folder in {rel!r}", line=lineno)
        listed_real = _CELEBDF_TEST_LABELS[parts[0]] == REAL
        if listed_real != (folder in _CELEBDF_REAL):
            raise ManifestError(
                r.uri(path),
                f"label {parts[0]} ({'real' if listed_real else 'fake'}) disagrees with folder {folder!r} of {rel!r}",
                line=lineno,
            )
        listed.add(rel)
    return listed


def _celebdf_rows(r: _Root, dataset: str) -> list[dict[str, Any]]:
    test = _celebdf_test_list(r)
    rows, seen = [], set()
    for folder in _CELEBDF_REAL + _CELEBDF_FAKE:
        label = REAL if folder in _CELEBDF_REAL else FAKE
        for path in r.videos(r.join(folder)):
            stem, rel = _stem(path), r.rel(path)
            seen.add(rel)
            source_id, meta = stem, {}
            m = _CELEBDF_SYNTHESIS.match(stem) if label == FAKE else None
            if m:
                source_id = f"{m['target']}_{m['clip']}"
                meta = {"target": m["target"], "donor": m["donor"]}
            rows.append(
                _row(
                    r,
                    path,
                    video_id=f"{dataset}/{folder}/{stem}",
                    label=label,
                    dataset=dataset,
                    split="test" if rel in test else "",
                    source_id=source_id,
                    method="" if label == REAL else folder,
                    meta=meta,
                )
            )
    missing = len(test - seen)
    if missing:
        log.warning("%s: %d listed test videos are not on disk", r.uri(r.join(_CELEBDF_TEST_LIST)), missing)
    return rows


@dataclass(frozen=True)
class _DfdcEntry:
    label: int
    original: str | None
    split: str | None
    metadata: str  # the metadata.json URI
    index: int  # position in that file, for error lines


def _dfdc_entries(r: _Root, path: str) -> dict[str, _DfdcEntry]:
    data, text = _load_json(r, path)
    where = r.uri(path)
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


def _dfdc_rows(r: _Root, dataset: str) -> list[dict[str, Any]]:
    dirs, files = r.children()
    folders = [d for d in sorted(dirs) if r.isfile(r.join(d, _DFDC_METADATA))]
    metadata = [r.join(d, _DFDC_METADATA) for d in folders]  # part files win over a top-level one
    if _DFDC_METADATA in files:
        metadata.append(r.join(_DFDC_METADATA))
    on_disk = set(r.videos(r.path))
    for d in sorted(dirs):
        on_disk.update(r.videos(r.join(d)))
    by_name: dict[str, list[str]] = {}
    for path in on_disk:
        by_name.setdefault(posixpath.basename(path), []).append(path)

    claimed: dict[str, _DfdcEntry] = {}
    missing = 0
    for meta_path in metadata:
        folder = posixpath.dirname(meta_path)
        top_level = folder == r.path
        for name, entry in _dfdc_entries(r, meta_path).items():
            path = f"{folder}/{name}"
            if path not in on_disk and top_level and len(by_name.get(name, [])) == 1:
                path = by_name[name][0]  # a merged top-level metadata.json for videos in part folders
            if path not in on_disk:
                missing += 1
                continue
            if path in claimed:
                if claimed[path].label != entry.label:
                    raise ManifestError(
                        entry.metadata,
                        f"{name!r} has label {entry.label} here but {claimed[path].label} in {claimed[path].metadata}",
                        line=_entry_line(r.read_text(meta_path), entry.index),
                    )
                continue
            claimed[path] = entry
    if missing:
        log.warning("%s: %d videos listed in metadata.json are not on disk; skipped", r.display, missing)
    unlisted = sorted(on_disk - set(claimed))
    if unlisted:
        log.warning("%s: %d videos are in no metadata.json (e.g. %s); skipped", r.display, len(unlisted), unlisted[0])

    rows = []
    for path, entry in claimed.items():
        stem = _stem(path)
        rel = r.rel(path)
        source_id = _stem(entry.original) if entry.label == FAKE and entry.original else stem
        meta = {"part": posixpath.dirname(rel), "original": entry.original, "dfdc_split": entry.split}
        rows.append(
            _row(
                r,
                path,
                video_id=f"{dataset}/{posixpath.splitext(rel)[0]}",
                label=entry.label,
                dataset=dataset,
                split=entry.split if entry.split in ("val", "test") else "",
                source_id=source_id,
                method="" if entry.label == REAL else UNKNOWN_METHOD,
                meta={k: v for k, v in meta.items() if v},
            )
        )
    return rows


def _parse_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value in (REAL, FAKE) else None
    if isinstance(value, str):
        return _LABEL_WORDS.get(value.strip().lower())
    return None


def _folder_metadata(r: _Root) -> dict[str, tuple[int, dict[str, Any]]]:
    """``file`` -> (line, entry) from the optional ``metadata.jsonl``."""
    path = r.join(_FOLDER_METADATA)
    if not r.isfile(path):
        return {}
    where = r.uri(path)
    entries: dict[str, tuple[int, dict[str, Any]]] = {}
    for lineno, line in enumerate(r.read_text(path).splitlines(), start=1):
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


def _folder_rows(r: _Root, dataset: str) -> list[dict[str, Any]]:
    described = _folder_metadata(r)
    has_metadata = bool(described)
    rows = []
    unlisted = 0
    for folder, label in _FOLDER_LABELS.items():
        for path in r.videos(r.join(folder), recursive=True):
            rel = r.rel(path)
            stem = _stem(path)
            source_id, method = stem, ""
            if label == FAKE:
                head, _, tail = stem.partition("_")
                source_id = head if tail else stem
                method = tail if tail[:1].isalpha() else UNKNOWN_METHOD
            video_id = f"{dataset}/{posixpath.splitext(rel)[0]}"
            split, meta = "", {}
            if rel in described:
                _, entry = described.pop(rel)
                video_id = str(entry.get(VIDEO_ID) or video_id)
                source_id = str(entry.get(SOURCE_ID) or source_id)
                if label == FAKE:
                    method = str(entry.get(METHOD) or entry.get("family") or method)
                split = entry.get(SPLIT) or ""
                # scalars only: per-frame ground truth (boxes, manipulation, ...) stays in metadata.jsonl
                meta = {k: v for k, v in entry.items() if k not in _FOLDER_CONSUMED_KEYS and _is_scalar(v)}
            elif has_metadata:
                unlisted += 1
            rows.append(
                _row(
                    r,
                    path,
                    video_id=video_id,
                    label=label,
                    dataset=dataset,
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


def _to_table(rows: list[dict[str, Any]], source: str) -> pa.Table:
    counts = Counter(row[VIDEO_ID] for row in rows)
    duplicates = sorted(v for v, n in counts.items() if n > 1)
    if duplicates:
        raise ManifestError(source, f"{len(duplicates)} duplicate video_id(s), e.g. {duplicates[:5]}")
    rows = sorted(rows, key=lambda row: row[VIDEO_ID])
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
