"""Ray Tune sweeps over Ray Train, tracked in MLflow as one parent run with a child per trial.

The current Ray 2.x pattern: each trial is a Tune *function* that builds and fits its own
``TorchTrainer`` (through :func:`raydf.train.run_training`); a ``TuneReportCallback`` on the
Train run forwards every epoch's metrics to Tune, where ASHA stops weak arms on the
validation loss. The trial function itself holds a tenth of a CPU (it only waits on its
trainer); the trainer's workers ask for what the ``TrainConfig`` says, and the number of
trials run at once is what the cluster holds after leaving a CPU to Ray Data
(:func:`max_concurrent_trials`).

Storage (local or ``s3://``)::

    <storage>/<name>/                 Tune's experiment dir (Tuner.restore points here)
        raydf_sweep.json              what a resume needs: features, base config, MLflow parent
        trial-<id>/                   Tune's per-trial results (progress.csv, result.json)
        train/trial-<id>/             Ray Train's run of that trial (checkpoints)

An interrupted sweep (Ctrl+C, a lost driver) resumes with :func:`resume_sweep` (or by
running the same :func:`run_sweep` again): finished trials are kept, unfinished ones start
again and their Train runs continue from their last checkpoint. Each trial logs to MLflow
under a key ``<parent run id>/<trial id>``, so a resumed trial reopens its own run rather
than adding a second one.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from raydf import schema as S
from raydf import tracking
from raydf.config import TrainConfig, load_config, to_dict

log = logging.getLogger(__name__)

__all__ = [
    "SweepResult",
    "load_space",
    "sample_space",
    "apply_params",
    "max_concurrent_trials",
    "run_sweep",
    "resume_sweep",
    "read_sweep_spec",
    "SweepSpec",
    "SweepStateUntrusted",
    "sign_sweep_state",
    "verify_sweep_state",
]

METRIC, MODE = S.VAL_LOSS, "min"  # ASHA's rungs: the recipe's early stopping watches the same
TIME_ATTR = "epochs"  # epochs trained (1-based): survives a resumed trial, unlike training_iteration
TRIAL_DONE = "trial_completed"  # in a trial's last report once its training and test evaluation ended
RANK_METRIC = S.BEST_VAL_LOSS
TEST_AUC = S.eval_metric(S.TEST, S.ROC_AUC)  # the best trial: lowest validation loss of its best epoch
TRIAL_CPUS = 0.1  # the trial function only waits on its TorchTrainer; Tune rejects 0
DATA_CPUS = 1.0  # left to the Ray Data tasks that read and standardise the features
SWEEP_FILE = "raydf_sweep.json"
TRAIN_DIR = "train"  # Ray Train storage of the trials, inside the experiment dir
DEFAULT_SPACE = "mixup_restarts"

# MLflow tags of sweep runs (the training tags dataset/split/style_config/weights come from run_training).
TAG_STAGE = "raydf.stage"
TAG_SWEEP = "raydf.tune.sweep"
TAG_PATH = "raydf.tune.path"
TAG_TRIAL = "raydf.tune.trial_id"
TAG_STATE = "raydf.tune.state"
TAG_STOPPED = "raydf.tune.stopped_early"
COPIED_TAGS = ("dataset", "split", "style_config", "weights", "raydf.content_provenance", "raydf.style_provenance", "raydf.features")

# Trial status in SweepResult.table.
COMPLETED, STOPPED, ERROR, UNFINISHED = "completed", "stopped early", "error", "unfinished"


# ---- search spaces ---------------------------------------------------------------------------------
def load_space(space: str | Path | Mapping[str, Any] | Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
    """A Tune ``param_space``: a ``tune_spaces`` module name, a ``.py`` file with ``param_space()``,
    a callable returning one, or the mapping itself."""
    if isinstance(space, Mapping):
        return dict(space)
    if callable(space):
        return dict(space())
    text = str(space)
    if text.endswith(".py") or os.sep in text:
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"search space file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"raydf_space_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"tune_spaces.{text}")
        except ModuleNotFoundError as exc:
            known = sorted(p.stem for p in Path(__file__).resolve().parents[1].joinpath("tune_spaces").glob("[!_]*.py"))
            raise ValueError(f"unknown search space {text!r}; known: {known} (or a path to a .py file)") from exc
    if not callable(getattr(module, "param_space", None)):
        raise ValueError(f"search space {text!r} has no param_space() function")
    return dict(module.param_space())


def sample_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """One concrete config from a param space (first grid value, one sample of each domain)."""
    from ray.tune.search.sample import Domain

    out: dict[str, Any] = {}
    for k, v in space.items():
        if isinstance(v, Domain):
            out[k] = v.sample()
        elif isinstance(v, Mapping) and set(v) == {"grid_search"}:
            out[k] = list(v["grid_search"])[0]
        elif isinstance(v, Mapping):
            out[k] = sample_space(v)
        else:
            out[k] = v
    return out


def _merge(base: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in params.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def apply_params(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """``base`` with a sampled trial config merged in (nested ``model`` keys included), validated.

    Raises:
        ConfigError: a key that is not a ``TrainConfig``/``FusionConfig`` field, or a bad value.
    """
    return load_config(TrainConfig, _merge(to_dict(base), params))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---- resources ---------------------------------------------------------------------------------------
def max_concurrent_trials(
    cfg: TrainConfig,
    resources: Mapping[str, float] | None = None,
    *,
    trial_cpus: float = TRIAL_CPUS,
    data_cpus: float = DATA_CPUS,
) -> int:
    """How many trials fit at once: each needs ``trial_cpus`` plus its Train workers' CPUs (and
    GPUs), after ``data_cpus`` are left to Ray Data. At least 1.

    Args:
        cfg: the trials' training config (``num_workers``, ``cpus_per_worker``, ``use_gpu``).
        resources: the cluster's resources (default ``ray.cluster_resources()``, i.e. the nodes
            up now; an autoscaling cluster may hold more later).
    """
    if resources is None:
        import ray

        resources = ray.cluster_resources()
    per_trial = trial_cpus + cfg.num_workers * cfg.cpus_per_worker
    n = math.floor((float(resources.get("CPU", 0.0)) - data_cpus) / per_trial + 1e-9)
    if cfg.use_gpu:
        n = min(n, math.floor(float(resources.get("GPU", 0.0)) / cfg.num_workers + 1e-9))
    return max(1, n)


# ---- storage -----------------------------------------------------------------------------------------
def _abs_storage(storage_path: str | None) -> str:
    if not storage_path:
        return str(tracking.raydf_home() / "ray_results")
    return storage_path.rstrip("/") if "://" in storage_path else str(Path(storage_path).expanduser().resolve())


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _fs(path: str):  # noqa: ANN202 - (pyarrow.fs.FileSystem, str)
    import pyarrow.fs as pafs

    if "://" not in path:
        return pafs.LocalFileSystem(), path
    return pafs.FileSystem.from_uri(path)


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep needs to run and to resume (``raydf_sweep.json``). URIs carry no credentials:
    user info is stripped (credentials travel in the environment)."""

    name: str
    path: str  # <storage>/<name>, Tune's experiment dir
    features: str  # the extraction Parquet
    base: dict[str, Any]  # the TrainConfig every trial starts from
    space: str  # tune_spaces module name, or "custom"
    tracking_uri: str | None  # None when not tracked
    track: bool
    experiment: str
    tags: dict[str, str]
    full_report: bool
    trial_cpus: float
    max_concurrent: int
    expected_trials: int
    parent_run_id: str | None = None
    experiment_id: str | None = None
    attempts: int = 1

    def __post_init__(self) -> None:  # credentials never stored: they travel in the environment
        for name in ("path", "features", "tracking_uri"):
            value = getattr(self, name)
            if value:
                object.__setattr__(self, name, tracking.strip_userinfo(value))
        object.__setattr__(self, "tags", {k: tracking.redact(str(v)) for k, v in self.tags.items()})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SweepSpec:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _write_spec(spec: SweepSpec) -> None:
    fs, p = _fs(spec.path)
    fs.create_dir(p, recursive=True)
    with fs.open_output_stream(f"{p}/{SWEEP_FILE}") as f:
        f.write(spec.to_json().encode())


