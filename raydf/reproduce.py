"""The report's experiment in one call: extract FF++ / Celeb-DF (/ DFDC), train, evaluate under the protocols.

The report trains on FaceForensics++ (T=32 frames) and on Celeb-DF (T=64), reports
accuracy on each, and tests both models on a DFDC subset. ``raydf reproduce``
does the same with the official weights and datasets the user points it at:

    raydf reproduce --ffpp /data/FaceForensics++ --celebdf /data/Celeb-DF-v2 --dfdc /data/dfdc \\
        --style-weights /weights/psp_ffhq_encode.pt --content-weights /weights/SLOW_8x8_R50.pyth \\
        --out s3://bucket/raydf-report \\
        --extract-config infra/configs/extract-aws.yaml --train-config infra/configs/train-aws.yaml

and, with ``--pseudo-fakes``, reruns it both ways: each training dataset's model trained on
its own fakes (the report) and one trained on its real videos and their self-blended
pseudo-fakes only (SBI, Shiohara & Yamasaki, CVPR 2022; no dataset fake is seen, not even
in validation), evaluated side by side (:meth:`ReproduceResult.side_by_side`).
``--cross-manipulation`` adds one FF++ model per manipulation method (each tested on the
others), and ``--ffpp-compressions c23,c40`` a cross-compression test (trained on the first).

Every model is evaluated by :func:`raydf.protocol.evaluate_datasets` on every store
(within-set, cross-manipulation, cross-compression, cross-dataset), logged as an MLflow
evaluation run with one table per protocol (:func:`raydf.report.log_protocol_run`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from raydf.config import ExtractConfig, TrainConfig, load_config, to_dict
from raydf.evaluate import markdown_table

log = logging.getLogger(__name__)

__all__ = [
    "REPORT_FRAMES",
    "TRAINING_DATASETS",
    "ModelSpec",
    "StoreSpec",
    "ReproduceResult",
    "plan_experiment",
    "reproduce",
]

# report: 32 frames for FaceForensics++, 64 for Celeb-DF; DFDC is only a cross-dataset test set.
REPORT_FRAMES = {"ffpp": 32, "celebdf": 64, "dfdc": 32}
TRAINING_DATASETS = ("ffpp", "celebdf")  # the report trains on these; the others are test sets
REPORT, SELF_BLEND = "dataset fakes", "self-blend"  # the two ways of training (side-by-side columns)
SIDE_BY_SIDE_METRICS = (("roc_auc", "AUC"), ("average_precision", "AP"), ("eer", "EER"), ("accuracy_at_val_threshold", "acc@val"))


@dataclass(frozen=True)
class StoreSpec:
    """One feature store of the experiment."""

    name: str  # "ffpp", "ffpp-c40", "celebdf", "dfdc" (the evaluation set's name)
    dataset: str  # layout: ffpp | celebdf | dfdc
    root: str
    uri: str
    compression: str = ""  # FF++ only
    pseudo_fakes: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """One training of the experiment."""

    key: str  # "ffpp", "ffpp+self-blend", "ffpp[Deepfakes]"
    store: str  # StoreSpec.name it trains on
    fakes: str  # TrainConfig.fakes
    methods: tuple[str, ...] = ()  # TrainConfig.methods
    way: str = REPORT  # REPORT | SELF_BLEND (side-by-side column)


@dataclass(frozen=True)
class ReproduceResult:
    features: dict[str, str]  # store name -> feature URI
    runs: dict[str, str | None]  # model key -> MLflow training run id
    metrics: dict[str, dict[str, dict[str, Any]]]  # model key -> evaluation name -> metrics
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # model key -> {name: raydf.protocol.Evaluation}
    eval_runs: dict[str, str | None] = field(default_factory=dict)  # model key -> MLflow evaluation run id
    models: tuple[ModelSpec, ...] = ()

    def tables(self) -> str:
        """Every model's protocol tables (Markdown)."""
        from raydf.protocol import markdown_tables

        return "\n\n".join(f"## model {key}\n\n{markdown_tables(ev)}" for key, ev in self.evaluations.items())

    def side_by_side(self) -> str:
        """Dataset-fakes vs self-blend models of each training dataset on the same test sets (Markdown).

        A row is one (training dataset, evaluated set, fakes); the training store's test split is
        the within-set evaluation of the report's model and the cross-manipulation evaluation of
        the self-blend model (its within-set scores self-blends, which has no counterpart).
        """
        return side_by_side(self.models, self.evaluations)


