"""Input manifests from the official dataset layouts (FF++, Celeb-DF v2, DFDC, plain folders).

Fixture trees hold empty ``.mp4`` files: building a manifest never decodes a video.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydf.datasets import (
    FFPP_COMPRESSIONS,
    FFPP_METHODS,
    UNKNOWN_METHOD,
    ManifestError,
    build_manifest,
    detect_layout,
    SkipReason,
    read_manifest,
    skip_report,
    write_manifest,
)
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
    URI,
    VIDEO_ID,
)


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _by_id(table: pa.Table) -> dict[str, dict]:
    return {row[VIDEO_ID]: row for row in table.to_pylist()}


def _assert_valid_manifest(table: pa.Table) -> None:
    assert table.schema.equals(MANIFEST_SCHEMA)
    ids = table.column(VIDEO_ID).to_pylist()
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for row in table.to_pylist():
        assert isinstance(json.loads(row[META]), dict)
        assert (row[METHOD] == "") == (row[LABEL] == REAL)


# ---- fixture trees -----------------------------------------------------------------------------


def make_ffpp(root: Path) -> Path:
    _touch(
        root,
        *(f"original_sequences/youtube/c23/videos/{i:03d}.mp4" for i in range(8)),
        "original_sequences/youtube/c40/videos/000.mp4",
        "original_sequences/actors/c23/videos/01__exit_phone_room.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/001_000.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/002_003.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/003_002.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/004_005.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/006_007.mp4",  # in no split file
        "manipulated_sequences/Deepfakes/c40/videos/000_001.mp4",
        "manipulated_sequences/Face2Face/c23/videos/000_001.mp4",
        "manipulated_sequences/FaceShifter/c23/videos/005_004.mp4",
        "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__exit_phone_room__YVGY8LOK.mp4",
    )
    _write(root, "splits/train.json", json.dumps([["000", "001"]]))
    _write(root, "splits/val.json", json.dumps([["003", "002"]]))  # listed in the other order
    _write(root, "splits/test.json", json.dumps([["004", "005"]], indent=2))
    return root


def make_celebdf(root: Path) -> Path:
    _touch(
        root,
        "Celeb-real/id0_0000.mp4",
        "Celeb-real/id0_0001.mp4",
        "Celeb-real/id1_0000.mp4",
        "YouTube-real/00000.mp4",
        "YouTube-real/00170.mp4",
        "Celeb-synthesis/id0_id1_0000.mp4",
        "Celeb-synthesis/id0_id1_0001.mp4",
        "Celeb-synthesis/id1_id0_0000.mp4",
    )
    _write(
        root,
        "List_of_testing_videos.txt",
        "1 YouTube-real/00170.mp4\n0 Celeb-synthesis/id0_id1_0001.mp4\n1 Celeb-real/id1_0000.mp4\n",
    )
    return root


def make_dfdc(root: Path) -> Path:
    _touch(
        root,
        "dfdc_train_part_0/aaaaaaaaaa.mp4",
        "dfdc_train_part_0/bbbbbbbbbb.mp4",
        "dfdc_train_part_0/stray00000.mp4",  # on disk, in no metadata.json
        "dfdc_train_part_1/cccccccccc.mp4",
        "dfdc_train_part_1/dddddddddd.mp4",
    )
    part0 = {
        "aaaaaaaaaa.mp4": {"label": "REAL", "split": "train", "original": None},
        "bbbbbbbbbb.mp4": {"label": "FAKE", "split": "train", "original": "aaaaaaaaaa.mp4"},
        "gone000000.mp4": {"label": "FAKE", "split": "train", "original": "aaaaaaaaaa.mp4"},  # not on disk
    }
    part1 = {
        "cccccccccc.mp4": {"label": "REAL", "split": "train", "original": None},
        "dddddddddd.mp4": {"label": "FAKE", "split": "test", "original": "cccccccccc.mp4"},
    }
    _write(root, "dfdc_train_part_0/metadata.json", json.dumps(part0))
    _write(root, "dfdc_train_part_1/metadata.json", json.dumps(part1))
    return root


def make_folders(root: Path, with_metadata: bool = True) -> Path:
    _touch(root, "real/0001.mp4", "real/0002.mp4", "fake/0001_blend.mp4", "fake/0002_swap.mp4")
    if with_metadata:
        lines = [
            {"video_id": "gen-r-0001", "file": "real/0001.mp4", "label": 0, "source_id": "0001", "family": "real"},
            {"video_id": "gen-f-0001", "file": "fake/0001_blend.mp4", "label": 1, "source_id": "0001", "family": "blend", "seed": 7},
        ]
        _write(root, "metadata.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return root


@pytest.fixture
def ffpp_root(tmp_path: Path) -> Path:
    return make_ffpp(tmp_path / "ffpp")


@pytest.fixture
def celebdf_root(tmp_path: Path) -> Path:
    return make_celebdf(tmp_path / "celeb")


@pytest.fixture
def dfdc_root(tmp_path: Path) -> Path:
    return make_dfdc(tmp_path / "dfdc")


# ---- layout detection --------------------------------------------------------------------------


def test_layouts_are_auto_detected(tmp_path: Path) -> None:
    assert detect_layout(str(make_ffpp(tmp_path / "a"))) == "ffpp"
    assert detect_layout(str(make_celebdf(tmp_path / "b"))) == "celebdf"
    assert detect_layout(str(make_dfdc(tmp_path / "c"))) == "dfdc"
    assert detect_layout(str(make_folders(tmp_path / "d"))) == "folders"
    _write(tmp_path / "e", "metadata.json", "{}")
    assert detect_layout(str(tmp_path / "e")) == "dfdc"


def test_unknown_layout_error_names_the_root(tmp_path: Path) -> None:
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    with pytest.raises(ManifestError, match="nothing.*no known dataset layout"):
        detect_layout(str(tmp_path / "nothing"))
    with pytest.raises(ManifestError, match="missing-root"):
        build_manifest(str(tmp_path / "missing-root"))


def test_root_fitting_two_layouts_is_ambiguous(tmp_path: Path) -> None:
    root = make_celebdf(tmp_path / "x")
    _touch(root, "real/a.mp4")
    with pytest.raises(ManifestError, match="several layouts"):
        detect_layout(str(root))
    assert build_manifest(str(root), "celebdf").num_rows == 8  # an explicit layout settles it


def test_unknown_layout_name_is_rejected(celebdf_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown layout"):
        build_manifest(str(celebdf_root), "kinetics")


# ---- FaceForensics++ ---------------------------------------------------------------------------


def test_ffpp_labels_splits_and_sources(ffpp_root: Path) -> None:
    table = build_manifest(str(ffpp_root))
    _assert_valid_manifest(table)
    rows = _by_id(table)

    original = rows["ffpp/original/c23/000"]
    assert (original[LABEL], original[SPLIT], original[SOURCE_ID], original[METHOD]) == (REAL, "train", "000", "")
    assert original[URI] == str(ffpp_root / "original_sequences/youtube/c23/videos/000.mp4")
    assert original[COMPRESSION] == "c23" and original[DATASET] == "ffpp"
    assert rows["ffpp/original/c23/002"][SPLIT] == "val"
    assert rows["ffpp/original/c23/005"][SPLIT] == "test"
    assert rows["ffpp/original/c23/006"][SPLIT] == ""

    # a fake follows the split of its pair, whichever order the pair is written in
    for stem, split in [("000_001", "train"), ("001_000", "train"), ("002_003", "val"), ("003_002", "val"), ("004_005", "test")]:
        fake = rows[f"ffpp/Deepfakes/c23/{stem}"]
        assert (fake[LABEL], fake[SPLIT], fake[METHOD]) == (FAKE, split, "Deepfakes"), stem
        assert fake[SOURCE_ID] == stem.split("_")[0]
    assert rows["ffpp/Deepfakes/c23/006_007"][SPLIT] == ""
    assert rows["ffpp/FaceShifter/c23/005_004"][SPLIT] == "test"
    assert json.loads(rows["ffpp/Face2Face/c23/000_001"][META]) == {"target": "000", "donor": "001"}

    dfd = rows["ffpp/DeepFakeDetection/c23/01_02__exit_phone_room__YVGY8LOK"]
    actor = rows["ffpp/actors/c23/01__exit_phone_room"]
    assert (dfd[LABEL], dfd[SPLIT], dfd[SOURCE_ID]) == (FAKE, "", "01__exit_phone_room")
    assert (actor[LABEL], actor[SPLIT], actor[SOURCE_ID]) == (REAL, "", "01__exit_phone_room")

    assert not any("/c40/" in vid for vid in rows)
    assert len(rows) == 8 + 1 + 6 + 1 + 1 + 1


def test_ffpp_compression_and_methods_are_selectable(ffpp_root: Path) -> None:
    table = build_manifest(str(ffpp_root), "ffpp", ffpp_compression="c40", ffpp_methods=("Deepfakes",))
    assert sorted(table.column(VIDEO_ID).to_pylist()) == ["ffpp/Deepfakes/c40/000_001", "ffpp/original/c40/000"]
    assert set(table.column(COMPRESSION).to_pylist()) == {"c40"}
    # the actors originals belong to DeepFakeDetection only
    four = build_manifest(str(ffpp_root), ffpp_methods="Deepfakes, Face2Face")
    assert not any(v.startswith("ffpp/actors/") for v in four.column(VIDEO_ID).to_pylist())
    only_dfd = build_manifest(str(ffpp_root), ffpp_methods=("DeepFakeDetection",))
    assert sorted(only_dfd.column(SOURCE_ID).to_pylist()) == ["01__exit_phone_room"] * 2


def test_ffpp_rejects_unknown_method_and_compression(ffpp_root: Path) -> None:
    assert "c23" in FFPP_COMPRESSIONS and "FaceShifter" in FFPP_METHODS
    with pytest.raises(ValueError, match="DeepFakes"):
        build_manifest(str(ffpp_root), ffpp_methods=("DeepFakes",))  # wrong case
    with pytest.raises(ValueError, match="c50"):
        build_manifest(str(ffpp_root), ffpp_compression="c50")


def test_ffpp_bad_split_json_names_file_and_line(ffpp_root: Path) -> None:
    _write(ffpp_root, "splits/train.json", '[\n  ["000", "001"],\n  ["002" "003"]\n]\n')
    with pytest.raises(ManifestError, match=r"train\.json, line 3: invalid JSON"):
        build_manifest(str(ffpp_root))


def test_ffpp_split_entry_that_is_not_a_pair_names_its_line(ffpp_root: Path) -> None:
    _write(ffpp_root, "splits/val.json", '[\n  ["002", "003"],\n  ["006"],\n  ["008", "009"]\n]\n')
    with pytest.raises(ManifestError, match=r"val\.json, line 3: entry 1 must be a pair"):
        build_manifest(str(ffpp_root))
    _write(ffpp_root, "splits/val.json", '{"train": []}')
    with pytest.raises(ManifestError, match=r"val\.json, line 1"):
        build_manifest(str(ffpp_root))


def test_ffpp_id_in_two_split_files_fails(ffpp_root: Path) -> None:
    _write(ffpp_root, "splits/test.json", '[\n  ["004", "005"],\n  ["001", "009"]\n]')
    with pytest.raises(ManifestError, match=r"test\.json, line 3: video id '001' is also in .*train\.json"):
        build_manifest(str(ffpp_root))


def test_ffpp_without_split_files_leaves_splits_unknown(ffpp_root: Path) -> None:
    shutil.rmtree(ffpp_root / "splits")
    table = build_manifest(str(ffpp_root))
    assert set(table.column(SPLIT).to_pylist()) == {""}


# ---- Celeb-DF v2 -------------------------------------------------------------------------------


def test_celebdf_test_list_labels_and_sources(celebdf_root: Path) -> None:
    table = build_manifest(str(celebdf_root))
    _assert_valid_manifest(table)
    rows = _by_id(table)
    assert len(rows) == 8
    test = {vid for vid, row in rows.items() if row[SPLIT] == "test"}
    assert test == {"celebdf/YouTube-real/00170", "celebdf/Celeb-synthesis/id0_id1_0001", "celebdf/Celeb-real/id1_0000"}
    assert {row[SPLIT] for vid, row in rows.items() if vid not in test} == {""}

    assert [rows[f"celebdf/Celeb-real/{s}"][LABEL] for s in ("id0_0000", "id1_0000")] == [REAL, REAL]
    assert rows["celebdf/YouTube-real/00000"][LABEL] == REAL
    fake = rows["celebdf/Celeb-synthesis/id0_id1_0001"]
    assert (fake[LABEL], fake[SOURCE_ID], fake[METHOD]) == (FAKE, "id0_0001", "Celeb-synthesis")
    assert rows["celebdf/Celeb-synthesis/id1_id0_0000"][SOURCE_ID] == "id1_0000"
    assert rows["celebdf/Celeb-real/id0_0000"][SOURCE_ID] == "id0_0000"
    assert rows["celebdf/YouTube-real/00170"][SOURCE_ID] == "00170"
    assert fake[URI] == str(celebdf_root / "Celeb-synthesis/id0_id1_0001.mp4")


def test_celebdf_bad_test_list_line_is_named(celebdf_root: Path) -> None:
    _write(celebdf_root, "List_of_testing_videos.txt", "1 YouTube-real/00170.mp4\n\n1YouTube-real/00000.mp4\n")
    with pytest.raises(ManifestError, match=r"List_of_testing_videos\.txt, line 3"):
        build_manifest(str(celebdf_root))
    _write(celebdf_root, "List_of_testing_videos.txt", "1 YouTube-real/00170.mp4\n1 Other-real/1.mp4\n")
    with pytest.raises(ManifestError, match=r"List_of_testing_videos\.txt, line 2: unknown Celeb-DF folder"):
        build_manifest(str(celebdf_root))


def test_celebdf_test_label_disagreeing_with_folder_fails(celebdf_root: Path) -> None:
    _write(celebdf_root, "List_of_testing_videos.txt", "1 YouTube-real/00170.mp4\n1 Celeb-synthesis/id0_id1_0001.mp4\n")
    with pytest.raises(ManifestError, match=r"List_of_testing_videos\.txt, line 2: label 1 \(real\) disagrees"):
        build_manifest(str(celebdf_root))


def test_celebdf_listed_video_missing_on_disk_is_warned(celebdf_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    (celebdf_root / "YouTube-real/00170.mp4").unlink()
    with caplog.at_level(logging.WARNING, logger="raydf.datasets"):
        table = build_manifest(str(celebdf_root))
    assert table.num_rows == 7
    assert "1 listed test videos are not on disk" in caplog.text


# ---- DFDC --------------------------------------------------------------------------------------


def test_dfdc_per_part_metadata(dfdc_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="raydf.datasets"):
        table = build_manifest(str(dfdc_root))
    _assert_valid_manifest(table)
    rows = _by_id(table)
    assert sorted(rows) == [
        "dfdc/dfdc_train_part_0/aaaaaaaaaa",
        "dfdc/dfdc_train_part_0/bbbbbbbbbb",
        "dfdc/dfdc_train_part_1/cccccccccc",
        "dfdc/dfdc_train_part_1/dddddddddd",
    ]
    real, fake = rows["dfdc/dfdc_train_part_0/aaaaaaaaaa"], rows["dfdc/dfdc_train_part_0/bbbbbbbbbb"]
    assert (real[LABEL], real[SOURCE_ID], real[METHOD], real[SPLIT]) == (REAL, "aaaaaaaaaa", "", "")
    assert (fake[LABEL], fake[SOURCE_ID], fake[METHOD], fake[SPLIT]) == (FAKE, "aaaaaaaaaa", UNKNOWN_METHOD, "")
    assert json.loads(fake[META]) == {"part": "dfdc_train_part_0", "original": "aaaaaaaaaa.mp4", "dfdc_split": "train"}
    assert rows["dfdc/dfdc_train_part_1/dddddddddd"][SPLIT] == "test"
    assert rows["dfdc/dfdc_train_part_1/dddddddddd"][SOURCE_ID] == "cccccccccc"
    assert "1 videos listed in metadata.json are not on disk" in caplog.text
    assert "left out 1 video(s) in no metadata.json, e.g. " + str(dfdc_root / "dfdc_train_part_0/stray00000.mp4") in caplog.text
    assert skip_report(table).counts == {SkipReason.NOT_IN_METADATA: 1}


def test_dfdc_top_level_metadata_finds_videos_in_part_folders(tmp_path: Path) -> None:
    root = tmp_path / "dfdc"
    _touch(root, "top0000000.mp4", "dfdc_train_part_3/eeeeeeeeee.mp4")
    meta = {"top0000000.mp4": {"label": "REAL"}, "eeeeeeeeee.mp4": {"label": "FAKE", "original": "top0000000.mp4"}}
    _write(root, "metadata.json", json.dumps(meta))
    rows = _by_id(build_manifest(str(root)))
    assert rows["dfdc/top0000000"][LABEL] == REAL
    assert rows["dfdc/dfdc_train_part_3/eeeeeeeeee"][SOURCE_ID] == "top0000000"


def test_dfdc_bad_metadata_names_file_and_line(dfdc_root: Path) -> None:
    bad = '{\n  "aaaaaaaaaa.mp4": {"label": "REAL"},\n  "bbbbbbbbbb.mp4": {"label": "MAYBE"}\n}\n'
    _write(dfdc_root, "dfdc_train_part_0/metadata.json", bad)
    with pytest.raises(ManifestError, match=r"dfdc_train_part_0/metadata\.json, line 3: .*REAL.*FAKE"):
        build_manifest(str(dfdc_root))
    _write(dfdc_root, "dfdc_train_part_0/metadata.json", '{\n  "a.mp4": {"label": "REAL"}\n  "b.mp4": {}\n}')
    with pytest.raises(ManifestError, match=r"dfdc_train_part_0/metadata\.json, line 3: invalid JSON"):
        build_manifest(str(dfdc_root))


# ---- plain folders -----------------------------------------------------------------------------


def test_folders_use_metadata_jsonl_when_present(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "gen")
    table = build_manifest(str(root), dataset_name="generated")
    _assert_valid_manifest(table)
    rows = _by_id(table)
    assert sorted(rows) == ["gen-f-0001", "gen-r-0001", "generated/fake/0002_swap", "generated/real/0002"]
    described = rows["gen-f-0001"]
    assert (described[LABEL], described[SOURCE_ID], described[METHOD], described[DATASET]) == (FAKE, "0001", "blend", "generated")
    assert json.loads(described[META]) == {"family": "blend", "seed": 7}
    assert rows["gen-r-0001"][METHOD] == ""
    derived = rows["generated/fake/0002_swap"]
    assert (derived[LABEL], derived[SOURCE_ID], derived[METHOD], derived[SPLIT]) == (FAKE, "0002", "swap", "")


def test_folders_without_metadata_derive_from_file_names(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "plain", with_metadata=False)
    _touch(root, "fake/nested/0003.mp4")
    rows = _by_id(build_manifest(str(root)))
    assert rows["folders/fake/0001_blend"][SOURCE_ID] == "0001"
    assert rows["folders/real/0002"][LABEL] == REAL
    assert (rows["folders/fake/nested/0003"][SOURCE_ID], rows["folders/fake/nested/0003"][METHOD]) == ("0003", UNKNOWN_METHOD)


def test_folders_metadata_label_disagreeing_with_folder_fails(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "gen", with_metadata=False)
    _write(root, "metadata.jsonl", '{"file": "real/0001.mp4", "label": 0}\n{"file": "fake/0002_swap.mp4", "label": 0}\n')
    with pytest.raises(ManifestError, match=r"metadata\.jsonl, line 2: label 0 disagrees"):
        build_manifest(str(root))
    _write(root, "metadata.jsonl", '{"file": "real/0001.mp4", "label": 0}\n{"file": \n')
    with pytest.raises(ManifestError, match=r"metadata\.jsonl, line 2: invalid JSON"):
        build_manifest(str(root))


def test_duplicate_video_ids_are_rejected(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "gen", with_metadata=False)
    _write(root, "metadata.jsonl", '{"file": "real/0001.mp4", "video_id": "x"}\n{"file": "fake/0002_swap.mp4", "video_id": "x"}\n')
    with pytest.raises(ManifestError, match=r"duplicate video_id.*'x'"):
        build_manifest(str(root))


def test_make_dataset_output_reads_as_folders(generated_dataset: Path) -> None:
    from raydf.synth import read_metadata

    table = build_manifest(str(generated_dataset))
    _assert_valid_manifest(table)
    rows = _by_id(table)
    truth = {rec["video_id"]: rec for rec in read_metadata(generated_dataset)}
    assert set(rows) == set(truth)
    for video_id, rec in truth.items():
        row = rows[video_id]
        assert (row[LABEL], row[SOURCE_ID], row[URI]) == (rec["label"], rec["source_id"], str(generated_dataset / rec["file"]))
        assert row[METHOD] == rec["family"]
        assert "boxes" not in json.loads(row[META])  # per-frame ground truth stays in metadata.jsonl


# ---- manifest files ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_manifest_file_round_trips(celebdf_root: Path, tmp_path: Path, suffix: str) -> None:
    table = build_manifest(str(celebdf_root))
    path = tmp_path / "out" / f"manifest{suffix}"
    write_manifest(table, str(path))
    assert read_manifest(str(path)).equals(table)
    assert build_manifest(str(path)).equals(table)  # --input manifest.parquet


def test_minimal_csv_manifest_gets_defaults(tmp_path: Path) -> None:
    _write(tmp_path, "m.csv", "video_id,uri,label,notes\n007,videos/007.mp4,fake,hand-made\n008,/data/008.mp4,0,\n")
    table = read_manifest(str(tmp_path / "m.csv"), dataset_name="mine")
    _assert_valid_manifest(table)
    rows = _by_id(table)
    assert rows["007"][URI] == str(tmp_path / "videos/007.mp4")  # relative to the manifest; ids keep leading zeros
    assert (rows["007"][LABEL], rows["007"][METHOD], rows["007"][SOURCE_ID], rows["007"][DATASET]) == (FAKE, UNKNOWN_METHOD, "007", "mine")
    assert json.loads(rows["007"][META]) == {"notes": "hand-made"}
    assert (rows["008"][URI], rows["008"][LABEL], rows["008"][SPLIT]) == ("/data/008.mp4", REAL, "")


def test_manifest_missing_columns_are_named(tmp_path: Path) -> None:
    _write(tmp_path, "m.csv", "video_id,path\na,/x.mp4\n")
    with pytest.raises(ManifestError, match=r"m\.csv: missing column\(s\) \['uri', 'label'\]"):
        build_manifest(str(tmp_path / "m.csv"))
    pq.write_table(pa.table({VIDEO_ID: ["a"], URI: ["/a.mp4"]}), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"m\.parquet: missing column\(s\) \['label'\]"):
        build_manifest(str(tmp_path / "m.parquet"))


def test_manifest_bad_value_names_csv_line(tmp_path: Path) -> None:
    _write(tmp_path, "m.csv", "video_id,uri,label,split\na,/a.mp4,0,train\nb,/b.mp4,2,train\n")
    with pytest.raises(ManifestError, match=r"m\.csv, line 3: label must be"):
        read_manifest(str(tmp_path / "m.csv"))
    _write(tmp_path, "m.csv", "video_id,uri,label,split\na,/a.mp4,0,training\n")
    with pytest.raises(ManifestError, match=r"m\.csv, line 2: split must be"):
        read_manifest(str(tmp_path / "m.csv"))


def test_write_manifest_needs_all_columns(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="lacks manifest column"):
        write_manifest(pa.table({VIDEO_ID: ["a"]}), str(tmp_path / "m.parquet"))
    assert len(MANIFEST_COLUMNS) == len(MANIFEST_SCHEMA)


def test_malformed_csv_manifest_names_its_line(tmp_path: Path) -> None:
    _write(tmp_path, "m.csv", "video_id,uri,label\na,/a.mp4,0\nb,/b.mp4,1,extra\n")
    with pytest.raises(ManifestError, match=r"m\.csv, line 3: more fields than the header"):
        read_manifest(str(tmp_path / "m.csv"))
    with pytest.raises(ManifestError, match=r"must end in"):
        write_manifest(pa.table({}), str(tmp_path / "m.txt"))

# ---- S3 (moto) ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint() -> str:
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        pytest.skip("moto_server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    s3fs = pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance built before would keep its old endpoint
    yield moto_endpoint
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.integration
def test_celebdf_on_s3_matches_local(s3_env: str, tmp_path: Path) -> None:
    import boto3

    local = make_celebdf(tmp_path / "celeb")
    client = boto3.client("s3", endpoint_url=s3_env)
    client.create_bucket(Bucket="bucket")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.put_object(Bucket="bucket", Key=f"celeb/{path.relative_to(local).as_posix()}", Body=path.read_bytes())

    assert detect_layout("s3://bucket/celeb") == "celebdf"
    remote = build_manifest("s3://bucket/celeb")
    expected = build_manifest(str(local))
    _assert_valid_manifest(remote)
    assert remote.drop_columns([URI]).equals(expected.drop_columns([URI]))
    prefix = str(local) + os.sep
    assert remote.column(URI).to_pylist() == [
        "s3://bucket/celeb/" + uri.removeprefix(prefix) for uri in expected.column(URI).to_pylist()
    ]

    write_manifest(remote, "s3://bucket/manifests/celeb.parquet")
    assert read_manifest("s3://bucket/manifests/celeb.parquet").equals(remote)

