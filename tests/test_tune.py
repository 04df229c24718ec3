"""Ray Tune sweeps over Ray Train: spaces, resources, ASHA, Tuner.restore, S3, MLflow parent/child, the notebook."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ray import tune

from raydf.config import ConfigError, TrainConfig, load_config
from raydf.tune import (
    COMPLETED,
    STOPPED,
    UNFINISHED,
    SweepResult,
    apply_params,
    load_space,
    max_concurrent_trials,
    resume_sweep,
    run_sweep,
    sample_space,
)
from tests.test_train import SMALL_MODEL

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "tune_sweep.ipynb"
ARTIFACTS = REPO / "test-artifacts"  # git-ignored: sweep timings for the record
SPACES = sorted(p.stem for p in (REPO / "tune_spaces").glob("[!_]*.py"))


def tune_base(**overrides) -> TrainConfig:
    """Tiny trials: one 0.4-CPU Train worker each, so two fit beside Ray Data on 2 cores; two epochs
    (ASHA's one rung after the first)."""
    base = {"model": SMALL_MODEL, "max_epochs": 2, "batch_size": 4, "lr": 1e-3, "num_workers": 1, "cpus_per_worker": 0.4,
            "val_fraction": 0.25, "test_fraction": 0.25}
    base.update(overrides)
    return load_config(TrainConfig, base)


def _record(name: str, result: SweepResult, **extra) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "tune_sweeps.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = {"wall_s": round(result.wall_s, 1), "trials": len(result.table), "stopped_early": result.stopped_early,
                  "table": result.table.drop(columns=["mlflow_run_id"]).to_dict("records"), **extra}
    path.write_text(json.dumps(data, indent=2, default=str))


# ---- spaces, configs, resources (no Ray) -------------------------------------------------------------
@pytest.mark.parametrize("space", SPACES)
def test_every_registered_space_samples_valid_train_configs(space):
    param_space = load_space(space)
    for _ in range(25):
        cfg = apply_params(TrainConfig(), sample_space(param_space))
        assert isinstance(cfg, TrainConfig)
    assert SPACES == ["fusion_arch", "mixup_restarts"]


def test_spaces_cover_what_the_report_sweeps():
    mixup = load_space("mixup_restarts")
    assert set(mixup) == {"mixup_alpha", "mixup_prob", "t_0", "t_mult", "lr"}
    arch = load_space("fusion_arch")["model"]
    assert {"gru_hidden", "d_model", "transformer_heads", "transformer_layers", "dropout", "style_flow"} <= set(arch)
    # the report's recipe lies inside the mixup space
    assert 10 in mixup["t_0"].categories and 2 in mixup["t_mult"].categories
    assert mixup["mixup_alpha"].lower <= 0.4 <= mixup["mixup_alpha"].upper and mixup["lr"].lower <= 1e-4 <= mixup["lr"].upper


def test_apply_params_merges_nested_model_keys_and_rejects_unknown_ones():
    cfg = apply_params(TrainConfig(model=load_config(TrainConfig, {"model": SMALL_MODEL}).model), {"lr": 3e-4, "model": {"dropout": 0.25}})
    assert cfg.lr == 3e-4 and cfg.model.dropout == 0.25 and cfg.model.gru_hidden == SMALL_MODEL["gru_hidden"]
    with pytest.raises(ConfigError, match="mixup_alfa"):
        apply_params(TrainConfig(), {"mixup_alfa": 0.3})
    with pytest.raises(ConfigError, match="gru_size"):
        apply_params(TrainConfig(), {"model": {"gru_size": 64}})
    with pytest.raises(ConfigError):
        apply_params(TrainConfig(), {"mixup_prob": 1.5})


