"""``raydf`` console script: make-dataset, extract, train, evaluate, detect, tune, compare, demo.

Each subcommand parses its flags, builds a frozen config and calls one library
function; heavy imports happen inside the handlers, so ``raydf --help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from raydf.schema import LAYOUT_NAMES

log = logging.getLogger("raydf")

_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _handler(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        _HANDLERS[name] = fn
        return fn

    return register


def _pair(text: str) -> tuple[int, int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        lo, hi = (int(parts[0]), int(parts[-1]))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}") from exc
    return lo, hi


# ---- parsers ----------------------------------------------------------------------------------
def add_extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="dataset root (local dir or s3://...) or a manifest .parquet/.csv")
    p.add_argument("--output", required=True, help="feature Parquet directory (local or s3://...); reruns resume")
    p.add_argument("--layout", choices=["auto", *LAYOUT_NAMES], default=None)
    p.add_argument("--config", help="ExtractConfig YAML (flags below override it)")
    p.add_argument("--frames", type=int, default=None, help="T frames per video (report: 32 FF++, 64 Celeb-DF)")
    p.add_argument("--style-weights", default=None, help="psp_ffhq_encode.pt path/URI (default: seeded random init)")
    p.add_argument("--content-weights", default=None, help="SLOW_8x8_R50.pyth path/URI (default: seeded random init)")
    p.add_argument("--style-config", default=None, help="registered pSp config: psp_ir_se50 (faithful) | psp_tiny")
    p.add_argument("--crop-actors", type=_pair, default=None, metavar="MIN,MAX")
    p.add_argument("--feature-actors", type=_pair, default=None, metavar="MIN,MAX")
    p.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per feature actor (1 on a GPU cluster)")
    p.add_argument("--feature-batch", type=int, default=None, help="videos per feature-actor batch")
    p.add_argument("--rows-per-file", type=int, default=None)
    p.add_argument("--pseudo-fakes", choices=["self-blend"], default=None,
                   help="also write a self-blended pseudo-fake of every real video (SBI, CVPR 2022); part of the store's identity")
    p.add_argument("--pseudo-seed", type=int, default=None, help="seed of the pseudo-fakes (with each video id)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the project's sqlite store)")
    p.add_argument("--no-track", action="store_true", help="do not log the run to MLflow")


def extract_config_from_args(args: argparse.Namespace):  # noqa: ANN201 - ExtractConfig
    from raydf.config import ExtractConfig, load_config, to_dict

    base = to_dict(load_config(ExtractConfig, args.config))
    if args.layout:
        base["layout"] = args.layout
    if args.frames:
        base["video"]["num_frames"] = args.frames
    if args.style_weights:
        base["style"]["weights"] = args.style_weights
    if args.content_weights:
        base["content"]["weights"] = args.content_weights
    if args.style_config:
        base["style"]["config"] = args.style_config
    if args.crop_actors:
        base["crop_actors"] = list(args.crop_actors)
    if args.feature_actors:
        base["feature_actors"] = list(args.feature_actors)
    if args.gpus_per_actor is not None:
        base["gpus_per_feature_actor"] = args.gpus_per_actor
    if args.feature_batch:
        base["feature_batch_size"] = args.feature_batch
    if args.rows_per_file:
        base["rows_per_file"] = args.rows_per_file
    if getattr(args, "pseudo_fakes", None):
        base["pseudo_fakes"] = args.pseudo_fakes
    if getattr(args, "pseudo_seed", None) is not None:
        base["pseudo_seed"] = args.pseudo_seed
    return load_config(ExtractConfig, base)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show every log line (Ray, MLflow, raydf) on the terminal")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dataset", help="generate real/fake MP4s of a real face (H.264), with metadata")
    p.add_argument("out")
    p.add_argument("--videos", type=int, default=20, help="number of real videos (each gets a paired fake)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", default="blend,flicker", help="manipulation families, comma-separated")

    p = sub.add_parser("extract", help="Ray Data extraction: videos -> face crops -> features -> Parquet")
    add_extract_args(p)

    p = sub.add_parser("demo", help="the whole job on an embedded default (local Ray, local files, sqlite MLflow)")
    p.add_argument("--workdir", default="demo", help="where the demo writes data, features and models")
    p.add_argument("--videos", type=int, default=None, help="real videos to generate (each gets a paired fake)")
    p.add_argument("--tracking-uri", default=None)

    p = sub.add_parser("train", help="Ray Train: fit the fusion classifier on extraction Parquet, log to MLflow")
    p.add_argument("--features", required=True, help="extraction output (local or s3://)")
    p.add_argument("--config", help="TrainConfig YAML (flags below override it)")
    p.add_argument("--epochs", type=int, default=None, help="max epochs (early stopping may end sooner)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers")
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--mixup-alpha", type=float, default=None)
    p.add_argument("--fakes", choices=["dataset", "pseudo", "both"], default=None,
                   help="fakes to train on: the store's own (default, as the report), its self-blended pseudo-fakes, or both")
    p.add_argument("--methods", default=None, metavar="M1,M2",
                   help="train on fakes of these methods only (cross-manipulation, e.g. Deepfakes; self_blend = pseudo-fakes only)")
    p.add_argument("--aggregation", choices=["max", "mean"], default=None, help="video score from its face tracks (default max)")
    p.add_argument("--storage", default=None, help="Ray Train storage path for checkpoints (local or s3://)")
    p.add_argument("--name", default=None, help="run name")
    p.add_argument("--test-features", action="append", default=[], metavar="NAME=URI", help="also evaluate on another dataset")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="MLflow tag, e.g. dataset=ffpp")
    p.add_argument("--tracking-uri", default=None)

    p = sub.add_parser("evaluate", help="a trained model under the evaluation protocols: within-set, cross-manipulation, -compression, -dataset")
    p.add_argument("--model", default=None, help="bundle path, runs:/<id>/model or models:/<name>/<v> (default: newest)")
    p.add_argument("--features", action="append", required=True, metavar="[NAME=]URI",
                   help="a feature store to score (repeatable); the model's training store gives the within-set test")
    p.add_argument("--aggregation", choices=["max", "mean"], default=None, help="video score from its face tracks (default: the training's)")
    p.add_argument("--train-features", default=None, help="the training store, if not where the model recorded it (validation threshold)")
    p.add_argument("--name", default=None, help="MLflow run name")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-track", action="store_true", help="do not log the evaluation to MLflow")
    p.add_argument("--explain", type=int, default=4, metavar="N",
                   help="log explanations (per-frame evidence, heat maps) of N test videos to the run (0: none)")
    p.add_argument("--style-weights", default=None, help="the extractor weights the model needs (for --explain)")
    p.add_argument("--content-weights", default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("detect", help="fake probability of one video")
    p.add_argument("video")
    p.add_argument("--model", default=None, help="bundle path, runs:/<id>/model or models:/<name>/<v> (default: newest)")
    p.add_argument("--style-weights", default=None)
    p.add_argument("--content-weights", default=None)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object (schema: raydf.detect)")
    p.add_argument("--explain", action="store_true", help="add where/when explanations (slower)")

    for extra in _EXTRA_PARSERS:
        extra(sub)
    for p in sub.choices.values():  # `raydf detect clip.mp4 -v` works as well as `raydf -v detect clip.mp4`
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show every log line")
    return parser


# Commands that write (and so keep a log file under <RAYDF_HOME>/logs); the others only read.
_WRITING_COMMANDS = frozenset({"make-dataset", "extract", "train", "tune", "reproduce", "demo", "serve"})

# Later stages register their subcommand parsers here (tune, compare).
_EXTRA_PARSERS: list[Callable[[Any], None]] = []


def _named(items: list[str]) -> dict[str, str]:
    out = {}
    for i, item in enumerate(items):
        name, sep, value = item.partition("=")
        if not sep or "://" in name or "/" in name:
            name, value = f"features{i}" if i else "features", item
        out[name] = value
    return out


# ---- handlers ---------------------------------------------------------------------------------
@_handler("make-dataset")
def _make_dataset(args: argparse.Namespace) -> int:
    from raydf.synth import make_dataset

    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    meta = make_dataset(args.out, videos=args.videos, seed=args.seed, families=families)
    print(f"wrote {2 * args.videos} videos and {meta}")
    return 0


@_handler("extract")
def _extract(args: argparse.Namespace) -> int:
    from raydf.extract import run_extraction

    cfg = extract_config_from_args(args)
    summary = run_extraction(args.input, args.output, cfg, tracking_uri=args.tracking_uri, track=not args.no_track, progress=True)
    print("\n".join(summary.lines()))
    if summary.provenance.random_parts():
        print("warning: the extractors are randomly initialised (no pretrained weights): these are not the report's "
              "features, and a model trained on them scores real videos meaninglessly. Pass --style-weights/--content-weights.")
    if summary.mlflow_run_id:
        print(f"mlflow run: {summary.mlflow_run_id}")
    return 0


# command-line flag -> TrainConfig field, for the commands that take them (train, tune)
_TRAIN_FLAGS = (("epochs", "max_epochs"), ("workers", "num_workers"), ("cpus_per_worker", "cpus_per_worker"),
                ("batch_size", "batch_size"), ("lr", "lr"), ("mixup_alpha", "mixup_alpha"), ("fakes", "fakes"),
                ("aggregation", "aggregation"))  # fmt: skip


def _train_config(args: argparse.Namespace):  # noqa: ANN202 - TrainConfig
    """``--config`` YAML (or the defaults) with the given flags on top; flags a command lacks are skipped."""
    from raydf.config import TrainConfig, load_config, to_dict

    base = to_dict(load_config(TrainConfig, args.config))
    for flag, key in _TRAIN_FLAGS:
        if getattr(args, flag, None) is not None:
            base[key] = getattr(args, flag)
    if args.use_gpu:
        base["use_gpu"] = True
    if getattr(args, "methods", None):
        base["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    return load_config(TrainConfig, base)


@_handler("train")
def _train(args: argparse.Namespace) -> int:
    from raydf.train import run_training

    cfg = _train_config(args)
    result = run_training(
        args.features, cfg, storage_path=args.storage, name=args.name, tracking_uri=args.tracking_uri,
        tags=_named(args.tag), extra_test=_named(args.test_features), progress=True,
    )
    print(f"splits {result.splits}, excluded {result.excluded}, best epoch {result.best_epoch}, fakes {cfg.fakes}")
    for name, m in result.test_metrics.items():
        print(f"{name}: " + ", ".join(f"{k} {m[k]:.4f}" for k in ("accuracy", "f1", "roc_auc", "eer", "log_loss"))
              + f" (video score = {result.aggregation} over face tracks)")
    print(f"model: {result.model_path}")
    if result.run_id:
        print(f"mlflow run: {result.run_id}")
    return 0


@_handler("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from raydf.bundle import resolve_model
    from raydf.protocol import THRESHOLD_RULE, evaluate_datasets, markdown_tables

    bundle, source = resolve_model(args.model, args.tracking_uri)
    datasets = _named(args.features)
    try:
        results = evaluate_datasets(bundle, datasets, aggregation=args.aggregation, train_features=args.train_features)
    except ValueError as exc:  # a store without usable rows, a training store without a test split
        print(f"raydf evaluate: error: {_one_line(exc)}", file=_terminal())
        return 2
    run_id = None
    if not args.no_track:
        from raydf.report import log_protocol_run

        run_id = log_protocol_run(bundle, results, source=source, datasets=datasets, tracking_uri=args.tracking_uri, name=args.name)
        if args.explain:
            _explain_for_run(bundle, source, results, datasets, args, run_id)
    if args.json:
        print(dumps({"model": source, "mlflow_run_id": run_id, "threshold_rule": THRESHOLD_RULE,
                     "evaluations": {name: {"protocol": e.protocol, "dataset": e.dataset, "fakes": e.fakes,
                                            "aggregation": e.aggregation, **e.metrics} for name, e in results.items()}}))
        return 0
    print(f"model: {source} (trained on fakes: {bundle.train.fakes})")
    if bundle.warning:
        print(f"warning: {bundle.warning}")
    print()
    print(markdown_tables(results))
    if run_id:
        print(f"\nmlflow run: {run_id}")
    return 0


def _explain_for_run(bundle: Any, source: str, results: dict[str, Any], datasets: dict[str, str], args: argparse.Namespace, run_id: str) -> None:
    """Explanations of a handful of evaluated videos as artifacts of the evaluation run: the most
    confident fakes and the most fake-looking reals of the first evaluation."""
    from raydf.bundle import ExtractorMismatch
    from raydf.detect import Detector, log_explanations
    from raydf.store import FeatureStore

    first = next(iter(results.values()))
    pred = first.predictions
    order = sorted(range(len(pred.ids)), key=lambda i: -pred.probs[i])
    fakes = [pred.ids[i] for i in order if pred.labels[i] == 1][: (args.explain + 1) // 2]
    reals = [pred.ids[i] for i in order if pred.labels[i] == 0][: args.explain // 2]
    wanted = set(fakes + reals)
    uri = datasets.get(first.dataset) or next(iter(datasets.values()))
    table = FeatureStore(uri).read(["video_id", "uri"])
    uris = {v: u for v, u in zip(table.column("video_id").to_pylist(), table.column("uri").to_pylist()) if v in wanted}
    try:
        det = Detector(bundle, source, style_weights=args.style_weights, content_weights=args.content_weights)
    except ExtractorMismatch as exc:
        print(f"note: no explanations logged: {_one_line(exc)}", file=_terminal())
        return
    n = log_explanations(det, [(v, uris[v]) for v in fakes + reals if v in uris], run_id)
    print(f"explanations of {n} videos logged to the run (artifacts explanations/)", file=_terminal())


@_handler("detect")
def _detect(args: argparse.Namespace) -> int:
    import time

    from raydf.bundle import resolve_model

    t0 = time.perf_counter()
    bundle, source = resolve_model(args.model, args.tracking_uri)  # no model: fails here, in a second
    from raydf.detect import Detector

    det = Detector(bundle, source, style_weights=args.style_weights, content_weights=args.content_weights, load_extractors=False)
    det.load_s += time.perf_counter() - t0 - det.load_s  # model resolution included
    out = det(args.video, explain=args.explain)
    if args.json:
        print(dumps(out.to_dict()))
        if out.model.warning:
            print(f"warning: {out.model.warning}", file=_terminal())
        return 0
    print(out.summary())
    for face in out.faces[1:] if len(out.faces) > 1 else []:
        print(f"  face track {face.track_id}: P(fake) = {face.fake_probability:.4f}")
    print(f"model: {out.model.source}")
    for note in out.notes:
        print(f"note: {note}" if note != out.model.warning else f"warning: {note}")
    return 0


def _add_reproduce_parser(sub: Any) -> None:
    p = sub.add_parser("reproduce", help="the report's experiment: extract FF++ / Celeb-DF (/ DFDC), train, evaluate under the protocols")
    p.add_argument("--ffpp", help="FaceForensics++ root (local or s3://)")
    p.add_argument("--celebdf", help="Celeb-DF v2 root")
    p.add_argument("--dfdc", help="DFDC root (cross-dataset test only)")
    p.add_argument("--out", required=True, help="where features (and remote Ray Train storage) go")
    p.add_argument("--style-weights", required=True, help="psp_ffhq_encode.pt path/URI")
    p.add_argument("--content-weights", required=True, help="SLOW_8x8_R50.pyth path/URI")
    p.add_argument("--extract-config", help="ExtractConfig YAML for resources (actors, GPUs)")
    p.add_argument("--train-config", help="TrainConfig YAML (workers, GPUs, recipe)")
    p.add_argument("--pseudo-fakes", action="store_true",
                   help="rerun it both ways: dataset fakes (the report) and self-blended pseudo-fakes of the real videos only, side by side")
    p.add_argument("--cross-manipulation", action="store_true", help="also one FF++ model per manipulation method, tested on the others")
    p.add_argument("--ffpp-compressions", default="c23", metavar="C1,C2", help="FF++ compressions; the first is trained on (e.g. c23,c40)")
    p.add_argument("--aggregation", choices=["max", "mean"], default=None, help="video score from its face tracks (default: the training's)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")


_EXTRA_PARSERS.append(_add_reproduce_parser)


@_handler("reproduce")
def _reproduce(args: argparse.Namespace) -> int:
    import yaml

    from raydf.reproduce import reproduce

    roots = {k: v for k, v in (("ffpp", args.ffpp), ("celebdf", args.celebdf), ("dfdc", args.dfdc)) if v}
    if not ({"ffpp", "celebdf"} & set(roots)):
        print("raydf reproduce: error: give --ffpp and/or --celebdf", file=_terminal())
        return 2
    load = lambda path: (yaml.safe_load(open(path)) or {}) if path else {}  # noqa: E731
    try:
        result = reproduce(
            roots, args.out, style_weights=args.style_weights, content_weights=args.content_weights,
            extract_overrides=load(args.extract_config), train_overrides=load(args.train_config), tracking_uri=args.tracking_uri,
            track=not args.no_track, pseudo_fakes=args.pseudo_fakes, cross_manipulation=args.cross_manipulation,
            ffpp_compressions=tuple(c.strip() for c in args.ffpp_compressions.split(",") if c.strip()), aggregation=args.aggregation,
        )
    except ValueError as exc:
        print(f"raydf reproduce: error: {_one_line(exc)}", file=_terminal())
        return 2
    print(result.tables())
    if args.pseudo_fakes:
        print("\n## dataset fakes vs self-blended pseudo-fakes\n")
        print(result.side_by_side())
    print("\nruns: " + ", ".join(f"{k}={v}" for k, v in result.runs.items()))
    return 0


@_handler("demo")
def _demo(args: argparse.Namespace) -> int:
    from raydf.demo import run_demo

    return run_demo(args.workdir, videos=args.videos, tracking_uri=args.tracking_uri)


def console_main() -> int:
    """Entry point of the ``raydf`` console script: :func:`main` for the process's whole life."""
    return main(keep_console=True)


