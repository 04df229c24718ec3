"""The Ray Data extraction job on a real local Ray cluster: rows, shapes, exactly-once, bad inputs, S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from raydf import schema as S
from raydf.config import ExtractConfig, load_config
from raydf.store import ExtractConfigMismatch, FeatureStore
from tests.media import folder_subset, write_audio_only

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def small_cfg(**overrides) -> ExtractConfig:
    base = {"style": {"config": "psp_tiny"}, "rows_per_file": 4, "feature_batch_size": 2}
    base.update(overrides)
    return load_config(ExtractConfig, base)


# ---- the session's extraction (shared with the training tests) -------------------------------------
def test_pipeline_writes_one_ok_row_per_video_with_shapes(extracted):
    table = pq.read_table(extracted.features)
    manifest_rows = [json.loads(x) for x in (extracted.data / "metadata.jsonl").read_text().splitlines()]
    assert table.num_rows == len(manifest_rows)
    assert sorted(table.column(S.VIDEO_ID).to_pylist()) == sorted(r["video_id"] for r in manifest_rows)
    assert set(table.column(S.STATUS).to_pylist()) == {S.STATUS_OK}
    assert S.stack_column(table, S.CONTENT).shape == (table.num_rows, 2, 2048)
    assert S.stack_column(table, S.STYLE).shape == (table.num_rows, 32, 512)
    assert S.stack_column(table, S.FACE_BOXES).shape == (table.num_rows, 32, 4)
    assert table.column(S.CONTENT_PROVENANCE).to_pylist()[0] == "random:0:slow_r50"
    assert table.column(S.STYLE_PROVENANCE).to_pylist()[0] == "random:0:psp_tiny"
    assert extracted.summary.ok == table.num_rows and extracted.summary.error == 0


def test_parquet_reads_without_ray_and_records_its_config(extracted):
    df = pd.read_parquet(extracted.features)
    first = df.iloc[0]
    assert np.stack(first[S.CONTENT]).shape == (2, 2048)
    assert np.stack(first[S.STYLE]).shape == (32, 512)
    meta = pq.read_schema(next(Path(extracted.features).glob("part-*.parquet"))).metadata
    config = json.loads(meta[S.META_EXTRACT_CONFIG])
    assert config["num_frames"] == 32 and config["style"]["config"] == "psp_tiny" and config["precision"] == "fp32"
    assert json.loads(meta[S.META_PROVENANCE])["style"] == "random:0:psp_tiny"


def test_pipeline_features_equal_the_foundation_functions(extracted):
    from raydf.faces import FaceCropper
    from raydf.features import FeatureExtractor
    from raydf.video import read_video

    cfg = extracted.cfg
    table = pq.read_table(extracted.features)
    row = [r for r in table.to_pylist() if r[S.LABEL] == 1][0]
    video = read_video(row[S.URI], cfg.video.num_frames)
    faces = FaceCropper(cfg.faces)(video.frames)
    feats = FeatureExtractor(cfg.content, cfg.style)(faces.crops[None])
    np.testing.assert_array_equal(np.asarray(row[S.FRAME_INDICES]), video.indices)
    np.testing.assert_array_equal(np.asarray(row[S.FACE_VALID]), faces.valid)
    np.testing.assert_allclose(np.asarray(row[S.FACE_BOXES]), faces.boxes, atol=1e-4)
    np.testing.assert_allclose(np.asarray(row[S.CONTENT]), feats.content[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(row[S.STYLE]), feats.style[0], atol=1e-4, rtol=1e-4)


def test_rerun_skips_done_videos_and_changes_nothing(extracted, ray_cluster):
    from raydf.extract import run_extraction

    before = sorted(p.name for p in Path(extracted.features).glob("part-*.parquet"))
    summary = run_extraction(str(extracted.data), str(extracted.features), extracted.cfg, track=False)
    assert summary.processed == 0 and summary.skipped == summary.total
    assert sorted(p.name for p in Path(extracted.features).glob("part-*.parquet")) == before


def test_rerun_with_another_config_is_refused(extracted):
    from raydf.extract import run_extraction

    with pytest.raises(ExtractConfigMismatch, match="num_frames"):
        run_extraction(str(extracted.data), str(extracted.features), small_cfg(video={"num_frames": 16}), track=False)
    with pytest.raises(ExtractConfigMismatch, match="style"):
        run_extraction(str(extracted.data), str(extracted.features), small_cfg(style={"config": "psp_tiny", "seed": 1}), track=False)
    # a resume at another precision (bf16 here, or fp16 on a GPU node) would mix precisions in one store
    with pytest.raises(ExtractConfigMismatch, match="precision"):
        run_extraction(str(extracted.data), str(extracted.features), small_cfg(cpu_precision="bf16"), track=False)


def test_extraction_run_is_logged_to_mlflow_with_its_dataset(extracted):
    import mlflow

    client = mlflow.MlflowClient(extracted.tracking_uri)
    run = client.get_run(extracted.summary.mlflow_run_id)
    assert run.data.metrics["videos_ok"] == extracted.summary.ok
    assert run.data.metrics["videos_per_s"] > 0
    assert run.data.params["style.config"] == "psp_tiny"
    assert run.data.tags["raydf.style_provenance"] == "random:0:psp_tiny"
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "features"
    assert str(extracted.features) in inputs[0].dataset.source


# ---- bad inputs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, generated_dataset) -> Path:
    """A manifest CSV over every kind of bad input, plus good ones."""
    from skimage.data import astronaut

    from raydf.synth import write_noface_video, write_video

    d = tmp_path_factory.mktemp("bad")
    good = sorted((generated_dataset / "real").glob("*.mp4"), key=lambda p: p.stat().st_size)[-1]
    shutil.copy(good, d / "good.mp4")
    (d / "empty.mp4").write_bytes(b"")
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "text.mp4").write_text("not a video\n" * 50)
    write_audio_only(d / "audio.mp4")
    face = np.ascontiguousarray(astronaut()[:480, :480])
    write_video(d / "one_frame.mp4", face[None], fps=25)
    write_noface_video(d / "noface.mp4", num_frames=10)
    import cv2

    big = cv2.resize(astronaut(), (2160, 2160))
    big = np.pad(big, ((0, 0), (840, 840), (0, 0)))  # 3840x2160: 4K
    write_video(d / "uhd.mp4", np.stack([big] * 3), fps=25)
    rows = []
    names = ["good", "empty", "truncated", "text", "audio", "one_frame", "noface", "uhd", "missing"]
    for name in names:
        rows.append({"video_id": name, "uri": str(d / f"{name}.mp4"), "label": 0, "dataset": "bad", "split": "test"})
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    return d


@pytest.mark.slow
def test_bad_inputs_become_error_rows_and_are_retried(bad_inputs, tmp_path, ray_cluster, generated_dataset):
    from raydf.extract import run_extraction

    out = tmp_path / "features"
    cfg = small_cfg(video={"num_frames": 8}, rows_per_file=3)
    summary = run_extraction(str(bad_inputs / "manifest.csv"), str(out), cfg, track=False)
    rows = {r[S.VIDEO_ID]: r for r in pq.read_table(out).to_pylist()}
    assert sorted(rows) == sorted(["good", "empty", "truncated", "text", "audio", "one_frame", "noface", "uhd", "missing"])
    errors = {"empty", "truncated", "text", "audio", "missing"}
    for vid, row in rows.items():
        if vid in errors:
            assert row[S.STATUS] == S.STATUS_ERROR, vid
            assert f"{vid}.mp4" in row[S.ERROR], row[S.ERROR]
            assert row[S.CONTENT] is None and row[S.STYLE] is None
        else:
            assert row[S.STATUS] == S.STATUS_OK, (vid, row[S.ERROR])
            assert np.stack(row[S.STYLE]).shape == (8, 512)
    assert not any(rows["noface"][S.FACE_VALID])
    assert all(rows["uhd"][S.FACE_VALID]) and rows["uhd"][S.FACE_BOXES][0][2] > 1000  # boxes in 4K pixels
    assert rows["one_frame"][S.FRAME_INDICES] == [0] * 8 and rows["one_frame"][S.N_FRAMES] == 1
    assert "empty" in rows["empty"][S.ERROR]
    assert "no video stream" in rows["audio"][S.ERROR]
    assert (summary.ok, summary.error, summary.no_face) == (4, 5, 1)

    # The truncated file gets fixed: a rerun retries every error and replaces the old rows.
    shutil.copy(bad_inputs / "good.mp4", bad_inputs / "truncated.mp4")
    try:
        summary = run_extraction(str(bad_inputs / "manifest.csv"), str(out), cfg, track=False)
    finally:
        (bad_inputs / "truncated.mp4").write_bytes((bad_inputs / "good.mp4").read_bytes()[:1000])
    assert summary.processed == 5 and (summary.ok, summary.error) == (5, 4)
    table = pq.read_table(out)
    ids = table.column(S.VIDEO_ID).to_pylist()
    assert len(ids) == len(set(ids)) == 9
    assert {r[S.VIDEO_ID]: r[S.STATUS] for r in table.to_pylist()}["truncated"] == S.STATUS_OK


# ---- object storage in and out (kills and reruns on both backends: tests/test_chaos.py) ----------------
@pytest.mark.slow
def test_s3_in_s3_out_reads_back_with_plain_pyarrow(tmp_path, ray_cluster, s3, generated_dataset):
    import pyarrow.fs

    from raydf.datasets import build_manifest
    from raydf.extract import run_extraction

    bucket = s3.make_bucket("videos")
    smallest = sorted((p for p in generated_dataset.rglob("*.mp4")), key=lambda p: p.stat().st_size)[:4]
    for p in smallest:
        s3.client.upload_file(str(p), bucket, f"gen/{p.relative_to(generated_dataset)}")
    data, out = f"s3://{bucket}/gen", f"s3://{bucket}/features"
    ids = set(build_manifest(data).column(S.VIDEO_ID).to_pylist())
    assert len(ids) == 4
    cfg = load_config(ExtractConfig, {"style": {"config": "psp_tiny"}, "video": {"num_frames": 8}, "rows_per_file": 2, "feature_batch_size": 2})
    summary = run_extraction(data, out, cfg, track=False)
    assert summary.ok == len(ids)
    table = FeatureStore(out).read([S.VIDEO_ID, S.STATUS])
    assert sorted(table.column(S.VIDEO_ID).to_pylist()) == sorted(ids)
    assert set(table.column(S.STATUS).to_pylist()) == {S.STATUS_OK}
    # Plain pyarrow (no Ray, no fsspec) reads it back from the S3 endpoint.
    fs = pyarrow.fs.S3FileSystem(endpoint_override=s3.endpoint, scheme="http", access_key="testing", secret_key="testing", region="us-east-1")
    table = pq.read_table(f"{bucket}/features", filesystem=fs)
    assert table.num_rows == len(ids)
    assert S.stack_column(table, S.STYLE).shape == (len(ids), 8, 512)
    assert all(u.startswith("s3://") for u in table.column(S.URI).to_pylist())


# ---- as a Ray job --------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_job_submit_runs_the_extraction_pipeline(tmp_path, ray_cluster, generated_dataset):
    data = folder_subset(generated_dataset, tmp_path / "videos")  # two of each: the job, not the throughput, is under test
    out = tmp_path / "job-features"
    result = ray_cluster.submit_pipeline(
        "pipelines/extract.py", "--input", str(data), "--output", str(out), "--layout", "folders",
        "--style-config", "psp_tiny", "--frames", "32", "--no-track",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "status: ok 4" in result.stdout
    table = pq.read_table(out)
    n = 4
    assert table.num_rows == n and set(table.column(S.STATUS).to_pylist()) == {"ok"}
    assert S.stack_column(table, S.CONTENT).shape == (n, 2, 2048)
    assert S.stack_column(table, S.STYLE).shape == (n, 32, 512)