def read_sweep_spec(experiment_path: str) -> SweepSpec:
    """The ``raydf_sweep.json`` of a sweep (features, base config, MLflow parent run, ...).

    Raises:
        FileNotFoundError: not a raydf sweep.
        ValueError: the file is not a sweep spec (malformed JSON or missing keys).
    """
    import pyarrow as pa

    fs, p = _fs(experiment_path)
    try:
        with fs.open_input_stream(f"{p}/{SWEEP_FILE}") as f:
            data = f.read()
    except (FileNotFoundError, pa.ArrowIOError) as exc:
        raise FileNotFoundError(f"{experiment_path} is not a raydf sweep (no {SWEEP_FILE})") from exc
    try:
        return SweepSpec.from_json(data.decode())
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError: a binary file
        raise ValueError(f"{experiment_path}/{SWEEP_FILE} is not a raydf sweep spec: {exc}") from exc


# ---- Tune's own state: signed, because restoring it unpickles it ------------------------------------------
SIGNATURE_FILE = "raydf_sweep.sig"
KEY_ENV = "RAYDF_SWEEP_KEY_FILE"  # where the signing key lives (default ~/.raydf/sweep.key)


class SweepStateUntrusted(RuntimeError):
    """A sweep's Tune state is not signed by this user's key (``Tuner.restore`` would unpickle it)."""