def main(argv: Sequence[str] | None = None, *, keep_console: bool = False) -> int:
    """Run one ``raydf`` command (``argv`` as on the command line; ``sys.argv[1:]`` when None).

    Exit codes: 0 answered; 2 usage or bad input (e.g. not a video); 3 no model; 4 the model's
    extractors cannot be rebuilt (weights missing or different). Errors are one line on stderr.
    The console set-up (stderr to the command's log file, see :mod:`raydf.console`) is undone on
    return unless ``keep_console`` (the console script, whose process ends with the command).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from raydf import console

    try:
        return _run(args)
    finally:
        if not keep_console:
            console.restore()


def _run(args: argparse.Namespace) -> int:
    from raydf import console

    log_file = console.log_path(args.command) if args.command in _WRITING_COMMANDS else None
    console.setup(args.command, verbose=args.verbose, log_file=log_file)
    console.terminate_on_sigterm()
    if log_file is not None:
        log.info("raydf %s: log file %s", args.command, log_file)
    from raydf.bundle import BundleError
    from raydf.config import ConfigError
    from raydf.datasets import ManifestError
    from raydf.models.weights import WeightsError
    from raydf.lease import LeaseHeld, LeaseLost
    from raydf.store import ExtractConfigMismatch
    from raydf.video import VideoDecodeError

    expected = (ConfigError, ManifestError, WeightsError, ExtractConfigMismatch, VideoDecodeError, BundleError, FileNotFoundError, LeaseHeld, LeaseLost)
    try:
        return _HANDLERS[args.command](args)
    except BrokenPipeError:  # `raydf detect x --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except expected as exc:
        print(f"raydf {args.command}: error: {_one_line(exc)}", file=console.terminal())
        return _exit_code(exc)
    except Exception as exc:
        from raydf.extract import ExtractError

        if isinstance(exc, ExtractError):
            print(f"raydf {args.command}: error: {_one_line(exc)}", file=console.terminal())
            return 2
        raise


def _terminal():  # noqa: ANN202 - a text stream
    from raydf import console

    return console.terminal()


def _one_line(exc: BaseException) -> str:
    from raydf.tracking import redact

    return redact(" ".join(str(exc).split()))


def _exit_code(exc: BaseException) -> int:
    from raydf.bundle import ExtractorMismatch, NoModelError
    from raydf.models.weights import WeightsError

    if isinstance(exc, NoModelError):
        return 3
    if isinstance(exc, (ExtractorMismatch, WeightsError)):
        return 4
    return 2


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


# ---- tune and compare ------------------------------------------------------------------------
def _add_tune_parser(sub: Any) -> None:
    p = sub.add_parser("tune", help="Ray Tune sweep over Ray Train runs (ASHA on val loss), MLflow parent + child runs")
    p.add_argument("--features", help="extraction output (local or s3://); required unless --resume")
    p.add_argument("--space", default="mixup_restarts", help="tune_spaces module (mixup_restarts, fusion_arch) or a .py file with param_space()")
    p.add_argument("--config", help="base TrainConfig YAML (flags below override it)")
    p.add_argument("--trials", type=int, default=8, help="trials to sample (Tune's num_samples)")
    p.add_argument("--epochs", type=int, default=None, help="max epochs per trial")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers per trial")
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--use-gpu", action="store_true", help="one GPU per Train worker")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what the cluster holds, leaving a CPU to Ray Data)")
    p.add_argument("--grace-period", type=int, default=1, help="epochs before ASHA may stop a trial")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA keeps the best 1/factor at each rung")
    p.add_argument("--seed", type=int, default=0, help="random search seed")
    p.add_argument("--storage", default=None, help="sweep storage: local dir or s3://... (default <RAYDF_HOME>/ray_results)")
    p.add_argument("--name", default=None, help="sweep name; rerunning with the same name and storage resumes it")
    p.add_argument("--resume", default=None, metavar="PATH", help="resume the interrupted sweep at PATH (<storage>/<name>)")
    p.add_argument("--trust-state", action="store_true", help="resume even if the sweep's Tune state is not signed by your key "
                   "(Tune unpickles it: only for sweeps you know)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="MLflow tag on the parent and every trial, e.g. dataset=ffpp")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default raydf-tune)")
    p.add_argument("--artifact-location", default=None, help="artifact root of a new MLflow experiment, e.g. s3://bucket/mlflow")
    p.add_argument("--full-report", action="store_true", help="trials log plots and the model too (default: metrics only)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def _add_compare_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="best run per dataset side by side (FF++ vs Celeb-DF ...) and the MLflow compare URL")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", action="append", default=None, help="MLflow experiment(s) to search (default raydf-train and raydf-tune)")
    p.add_argument("--dataset", action="append", default=None, help="only these dataset tags, in this order (default all)")
    p.add_argument("--filter", default=None, help="extra MLflow filter, e.g. \"tags.weights = 'pretrained'\"")
    p.add_argument("--ui-url", default=None, help="MLflow UI base URL for the link (default: the tracking server, else http://127.0.0.1:5000)")
    p.add_argument("--json", action="store_true")


_EXTRA_PARSERS.extend([_add_tune_parser, _add_compare_parser])


@_handler("tune")
def _tune(args: argparse.Namespace) -> int:
    from raydf.tune import resume_sweep, run_sweep

    if args.resume:
        from raydf.tune import SweepStateUntrusted

        try:
            result = resume_sweep(args.resume, tracking_uri=args.tracking_uri, trust_state=args.trust_state)
        except (SweepStateUntrusted, FileNotFoundError, ValueError) as exc:
            print(f"raydf tune: error: {_one_line(exc)}", file=_terminal())
            return 2
    else:
        if not args.features:
            print("raydf tune: error: --features is required (or --resume PATH)", file=_terminal())
            return 2
        try:
            result = run_sweep(
                args.features, args.space, _train_config(args), num_samples=args.trials, name=args.name,
                storage_path=args.storage, tracking_uri=args.tracking_uri, track=not args.no_track, tags=_named(args.tag),
                experiment=args.experiment, artifact_location=args.artifact_location, max_concurrent=args.max_concurrent,
                grace_period=args.grace_period, reduction_factor=args.reduction_factor, seed=args.seed,
                full_report=args.full_report,
            )
        except ValueError as exc:  # an unknown search space
            print(f"raydf tune: error: {exc}", file=_terminal())
            return 2
    cols = [c for c in result.table.columns if c not in ("mlflow_run_id",)]
    print(result.table[cols].to_string(index=False) if len(result.table) else "(no trials)")
    print("\n".join(result.lines()))
    return 0 if result.finished else 1


@_handler("compare")
def _compare(args: argparse.Namespace) -> int:
    from raydf import tracking
    from raydf.compare import run_compare

    experiments = args.experiment or [tracking.TRAIN_EXPERIMENT, tracking.TUNE_EXPERIMENT]
    cmp = run_compare(args.tracking_uri, experiments=experiments, datasets=args.dataset, filter_string=args.filter, ui_url=args.ui_url)
    if args.json:
        print(dumps({"url": cmp.url, "runs": [{"dataset": b.dataset, "run_id": b.run_id, "ranked_by": b.ranked_by, "metrics": b.metrics} for b in cmp.best]}))
    else:
        print("\n".join(cmp.lines()))
    return 0 if cmp.best else 1



# ---- serve --------------------------------------------------------------------------------------------
def _byte_size(text: str) -> int:
    """``268435456``, ``256M``, ``256MiB``, ``1G`` -> bytes (binary multiples)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a size in bytes (e.g. 268435456, 256M, 1G), got {text!r}") from exc
    if n < 1:
        raise argparse.ArgumentTypeError(f"size must be >= 1 byte, got {text!r}")
    return n


