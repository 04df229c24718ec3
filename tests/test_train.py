"""Ray Train on extraction Parquet: splits, the loop, DDP, worker kill and resume, MLflow, detect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from raydf import schema as S
from raydf.config import TrainConfig, load_config, to_dict
from raydf.splits import assign_splits, plan_splits
from raydf.train import run_epoch

SMALL_MODEL = {"gru_hidden": 64, "d_model": 64, "transformer_heads": 4, "ff_dim": 128, "fc_hidden": 32, "transformer_layers": 1}


def small_train_cfg(**overrides) -> TrainConfig:
    base = {"model": SMALL_MODEL, "max_epochs": 6, "batch_size": 4, "lr": 1e-3, "num_workers": 2, "cpus_per_worker": 0.5,
            "val_fraction": 0.25, "test_fraction": 0.25}
    base.update(overrides)
    return load_config(TrainConfig, base)


# ---- planning (no Ray) -----------------------------------------------------------------------------
def _index(rows, tracks=None):
    return pa.Table.from_pylist(
        [{S.VIDEO_ID: v, S.TRACK_ID: (tracks or {}).get(v, 0), S.LABEL: l, S.SPLIT: sp, S.SOURCE_ID: src, S.DATASET: "d",
          S.METHOD: ("self_blend" if v.endswith("/self_blend") else ("m" if l else "")), S.META: "{}", S.STATUS: st, S.FACE_VALID: fv}
         for v, l, sp, src, st, fv in rows]
    )


def test_splits_by_source_never_share_a_source():
    rows = []
    for s in range(20):
        rows.append((f"r{s}", 0, "", f"src{s}", "ok", [True] * 8))
        rows.append((f"f{s}a", 1, "", f"src{s}", "ok", [True] * 8))
        rows.append((f"f{s}b", 1, "", f"src{s}", "ok", [True] * 8))
    assignment, excluded = assign_splits(_index(rows), small_train_cfg())
    by_source = {}
    for vid, split in assignment.items():
        by_source.setdefault(vid.lstrip("rf").rstrip("ab"), set()).add(split)
    assert all(len(s) == 1 for s in by_source.values())
    counts = {s: sum(1 for x in assignment.values() if x == s) for s in S.SPLITS}
    assert counts == {"train": 30, "val": 15, "test": 15}
    assert excluded == {"error": 0, "few_faces": 0, "other_method": 0, "pseudo_fake": 0}


def test_tracks_of_a_video_and_its_pseudo_fake_share_its_split():
    rows, tracks = [], {}
    for s in range(12):
        rows.append((f"r{s}", 0, "", f"r{s}", "ok", [True] * 8))
        rows.append((f"r{s}", 0, "", f"r{s}", "ok", [True] * 8))  # track 1 of the same video
        rows.append((f"r{s}/self_blend", 1, "", f"r{s}", "ok", [True] * 8))
        rows.append((f"f{s}", 1, "", f"r{s}", "ok", [True] * 8))
    index = _index(rows)
    index = index.set_column(1, S.TRACK_ID, pa.array([int(i % 4 == 1) for i in range(len(rows))], pa.int32()))
    plan = plan_splits(index, small_train_cfg(fakes="both"))
    split_of = {}
    for split, keys in plan.keys.items():
        for vid, _ in keys:
            split_of.setdefault(vid.split("/")[0].lstrip("rf"), set()).add(split)
    assert all(len(s) == 1 for s in split_of.values())
    assert ("r0", 1) in {k for keys in plan.keys.values() for k in keys}
    # pseudo-fakes train only: evaluation uses the dataset's fakes where there are any
    assert all(not v.endswith("/self_blend") for split in ("val", "test") for v, _ in plan.keys[split])
    assert any(v.endswith("/self_blend") for v, _ in plan.keys["train"]) and not plan.pseudo_val
    only_pseudo = plan_splits(index, small_train_cfg(fakes="pseudo"))
    assert all(not v.startswith("f") for v, _ in only_pseudo.keys["train"])
    dataset_only = plan_splits(index, small_train_cfg())
    assert all(not v.endswith("/self_blend") for keys in dataset_only.keys.values() for v, _ in keys)


def test_manifest_splits_are_kept_and_bad_rows_excluded():
    rows = [
        ("a", 0, "train", "a", "ok", [True] * 4),
        ("b", 1, "test", "a", "ok", [True] * 4),
        ("c", 1, "val", "c", "ok", [True] * 4),
        ("d", 1, "train", "d", "error", None),
        ("e", 0, "train", "e", "ok", [True, False, False, False]),  # 25% valid < 50%
    ]
    assignment, excluded = assign_splits(_index(rows), small_train_cfg())
    assert assignment == {"a": "train", "b": "test", "c": "val"}
    assert excluded == {"error": 1, "few_faces": 1, "other_method": 0, "pseudo_fake": 0}


def _toy_batches(n=32, t=8, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    label = (torch.arange(n) % 2).float()
    style = torch.randn(n, t, 512, generator=g) + label[:, None, None] * 0.8
    content = torch.randn(n, k, 2048, generator=g)
    valid = torch.ones(n, t, dtype=torch.bool)
    return [{"content": content[i : i + 8], "style": style[i : i + 8], "valid": valid[i : i + 8], "label": label[i : i + 8]} for i in range(0, n, 8)]


def test_run_epoch_loss_goes_down_without_ray():
    from raydf.models.fusion import FusionClassifier
    from raydf.recipe import make_optimizer, seed_everything

    seed_everything(0)
    cfg = small_train_cfg(mixup_prob=0.0)
    model = FusionClassifier(cfg.model)
    opt = make_optimizer(model, cfg)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batches = _toy_batches()
    first = run_epoch(model, batches, loss_fn=loss_fn)["loss_sum"]
    for _ in range(15):
        run_epoch(model, batches, loss_fn=loss_fn, optimizer=opt, cfg=cfg, rng=np.random.default_rng(0))
    last = run_epoch(model, batches, loss_fn=loss_fn)
    assert last["loss_sum"] < 0.5 * first
    assert last["correct"] / last["n"] > 0.9


# ---- Ray Train ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(extracted, tmp_path_factory, ray_cluster):
    """A small training run on the session's extracted features, logged to a sqlite MLflow store."""
    from raydf.train import run_training

    root = tmp_path_factory.mktemp("train")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = small_train_cfg(max_epochs=5, val_fraction=0.25, test_fraction=0.25)
    result = run_training(str(extracted.features), cfg, storage_path=str(root / "ray_results"), name="t1",
                          tracking_uri=tracking_uri, tags={"dataset": "generated"})
    return result, tracking_uri, root