def test_max_concurrent_trials_leaves_a_cpu_for_ray_data():
    assert max_concurrent_trials(tune_base(), {"CPU": 2.0}) == 2  # (2 - 1) / (0.1 + 0.4)
    assert max_concurrent_trials(TrainConfig(), {"CPU": 2.0}) == 1  # 2 x 0.5 + 0.1 > 1: still one
    assert max_concurrent_trials(TrainConfig(), {"CPU": 16.0}) == 13  # 15 / 1.1
    gpu = load_config(TrainConfig, {"use_gpu": True, "num_workers": 2, "cpus_per_worker": 4})
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 4.0}) == 2  # bounded by GPUs, not CPUs


def test_a_bad_space_fails_before_any_trial_or_storage(tmp_path):
    with pytest.raises(ConfigError, match="learning_rate"):
        run_sweep("/nonexistent", {"learning_rate": tune.loguniform(1e-4, 1e-2)}, tune_base(), storage_path=str(tmp_path), name="bad", track=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="unknown search space"):
        load_space("no_such_space")


def test_cli_tune_needs_features_or_resume(capfd):
    from raydf.cli import main

    assert main(["tune", "--trials", "1"]) == 2
    assert "--features is required" in capfd.readouterr().err
    assert main(["tune", "--features", "/x", "--space", "no_such_space"]) == 2
    assert "unknown search space" in capfd.readouterr().err


# ---- one sweep, on S3, with a bad arm, interrupted and resumed ----------------------------------------
BAD_LR = 5.0  # AdamW at lr 5: the validation loss is ~1e3 after one epoch (finite, so ASHA can rank it)
GRID = [2e-3, 1e-3, BAD_LR, 1.5e-3]  # the bad arm third: the first good trials reach ASHA's rung before it


class InterruptAfterTrial(tune.Callback):
    """Ctrl+C for the sweep, once the trial with ``lr`` has ended: SIGUSR1 is the signal Tune's loop
    reads to save its state and stop. The marker file keeps the restored copy of this callback
    (Tune pickles the run config) from interrupting the resumed sweep again."""

    def __init__(self, lr: float, marker: str) -> None:
        self.lr, self.marker = lr, marker

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001 - Tune's signature
        if trial.config.get("lr") == self.lr and not os.path.exists(self.marker):
            Path(self.marker).write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)


@dataclass
class InterruptedSweep:
    first: SweepResult  # the interrupted run
    resumed: SweepResult  # after resume_sweep (Tuner.restore)
    resumed_at: float  # time.time() when resume_sweep was called
    bucket: str
    tracking_uri: str
    artifact_location: str
    leaked_placement_groups: list[str]  # created during the sweep and still holding resources after it
    leftover_scratch: list[str]  # local scratch dirs of its trials still there after the sweep


@pytest.fixture(scope="module")
def s3_sweep(extracted, ray_cluster, s3, tmp_path_factory) -> InterruptedSweep:
    """4 trials (one with a far too high learning rate) with storage and MLflow artifacts on moto S3;
    interrupted once the bad arm has ended, then resumed from its S3 path."""
    root = tmp_path_factory.mktemp("tune-s3")
    bucket = s3.make_bucket("raydf-sweeps")
    before = _live_placement_groups()
    scratch_before = _train_scratch_dirs()
    tracking_uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", f"s3://{bucket}/mlflow"
    first = run_sweep(
        str(extracted.features), {"lr": tune.grid_search(GRID)}, tune_base(), num_samples=1, name="lr-grid",
        storage_path=f"s3://{bucket}/sweeps", tracking_uri=tracking_uri, artifact_location=artifacts,
        tags={"dataset": "generated"}, callbacks=[InterruptAfterTrial(BAD_LR, str(root / "interrupted"))],
    )  # fmt: skip
    resumed_at = time.time()
    resumed = resume_sweep(first.path)
    _record("s3_interrupted_then_resumed", resumed, first_part_wall_s=round(first.wall_s, 1),
            first_part_status=dict(zip(first.table["trial_id"], first.table["status"])))
    deadline = time.monotonic() + 30  # Ray Train's cleaner polls every second
    while (leaked := sorted(_live_placement_groups() - before)) and time.monotonic() < deadline:
        time.sleep(1)
    return InterruptedSweep(first, resumed, resumed_at, bucket, tracking_uri, artifacts, leaked,
                            sorted(_train_scratch_dirs() - scratch_before))  # fmt: skip


