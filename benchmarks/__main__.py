"""``python -m benchmarks [--quick] [--suite NAME ...]``: run the suites, rewrite RESULTS.md.

Each suite writes ``<results>/<suite>.json``; RESULTS.md is rendered from those files, so a
suite run alone (or a GPU result copied back from a lent machine) updates its section
without rerunning the others. ``make bench`` is the quick mode (about 20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import dump_json, environment
from benchmarks.results import load_suite, render

SUITES = ("models", "extract", "faces", "decode", "ingest", "detect", "serve")  # run by default
ON_DEMAND = ("explain", "generalisation")  # long (30-60 min on 2 cores): only with --suite; rendered when present
RENDERED = SUITES + ON_DEMAND
HERE = Path(__file__).resolve().parent

log = logging.getLogger("benchmarks")


def run_gpu_dry(results: Path) -> None:
    """The GPU script's CPU dry run (precision tolerances), unless a real GPU result is there."""
    from benchmarks import gpu

    path = results / "gpu.json"
    if path.exists() and load_suite(path).get("device", "cpu") != "cpu":
        return
    res = gpu.run(gpu.parse_args(["--dry-run", "--device", "cpu"]))
    dump_json(res, str(path))


def rendered_suites(results: Path) -> list[dict]:
    """The JSON results RESULTS.md shows (``RENDERED`` order, those present), per-row detail dropped."""
    suites = [load_suite(results / f"{n}.json") for n in RENDERED if (results / f"{n}.json").exists()]
    for s in suites:  # per-row detail stays in the JSON; RESULTS.md gets the summary tables
        for key in ("markdown", "rows"):
            s.get("config", {}).pop(key, None)
    return suites


def render_results(results: Path, suites: list[dict] | None = None, *, default_mode: str = "quick") -> str:
    """RESULTS.md from the JSON results in ``results`` (``suites``: :func:`rendered_suites`, read when None)."""
    suites = rendered_suites(results) if suites is None else suites
    env = load_suite(results / "environment.json")
    gpu = load_suite(results / "gpu.json") if (results / "gpu.json").exists() else None
    modes = {s.get("mode", default_mode) for s in suites if s["suite"] not in ON_DEMAND} or {default_mode}
    command = "make bench" if modes == {"quick"} else "python -m benchmarks"
    return render(env, suites, mode="/".join(sorted(modes)), command=command, gpu=gpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 videos at T=16, psp_tiny in the pipeline, no torch.compile")
    p.add_argument("--suite", action="append", choices=RENDERED, help=f"run only these (repeatable; {', '.join(ON_DEMAND)} only when named)")
    p.add_argument("--results", default=str(HERE / "results"), help="folder of the per-suite JSON results")
    p.add_argument("--markdown", default=str(HERE / "RESULTS.md"))
    p.add_argument("--workdir", default=None, help="scratch folder (videos, Parquet); default a temporary one")
    p.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from the JSON results only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"

    failed = []
    if not args.render_only:
        env = environment()
        dump_json(env, str(results / "environment.json"))
        with tempfile.TemporaryDirectory(prefix="raydf-bench-") as tmp:
            work = args.workdir or tmp
            for name in args.suite or SUITES:
                log.info("suite %s (%s)", name, mode)
                t0 = time.perf_counter()
                try:
                    res = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick, workdir=work)
                    out = res.to_dict()
                except Exception as exc:  # a failed suite is reported, the others still run
                    log.exception("suite %s failed", name)
                    out = {"suite": name, "ratios": [], "tables": {}, "notes": [], "config": {}, "error": repr(exc)}
                    failed.append(name)
                out["wall_s"] = time.perf_counter() - t0
                out["mode"] = mode
                dump_json(out, str(results / f"{name}.json"))
        run_gpu_dry(results)
    suites = rendered_suites(results)
    Path(args.markdown).write_text(render_results(results, suites, default_mode=mode))
    print(Path(args.markdown).read_text())
    for s in suites:
        for r in s["ratios"]:
            if r["passed"] is False:
                log.warning("target not met: %s = %.3f (%s %s)", r["name"], r["value"], r["op"], r["target"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