@pytest.mark.integration
def test_training_runs_and_loss_decreases(trained):
    result, _, _ = trained
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 5
    assert min(losses[1:]) < losses[0]
    assert sum(result.splits.values()) > 0 and result.splits["test"] > 0
    assert all(np.isfinite(h["val_loss"]) for h in result.history)


@pytest.mark.integration
def test_mlflow_run_has_params_metrics_model_dataset_and_plots(trained, extracted):
    import mlflow

    result, tracking_uri, root = trained
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    p, m, tags = run.data.params, run.data.metrics, run.data.tags
    assert p["train.lr"] == "0.001" and p["train.t_0"] == "10" and p["train.patience"] == "12"
    assert p["extract.style.config"] == "psp_tiny"
    assert tags["dataset"] == "generated" and tags["style_config"] == "psp_tiny" and tags["weights"] == "random"
    assert tags["raydf.style_provenance"] == "random:0:psp_tiny"
    for key in ("train_loss", "val_loss", "train_acc", "val_acc", "val_auc", "lr"):
        assert len(client.get_metric_history(result.run_id, key)) == 5, key
    assert "test_roc_auc" in m and "test_accuracy" in m and "test_eer" in m
    # linked to the extraction's dataset: same source and digest as the extraction run logged
    (inp,) = run.inputs.dataset_inputs
    ext = mlflow.MlflowClient(extracted.tracking_uri).get_run(extracted.summary.mlflow_run_id).inputs.dataset_inputs[0]
    assert inp.dataset.digest == ext.dataset.digest and inp.dataset.source == ext.dataset.source
    artifacts = {f.path for f in client.list_artifacts(result.run_id, "plots")}
    for plot in ("curves.png", "lr_schedule.png", "confusion_test.png", "roc_test.png", "style_trajectories.png", "decision_boundary.png"):
        assert f"plots/{plot}" in artifacts, plot
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="evaluation")
    roc = json.loads(Path(local, "roc_test.json").read_text())
    assert abs(np.trapezoid(roc["tpr"], roc["fpr"]) - m["test_roc_auc"]) < 1e-9
    assert any(f.path.startswith("tensorboard") for f in client.list_artifacts(result.run_id))


@pytest.mark.integration
def test_logged_model_reloads_with_the_same_predictions_without_a_pickle(trained, extracted):
    import mlflow

    from raydf.bundle import ModelBundle
    from raydf.mlflow_model import pack
    from raydf.scoring import predict_features
    from raydf.store import FeatureStore

    result, tracking_uri, _ = trained
    mlflow.set_tracking_uri(tracking_uri)
    bundle = ModelBundle.load(result.model_path)
    pred = predict_features(bundle, str(extracted.features), None)
    t = FeatureStore(str(extracted.features)).read([S.VIDEO_ID, S.TRACK_ID, S.CONTENT, S.STYLE, S.FACE_VALID])
    order = {v: i for i, (v, tr) in enumerate(zip(t.column(S.VIDEO_ID).to_pylist(), t.column(S.TRACK_ID).to_pylist())) if tr == 0}
    idx = [order[v] for v in pred.ids]
    packed = pack(S.stack_column(t, S.CONTENT)[idx], S.stack_column(t, S.STYLE)[idx], S.stack_column(t, S.FACE_VALID)[idx])
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    np.testing.assert_allclose(np.asarray(pyfunc.predict(packed)).reshape(-1), pred.probs, atol=1e-6)
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/model"))
    assert not list(local.rglob("*.pkl")), "the logged model must not be a pickle"
    reqs = (local / "requirements.txt").read_text()
    assert "raydf==" in reqs and "torch==" in reqs