def _add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="the online detection service (Ray Serve): HTTP API, live WebSocket scoring and a web page")
    p.add_argument("--model", default=None, help="bundle path, runs:/<id>/model or models:/<name>/<v> (default: newest); "
                                                 "until it exists, requests get 503")  # fmt: skip
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--style-weights", default=None)
    p.add_argument("--content-weights", default=None)
    p.add_argument("--host", default="127.0.0.1", help="where the HTTP proxy listens (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default=None, help="file holding a bearer token the API and the WebSocket then require")
    p.add_argument("--allow-uri-prefix", action="append", default=None, metavar="PREFIX",
                   help='allow {"uri": ...} requests under this prefix (e.g. s3://bucket/videos/); none by default')  # fmt: skip
    p.add_argument("--max-bytes", type=_byte_size, default=None, help="largest upload, e.g. 256M (default 256 MiB)")
    p.add_argument("--explain", action="store_true", help="explanations unless a request asks otherwise (slower)")
    p.add_argument("--config", default=None, help="ServeConfig YAML (the `args` keys of infra/serve.yaml); flags override it")
    p.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto) instead of starting a local one")
    p.add_argument("--crop-replicas", type=_pair, default=None, metavar="MIN,MAX", help="autoscaling bounds of the CPU decode+faces deployment")
    p.add_argument("--feature-replicas", type=_pair, default=None, metavar="MIN,MAX", help="autoscaling bounds of the feature deployment")
    p.add_argument("--gpus-per-feature-replica", type=float, default=None, help="GPUs per feature replica (1 on a GPU node)")
    p.add_argument("--batch-size", type=int, default=None, help="requests per feature batch (@serve.batch max_batch_size)")
    p.add_argument("--stream-every", type=int, default=None, help="live scoring: frames between two updates (k)")


