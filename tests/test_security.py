"""Secrets in the environment never reach job logs, raydf logs, or MLflow params, tags and artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _secrets(cluster) -> dict[str, str]:
    env = cluster.env
    return {
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
        "MLFLOW_TRACKING_TOKEN": env["MLFLOW_TRACKING_TOKEN"],
        "ray auth token": cluster.token,
    }


def _assert_clean(text: str, secrets: dict[str, str], where: str) -> None:
    for name, value in secrets.items():
        assert value not in text, f"{name} leaked into {where}"


def test_secrets_stay_out_of_job_logs_and_mlflow(ray_cluster, s3, extracted, generated_dataset, tmp_path):
    import mlflow

    secrets = _secrets(ray_cluster)
    assert all(len(v) >= 16 for v in secrets.values())
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # Extraction from and to S3 (credentials from the environment, as on AWS), as a Ray job.
    bucket = s3.make_bucket("sec")
    for p in sorted((generated_dataset / "real").glob("*.mp4"))[:1] + sorted((generated_dataset / "fake").glob("*.mp4"))[:1]:
        s3.client.upload_file(str(p), bucket, f"videos/{p.parent.name}/{p.name}")
    ext = ray_cluster.submit_pipeline(
        "pipelines/extract.py", "--input", f"s3://{bucket}/videos", "--output", f"s3://{bucket}/features",
        "--layout", "folders", "--style-config", "psp_tiny", "--frames", "8", "--tracking-uri", tracking,
    )  # fmt: skip
    assert ext.returncode == 0, ext.stdout[-3000:] + ext.stderr[-3000:]
    assert "status: ok 2" in ext.stdout
    _assert_clean(ext.stdout + ext.stderr, secrets, "the extraction job's logs")

    # Training as a Ray job, logging to MLflow.
    train = ray_cluster.submit_pipeline(
        "pipelines/train.py", "--features", str(extracted.features), "--epochs", "1", "--workers", "1",
        "--storage", str(tmp_path / "ray_results"), "--name", "sec", "--tag", "dataset=generated", "--tracking-uri", tracking,
    )  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "mlflow run:" in train.stdout
    _assert_clean(train.stdout + train.stderr, secrets, "the training job's logs")

    # Every MLflow run of both jobs: params, tags, metric names, and every artifact's bytes.
    client = mlflow.MlflowClient(tracking)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    stages = sorted(r.data.tags.get("raydf.stage") for r in runs)
    assert stages == ["extract", "train"]
    mlflow.set_tracking_uri(tracking)
    n_files = 0
    for run in runs:
        _assert_clean(repr(run.data.params) + repr(run.data.tags) + repr(sorted(run.data.metrics)), secrets, f"run {run.info.run_id}")
        local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / run.info.run_id)))
        for f in local.rglob("*"):
            if f.is_file():
                n_files += 1
                data = f.read_bytes()
                for name, value in secrets.items():
                    assert value.encode() not in data, f"{name} leaked into artifact {f.relative_to(local)}"
    assert n_files >= 10  # plots, evaluation, model, tensorboard, history... were all scanned
    # The logged model too (MLflow 3 keeps it apart from the run's artifacts).
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{[r for r in runs if r.data.tags['raydf.stage'] == 'train'][0].info.run_id}/model", dst_path=str(tmp_path / "model")))
    for f in model_dir.rglob("*"):
        if f.is_file():
            for name, value in secrets.items():
                assert value.encode() not in f.read_bytes(), f"{name} leaked into the model's {f.name}"