def _signing_key() -> bytes:
    """This user's sweep-signing key (created 0600 on first use)."""
    path = Path(os.environ.get(KEY_ENV) or Path.home() / ".raydf" / "sweep.key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    return path.read_bytes()


def _state_digests(experiment_path: str) -> dict[str, str]:
    """HMAC-SHA256 of every file ``Tuner.restore`` and ``ExperimentAnalysis`` may unpickle: the
    experiment dir's own files (``tuner.pkl``, ``experiment_state-*.json`` holding cloudpickled
    trials, searcher state) and every ``*.pkl`` below it (trials' ``params.pkl``)."""
    import hashlib
    import hmac

    import pyarrow.fs as pafs

    fs, root = _fs(experiment_path)
    key = _signing_key()
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root.rstrip("/")) + 1 :]
        top = "/" not in rel
        if rel in (SIGNATURE_FILE, SWEEP_FILE) or not (top or rel.endswith(".pkl")):
            continue
        with fs.open_input_stream(info.path) as f:
            out[rel] = hmac.new(key, f.read(), hashlib.sha256).hexdigest()
    return out


def sign_sweep_state(experiment_path: str) -> None:
    """Record the HMACs of the sweep's Tune state (at the end of every run or resume)."""
    fs, p = _fs(experiment_path)
    with fs.open_output_stream(f"{p}/{SIGNATURE_FILE}") as f:
        f.write(json.dumps(_state_digests(experiment_path), indent=1, sort_keys=True).encode())


def verify_sweep_state(experiment_path: str) -> None:
    """Refuse a sweep whose Tune state is not exactly what this user's raydf signed.

    Raises:
        SweepStateUntrusted: no signature (e.g. a hard-killed driver, or another user's sweep), or
            a signed file changed, or an unsigned file appeared.
    """
    import hmac

    fs, p = _fs(experiment_path)
    try:
        with fs.open_input_stream(f"{p}/{SIGNATURE_FILE}") as f:
            signed = json.loads(f.read().decode())
    except (FileNotFoundError, OSError, ValueError):
        signed = None
    why = "it has no signature of its Tune state (written when a sweep ends or is interrupted)"
    if signed is not None:
        now = _state_digests(experiment_path)
        bad = sorted(k for k in now if k not in signed or not hmac.compare_digest(now[k], str(signed[k])))
        if not bad:
            return
        why = f"its Tune state changed since raydf signed it ({', '.join(bad[:3])})"
    raise SweepStateUntrusted(
        f"refusing to resume {tracking.redact(experiment_path)}: {why}. Resuming unpickles that state, which "
        "runs whatever code it holds; resume only sweeps your raydf wrote (or pass trust_state=True / --trust-state)."
    )


# ---- the trial ----------------------------------------------------------------------------------------
class EpochReportCallback(TuneReportCallback):
    """Tune's ``TuneReportCallback``, plus ``epochs`` (epochs trained, ASHA's time attribute)."""

    def after_report(self, run_context, metrics, checkpoint) -> None:  # noqa: ANN001 - Ray Train's types
        metrics = [{**m, TIME_ATTR: int(m[S.EPOCH]) + 1} if S.EPOCH in m else m for m in metrics]
        super().after_report(run_context, metrics, checkpoint)


def _scratch_root(sweep_path: str) -> Path:
    """The local scratch folder of a sweep's trials on remote storage: ``<tmp>/raydf-sweep-<sha1(path)[:12]>``."""
    import hashlib
    import tempfile

    return Path(tempfile.gettempdir()) / f"raydf-sweep-{hashlib.sha1(sweep_path.encode()).hexdigest()[:12]}"


def _remove_scratch(sweep_path: str) -> None:
    if "://" in sweep_path:
        import shutil

        shutil.rmtree(_scratch_root(sweep_path), ignore_errors=True)


