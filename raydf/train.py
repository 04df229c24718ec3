"""Ray Train: fit the fusion classifier on extraction Parquet with the report's recipe.

Data flows Parquet -> Ray Data -> ``get_dataset_shard(...).iter_torch_batches`` on every
worker; the driver only reads the light columns (ids, labels, splits, validity) to plan
the splits. Each epoch every worker trains on its shard (DDP), validation metrics are
gathered across workers, the scheduler steps (cosine warm restarts, per epoch), early
stopping watches the validation loss, and rank 0 reports a checkpoint holding the
latest *and* the best weights, so a killed worker resumes at the next epoch.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from raydf import schema as S
from raydf.config import FusionConfig, TrainConfig, load_config, to_dict

log = logging.getLogger(__name__)

__all__ = [
    "TrainResult",
    "load_index",
    "assign_splits",
    "feature_dataset",
    "training_datasets",
    "to_tensors",
    "run_epoch",
    "train_loop_per_worker",
    "run_training",
]

# Tensor batch keys (what iter_torch_batches yields).
B_CONTENT, B_STYLE, B_VALID, B_LABEL = "content", "style", "valid", "label"
CHECKPOINT_FILE = "state.pt"


# ---- planning on the driver (light columns only) ---------------------------------------------------
def load_index(features_uri: str) -> pa.Table:
    """``video_id, label, split, source_id, dataset, method, status, face_valid`` of every row."""
    from raydf.store import FeatureStore

    cols = [S.VIDEO_ID, S.LABEL, S.SPLIT, S.SOURCE_ID, S.DATASET, S.METHOD, S.STATUS, S.FACE_VALID]
    return FeatureStore(features_uri).read(cols)


def assign_splits(index: pa.Table, cfg: TrainConfig) -> tuple[dict[str, str], dict[str, int]]:
    """Video id -> ``train`` | ``val`` | ``test`` for usable rows, plus counts of excluded rows.

    Rows keep the manifest's split; rows without one are split by ``source_id`` (a real video
    and all fakes made from it land in the same split), shuffled with the config's seed.
    Rows that are not ``ok`` or have too few valid faces are excluded, and so are fakes of
    other methods when ``cfg.methods`` is set (e.g. train on one family, test on another).
    """
    from raydf.models.fusion import valid_enough

    rows = index.to_pylist()
    excluded = {"error": 0, "few_faces": 0, "other_method": 0}
    usable = []
    for r in rows:
        if cfg.methods and r[S.LABEL] == S.FAKE and r[S.METHOD] not in cfg.methods:
            excluded["other_method"] += 1
        elif r[S.STATUS] != S.STATUS_OK:
            excluded["error"] += 1
        elif not bool(valid_enough(np.asarray([r[S.FACE_VALID]], bool), cfg.model.min_valid_fraction)[0]):
            excluded["few_faces"] += 1
        else:
            usable.append(r)
    assignment = {r[S.VIDEO_ID]: r[S.SPLIT] for r in usable if r[S.SPLIT] in S.SPLITS}
    pending = [r for r in usable if r[S.SPLIT] not in S.SPLITS]
    have_test = any(s == "test" for s in assignment.values())
    have_val = any(s == "val" for s in assignment.values())
    sources = sorted({r[S.SOURCE_ID] or r[S.VIDEO_ID] for r in pending})
    rng = np.random.default_rng(cfg.seed)
    rng.shuffle(sources)
    n = len(sources)
    n_test = 0 if have_test else int(round(n * cfg.test_fraction))
    n_val = 0 if have_val else max(1 if n > 2 else 0, int(round(n * cfg.val_fraction)))
    split_of = {}
    for i, src in enumerate(sources):
        split_of[src] = "test" if i < n_test else ("val" if i < n_test + n_val else "train")
    for r in pending:
        assignment[r[S.VIDEO_ID]] = split_of[r[S.SOURCE_ID] or r[S.VIDEO_ID]]
    return assignment, excluded


# ---- Ray Data ----------------------------------------------------------------------------------
def to_tensors(batch: pa.Table) -> dict[str, np.ndarray]:
    """Feature rows -> dense arrays: content (B, K, 2048), style (B, T, 512), valid (B, T), label (B,)."""
    return {
        B_CONTENT: S.stack_column(batch, S.CONTENT).astype(np.float32, copy=False),
        B_STYLE: S.stack_column(batch, S.STYLE).astype(np.float32, copy=False),
        B_VALID: S.stack_column(batch, S.FACE_VALID).astype(bool, copy=False),
        B_LABEL: batch.column(S.LABEL).to_numpy(zero_copy_only=False).astype(np.float32),
    }


def _select_split(batch: pa.Table, ids: pa.Array) -> dict[str, np.ndarray]:
    """Keep the rows assigned to one split and turn them into tensors."""
    return to_tensors(batch.filter(pc.is_in(batch[S.VIDEO_ID], ids)))


def feature_dataset(features_uri: str, ids: list[str]):  # noqa: ANN201 - ray.data.Dataset
    """A Ray Dataset of the given videos' tensors, streamed from the Parquet parts."""
    import ray

    cols = [S.VIDEO_ID, S.LABEL, S.CONTENT, S.STYLE, S.FACE_VALID]
    ds = ray.data.read_parquet(features_uri, columns=cols, file_extensions=["parquet"])
    wanted = pa.array(sorted(ids), pa.string())
    return ds.map_batches(_select_split, fn_kwargs={"ids": wanted}, batch_format="pyarrow", batch_size=64)


