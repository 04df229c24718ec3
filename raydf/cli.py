"""``raydf`` console script: make-dataset, extract, train, evaluate, detect, tune, compare, demo.

Each subcommand parses its flags, builds a frozen config and calls one library
function; heavy imports happen inside the handlers, so ``raydf --help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

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
    p.add_argument("--layout", choices=["auto", "folders", "ffpp", "celebdf", "dfdc"], default=None)
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
    return load_config(ExtractConfig, base)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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

    for extra in _EXTRA_PARSERS:
        extra(sub)
    return parser


# Later stages register their subcommand parsers here (train, evaluate, detect, tune, compare).
_EXTRA_PARSERS: list[Callable[[Any], None]] = []


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
    summary = run_extraction(args.input, args.output, cfg, tracking_uri=args.tracking_uri, track=not args.no_track)
    print("\n".join(summary.lines()))
    if summary.mlflow_run_id:
        print(f"mlflow run: {summary.mlflow_run_id}")
    return 0


@_handler("demo")
def _demo(args: argparse.Namespace) -> int:
    from raydf.demo import run_demo

    return run_demo(args.workdir, videos=args.videos, tracking_uri=args.tracking_uri)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``raydf`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from raydf.datasets import ManifestError
    from raydf.models.weights import WeightsError
    from raydf.store import ExtractConfigMismatch
    from raydf.video import VideoDecodeError

    from raydf.config import ConfigError

    try:
        return _HANDLERS[args.command](args)
    except (ConfigError, ManifestError, WeightsError, ExtractConfigMismatch, VideoDecodeError, FileNotFoundError) as exc:
        print(f"raydf {args.command}: error: {exc}", file=sys.stderr)
        return 2


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


if __name__ == "__main__":
    sys.exit(main())