@pytest.mark.integration
def test_detect_matches_the_logged_probability_and_rejects_non_videos(trained, extracted, tmp_path):
    import csv

    import mlflow

    result, tracking_uri, _ = trained
    mlflow.set_tracking_uri(tracking_uri)
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="evaluation/predictions_test.csv")
    row = next(csv.DictReader(open(local)))
    import pyarrow.parquet as pq

    t = pq.read_table(extracted.features, columns=[S.VIDEO_ID, S.URI])
    uri = dict(zip(t.column(S.VIDEO_ID).to_pylist(), t.column(S.URI).to_pylist()))[row["video_id"]]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-m", "raydf.cli", "detect", uri, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert 0.0 <= res["fake_probability"] <= 1.0
    assert abs(res["fake_probability"] - float(row["fake_probability"])) < 1e-5
    assert res["model"]["source"].startswith("runs:/") and result.run_id in res["model"]["source"]
    assert res["schema"] == "raydf.detect/1" and res["faces"][0]["track_id"] == 0
    assert "not meaningful" in res["model"]["warning"]  # random extractors, generated data

    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video at all\n")
    out = subprocess.run([sys.executable, "-m", "raydf.cli", "detect", str(bad), "--model", str(result.model_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "cannot decode video" in out.stderr and "notes.mp4" in out.stderr


# ---- distributed correctness and fault tolerance -----------------------------------------------------
def _ddp_step_loop(config):
    import hashlib

    import ray.train
    import ray.train.torch

    from raydf.models.fusion import FusionClassifier
    from raydf.recipe import make_optimizer, seed_everything
    from raydf.train import run_epoch

    cfg = load_config(TrainConfig, config["train"])
    rank = ray.train.get_context().get_world_rank()
    seed_everything(cfg.seed + rank)  # deliberately different local inits: DDP must make them equal
    model = ray.train.torch.prepare_model(FusionClassifier(cfg.model))
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    batch = {"content": torch.randn(4, 1, 2048, generator=g), "style": torch.randn(4, 16, 512, generator=g),
             "valid": torch.ones(4, 16, dtype=torch.bool), "label": torch.tensor([0.0, 1.0, 0.0, 1.0])}
    run_epoch(model, [batch], loss_fn=torch.nn.BCEWithLogitsLoss(), optimizer=opt, cfg=cfg, rng=np.random.default_rng(rank))
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.module.parameters())).hexdigest()
    Path(config["out"], f"rank{rank}.txt").write_text(digest)
    ray.train.report({"done": 1})


@pytest.mark.integration
def test_parameters_are_identical_on_both_ranks_after_a_step(tmp_path, ray_cluster):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = small_train_cfg(mixup_prob=0.0)
    TorchTrainer(
        _ddp_step_loop,
        train_loop_config={"train": to_dict(cfg), "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="ddp", storage_path=str(tmp_path / "rr")),
    ).fit()
    digests = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]


# ---- generalisation (slow): another seed, another manipulation family ---------------------------------
@pytest.fixture(scope="module")
def heldout(tmp_path_factory, extracted, ray_cluster):
    """Videos generated with another seed, through the same extraction config."""
    from raydf.extract import run_extraction
    from raydf.synth import make_dataset

    root = tmp_path_factory.mktemp("heldout")
    make_dataset(root / "data", videos=4, seed=99)
    run_extraction(str(root / "data"), str(root / "features"), extracted.cfg, track=False)
    return root / "features"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.long  # short version: test_training_runs_and_loss_decreases (the same recipe, its own test split)
def test_model_reaches_auc_09_on_videos_of_another_seed(extracted, heldout, tmp_path):
    from raydf.train import run_training

    cfg = load_config(TrainConfig, {"max_epochs": 20, "batch_size": 4, "lr": 3e-4, "num_workers": 2, "cpus_per_worker": 0.5,
                                    "val_fraction": 0.2, "test_fraction": 0.0})
    result = run_training(str(extracted.features), cfg, storage_path=str(tmp_path / "rr"), name="seed", track=False,
                          extra_test={"heldout": str(heldout)})
    m = result.test_metrics["heldout"]
    print(f"\n[held-out seed] ROC-AUC {m['roc_auc']:.3f}, accuracy {m['accuracy']:.3f} on {m['n']} videos")
    assert m["n_fake"] > 0 and m["n_real"] > 0
    assert m["roc_auc"] >= 0.9