def _train_scratch_dirs() -> set[str]:
    """Local scratch dirs of training runs on remote storage (``raydf-train-*``, ``raydf-sweep-*``)."""
    tmp = Path(tempfile.gettempdir())
    return {str(p) for pattern in ("raydf-train-*", "raydf-sweep-*") for p in tmp.glob(pattern)}


def _live_placement_groups() -> set[str]:
    from ray.util import placement_group_table

    return {pg_id for pg_id, pg in placement_group_table().items() if pg["state"] != "REMOVED"}


def _lr_of(result: SweepResult, trial_id: str) -> float:
    return float(result.table.set_index("trial_id").loc[trial_id, "config/lr"])


@pytest.mark.integration
@pytest.mark.slow
def test_asha_stops_the_bad_arm_early(s3_sweep):
    import mlflow

    t = s3_sweep.resumed.table.set_index("config/lr")
    assert t.loc[BAD_LR, "status"] == STOPPED
    assert t.loc[BAD_LR, "epochs"] < tune_base().max_epochs
    assert t.loc[BAD_LR, "best_val_loss"] > 10 * t.drop(index=BAD_LR)["best_val_loss"].min()
    assert (t["status"] == COMPLETED).any() and t.loc[t["status"] == COMPLETED, "epochs"].eq(tune_base().max_epochs).all()
    assert s3_sweep.resumed.best_config["lr"] != BAD_LR
    client = mlflow.MlflowClient(s3_sweep.tracking_uri)
    bad_run = client.get_run(s3_sweep.resumed.child_run_ids[t.loc[BAD_LR, "trial_id"]])
    assert bad_run.info.status == "KILLED" and bad_run.data.tags["raydf.tune.stopped_early"] == "true"
    assert "test_roc_auc" not in bad_run.data.metrics  # never got to its test evaluation
    # the stopped (and the interrupted) trials gave their Train workers' CPUs back
    assert s3_sweep.leaked_placement_groups == []


@pytest.mark.integration
@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(s3_sweep):
    import mlflow

    first, resumed = s3_sweep.first, s3_sweep.resumed
    assert not first.finished and resumed.finished
    before = dict(zip(first.table["trial_id"], first.table["status"]))
    assert UNFINISHED in before.values(), before
    done_before = [tid for tid, st in before.items() if st in (COMPLETED, STOPPED)]
    assert done_before, before
    after = resumed.table.set_index("trial_id")
    assert set(before) <= set(after.index) and len(after) == len(GRID)
    assert UNFINISHED not in set(after["status"])

    client = mlflow.MlflowClient(s3_sweep.tracking_uri)
    parent = client.get_run(resumed.parent_run_id)
    children = client.search_runs([resumed.experiment_id], f"tags.`mlflow.parentRunId` = '{resumed.parent_run_id}'")
    trial_tags = [c.data.tags["raydf.tune.trial_id"] for c in children]
    assert sorted(trial_tags) == sorted(after.index)  # exactly one child run per trial
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    assert parent.info.status == "FINISHED" and parent.data.tags["raydf.tune.state"] == "finished"
    assert parent.data.metrics["n_trials"] == len(GRID)
    # finished trials were not run again: they ended before the resume and kept their MLflow runs
    for tid in done_before:
        run = client.get_run(resumed.child_run_ids[tid])
        assert run.info.end_time < s3_sweep.resumed_at * 1000, tid
        assert first.child_run_ids[tid] == resumed.child_run_ids[tid]
    # the interrupted trials went on in their own MLflow runs, one value per epoch
    for tid in (t for t, st in before.items() if st == UNFINISHED and t in first.child_run_ids):
        assert resumed.child_run_ids[tid] == first.child_run_ids[tid]
        steps = [m.step for m in client.get_metric_history(resumed.child_run_ids[tid], "val_loss")]
        assert sorted(steps) == list(range(int(after.loc[tid, "epochs"]))), steps  # every epoch exactly once