def training_datasets(features_uri: str, ids: dict[str, list[str]], cfg: TrainConfig) -> dict[str, Any]:
    """The ``train`` and ``val`` Ray Datasets of a run; materialised in the object store when
    ``cfg.cache_features`` (blocks stay in Ray's object store, not on the driver)."""
    out = {split: feature_dataset(features_uri, ids[split]) for split in ("train", "val")}
    if cfg.cache_features:
        out = {split: ds.materialize() for split, ds in out.items()}
    return out


def _moments(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-batch sums for the feature standardisation (style over valid frames only)."""
    c = batch[B_CONTENT].reshape(-1, batch[B_CONTENT].shape[-1]).astype(np.float64)  # (B*K, 2048)
    v = batch[B_VALID].reshape(-1)
    s = batch[B_STYLE].reshape(-1, batch[B_STYLE].shape[-1])[v].astype(np.float64)  # (n_valid, 512)
    return {
        "c_n": np.array([c.shape[0]]), "c_sum": c.sum(0)[None], "c_sq": (c * c).sum(0)[None],
        "s_n": np.array([s.shape[0]]), "s_sum": s.sum(0)[None], "s_sq": (s * s).sum(0)[None],
    }  # fmt: skip


def feature_stats(ds) -> dict[str, list[float]]:  # noqa: ANN001 - ray.data.Dataset
    """Per-dimension mean/std of content and (valid-frame) style over a dataset, computed in Ray Data."""
    parts = ds.map_batches(_moments, batch_format="numpy", batch_size=64).take_all()
    tot = {k: sum(np.asarray(p[k], np.float64) for p in parts) for k in parts[0]}
    out = {}
    for pre, name in (("c", "content"), ("s", "style")):
        n = max(float(np.asarray(tot[f"{pre}_n"]).reshape(-1)[0]), 1.0)
        mean = tot[f"{pre}_sum"] / n
        var = np.maximum(tot[f"{pre}_sq"] / n - mean * mean, 0.0)
        floor = (1e-3 * np.median(np.sqrt(var))) ** 2 + 1e-30  # no division blow-up on constant dims
        out[f"{name}_mean"] = mean.reshape(-1).tolist()
        out[f"{name}_std"] = np.sqrt(var + floor).reshape(-1).tolist()
    return out


# ---- the loop ------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def run_epoch(
    model: nn.Module,
    batches,  # noqa: ANN001 - iterable of dicts of tensors
    *,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    cfg: TrainConfig | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """One pass over ``batches``; trains when ``optimizer`` is given (with mixup), else evaluates.

    Returns sums (loss, correct, n) and, when evaluating, the probabilities and labels.
    """
    from raydf.recipe import mixup

    training = optimizer is not None
    model.train(training)
    loss_sum, correct, n = 0.0, 0.0, 0
    probs, labels = [], []
    with torch.set_grad_enabled(training):
        for batch in batches:
            content, style = batch[B_CONTENT], batch[B_STYLE]  # (B, K, 2048), (B, T, 512)
            valid, label = batch[B_VALID].bool(), batch[B_LABEL].float()  # (B, T), (B,)
            if label.numel() == 0:
                continue
            if training:
                mixed = mixup(content, style, label, alpha=cfg.mixup_alpha, prob=cfg.mixup_prob, generator=rng, valid=valid)
                content, style, label, valid = mixed.content, mixed.style, mixed.label, mixed.valid
            logits = model(content, style, valid)  # (B,)
            loss = loss_fn(logits, label)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            b = label.shape[0]
            loss_sum += float(loss.detach()) * b
            p = torch.sigmoid(logits.detach())
            correct += float(((p >= 0.5).float() == (label >= 0.5).float()).sum())
            n += b
            if not training:
                probs.append(p.cpu().numpy())
                labels.append(label.cpu().numpy())
    out: dict[str, Any] = {"loss_sum": loss_sum, "correct": correct, "n": n}
    if not training:
        out["probs"] = np.concatenate(probs) if probs else np.zeros(0, np.float32)
        out["labels"] = np.concatenate(labels) if labels else np.zeros(0, np.float32)
    return out


def _gather(obj: Any) -> list[Any]:
    """All workers' ``obj`` (a list of one item without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _save_state(path: Path, state: dict[str, Any]) -> None:
    torch.save(state, path / CHECKPOINT_FILE)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker loop. ``config``: ``train`` (TrainConfig dict), ``pos_weight``, ``mlflow`` (optional)."""
    import ray.train
    import ray.train.torch

    from raydf.evaluate import compute_metrics
    from raydf.models.fusion import FusionClassifier
    from raydf.recipe import EarlyStopping, make_optimizer, make_scheduler, seed_everything

    cfg = load_config(TrainConfig, config["train"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    seed_everything(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    model = FusionClassifier(cfg.model)
    if config.get("feature_stats"):
        fs = config["feature_stats"]
        model.set_feature_stats(*(torch.tensor(fs[k]) for k in ("content_mean", "content_std", "style_mean", "style_std")))
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    early = EarlyStopping(patience=cfg.patience)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([config.get("pos_weight", 1.0)], dtype=torch.float32))
    val_loss_fn = nn.BCEWithLogitsLoss()
    start_epoch, history = 0, []
    rng = np.random.default_rng(cfg.seed + 1000 * rank)

    checkpoint = ray.train.get_checkpoint()
    resumed_from = -1
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        early.load_state_dict(state["early"], state["best_model"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        resumed_from = state["epoch"]
        rng = np.random.default_rng(cfg.seed + 1000 * rank + start_epoch)

    mlflow_cfg = config.get("mlflow") if rank == 0 else None
    writer = None
    if rank == 0 and config.get("tensorboard_dir"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(config["tensorboard_dir"])
    if mlflow_cfg:
        import mlflow

        mlflow.set_tracking_uri(mlflow_cfg["tracking_uri"])

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    batch_kw = {"batch_size": cfg.batch_size, "dtypes": None}
    for epoch in range(start_epoch, cfg.max_epochs):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        tr = run_epoch(
            model,
            train_shard.iter_torch_batches(**batch_kw, local_shuffle_buffer_size=256, local_shuffle_seed=cfg.seed + epoch),
            loss_fn=loss_fn,
            optimizer=optimizer,
            cfg=cfg,
            rng=rng,
        )
        va = run_epoch(model, val_shard.iter_torch_batches(**batch_kw), loss_fn=val_loss_fn)
        scheduler.step()
        trs, vas = _gather({k: tr[k] for k in ("loss_sum", "correct", "n")}), _gather(va)
        n_tr, n_va = sum(x["n"] for x in trs), sum(x["n"] for x in vas)
        probs = np.concatenate([x["probs"] for x in vas]) if n_va else np.zeros(0)
        labels = np.concatenate([x["labels"] for x in vas]) if n_va else np.zeros(0)
        val_loss = sum(x["loss_sum"] for x in vas) / max(n_va, 1)
        metrics = {
            "epoch": epoch,
            "train_loss": sum(x["loss_sum"] for x in trs) / max(n_tr, 1),
            "train_acc": sum(x["correct"] for x in trs) / max(n_tr, 1),
            "val_loss": val_loss,
            "val_acc": sum(x["correct"] for x in vas) / max(n_va, 1),
            "val_auc": float(compute_metrics(labels, probs)["roc_auc"]) if n_va else float("nan"),
            "lr": lr,
            "epoch_s": time.perf_counter() - t0,
            "resumed_from": resumed_from,
        }
        stop = early.step(val_loss, _unwrap(model).state_dict())
        metrics["best_epoch"] = early.best_epoch if early.best_epoch is not None else epoch
        metrics["best_val_loss"] = early.best_loss
        history.append({k: v for k, v in metrics.items() if k not in ("resumed_from",)})
        if mlflow_cfg:
            import mlflow

            mlflow.log_metrics(
                {k: float(v) for k, v in metrics.items() if k not in ("epoch", "resumed_from", "best_epoch") and np.isfinite(v)},
                step=epoch,
                run_id=mlflow_cfg["run_id"],
            )
        if writer is not None:
            for k in ("train_loss", "val_loss", "train_acc", "val_acc", "val_auc", "lr"):
                if np.isfinite(metrics[k]):
                    writer.add_scalar(k, metrics[k], epoch)
            writer.flush()
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                _save_state(
                    Path(d),
                    {
                        "model": _unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "early": early.state_dict(),
                        "best_model": early.best_state,
                        "epoch": epoch,
                        "history": history,
                        "fusion_config": to_dict(cfg.model),
                    },
                )
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)
        if stop:
            log.info("early stopping at epoch %d (best %d)", epoch, early.best_epoch)
            break
    if writer is not None:
        writer.close()


# ---- the driver ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    run_id: str | None
    model_path: Path  # raydf model bundle (.pt)
    history: list[dict[str, Any]]
    test_metrics: dict[str, Any]
    splits: dict[str, int]
    excluded: dict[str, int]
    storage_path: str
    best_epoch: int
    resumed_from: int  # -1, or the checkpoint epoch the last worker group restarted from


def run_training(
    features_uri: str,
    cfg: TrainConfig | None = None,
    *,
    storage_path: str | None = None,
    name: str | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    tags: dict[str, str] | None = None,
    extra_test: dict[str, str] | None = None,
    output_dir: str | None = None,
    callbacks: list[Any] | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    run_key: str | None = None,
    full_report: bool = True,
) -> TrainResult:
    """Train on an extraction output, evaluate on its test split, log everything to MLflow.

    Args:
        features_uri: the extraction Parquet directory (local or ``s3://``).
        cfg: training config (defaults: the report's recipe).
        storage_path: Ray Train storage for checkpoints (default ``<RAYDF_HOME>/ray_results``).
        name: run name (default ``train-<timestamp>``).
        tracking_uri: MLflow store (default :func:`raydf.tracking.default_tracking_uri`).
        tags: extra MLflow tags (``dataset`` is filled from the data when absent).
        extra_test: ``{name: features_uri}`` of other datasets to evaluate on (cross-dataset).
        output_dir: where the model bundle and plots are written (default: under storage).
        callbacks: Ray Train ``UserCallback``s (e.g. Tune's ``TuneReportCallback`` in a sweep).
        experiment: MLflow experiment name (default ``raydf-train``).
        parent_run_id: make the MLflow run a child of this run (``mlflow.parentRunId``).
        run_key: a stable key (e.g. a Tune trial id); an unfinished run with the same key is
            resumed instead of creating a second one, so a restored sweep logs one run per trial.
        full_report: log the whole report (plots, ROC data, predictions, the model); False logs
            only the evaluation metrics (``test_roc_auc``, ...), e.g. in Tune trials, to save time.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydf import tracking
    from raydf.predict import ModelBundle, predict_features
    from raydf.recipe import pos_weight
    from raydf.store import FeatureStore

    cfg = cfg or TrainConfig()
    name = name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path = storage_path or str(tracking.raydf_home() / "ray_results")
    if output_dir:
        out_dir = Path(output_dir)
    elif "://" in storage_path:  # remote Ray Train storage: keep local outputs in a temp dir (MLflow has them)
        out_dir = Path(tempfile.mkdtemp(prefix="raydf-train-"))
    else:
        out_dir = Path(storage_path) / name / "raydf"
    out_dir.mkdir(parents=True, exist_ok=True)

    store = FeatureStore(features_uri)
    extract_cfg = store.read_config()
    if extract_cfg is None:
        raise FileNotFoundError(f"{features_uri} is not a raydf feature directory (no {store.uri}/_raydf_extract.json)")
    index = load_index(features_uri)
    assignment, excluded = assign_splits(index, cfg)
    ids = {s: sorted(v for v, sp in assignment.items() if sp == s) for s in S.SPLITS}
    if not ids["train"] or not ids["val"]:
        raise ValueError(f"{features_uri}: need train and val videos, got {({k: len(v) for k, v in ids.items()})}")
    labels_of = dict(zip(index.column(S.VIDEO_ID).to_pylist(), index.column(S.LABEL).to_pylist()))
    train_labels = np.asarray([labels_of[v] for v in ids["train"]])
    pw = float(pos_weight(train_labels)) if cfg.balance_classes else 1.0
    datasets_seen = sorted(set(index.column(S.DATASET).to_pylist()))
    log.info("splits: %s; excluded: %s; pos_weight %.3f", {k: len(v) for k, v in ids.items()}, excluded, pw)

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)

    run_id = None
    mlflow_cfg = None
    if track:
        import mlflow

        uri = tracking.resolve_tracking_uri(tracking_uri)
        mlflow.set_tracking_uri(uri)
        exp = tracking.get_or_create_experiment(experiment or tracking.TRAIN_EXPERIMENT)
        existing = None
        if run_key:
            found = mlflow.search_runs([exp], filter_string=f"tags.`raydf.run_key` = '{run_key}'", output_format="list", max_results=1)
            existing = found[0].info.run_id if found else None
        start_tags = {"raydf.run_key": run_key} if run_key else {}
        if parent_run_id:
            start_tags["mlflow.parentRunId"] = parent_run_id
        run = mlflow.start_run(run_id=existing) if existing else mlflow.start_run(experiment_id=exp, run_name=name, tags=start_tags)
        run_id = run.info.run_id
        mlflow_cfg = {"tracking_uri": uri, "run_id": run_id}
        prov = extract_cfg["provenance"]
        all_tags = {
            "raydf.stage": "train",
            "dataset": ",".join(datasets_seen),
            "split": "test",
            "style_config": extract_cfg["feature_config"]["style"]["config"],
            "weights": "pretrained" if prov["style"].startswith("sha256") and prov["content"].startswith("sha256") else "random",
            "raydf.content_provenance": prov["content"],
            "raydf.style_provenance": prov["style"],
            "raydf.features": tracking.redact(features_uri),
        }
        all_tags.update(tags or {})
        mlflow.set_tags(all_tags)
        mlflow.log_params(tracking.safe_params({"train": to_dict(cfg), "extract": extract_cfg["feature_config"]}))
        mlflow.log_params({"pos_weight": round(pw, 6), **{f"n_{k}": len(v) for k, v in ids.items()}, **{f"excluded_{k}": v for k, v in excluded.items()}})
        tracking.log_parquet_dataset(features_uri, name="features", digest=store.digest(), context="training", num_rows=index.num_rows)

    try:
        datasets = training_datasets(features_uri, ids, cfg)
        stats = feature_stats(datasets["train"])
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "train": to_dict(cfg),
                "pos_weight": pw,
                "feature_stats": stats,
                "mlflow": mlflow_cfg,
                "tensorboard_dir": str(out_dir / "tensorboard"),
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
            ),
            run_config=RunConfig(
                name=name,
                storage_path=storage_path,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=callbacks,
            ),
            datasets=datasets,
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        history = state["history"]
        best_epoch = int(state["early"]["best_epoch"]) if state["early"].get("best_epoch") is not None else state["epoch"]
        bundle = ModelBundle(
            state_dict=state["best_model"] or state["model"],
            fusion_config=load_config(FusionConfig, state["fusion_config"]),
            extract=extract_cfg,
            train={"config": to_dict(cfg), "features": tracking.redact(features_uri), "best_epoch": best_epoch, "run_id": run_id},
        )
        model_path = bundle.save(out_dir / "raydf_model.pt")

        evaluations = {}
        if ids["test"]:
            evaluations["test"] = predict_features(bundle, features_uri, ids["test"])
        for tname, turi in (extra_test or {}).items():
            evaluations[tname] = predict_features(bundle, turi, None)
        test_metrics = {}
        if track and full_report:
            from raydf.report import log_training_report

            test_metrics = log_training_report(bundle, history, evaluations, features_uri, ids, out_dir)
        else:
            from raydf.evaluate import compute_metrics

            test_metrics = {k: compute_metrics(e.labels, e.probs, threshold=bundle.threshold) for k, e in evaluations.items()}
            if track:  # the metrics only, named as log_training_report names them
                from raydf.report import log_test_metrics

                for k, m in test_metrics.items():
                    log_test_metrics(k, m)
        return TrainResult(
            run_id=run_id,
            model_path=model_path,
            history=history,
            test_metrics=test_metrics,
            splits={k: len(v) for k, v in ids.items()},
            excluded=excluded,
            storage_path=str(Path(storage_path) / name),
            best_epoch=best_epoch,
            resumed_from=int(result.metrics.get("resumed_from", -1)),
        )
    finally:
        if track:
            import mlflow

            mlflow.end_run()
