"""Ray Train: fit the fusion classifier on extraction Parquet with the report's recipe.

Data flows Parquet -> Ray Data -> ``get_dataset_shard(...).iter_torch_batches`` on every
worker; the driver only reads the light columns (ids, labels, splits, validity) to plan
the splits. Each epoch every worker trains on its shard (DDP), validation metrics are
gathered across workers, the scheduler steps (cosine warm restarts, per epoch), early
stopping watches the validation loss, and rank 0 reports a checkpoint holding the
latest *and* the best weights, so a killed worker resumes at the next epoch.
"""

from __future__ import annotations

import json
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
from ray.train import UserCallback
from torch import nn

from raydf import schema as S
from raydf import tracking
from raydf.bundle import BUNDLE_FILE, ModelBundle, TrainInfo
from raydf.config import FusionConfig, StoreConfig, TrainConfig, load_config, to_dict
from raydf.console import quiet_ray_kwargs
from raydf.models.fusion import FusionClassifier
from raydf.models.weights import load_weights_only
from raydf.recipe import EarlyStopping, make_optimizer, make_scheduler, mixup, pos_weight, seed_everything
from raydf.scoring import Predictions, predict_features
from raydf.splits import SplitPlan, load_index, plan_splits
from raydf.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = [
    "TrainResult",
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
HISTORY_FILE = "history.json"  # beside state.pt: the per-epoch metrics so far (read by EpochLog on a restore)


# ---- Ray Data ----------------------------------------------------------------------------------
def to_tensors(batch: pa.Table) -> dict[str, np.ndarray]:
    """Feature rows -> dense arrays: content (B, K, 2048), style (B, T, 512), valid (B, T), label (B,)."""
    return {
        B_CONTENT: S.stack_column(batch, S.CONTENT).astype(np.float32, copy=False),
        B_STYLE: S.stack_column(batch, S.STYLE).astype(np.float32, copy=False),
        B_VALID: S.stack_column(batch, S.FACE_VALID).astype(bool, copy=False),
        B_LABEL: batch.column(S.LABEL).to_numpy(zero_copy_only=False).astype(np.float32),
    }


_KEY_SEP = "\x1f"  # joins video_id and track_id into one comparable key


def _row_keys(batch: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(batch[S.VIDEO_ID], pc.cast(batch[S.TRACK_ID], pa.string()), _KEY_SEP)


def _select_split(batch: pa.Table, keys: pa.Array) -> dict[str, np.ndarray]:
    """Keep the rows assigned to one split and turn them into tensors."""
    return to_tensors(batch.filter(pc.is_in(_row_keys(batch), keys)))


def feature_dataset(features_uri: str, keys: list[tuple[str, int]]):  # noqa: ANN201 - ray.data.Dataset
    """A Ray Dataset of the given rows' tensors (``(video_id, track_id)`` keys), streamed from the Parquet parts."""
    import ray

    cols = [S.VIDEO_ID, S.TRACK_ID, S.LABEL, S.CONTENT, S.STYLE, S.FACE_VALID]
    ds = ray.data.read_parquet(features_uri, columns=cols, file_extensions=["parquet"])
    wanted = pa.array(sorted(f"{v}{_KEY_SEP}{t}" for v, t in keys), pa.string())
    return ds.map_batches(_select_split, fn_kwargs={"keys": wanted}, batch_format="pyarrow", batch_size=64)


def training_datasets(features_uri: str, plan: SplitPlan, cfg: TrainConfig) -> dict[str, Any]:
    """The ``train`` and ``val`` Ray Datasets of a run; materialised in the object store when
    ``cfg.cache_features`` (blocks stay in Ray's object store, not on the driver)."""
    out = {split: feature_dataset(features_uri, plan.keys[split]) for split in ("train", "val")}
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
    (path / HISTORY_FILE).write_text(json.dumps(state["history"]))


def _checkpoint_history(checkpoint: Any) -> list[dict[str, Any]]:
    """The per-epoch metrics a Ray Train checkpoint carries ([] when it has none), read in place."""
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{HISTORY_FILE}") as f:
            return list(json.loads(f.read().decode()))
    except (FileNotFoundError, OSError, ValueError) as exc:
        log.warning("checkpoint %s: no readable %s (%s); epochs before it may be missing from MLflow", checkpoint.path, HISTORY_FILE, exc)
        return []


def load_checkpoint_state(directory: str | Path) -> dict[str, Any]:
    """A training checkpoint's state, read with ``weights_only=True`` (checkpoints may sit in shared
    ``s3://`` storage: loading one never unpickles code).

    Raises:
        RuntimeError: the file is not a raydf training state (or carries a pickle payload).
    """
    path = Path(directory) / CHECKPOINT_FILE
    return load_weights_only(path, f"training checkpoint {path}", RuntimeError)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as Python ints/floats (checkpoints are read weights-only: no numpy scalars)."""
    return {k: (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else float(v)) for k, v in metrics.items()}


class EpochLog(UserCallback):
    """Per-epoch metrics to MLflow and TensorBoard, exactly once per epoch across worker restarts.

    A Ray Train callback: it runs in the Train controller, and ``after_report`` is called once the
    controller has registered the epoch's checkpoint. An epoch whose workers died before that is
    never logged, and is logged once when the restarted workers redo it. (Logging from the worker
    right after ``ray.train.report`` returned logged such epochs twice: the controller registers
    checkpoints after the report call returns.) A new controller (a restored Tune trial) starts by
    reading which epochs the sinks already hold and skips them, then logs the epochs its first
    checkpoint's history has and the sinks lack (a controller killed between registering a
    checkpoint and logging it).
    """

    SCALARS = (S.TRAIN_LOSS, S.VAL_LOSS, S.TRAIN_ACC, S.VAL_ACC, S.VAL_AUC, S.LR)

    def __init__(self, tracking_uri: str | None, run_id: str | None, tensorboard_dir: str | None) -> None:
        self.tracking_uri, self.run_id, self.tb_dir = tracking_uri, run_id, tensorboard_dir
        self._writer: Any = None
        self._have: dict[str, set[int]] | None = None  # sink -> epochs it holds

    def _open(self) -> dict[str, set[int]]:
        have: dict[str, set[int]] = {"mlflow": set(), "tensorboard": set()}
        if self.run_id:
            from mlflow import MlflowClient

            have["mlflow"] = {int(m.step) for m in MlflowClient(self.tracking_uri).get_metric_history(self.run_id, S.VAL_LOSS)}
        if self.tb_dir:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
            from torch.utils.tensorboard import SummaryWriter

            if Path(self.tb_dir).exists():
                acc = EventAccumulator(self.tb_dir, size_guidance={"scalars": 0})
                acc.Reload()
                if S.VAL_LOSS in acc.Tags().get("scalars", []):
                    have["tensorboard"] = {int(e.step) for e in acc.Scalars(S.VAL_LOSS)}
            self._writer = SummaryWriter(self.tb_dir)
        return have

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:  # noqa: ARG002
        if not metrics or S.EPOCH not in metrics[0]:
            return
        m = metrics[0]  # every rank reports the same gathered metrics
        if self._have is None:
            self._have = self._open()
            if checkpoint is not None:  # epochs a killed controller registered but never logged: from the checkpoint
                for past in _checkpoint_history(checkpoint):
                    if int(past.get(S.EPOCH, -1)) < int(m[S.EPOCH]):
                        self._log(int(past[S.EPOCH]), past)
        self._log(int(m[S.EPOCH]), m)

    def _log(self, epoch: int, m: dict[str, Any]) -> None:
        assert self._have is not None
        if self.run_id and epoch not in self._have["mlflow"]:
            from mlflow import MlflowClient

            values = {k: float(m[k]) for k in S.EPOCH_METRICS if k in m and np.isfinite(m[k])}
            client = MlflowClient(self.tracking_uri)
            for k, v in values.items():
                client.log_metric(self.run_id, k, v, step=epoch)
            self._have["mlflow"].add(epoch)
        if self._writer is not None and epoch not in self._have["tensorboard"]:
            for k in self.SCALARS:
                if k in m and np.isfinite(m[k]):
                    self._writer.add_scalar(k, float(m[k]), epoch)
            self._writer.flush()
            self._have["tensorboard"].add(epoch)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker loop. ``config``: ``train`` (TrainConfig dict), ``pos_weight``, ``feature_stats``.

    Per-epoch metrics reach MLflow and TensorBoard through :class:`EpochLog` in the controller."""
    import ray.train
    import ray.train.torch

    from raydf.evaluate import compute_metrics

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
            state = load_checkpoint_state(d)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        early.load_state_dict(state["early"], state["best_model"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        resumed_from = state["epoch"]
        rng = np.random.default_rng(cfg.seed + 1000 * rank + start_epoch)


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
            S.EPOCH: epoch,
            S.TRAIN_LOSS: sum(x["loss_sum"] for x in trs) / max(n_tr, 1),
            S.TRAIN_ACC: sum(x["correct"] for x in trs) / max(n_tr, 1),
            S.VAL_LOSS: val_loss,
            S.VAL_ACC: sum(x["correct"] for x in vas) / max(n_va, 1),
            S.VAL_AUC: float(compute_metrics(labels, probs)[S.ROC_AUC]) if n_va else float("nan"),
            S.LR: lr,
            S.EPOCH_S: time.perf_counter() - t0,
            S.RESUMED_FROM: resumed_from,
        }
        stop = early.step(val_loss, _unwrap(model).state_dict())
        metrics[S.BEST_EPOCH] = early.best_epoch if early.best_epoch is not None else epoch
        metrics[S.BEST_VAL_LOSS] = early.best_loss
        metrics = _plain(metrics)
        history.append({k: v for k, v in metrics.items() if k != S.RESUMED_FROM})
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
    aggregation: str = "max"  # how a video's tracks were combined in the evaluations


def _is_generated(index: pa.Table) -> bool:
    """Rows made by raydf.synth (its metadata records the generator)."""
    metas = index.column(S.META).to_pylist()[:50]
    return any('"generator": "raydf.synth"' in (m or "") for m in metas)


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
    progress: bool = False,
) -> TrainResult:
    """Train on an extraction output, evaluate on its test split, log everything to MLflow.

    Args:
        features_uri: the extraction Parquet directory (local or ``s3://``).
        cfg: training config (defaults: the report's recipe).
        storage_path: Ray Train storage for checkpoints (default ``<RAYDF_HOME>/ray_results``).
        name: run name (default ``train-<timestamp>``).
        tracking_uri: MLflow store (default :func:`raydf.tracking.default_tracking_uri`). Credentials
            in it are not passed on: set ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` in the cluster's environment.
        tags: extra MLflow tags (``dataset`` is filled from the data when absent).
        extra_test: ``{name: features_uri}`` of other datasets to evaluate on (cross-dataset).
        output_dir: where the model bundle and plots are written (default: ``<storage>/<name>/raydf``
            on local storage; with remote storage a new local temp dir ``raydf-train-*``, which the
            caller owns: ``TrainResult.model_path`` is in it).
        callbacks: Ray Train ``UserCallback``s (e.g. Tune's ``TuneReportCallback`` in a sweep).
        experiment: MLflow experiment name (default ``raydf-train``).
        parent_run_id: make the MLflow run a child of this run (``mlflow.parentRunId``).
        run_key: a stable key (e.g. a Tune trial id); an unfinished run with the same key is
            resumed instead of creating a second one, so a restored sweep logs one run per trial.
        full_report: log the whole report (plots, ROC data, predictions, the model); False logs
            only the evaluation metrics (``test_roc_auc``, ...), e.g. in Tune trials, to save time.
        progress: draw a live bar of the epochs (with the current validation loss) on a terminal.

    Raises:
        FileNotFoundError: ``features_uri`` is not a raydf feature store.
        ValueError: no train or no validation rows.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer


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
    raw_config = store.read_config()
    if raw_config is None:
        raise FileNotFoundError(f"{tracking.redact(features_uri)} is not a raydf feature directory (no _raydf_extract.json)")
    store_config = StoreConfig.from_dict(raw_config)
    index = load_index(features_uri)
    plan = plan_splits(index, cfg)
    counts = plan.counts()
    if not plan.keys["train"] or not plan.keys["val"]:
        raise ValueError(f"{tracking.redact(features_uri)}: need train and val rows, got {counts}")
    train_labels = np.asarray([plan.labels[k] for k in plan.keys["train"]])
    pw = float(pos_weight(train_labels)) if cfg.balance_classes else 1.0
    generated = _is_generated(index)
    log.info("splits: %s; excluded: %s; pos_weight %.3f", counts, plan.excluded, pw)
    if plan.pseudo_val:
        log.warning("the store has no fakes of its own: validation uses self-blended pseudo-fakes")

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, **quiet_ray_kwargs())

    run_id = None
    mlflow_cfg: dict[str, str] | None = None
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
        mlflow_cfg = {"tracking_uri": uri, "run_id": run_id}  # resolve_tracking_uri: no credentials in it
        prov = store_config.provenance
        all_tags = {
            "raydf.stage": "train",
            "dataset": ",".join(plan.datasets),
            "split": S.TEST,
            "style_config": store_config.features.style.config,
            "weights": "pretrained" if prov.pretrained else "random",
            "raydf.content_provenance": prov.content,
            "raydf.style_provenance": prov.style,
            "raydf.features": tracking.redact(features_uri),
            "raydf.precision": store_config.features.precision,
            "raydf.fakes": cfg.fakes,
            "raydf.validation_fakes": "pseudo (self-blend)" if plan.pseudo_val else "dataset",
        }
        all_tags.update(tags or {})
        mlflow.set_tags({k: tracking.redact(str(v)) for k, v in all_tags.items()})
        mlflow.log_params(tracking.safe_params({"train": to_dict(cfg), "extract": store_config.features.to_dict()}))
        mlflow.log_params({"pos_weight": round(pw, 6), **{f"n_{k}": v for k, v in counts.items()}, **{f"excluded_{k}": v for k, v in plan.excluded.items()}})
        tracking.log_parquet_dataset(features_uri, name="features", digest=store.digest(), context="training", num_rows=index.num_rows)

    try:
        datasets = training_datasets(features_uri, plan, cfg)
        stats = feature_stats(datasets["train"])
        epoch_log = EpochLog(mlflow_cfg["tracking_uri"] if mlflow_cfg else None, run_id, str(out_dir / "tensorboard"))
        callbacks = [*(callbacks or []), epoch_log]
        board = None
        if progress:
            from raydf.progress import EpochProgress, ProgressBoard

            board = ProgressBoard.start()
            callbacks = [*(callbacks or []), EpochProgress(board)]
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "train": to_dict(cfg),
                "pos_weight": pw,
                "feature_stats": stats,
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
        if board is not None:
            from raydf.progress import EPOCHS, Bar, watch

            with watch(board, [Bar(EPOCHS, "training", "epoch", cfg.max_epochs, (S.VAL_LOSS,))]):
                result = trainer.fit()
        else:
            result = trainer.fit()
        with result.checkpoint.as_directory() as d:
            state = load_checkpoint_state(d)
        history = state["history"]
        best_epoch = int(state["early"]["best_epoch"]) if state["early"].get("best_epoch") is not None else state["epoch"]
        bundle = ModelBundle(
            state_dict=state["best_model"] or state["model"],
            fusion_config=load_config(FusionConfig, state["fusion_config"]),
            store=store_config,
            train=TrainInfo(
                config=to_dict(cfg), features=tracking.redact(features_uri), best_epoch=best_epoch, run_id=run_id,
                datasets=plan.datasets, generated=generated, fakes=cfg.fakes,
            ),
        )
        model_path = bundle.save(out_dir / BUNDLE_FILE)
        if bundle.warning:
            log.warning("%s", bundle.warning)

        evaluations: dict[str, Predictions] = {}
        if plan.keys["test"]:
            evaluations[S.TEST] = predict_features(bundle, features_uri, plan.keys["test"], aggregation=cfg.aggregation)
        for tname, turi in (extra_test or {}).items():
            evaluations[tname] = predict_features(bundle, turi, None, aggregation=cfg.aggregation)
        if track and full_report:
            from raydf.report import log_training_report

            test_metrics = log_training_report(bundle, model_path, history, evaluations, out_dir)
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
            splits=counts,
            excluded=plan.excluded,
            storage_path=str(Path(storage_path) / name),
            best_epoch=best_epoch,
            resumed_from=int(result.metrics.get(S.RESUMED_FROM, -1)),
            aggregation=cfg.aggregation,
        )
    finally:
        if track:
            import mlflow

            mlflow.end_run()