def _fit_trial(cfg_dict: dict[str, Any], trial_id: str, spec: SweepSpec, callback: EpochReportCallback) -> dict[str, float]:
    """The trial's Ray Train run (a task of the trial, see :func:`_trial`); returns its final report.

    A trial's bundle and plots matter only until they are logged (MLflow keeps them): on local
    storage they stay under the sweep's folder; with remote storage they are written to a
    scratch dir under :func:`_scratch_root` that goes when the trial ends, and the driver removes
    that root when ``Tuner.fit`` returns (trials ASHA stopped were killed before they could).
    """
    import contextlib
    import tempfile

    import numpy as np

    from raydf.train import run_training

    root = _scratch_root(spec.path) if "://" in spec.path else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    scratch_dir = tempfile.TemporaryDirectory(prefix=f"trial-{trial_id}-", dir=root) if root else contextlib.nullcontext()
    with scratch_dir as scratch:
        result = run_training(
            spec.features,
            load_config(TrainConfig, cfg_dict),
            storage_path=_join(spec.path, TRAIN_DIR),
            output_dir=scratch,
            name=f"trial-{trial_id}",
            tracking_uri=spec.tracking_uri,
            track=spec.track,
            tags={**spec.tags, TAG_TRIAL: trial_id, TAG_SWEEP: spec.name},
            callbacks=[callback],
            experiment=spec.experiment,
            parent_run_id=spec.parent_run_id,
            run_key=f"{spec.parent_run_id or spec.path}/{trial_id}",
            full_report=spec.full_report,
        )
    final = {k: float(v) for k, v in result.history[-1].items()}
    for split, m in result.test_metrics.items():
        final.update({S.eval_metric(split, k): float(m[k]) for k in S.EVAL_METRICS if np.isfinite(m[k])})
    return {**final, TIME_ATTR: int(final[S.EPOCH]) + 1, TRIAL_DONE: 1}


def _trial(config: dict[str, Any], spec: SweepSpec) -> None:
    """One Tune trial: the base config with this trial's params, trained by a TorchTrainer.

    The TorchTrainer runs in a zero-CPU task of the trial that knows its cluster's address
    (``RAY_ADDRESS``). When ASHA (or an interrupted sweep) ends the trial, the task and the Train
    controller it owns end with it, and Ray Train's placement-group cleaner, a detached actor
    that inherits the task's environment, must find this cluster to give the workers' CPUs
    back; by itself it looks the cluster up on the machine, which fails where several Ray
    instances run (a shared dev box, parallel test sessions) and leaves the CPUs reserved until
    the driver exits, starving the next trials' Ray Data.

    Its last report repeats the last epoch with the test metrics and ``trial_completed``: Tune
    says TERMINATED both for a trial that ended and for one ASHA stopped, and a trial resumed
    after its final epoch (the report lost in the interruption) has no epoch left to report.
    """
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = apply_params(load_config(TrainConfig, spec.base), config)
    callback = EpochReportCallback()  # made here, in the Tune session whose queue it feeds
    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    fit = ray.remote(num_cpus=0, max_retries=0)(_fit_trial).options(runtime_env={"env_vars": env})
    tune.report(ray.get(fit.remote(to_dict(cfg), trial_id, spec, callback)))


def _trial_dirname(trial) -> str:  # noqa: ANN001 - ray.tune.experiment.Trial
    return f"trial-{trial.trial_id}"


def _trainable(spec: SweepSpec):  # noqa: ANN202 - a Tune trainable
    from ray import tune

    return tune.with_resources(tune.with_parameters(_trial, spec=spec), {"cpu": spec.trial_cpus})


# ---- results --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult:
    """What a sweep (or one resumed part of it) left behind."""

    name: str
    path: str  # Tune's experiment dir: Tuner.restore / resume_sweep take this
    table: Any  # pandas.DataFrame, one row per trial (see _table)
    best_trial_id: str | None
    best_config: dict[str, Any]  # the sampled params of the best trial (nested as in the space)
    best_metrics: dict[str, float]
    stopped_early: list[str]  # trial ids ASHA stopped
    finished: bool  # False: interrupted; resume_sweep(path) goes on
    wall_s: float  # this call's wall time
    parent_run_id: str | None
    tracking_uri: str | None
    experiment_id: str | None
    max_concurrent: int
    child_run_ids: dict[str, str] = field(default_factory=dict)  # trial id -> MLflow run id

    def lines(self) -> list[str]:
        """A short human summary."""
        state = "finished" if self.finished else "INTERRUPTED (resume with: raydf tune --resume " + self.path + ")"
        out = [
            f"sweep {self.name}: {len(self.table)} trials, {self.max_concurrent} at a time, {self.wall_s:.0f}s, {state}",
            f"storage: {self.path}",
            f"stopped early by ASHA: {', '.join(self.stopped_early) or 'none'}",
        ]
        if self.best_trial_id:
            out.append(f"best trial {self.best_trial_id}: " + ", ".join(f"{k} {v:.4g}" for k, v in self.best_metrics.items()))
            out.append("best config: " + json.dumps(self.best_config, sort_keys=True, default=str))
        if self.parent_run_id:
            out.append(f"mlflow parent run: {self.parent_run_id} (experiment {self.experiment_id}, {tracking.redact(self.tracking_uri or '')})")
        return out