def _comparable(e: Any) -> tuple[str, str] | None:
    """(evaluated set, fakes) of an evaluation, for pairing the two ways; None for self-blend-only rows."""
    from raydf.protocol import CROSS_COMPRESSION, CROSS_MANIPULATION, WITHIN_SET
    from raydf.splits import PSEUDO_METHOD

    if PSEUDO_METHOD in e.fake_methods:
        return None
    where = f"{e.dataset} (test split)" if e.protocol in (WITHIN_SET, CROSS_MANIPULATION, CROSS_COMPRESSION) else e.dataset
    return where, e.fakes if e.fakes != "all" else f"all ({', '.join(e.fake_methods)})"


def side_by_side(models: tuple[ModelSpec, ...], evaluations: dict[str, dict[str, Any]]) -> str:
    """See :meth:`ReproduceResult.side_by_side`."""
    header = ["trained on", "evaluated on", "fakes", "aggregation"]
    for _, label in SIDE_BY_SIDE_METRICS:
        header += [f"{label} ({REPORT})", f"{label} ({SELF_BLEND})"]
    rows = [header]
    for sbi in (m for m in models if m.way == SELF_BLEND):
        report = next((m for m in models if m.store == sbi.store and m.way == REPORT and not m.methods), None)
        pair = {SELF_BLEND: evaluations.get(sbi.key, {}), REPORT: evaluations.get(report.key, {}) if report else {}}
        cells: dict[tuple[str, str], dict[str, Any]] = {}
        for way, evs in pair.items():
            for e in evs.values():
                k = _comparable(e)
                if k is not None:
                    cells.setdefault(k, {"aggregation": e.aggregation})[way] = e.metrics
        for (where, fakes), c in cells.items():
            row = [sbi.store, where, fakes, f"{c['aggregation']} over tracks"]
            for key, _ in SIDE_BY_SIDE_METRICS:
                for way in (REPORT, SELF_BLEND):
                    v = c.get(way, {}).get(key, math.nan)
                    row.append("n/a" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.4f}")
            rows.append(row)
    return markdown_table(rows) if len(rows) > 1 else "(no model trained both ways)"


def plan_experiment(
    roots: dict[str, str],
    out: str,
    *,
    pseudo_fakes: bool = False,
    cross_manipulation: bool = False,
    ffpp_compressions: tuple[str, ...] = ("c23",),
    ffpp_methods: tuple[str, ...] = (),
) -> tuple[list[StoreSpec], list[ModelSpec]]:
    """The stores to extract and the models to train (no I/O).

    Stores: one per dataset; FF++ once per compression (the first is trained on); with
    ``pseudo_fakes`` the training datasets' stores hold self-blended pseudo-fakes too (a
    store identity of its own: ``<name>-self-blend``), and the report's model trains on the
    same store (``fakes="dataset"`` leaves the pseudo-fakes out). Models: the report's
    (dataset fakes) per training dataset; with ``pseudo_fakes`` a self-blend model
    (``fakes="pseudo"``, ``methods=("self_blend",)``); with ``cross_manipulation`` one FF++
    model per method of ``ffpp_methods``.

    Raises:
        ValueError: an unknown dataset, or cross-manipulation without FF++ methods.
    """
    unknown = set(roots) - set(REPORT_FRAMES)
    if unknown:
        raise ValueError(f"unknown datasets {sorted(unknown)}; expected some of {sorted(REPORT_FRAMES)}")
    base = out.rstrip("/")
    stores: list[StoreSpec] = []
    models: list[ModelSpec] = []
    for name, root in roots.items():
        pseudo = pseudo_fakes and name in TRAINING_DATASETS
        suffix = "-self-blend" if pseudo else ""
        if name == "ffpp":
            for i, comp in enumerate(ffpp_compressions):
                store = "ffpp" if i == 0 else f"ffpp-{comp}"
                stores.append(StoreSpec(store, name, root, f"{base}/features/{store}{suffix if i == 0 else ''}", comp, pseudo and i == 0))
        else:
            stores.append(StoreSpec(name, name, root, f"{base}/features/{name}{suffix}", "", pseudo))
    for name in TRAINING_DATASETS:
        if name not in roots:
            continue
        models.append(ModelSpec(name, name, "dataset"))
        if pseudo_fakes:
            models.append(ModelSpec(f"{name}+self-blend", name, "pseudo", ("self_blend",), SELF_BLEND))
    if cross_manipulation and "ffpp" in roots:
        if not ffpp_methods:
            raise ValueError("cross-manipulation needs the FF++ methods to hold out in turn")
        models += [ModelSpec(f"ffpp[{m}]", "ffpp", "dataset", (m,)) for m in ffpp_methods]
    return stores, models


