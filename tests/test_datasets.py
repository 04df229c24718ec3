"""Input manifests from the official dataset layouts (FF++, Celeb-DF v2, DFDC, plain folders).

Fixture trees hold empty video files: building a manifest lists files and never decodes one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raydf.schema
from raydf.datasets import (
    FFPP_COMPRESSIONS,
    FFPP_METHODS,
    LAYOUTS,
    UNKNOWN_METHOD,
    VIDEO_EXTENSIONS,
    DuplicateVideoIdError,
    ManifestError,
    SkipReason,
    SkipReport,
    build_manifest,
    check_unique_ids,
    detect_layout,
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
    assert skip_report(table) == SkipReport()  # make-dataset writes nothing a manifest leaves out


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



# every layout of the registry has a fixture tree here (test_registry_* fail when one is missing)
MAKERS = {"ffpp": make_ffpp, "celebdf": make_celebdf, "dfdc": make_dfdc, "folders": make_folders}

# The ids these trees had before same-stem ids existed; a collision-free tree must keep them exactly.
GOLDEN_IDS = {
    "ffpp": [
        "ffpp/DeepFakeDetection/c23/01_02__exit_phone_room__YVGY8LOK",
        "ffpp/Deepfakes/c23/000_001",
        "ffpp/Deepfakes/c23/001_000",
        "ffpp/Deepfakes/c23/002_003",
        "ffpp/Deepfakes/c23/003_002",
        "ffpp/Deepfakes/c23/004_005",
        "ffpp/Deepfakes/c23/006_007",
        "ffpp/Face2Face/c23/000_001",
        "ffpp/FaceShifter/c23/005_004",
        "ffpp/actors/c23/01__exit_phone_room",
        *(f"ffpp/original/c23/{i:03d}" for i in range(8)),
    ],
    "celebdf": [
        "celebdf/Celeb-real/id0_0000",
        "celebdf/Celeb-real/id0_0001",
        "celebdf/Celeb-real/id1_0000",
        "celebdf/Celeb-synthesis/id0_id1_0000",
        "celebdf/Celeb-synthesis/id0_id1_0001",
        "celebdf/Celeb-synthesis/id1_id0_0000",
        "celebdf/YouTube-real/00000",
        "celebdf/YouTube-real/00170",
    ],
    "dfdc": [
        "dfdc/dfdc_train_part_0/aaaaaaaaaa",
        "dfdc/dfdc_train_part_0/bbbbbbbbbb",
        "dfdc/dfdc_train_part_1/cccccccccc",
        "dfdc/dfdc_train_part_1/dddddddddd",
    ],
    "folders": ["folders/fake/0002_swap", "folders/real/0002", "gen-f-0001", "gen-r-0001"],
}


# ---- the layout registry -----------------------------------------------------------------------


def test_registry_is_the_schema_layout_list() -> None:
    assert tuple(LAYOUTS) == raydf.schema.LAYOUT_NAMES
    assert FFPP_METHODS is raydf.schema.FFPP_METHODS
    assert set(MAKERS) == set(LAYOUTS) == set(GOLDEN_IDS)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_registered_layout_detects_and_lists_its_tree(name: str, tmp_path: Path) -> None:
    layout = LAYOUTS[name]
    assert layout.name == name
    root = str(MAKERS[name](tmp_path / name))
    assert detect_layout(root) == name
    table = build_manifest(root)
    _assert_valid_manifest(table)
    assert table.equals(build_manifest(root, name))
    assert set(table.column(DATASET).to_pylist()) == {name}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_collision_free_trees_keep_their_ids(name: str, tmp_path: Path) -> None:
    table = build_manifest(str(MAKERS[name](tmp_path / name)))
    assert table.column(VIDEO_ID).to_pylist() == GOLDEN_IDS[name]


def test_no_layout_message_names_every_registered_layout(tmp_path: Path) -> None:
    _touch(tmp_path / "x", "videos/a.mp4")
    with pytest.raises(ManifestError) as info:
        detect_layout(str(tmp_path / "x"))
    for name in LAYOUTS:
        assert f"({name})" in str(info.value)


# ---- video extensions --------------------------------------------------------------------------


def _cases(ext: str) -> list[str]:
    """The extension in lower, upper and mixed case (".mp4" -> ".mp4", ".MP4", ".Mp4")."""
    return [ext, ext.upper(), ext[:2].upper() + ext[2:]]


def test_every_video_extension_in_any_case_is_a_video_in_folders(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    expected = {}
    for i, ext in enumerate(VIDEO_EXTENSIONS):
        for j, variant in enumerate(_cases(ext)):
            rel = f"{'real' if j % 2 else 'fake'}/{i:02d}{j}_{ext[1:]}{variant}"
            _touch(root, rel)
            expected[f"folders/{rel.rsplit('.', 1)[0]}"] = str(root / rel)
    _touch(root, "real/notes.txt", "real/clip.mp4.part", "fake/frame.jpg")
    table = build_manifest(str(root))
    _assert_valid_manifest(table)
    assert dict(zip(table.column(VIDEO_ID).to_pylist(), table.column(URI).to_pylist())) == expected
    assert len(expected) == 3 * len(VIDEO_EXTENSIONS) == 45
    report = skip_report(table)
    assert report.counts == {SkipReason.NOT_VIDEO: 3}
    assert report.examples[SkipReason.NOT_VIDEO] == tuple(str(root / r) for r in ("fake/frame.jpg", "real/clip.mp4.part", "real/notes.txt"))


def test_every_video_extension_is_a_video_in_the_official_layouts(tmp_path: Path) -> None:
    exts = [variant for ext in VIDEO_EXTENSIONS for variant in _cases(ext)]
    celeb = tmp_path / "celeb"
    _touch(celeb, *(f"Celeb-real/id{i}_0000{ext}" for i, ext in enumerate(exts)))
    _touch(celeb, *(f"Celeb-synthesis/id{i}_id0_0000{ext}" for i, ext in enumerate(exts)))
    _write(celeb, "List_of_testing_videos.txt", f"1 Celeb-real/id3_0000{exts[3]}\n")
    rows = _by_id(build_manifest(str(celeb)))
    assert len(rows) == 2 * len(exts)
    assert rows["celebdf/Celeb-real/id3_0000"][SPLIT] == "test"
    assert rows["celebdf/Celeb-synthesis/id7_id0_0000"][SOURCE_ID] == "id7_0000"

    ffpp = tmp_path / "ffpp"
    _touch(ffpp, *(f"manipulated_sequences/Deepfakes/c23/videos/{i:03d}_999{ext}" for i, ext in enumerate(exts)))
    _touch(ffpp, *(f"original_sequences/youtube/c23/videos/{i:03d}{ext}" for i, ext in enumerate(exts)))
    _write(ffpp, "splits/train.json", json.dumps([["010", "999"]]))
    rows = _by_id(build_manifest(str(ffpp), ffpp_methods="Deepfakes"))
    assert len(rows) == 2 * len(exts)
    assert (rows["ffpp/Deepfakes/c23/010_999"][SPLIT], rows["ffpp/original/c23/010"][SPLIT]) == ("train", "train")

    dfdc = tmp_path / "dfdc"
    names = [f"v{i:09d}{ext}" for i, ext in enumerate(exts)]
    _touch(dfdc, *(f"part_0/{n}" for n in names))
    _write(dfdc, "part_0/metadata.json", json.dumps({n: {"label": "REAL"} for n in names}))
    table = build_manifest(str(dfdc))
    assert table.num_rows == len(exts) and skip_report(table).total == 0


# ---- hidden and AppleDouble files --------------------------------------------------------------


def test_hidden_and_appledouble_files_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_folders(tmp_path / "mac", with_metadata=False)
    hidden = ["fake/.0003_swap.mp4", "real/.cache/0009.mp4", ".DS_Store", "real/.ipynb_checkpoints/._0010.mp4"]
    appledouble = ["real/._0001.mp4", "fake/._0001_blend.mp4", "__MACOSX/real/._0002.mp4", "fake/__MACOSX/0004_x.mp4"]
    _touch(root, *hidden, *appledouble)
    with caplog.at_level(logging.INFO, logger="raydf.datasets"):
        table = build_manifest(str(root))
    assert table.column(VIDEO_ID).to_pylist() == [
        "folders/fake/0001_blend",
        "folders/fake/0002_swap",
        "folders/real/0001",
        "folders/real/0002",
    ]
    report = skip_report(table)
    assert report.counts == {SkipReason.HIDDEN: 4, SkipReason.APPLEDOUBLE: 4}
    assert report.total == 8
    assert set(report.examples[SkipReason.HIDDEN]) <= {str(root / rel) for rel in hidden}
    assert len(report.examples[SkipReason.APPLEDOUBLE]) == 3  # a few examples, not every path
    skipped = [rec for rec in caplog.records if ": left out " in rec.getMessage()]
    assert [rec.levelno for rec in skipped] == [logging.INFO, logging.INFO]  # one line per reason
    lines = [rec.getMessage() for rec in skipped]
    assert lines[0].startswith(f"{root}: left out 4 hidden file(s)")
    assert lines[1].startswith(f"{root}: left out 4 AppleDouble file(s)")
    # the rule looks below the root only: a root inside a hidden folder is read as usual
    inside = make_folders(tmp_path / ".cache" / "ds", with_metadata=False)
    assert build_manifest(str(inside)).num_rows == 4


def test_appledouble_files_in_an_official_layout_are_skipped(celebdf_root: Path) -> None:
    _touch(celebdf_root, "Celeb-real/._id0_0000.mp4", "YouTube-real/.00171.mp4", "Celeb-synthesis/readme.txt", "extra/a.mp4")
    table = build_manifest(str(celebdf_root))
    assert table.column(VIDEO_ID).to_pylist() == GOLDEN_IDS["celebdf"]
    assert skip_report(table).counts == {
        SkipReason.HIDDEN: 1,
        SkipReason.APPLEDOUBLE: 1,
        SkipReason.NOT_VIDEO: 1,
        SkipReason.OUTSIDE_LAYOUT: 1,
    }


def test_hidden_folders_do_not_decide_the_layout(tmp_path: Path) -> None:
    root = make_dfdc(tmp_path / "dfdc")
    _touch(root, ".trash/real/a.mp4", "__MACOSX/fake/._b.mp4")
    assert detect_layout(str(root)) == "dfdc"


def test_a_root_with_nothing_usable_says_what_was_left_out(tmp_path: Path) -> None:
    _touch(tmp_path / "r", "real/._a.mp4", "real/a.txt", "fake/.b.mp4")
    with pytest.raises(ManifestError, match=r"no videos found for layout 'folders'; left out 1 hidden.*; 1 AppleDouble.*; 1 file\(s\) without a video"):
        build_manifest(str(tmp_path / "r"))


# ---- what else a walk leaves out ---------------------------------------------------------------


def test_other_compressions_methods_and_extra_folders_are_counted(ffpp_root: Path) -> None:
    _touch(ffpp_root, "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4", "README.md", "splits/notes.txt")
    table = build_manifest(str(ffpp_root), ffpp_methods="Deepfakes")
    report = skip_report(table)
    # c40 (2), Face2Face + FaceShifter + DeepFakeDetection (3) and the actors original (1) were not asked for
    assert report.counts == {SkipReason.OUTSIDE_LAYOUT: 3, SkipReason.NOT_SELECTED: 6}
    assert str(ffpp_root / "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4") in report.examples[SkipReason.OUTSIDE_LAYOUT]
    assert table.num_rows == 8 + 6


def test_links_are_followed_and_broken_links_and_loops_counted(tmp_path: Path) -> None:
    store = make_folders(tmp_path / "store", with_metadata=False)
    root = tmp_path / "linked"
    _touch(root, "real/0005.mp4")
    os.symlink(store / "fake", root / "fake")  # a linked folder
    os.symlink(store / "real/0001.mp4", root / "real/0001.mp4")  # a linked file
    os.symlink(tmp_path / "nowhere.mp4", root / "real/0006.mp4")  # broken
    os.symlink(root, root / "real/loop")  # back to an ancestor
    assert detect_layout(str(root)) == "folders"
    table = build_manifest(str(root))
    assert table.column(VIDEO_ID).to_pylist() == [
        "folders/fake/0001_blend",
        "folders/fake/0002_swap",
        "folders/real/0001",
        "folders/real/0005",
    ]
    assert _by_id(table)["folders/fake/0002_swap"][URI] == str(root / "fake/0002_swap.mp4")  # the path as walked
    report = skip_report(table)
    assert report.counts == {SkipReason.UNREADABLE: 2}
    assert report.examples[SkipReason.UNREADABLE] == (str(root / "real/0006.mp4"), str(root / "real/loop"))


def test_skip_report_round_trips_and_is_empty_for_manifest_files(celebdf_root: Path, tmp_path: Path) -> None:
    report = SkipReport({"hidden": 2, "not_video": 1}, {"hidden": ["/a/.x.mp4"], "not_video": ["/a/y.txt"]})
    assert list(report.counts) == [SkipReason.HIDDEN, SkipReason.NOT_VIDEO]
    assert SkipReport.from_json(report.to_json()) == report
    assert report.lines()[0] == "2 hidden file(s) (the name or a folder starts with '.'), e.g. /a/.x.mp4"
    with pytest.raises(ValueError):
        SkipReport.from_json('{"counts": {"lost": 1}}')
    write_manifest(build_manifest(str(celebdf_root)), str(tmp_path / "m.parquet"))
    assert skip_report(read_manifest(str(tmp_path / "m.parquet"))) == SkipReport()


# ---- same stems, duplicate ids -----------------------------------------------------------------


def test_same_stem_pair_gets_two_rows_with_qualified_ids(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "pair", with_metadata=False)
    _touch(root, "real/clip.mp4", "real/clip.mov", "real/nested/clip.mp4")
    rows = _by_id(build_manifest(str(root)))
    assert rows["folders/real/clip.mov"][URI] == str(root / "real/clip.mov")
    assert rows["folders/real/clip.mp4"][URI] == str(root / "real/clip.mp4")
    assert rows["folders/real/clip.mp4"][SOURCE_ID] == rows["folders/real/clip.mov"][SOURCE_ID] == "clip"
    assert "folders/real/nested/clip" in rows  # alone in its folder: plain stem
    assert "folders/real/0001" in rows and len(rows) == 4 + 3


def test_same_stem_pair_in_official_layouts(ffpp_root: Path, dfdc_root: Path) -> None:
    _touch(ffpp_root, "manipulated_sequences/Deepfakes/c23/videos/000_001.MOV")
    rows = _by_id(build_manifest(str(ffpp_root)))
    pair = [rows["ffpp/Deepfakes/c23/000_001.MOV"], rows["ffpp/Deepfakes/c23/000_001.mp4"]]
    assert [(r[SPLIT], r[SOURCE_ID]) for r in pair] == [("train", "000")] * 2
    assert "ffpp/Deepfakes/c23/000_001" not in rows and "ffpp/Face2Face/c23/000_001" in rows

    _touch(dfdc_root, "dfdc_train_part_1/cccccccccc.webm")
    meta = json.loads((dfdc_root / "dfdc_train_part_1/metadata.json").read_text())
    meta["cccccccccc.webm"] = {"label": "REAL"}
    _write(dfdc_root, "dfdc_train_part_1/metadata.json", json.dumps(meta))
    rows = _by_id(build_manifest(str(dfdc_root)))
    assert {"dfdc/dfdc_train_part_1/cccccccccc.mp4", "dfdc/dfdc_train_part_1/cccccccccc.webm"} <= set(rows)
    assert rows["dfdc/dfdc_train_part_1/dddddddddd"][SOURCE_ID] == "cccccccccc"


def test_same_stem_ids_do_not_depend_on_listing_order() -> None:
    from itertools import permutations

    from raydf.datasets import _id_names

    files = ["d/clip.mp4", "d/clip.mov", "d/clip.MP4", "d/clip.mp4.mkv", "d/a", "d/a.avi", "d/solo.mp4"]
    expected = {
        "d/clip.mp4": "clip.mp4",
        "d/clip.mov": "clip.mov",
        "d/clip.MP4": "clip.MP4",
        "d/clip.mp4.mkv": "clip.mp4.mkv",  # its stem would repeat the qualified clip.mp4
        "d/a": "a",
        "d/a.avi": "a.avi",
        "d/solo.mp4": "solo",
    }
    for order in permutations(files):
        assert _id_names(order) == expected


def test_duplicate_ids_from_metadata_name_the_files(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "gen", with_metadata=False)
    _write(root, "metadata.jsonl", '{"file": "real/0001.mp4", "video_id": "x"}\n{"file": "fake/0002_swap.mp4", "video_id": "x"}\n')
    with pytest.raises(DuplicateVideoIdError) as info:
        build_manifest(str(root))
    files = (str(root / "fake/0002_swap.mp4"), str(root / "real/0001.mp4"))
    assert dict(info.value.duplicates) == {"x": files}
    assert f"1 duplicate video_id(s): 'x' in {files[0]}, {files[1]}" in str(info.value)
    assert isinstance(info.value, ManifestError)


def test_duplicate_ids_in_a_user_manifest_name_the_files(tmp_path: Path) -> None:
    _write(tmp_path, "m.csv", "video_id,uri,label\na,/v/a1.mp4,0\nb,/v/b.mp4,1\na,/v/a2.mp4,1\n")
    with pytest.raises(DuplicateVideoIdError, match=r"m\.csv: 1 duplicate video_id\(s\): 'a' in /v/a1\.mp4, /v/a2\.mp4"):
        read_manifest(str(tmp_path / "m.csv"))


def test_check_unique_ids_on_any_table() -> None:
    ok = pa.table({VIDEO_ID: ["a", "b"], URI: ["/a.mp4", "/b.mp4"]})
    check_unique_ids(ok)
    many = pa.table({VIDEO_ID: [f"v{i % 7}" for i in range(21)], URI: [f"/{i}.mp4" for i in range(21)]})
    with pytest.raises(DuplicateVideoIdError, match=r"^job: 7 duplicate video_id\(s\): 'v0' in /0\.mp4, /14\.mp4, /7\.mp4;.*; and 2 more$") as info:
        check_unique_ids(many, "job")
    assert len(info.value.duplicates) == 7
    with pytest.raises(ManifestError, match="lacks"):
        check_unique_ids(pa.table({VIDEO_ID: ["a"]}))
    with pytest.raises(ManifestError, match="2 row.s. have no video_id"):
        check_unique_ids(pa.table({VIDEO_ID: [None, "a", None], URI: ["/1.mp4", "/2.mp4", "/3.mp4"]}))


# ---- S3 (moto) ---------------------------------------------------------------------------------


def _upload(s3, local: Path, bucket: str, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            s3.client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(local).as_posix()}", Body=path.read_bytes())


@pytest.mark.integration
def test_celebdf_on_s3_matches_local(s3, tmp_path: Path) -> None:
    local = make_celebdf(tmp_path / "celeb")
    _touch(local, "Celeb-real/id0_0000.M4V", "Celeb-real/._id1_0000.mp4", "YouTube-real/.hidden/00001.mp4", "notes.txt")
    bucket = s3.make_bucket("celeb")
    _upload(s3, local, bucket, "celeb")

    assert detect_layout(f"s3://{bucket}/celeb") == "celebdf"
    remote = build_manifest(f"s3://{bucket}/celeb")
    expected = build_manifest(str(local))
    _assert_valid_manifest(remote)
    assert "celebdf/Celeb-real/id0_0000.M4V" in remote.column(VIDEO_ID).to_pylist()
    assert remote.drop_columns([URI]).equals(expected.drop_columns([URI]))
    prefix = str(local) + os.sep
    assert remote.column(URI).to_pylist() == [
        f"s3://{bucket}/celeb/" + uri.removeprefix(prefix) for uri in expected.column(URI).to_pylist()
    ]
    assert skip_report(remote).counts == skip_report(expected).counts == {
        SkipReason.HIDDEN: 1,
        SkipReason.APPLEDOUBLE: 1,
        SkipReason.OUTSIDE_LAYOUT: 1,
    }
    assert skip_report(remote).examples[SkipReason.APPLEDOUBLE] == (f"s3://{bucket}/celeb/Celeb-real/._id1_0000.mp4",)

    write_manifest(remote, f"s3://{bucket}/manifests/celeb.parquet")
    assert read_manifest(f"s3://{bucket}/manifests/celeb.parquet").equals(remote)


@pytest.mark.integration
def test_folders_on_s3_same_stems_and_extensions(s3, tmp_path: Path) -> None:
    local = make_folders(tmp_path / "gen")
    _touch(local, "real/clip.mp4", "real/clip.mov", "fake/0005_x.WEBM", "fake/0005_x.txt")
    bucket = s3.make_bucket("folders")
    _upload(s3, local, bucket, "gen")
    remote = build_manifest(f"s3://{bucket}/gen")
    expected = build_manifest(str(local))
    assert remote.drop_columns([URI]).equals(expected.drop_columns([URI]))
    assert {"folders/real/clip.mov", "folders/real/clip.mp4", "folders/fake/0005_x"} <= set(remote.column(VIDEO_ID).to_pylist())
    assert skip_report(remote).counts == {SkipReason.NOT_VIDEO: 1}