def _trial_id(result) -> str:  # noqa: ANN001 - ray.tune.Result
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return str(tid)
    name = Path(str(result.path)).name
    return name.removeprefix("trial-")


def _status(result, tune_status: str) -> str:  # noqa: ANN001 - ray.tune.Result
    """completed | stopped early | error | unfinished, from the trial's status in the saved
    experiment state. Tune calls a trial TERMINATED both when its function returned and when the
    scheduler stopped it; only the former sent ``trial_completed``."""
    if tune_status == "ERROR" or result.error is not None:
        return ERROR
    if tune_status != "TERMINATED":  # RUNNING / PENDING / PAUSED when the sweep was interrupted
        return UNFINISHED
    return COMPLETED if (result.metrics or {}).get(TRIAL_DONE) else STOPPED


def _table(grid, statuses: dict[str, str], child_runs: dict[str, Any]):  # noqa: ANN001, ANN202
    """One row per trial: id, status, epochs, the best epoch's validation metrics, params, MLflow run."""
    import numpy as np
    import pandas as pd

    rows = []
    for result in grid:
        m = result.metrics or {}
        tid = _trial_id(result)
        status = _status(result, statuses.get(tid, "PENDING"))
        best_epoch = m.get(S.BEST_EPOCH)
        at_best: dict[str, Any] = {}
        df = result.metrics_dataframe
        if df is not None and len(df) and best_epoch is not None and S.EPOCH in df:
            hit = df[df[S.EPOCH] == best_epoch]
            if len(hit):
                at_best = hit.iloc[-1].to_dict()
        if not at_best and best_epoch is not None and m.get(S.EPOCH) == best_epoch:
            at_best = m
        row = {
            "trial_id": tid,
            "status": status,
            "epochs": int(m.get(TIME_ATTR, 0) or 0),
            S.BEST_EPOCH: best_epoch,
            RANK_METRIC: m.get(RANK_METRIC, np.nan),
            S.VAL_AUC: at_best.get(S.VAL_AUC, np.nan),
            S.VAL_ACC: at_best.get(S.VAL_ACC, np.nan),
            "last_val_loss": m.get(S.VAL_LOSS, np.nan),
        }
        row.update({f"config/{k}": v for k, v in _flat(result.config or {}).items()})
        run = child_runs.get(tid)
        row[TEST_AUC] = m.get(TEST_AUC, run.data.metrics.get(TEST_AUC, np.nan) if run is not None else np.nan)
        row["mlflow_run_id"] = run.info.run_id if run is not None else None
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values([RANK_METRIC, "trial_id"], na_position="last").reset_index(drop=True)
    return table


def _best(table, grid) -> tuple[str | None, dict[str, Any], dict[str, float]]:  # noqa: ANN001
    import numpy as np

    ok = table[np.isfinite(table[RANK_METRIC].astype(float))] if len(table) else table
    if not len(ok):
        return None, {}, {}
    row = ok.iloc[0]
    config = next((r.config for r in grid if _trial_id(r) == row["trial_id"]), {}) or {}
    metrics = {k: float(row[k]) for k in (RANK_METRIC, S.VAL_AUC, S.VAL_ACC, S.BEST_EPOCH, TEST_AUC) if row[k] is not None and np.isfinite(float(row[k]))}
    return str(row["trial_id"]), dict(config), metrics