_EXTRA_PARSERS.append(_add_serve_parser)


@_handler("serve")
def _serve(args: argparse.Namespace) -> int:
    import ipaddress
    from pathlib import Path

    from raydf import console
    from raydf.config import to_dict
    from raydf.serve.config import serve_config

    base = to_dict(serve_config(args.config))
    for flag in ("model", "tracking_uri", "style_weights", "content_weights", "token_file", "max_bytes"):
        if getattr(args, flag) is not None:
            base[flag] = getattr(args, flag)
    if args.allow_uri_prefix:
        base["allow_uri_prefixes"] = list(args.allow_uri_prefix)
    if args.explain:
        base["explain"] = True
    for flag, part in (("crop_replicas", "crop"), ("feature_replicas", "features")):
        if getattr(args, flag) is not None:
            base[part]["min_replicas"], base[part]["max_replicas"] = getattr(args, flag)
    if args.gpus_per_feature_replica is not None:
        base["features"]["num_gpus"] = args.gpus_per_feature_replica
    if args.batch_size is not None:
        base["batch"]["max_batch_size"] = args.batch_size
        base["features"]["max_ongoing_requests"] = max(base["features"]["max_ongoing_requests"], args.batch_size)
    if args.stream_every is not None:
        base["stream"]["every"] = args.stream_every
    cfg = serve_config(base)
    if cfg.token_file:
        token_path = Path(cfg.token_file)
        if not token_path.is_file() or not token_path.read_text().strip():
            print(f"raydf serve: error: token file {cfg.token_file} is missing or empty", file=_terminal())
            return 2
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not cfg.token_file:
        log.warning("serving on %s without --token-file: anyone who reaches this address can use the service", args.host)
    from raydf.serve.runner import serve_forever, start

    if not args.verbose:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's INFO lines go to its own log files
    handle = start(cfg, host=args.host, port=args.port, address=args.address, ray_kwargs=console.quiet_ray_kwargs())
    console.terminate_on_sigterm()  # again: ray.init installed its own SIGTERM handler (a stack dump, no cleanup)
    print(f"raydf serve: {handle.url}/  (API {handle.url}/v1/detect, live {handle.url.replace('http', 'ws', 1)}/v1/stream; "
          "Ctrl-C stops)", flush=True)  # fmt: skip
    try:
        serve_forever(handle)  # stops the service (and its local Ray) on the way out
    except KeyboardInterrupt:
        print("raydf serve: stopped", file=_terminal())
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