@pytest.mark.integration
@pytest.mark.slow
def test_sweep_storage_and_mlflow_artifacts_live_on_s3(s3_sweep, s3):
    import mlflow

    res = s3_sweep.resumed
    assert res.path == f"s3://{s3_sweep.bucket}/sweeps/lr-grid"
    keys = [o["Key"] for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3_sweep.bucket) for o in page.get("Contents", [])]
    sweep = [k for k in keys if k.startswith("sweeps/lr-grid/")]
    assert "sweeps/lr-grid/raydf_sweep.json" in sweep and "sweeps/lr-grid/tuner.pkl" in sweep
    assert any(k.startswith("sweeps/lr-grid/experiment_state") for k in sweep)
    for tid in res.table["trial_id"]:
        assert any(k.startswith(f"sweeps/lr-grid/trial-{tid}/") and k.endswith("result.json") for k in sweep), tid
        assert any(k.startswith(f"sweeps/lr-grid/train/trial-{tid}/checkpoint_") for k in sweep), tid
    assert s3_sweep.leftover_scratch == []  # trials on remote storage leave no local temp dirs behind
    client = mlflow.MlflowClient(s3_sweep.tracking_uri)
    parent = client.get_run(res.parent_run_id)
    assert parent.info.artifact_uri.startswith(s3_sweep.artifact_location)
    prefix = parent.info.artifact_uri.removeprefix(f"s3://{s3_sweep.bucket}/")
    assert f"{prefix}/sweep/results.csv" in keys and f"{prefix}/sweep/best_config.json" in keys
    mlflow.set_tracking_uri(s3_sweep.tracking_uri)
    local = mlflow.artifacts.download_artifacts(run_id=res.parent_run_id, artifact_path="sweep/best_config.json")
    assert json.loads(Path(local).read_text()) == res.best_config
    assert parent.data.params["best.lr"] == str(res.best_config["lr"])
    assert parent.data.metrics["best_val_loss"] == pytest.approx(res.best_metrics["best_val_loss"])


# ---- the notebook -----------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_notebook_runs_a_sweep_on_generated_features_headless(extracted, ray_cluster, tmp_path):
    import mlflow
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit the notebook without outputs"
    trials = 2  # the notebook's flow, not the search, is under test (tests above cover the sweep)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        **ray_cluster.driver_env(),  # the kernel joins the test cluster as a driver
        "RAYDF_FEATURES": str(extracted.features),
        "RAYDF_TRIALS": str(trials),
        "RAYDF_EPOCHS": "2",
        "RAYDF_MODEL": json.dumps(SMALL_MODEL),
        "RAYDF_STORAGE": str(tmp_path / "sweeps"),
        "RAYDF_SWEEP_NAME": "notebook",
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute(env=env)
    wall = time.perf_counter() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "best trial:" in text and "mixup_alpha" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot"
    (table,) = [o["data"]["text/html"] for o in outputs if "trial_id</th>" in o.get("data", {}).get("text/html", "")]
    assert table.count("<tr") == 1 + trials  # the results table: header + one row per trial

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("raydf-tune")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`raydf.stage` = 'tune'")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == trials and len({c.data.tags["raydf.tune.trial_id"] for c in children}) == trials
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_trials"] == trials
    assert "best.mixup_alpha" in parent.data.params and "best.t_0" in parent.data.params
    assert np.isfinite(parent.data.metrics["best_val_loss"])
    results = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="sweep/results.csv", tracking_uri=tracking_uri))
    assert len(results.read_text().strip().splitlines()) == 1 + trials
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "tune_sweeps.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["notebook"] = {"notebook_wall_s": round(wall, 1), "sweep_wall_s": parent.data.metrics.get("sweep_wall_s"),
                        "stopped_early": int(parent.data.metrics["n_stopped_early"])}
    path.write_text(json.dumps(data, indent=2, default=str))