# ---- MLflow ---------------------------------------------------------------------------------------------
def _client(uri: str):  # noqa: ANN202 - mlflow.MlflowClient
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def _start_parent(spec: SweepSpec, artifact_location: str | None, settings: dict[str, Any]) -> tuple[str, str]:
    """Create the sweep's parent run; returns (experiment id, run id)."""
    from mlflow.entities import Param

    client = _client(spec.tracking_uri)
    exp = tracking.get_or_create_experiment(spec.experiment, artifact_location)
    if artifact_location and client.get_experiment(exp).artifact_location.rstrip("/") != artifact_location.rstrip("/"):
        log.warning("experiment %r exists with artifacts at %s; --artifact-location %s ignored",
                    spec.experiment, client.get_experiment(exp).artifact_location, artifact_location)
    tags = {
        TAG_STAGE: "tune",
        TAG_SWEEP: spec.name,
        TAG_PATH: tracking.redact(spec.path),
        TAG_STATE: "running",
        **spec.tags,
    }
    run = client.create_run(exp, run_name=spec.name, tags=tags)
    items = list(tracking.safe_params({"sweep": settings, "base": spec.base}).items())
    for i in range(0, len(items), 100):  # MLflow's batch limit
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    return exp, run.info.run_id


def _child_runs(client, experiment_id: str, parent_run_id: str) -> dict[str, Any]:  # noqa: ANN001
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=5000)
    return {r.data.tags[TAG_TRIAL]: r for r in runs if TAG_TRIAL in r.data.tags}


def _finish_mlflow(client, spec: SweepSpec, result: SweepResult, attempt: int) -> None:  # noqa: ANN001
    """Close the children ASHA stopped (or that failed), put the best trial on the parent."""
    import tempfile

    from mlflow.entities import Metric, Param

    parent = spec.parent_run_id
    children = _child_runs(client, result.experiment_id, parent)
    for _, row in result.table.iterrows():
        run = children.get(row["trial_id"])
        if run is None or run.info.status != "RUNNING":
            continue
        if row["status"] == STOPPED:  # its actor was ended at the report ASHA stopped it on
            client.set_tag(run.info.run_id, TAG_STOPPED, "true")
            client.set_terminated(run.info.run_id, "KILLED")
        elif row["status"] == ERROR:
            client.set_terminated(run.info.run_id, "FAILED")
        elif row["status"] == COMPLETED:  # ended while it wrapped up (e.g. the sweep was stopped then)
            client.set_terminated(run.info.run_id, "KILLED")
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric("sweep_wall_s", result.wall_s, now, attempt)])
    if not result.finished:
        client.set_tag(parent, TAG_STATE, "interrupted")
        client.set_terminated(parent, "KILLED")
        return
    metrics = {
        "n_trials": float(len(result.table)),
        "n_stopped_early": float(len(result.stopped_early)),
        "n_errors": float((result.table["status"] == ERROR).sum()),
        **result.best_metrics,
    }
    tags = {TAG_STATE: "finished"}
    best_run = children.get(result.best_trial_id) if result.best_trial_id else None
    if best_run is not None:
        tags.update({k: best_run.data.tags[k] for k in COPIED_TAGS if k in best_run.data.tags})
        tags.update({"best_trial_id": result.best_trial_id, "best_run_id": best_run.info.run_id})
        for k, v in best_run.data.metrics.items():
            if k.startswith(S.eval_metric(S.TEST, "")):
                metrics[k] = v
    client.log_batch(
        parent,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(f"best.{k}", v) for k, v in tracking.safe_params(result.best_config).items()],
    )
    for k, v in tags.items():
        client.set_tag(parent, k, v)
    with tempfile.TemporaryDirectory() as d:
        result.table.to_csv(Path(d, "results.csv"), index=False)
        Path(d, "best_config.json").write_text(json.dumps(result.best_config, indent=2, sort_keys=True, default=str))
        client.log_artifact(parent, str(Path(d, "results.csv")), "sweep")
        client.log_artifact(parent, str(Path(d, "best_config.json")), "sweep")
    client.set_terminated(parent, "FINISHED")