def reproduce(
    roots: dict[str, str],
    out: str,
    *,
    style_weights: str | None,
    content_weights: str | None,
    extract_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    pseudo_fakes: bool = False,
    cross_manipulation: bool = False,
    ffpp_compressions: tuple[str, ...] = ("c23",),
    aggregation: str | None = None,
    frames: dict[str, int] | None = None,
    style_config: str = "psp_ir_se50",
) -> ReproduceResult:
    """Extract every dataset in ``roots`` (``ffpp``, ``celebdf``, ``dfdc``), train on FF++ and
    Celeb-DF, and evaluate each model under every protocol on every store (see module docstring).

    Args:
        roots: dataset name -> root (local or ``s3://``).
        out: where the features go (``<out>/features/<store>``) and, when remote, Ray Train storage.
        style_weights, content_weights: the official weights (None: seeded random init, a demo).
        extract_overrides, train_overrides: ExtractConfig / TrainConfig keys (resources, recipe).
        tracking_uri: MLflow store; ``track=False`` logs nothing.
        pseudo_fakes: also train each training dataset's model on self-blended pseudo-fakes only.
        cross_manipulation: one FF++ model per manipulation method, each tested on the others.
        ffpp_compressions: FF++ compressions to extract; the first is trained on, the others tested.
        aggregation: ``max`` | ``mean`` over a video's face tracks (default: the training config's).
        frames: T per dataset (default :data:`REPORT_FRAMES`).
        style_config: registered pSp config (the report's ``psp_ir_se50``).

    Reruns resume: extraction skips videos already done; each training is a new MLflow run.

    Raises:
        ValueError: unknown datasets; see :func:`plan_experiment`.
    """
    from raydf.bundle import ModelBundle
    from raydf.extract import run_extraction
    from raydf.protocol import evaluate_datasets
    from raydf.train import run_training

    extract_base = load_config(ExtractConfig, extract_overrides or {})
    methods = tuple(m for m in extract_base.ffpp_methods if m not in ("FaceShifter", "DeepFakeDetection"))  # the report's four
    stores, models = plan_experiment(roots, out, pseudo_fakes=pseudo_fakes, cross_manipulation=cross_manipulation,
                                     ffpp_compressions=ffpp_compressions, ffpp_methods=methods)  # fmt: skip
    frames = {**REPORT_FRAMES, **(frames or {})}
    for s in stores:
        cfg = load_config(
            ExtractConfig,
            {
                **to_dict(extract_base),
                "layout": s.dataset,
                **({"ffpp_compression": s.compression} if s.compression else {}),
                "video": {**to_dict(extract_base.video), "num_frames": frames[s.dataset]},
                "style": {**to_dict(extract_base.style), "weights": style_weights, "config": style_config},
                "content": {**to_dict(extract_base.content), "weights": content_weights},
                "pseudo_fakes": "self-blend" if s.pseudo_fakes else "",
            },
        )
        summary = run_extraction(s.root, s.uri, cfg, tracking_uri=tracking_uri, track=track)
        log.info("%s: %s", s.name, "; ".join(summary.lines()))
    features = {s.name: s.uri for s in stores}

    base = out.rstrip("/")
    runs: dict[str, str | None] = {}
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    evaluations: dict[str, dict[str, Any]] = {}
    eval_runs: dict[str, str | None] = {}
    for m in models:
        tcfg = load_config(TrainConfig, {**(train_overrides or {}), "fakes": m.fakes, "methods": list(m.methods)})
        result = run_training(
            features[m.store],
            tcfg,
            name=f"report-{m.key}",
            tracking_uri=tracking_uri,
            track=track,
            tags={"dataset": m.store, "experiment": "report", "raydf.training": m.way},
            storage_path=None if "://" not in base else f"{base}/ray_results",
        )
        runs[m.key] = result.run_id
        bundle = ModelBundle.load(result.model_path)
        evals = evaluate_datasets(bundle, features, aggregation=aggregation)
        evaluations[m.key] = evals
        metrics[m.key] = {name: e.metrics for name, e in evals.items()}
        if track:
            from raydf.report import log_protocol_run

            eval_runs[m.key] = log_protocol_run(bundle, evals, source=str(result.model_path), datasets=features, tracking_uri=tracking_uri,
                                                name=f"report-{m.key}", tags={"experiment": "report", "raydf.training": m.way})  # fmt: skip
    return ReproduceResult(features=features, runs=runs, metrics=metrics, evaluations=evaluations, eval_runs=eval_runs, models=tuple(models))