# ---- sweeps ---------------------------------------------------------------------------------------------
def run_sweep(
    features_uri: str,
    space: str | Mapping[str, Any] | Callable[[], Mapping[str, Any]] = DEFAULT_SPACE,
    base: TrainConfig | None = None,
    *,
    num_samples: int = 8,
    name: str | None = None,
    storage_path: str | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    tags: Mapping[str, str] | None = None,
    experiment: str | None = None,
    artifact_location: str | None = None,
    max_concurrent: int | None = None,
    grace_period: int = 1,
    reduction_factor: float = 2,
    seed: int | None = 0,
    trial_cpus: float = TRIAL_CPUS,
    full_report: bool = False,
    resume: bool = True,
    callbacks: Sequence[Any] | None = None,
) -> SweepResult:
    """Sweep a search space over Ray Train runs of the fusion classifier, with ASHA and MLflow.

    Args:
        features_uri: the extraction Parquet (local or ``s3://``).
        space: a ``tune_spaces`` module name (``mixup_restarts``, ``fusion_arch``), a ``.py`` path,
            or a Tune param space; keys are ``TrainConfig`` fields (``model`` nests ``FusionConfig``).
        base: the config every trial starts from (default: the report's recipe).
        num_samples: trials (times each grid point, for grid searches).
        name: the sweep's name (default ``tune-<timestamp>``); with ``storage_path`` it names the
            experiment dir ``<storage_path>/<name>``.
        storage_path: local dir or ``s3://`` prefix (default ``<RAYDF_HOME>/ray_results``).
        tracking_uri: MLflow store (default :func:`raydf.tracking.default_tracking_uri`).
        track: log to MLflow (parent run + one child run per trial).
        tags: extra MLflow tags on the parent and every trial (e.g. ``dataset=ffpp``).
        experiment: MLflow experiment (default ``raydf-tune``).
        artifact_location: artifact root for a *new* experiment (e.g. ``s3://bucket/mlflow``).
        max_concurrent: trials at once (default :func:`max_concurrent_trials` of the cluster).
        grace_period: epochs every trial runs before ASHA may stop it.
        reduction_factor: ASHA keeps the best ``1/reduction_factor`` at each rung.
        seed: random search seed (None: unseeded).
        trial_cpus: CPUs of each trial's own function (its TorchTrainer's workers come on top).
        full_report: trials log plots and the model too (default: metrics only, to save time).
        resume: when ``<storage_path>/<name>`` already holds a sweep, resume it (the other
            arguments are then taken from the stored sweep); False raises instead.
        callbacks: extra Tune callbacks (``ray.tune.Callback``).

    Returns:
        A :class:`SweepResult`; ``finished`` is False if the sweep was interrupted.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t0 = time.perf_counter()
    base = base or TrainConfig()
    name = name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = _abs_storage(storage_path)
    path = _join(storage, name)
    if tune.Tuner.can_restore(path):
        if not resume:
            raise FileExistsError(f"{path} already holds a sweep; resume it or choose another name")
        log.info("%s holds a sweep: resuming it (its stored settings win)", path)
        return resume_sweep(path, tracking_uri=tracking_uri)

    param_space = load_space(space)
    apply_params(base, sample_space(param_space))  # a bad key or value fails here, not in every trial
    if not ray.is_initialized():
        ray.init()
    concurrency = max_concurrent or max_concurrent_trials(base, trial_cpus=trial_cpus)
    spec = SweepSpec(
        name=name,
        path=path,
        features=features_uri,
        base=to_dict(base),
        space=space if isinstance(space, str) else "custom",
        tracking_uri=tracking.resolve_tracking_uri(tracking_uri) if track else None,
        track=track,
        experiment=experiment or tracking.TUNE_EXPERIMENT,
        tags={k: tracking.redact(str(v)) for k, v in (tags or {}).items()},
        full_report=full_report,
        trial_cpus=trial_cpus,
        max_concurrent=concurrency,
        expected_trials=_count_trials(param_space, num_samples),
    )
    settings = {
        "space": spec.space, "num_samples": num_samples, "max_concurrent": concurrency, "grace_period": grace_period,
        "reduction_factor": reduction_factor, "seed": seed, "metric": METRIC, "time_attr": TIME_ATTR,
        "features": tracking.redact(features_uri), "storage": tracking.redact(path),
    }  # fmt: skip
    if track:
        experiment_id, parent_run_id = _start_parent(spec, artifact_location, settings)
        spec = dataclasses.replace(spec, experiment_id=experiment_id, parent_run_id=parent_run_id)
    _write_spec(spec)
    log.info("sweep %s: %d samples, %d trials at a time, storage %s", name, num_samples, concurrency, path)

    tuner = tune.Tuner(
        _trainable(spec),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            # Rungs stop before the last epoch (max_t = max_epochs - 1): stopping a trial at its last
            # report would only cut its test evaluation and MLflow logging short.
            scheduler=ASHAScheduler(time_attr=TIME_ATTR, max_t=max(grace_period, base.max_epochs - 1), grace_period=grace_period,
                                    reduction_factor=reduction_factor, stop_last_trials=False),
            search_alg=BasicVariantGenerator(max_concurrent=concurrency, random_state=seed),  # (TuneConfig's
            num_samples=num_samples,  # max_concurrent_trials is ignored with a SearchGenerator instance)
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=list(callbacks or []) or None,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )  # fmt: skip
    try:
        tuner.fit()
    finally:
        sign_sweep_state(path)
        _remove_scratch(path)
    return _finish(spec, t0)


def resume_sweep(path: str, *, tracking_uri: str | None = None, trust_state: bool = False) -> SweepResult:
    """Resume an interrupted sweep from its experiment dir (``Tuner.restore``).

    Finished trials (completed, stopped by ASHA or failed) are kept as they are; unfinished
    ones start again, their Train runs continue from their latest checkpoint, and they log into
    the MLflow runs they had. Resuming a finished sweep only rebuilds its result.

    Args:
        path: ``<storage_path>/<name>`` of the sweep (local or ``s3://``).
        tracking_uri: MLflow store, when it differs from the one the sweep was started with.
        trust_state: resume even if the Tune state is not signed by this user's key.

    Raises:
        SweepStateUntrusted: the sweep's Tune state is not signed by this user's key (Tune's
            restore unpickles it) and ``trust_state`` is False.
    """
    import ray
    from ray import tune

    t0 = time.perf_counter()
    path = _abs_storage(path)
    spec = read_sweep_spec(path)
    if not trust_state:
        verify_sweep_state(path)
    if tracking_uri and spec.track:
        spec = dataclasses.replace(spec, tracking_uri=tracking.resolve_tracking_uri(tracking_uri))
    spec = dataclasses.replace(spec, attempts=spec.attempts + 1)
    _write_spec(spec)
    if not ray.is_initialized():
        ray.init()
    if spec.track and spec.parent_run_id:
        client = _client(spec.tracking_uri)
        client.update_run(spec.parent_run_id, status="RUNNING")
        client.set_tag(spec.parent_run_id, TAG_STATE, "running")
    tuner = tune.Tuner.restore(path, trainable=_trainable(spec), resume_unfinished=True, resume_errored=False)
    try:
        tuner.fit()
    finally:
        sign_sweep_state(path)
        _remove_scratch(path)
    return _finish(spec, t0)


def _saved_results(path: str):  # noqa: ANN202 - (ResultGrid, {trial id: Tune status})
    """The sweep as its saved experiment state has it. ``Tuner.fit`` returns the trials as they are
    after it cleaned up (all TERMINATED, even those an interruption stopped); the state it saved
    just before keeps them RUNNING or PENDING, which is what ``Tuner.restore`` resumes."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    analysis = ExperimentAnalysis(path, default_metric=METRIC, default_mode=MODE)
    return ResultGrid(analysis), {t.trial_id: t.status for t in analysis.trials}


def _count_trials(space: Mapping[str, Any], num_samples: int) -> int:
    """Trials a space yields: ``num_samples`` times the product of its grid sizes."""
    n = num_samples
    for v in space.values():
        if isinstance(v, Mapping) and set(v) == {"grid_search"}:
            n *= len(list(v["grid_search"]))
        elif isinstance(v, Mapping):
            n *= _count_trials(v, 1)
    return n


def _finish(spec: SweepSpec, t0: float) -> SweepResult:
    grid, statuses = _saved_results(spec.path)
    finished = len(statuses) >= int(spec.expected_trials) and all(s in ("TERMINATED", "ERROR") for s in statuses.values())
    client = _client(spec.tracking_uri) if spec.track else None
    children = _child_runs(client, spec.experiment_id, spec.parent_run_id) if client and spec.parent_run_id else {}
    table = _table(grid, statuses, children)
    best_id, best_config, best_metrics = _best(table, grid)
    result = SweepResult(
        name=spec.name,
        path=spec.path,
        table=table,
        best_trial_id=best_id,
        best_config=best_config,
        best_metrics=best_metrics,
        stopped_early=sorted(table.loc[table["status"] == STOPPED, "trial_id"]) if len(table) else [],
        finished=finished,
        wall_s=time.perf_counter() - t0,
        parent_run_id=spec.parent_run_id,
        tracking_uri=spec.tracking_uri,
        experiment_id=spec.experiment_id,
        max_concurrent=int(spec.max_concurrent),
        child_run_ids={k: r.info.run_id for k, r in children.items()},
    )
    if client is not None and spec.parent_run_id:
        _finish_mlflow(client, spec, result, spec.attempts - 1)
    for line in result.lines():
        log.info("%s", line)
    return result

