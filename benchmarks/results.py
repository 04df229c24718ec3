"""RESULTS.md: the machine, the versions, every ratio against its target, and each suite's tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["render", "load_suite"]

_DESCRIPTIONS = {
    "extract": "Ray Data pipeline vs the naive per-video loop; each stage alone; faithful per-video cost.",
    "faces": "raydf's MTCNN vs facenet-pytorch's MTCNN at the same minimum face size and thresholds, at equal recall (640x480, 1920x1080).",
    "models": "pSp and slow_r50 achieved GFLOP/s / this machine's fp32 matmul peak, measured in the same run.",
    "ingest": "Ray Data -> Ray Train training steps/s / the same loop over in-memory tensors.",
    "detect": "`raydf detect` on a 10 s 640x480 clip / the sum of its stages run alone.",
    "decode": "`read_video` T=32 from a 10-minute clip / from a 10-second one (seeking to keyframes); the sequential path for contrast.",
    "serve": "`raydf serve` under load (16 uploads, 4 at a time, loopback) / the same clips through one warm in-process Detector, one after another; 20 bad requests; live-stream update latency.",
    "gpu": "`python -m benchmarks.gpu`: the feature stage at fp32/fp16/bf16 on one device, half precisions against fp32.",
}


def load_suite(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}".rstrip("0").rstrip(".")
    return "n/a" if v is None else str(v).replace("|", "\\|")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return out


# The brief's orientation figures for the reference code on this machine type (2 threads, batch 4).
ORIENTATION = {"matmul peak GFLOP/s": 256.0, "pSp s/face": 1.0, "slow_r50 s/clip": 0.6, "MTCNN frames/s (640x480)": 9.0,
               "naive 32-frame video, faithful models (s)": 38.0}  # fmt: skip


def _orientation(suites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The frozen reference's figures measured in this run next to the orientation figures."""
    by = {s["suite"]: s for s in suites}
    models, extract = by.get("models", {}).get("config", {}), by.get("extract", {}).get("config", {})
    if "psp_s_per_face" not in models or "face_detection" not in extract:
        return []
    peaks = [r["peak GFLOP/s"] for r in by["models"]["tables"].get("models", [])]
    fps = next(v["reference_fps"] for k, v in extract["face_detection"].items() if k.endswith("t") and k != "1t")
    psp, r50 = models["psp_s_per_face"]["reference"], models["slow_r50_s_per_clip"]["reference"]
    decode = extract.get("naive", {}).get("stage_cpu", {}).get("decode", 0.0)
    measured = {
        "matmul peak GFLOP/s": sorted(peaks)[len(peaks) // 2] if peaks else float("nan"),
        "pSp s/face": psp,
        "slow_r50 s/clip": r50,
        "MTCNN frames/s (640x480)": fps,
        "naive 32-frame video, faithful models (s)": 32 * psp + 2 * r50 + 32 / fps + decode,
    }
    return [{"figure": k, "orientation": ORIENTATION[k], "measured here": round(v, 3), "measured / orientation": round(v / ORIENTATION[k], 2),
             "within +-20%": abs(v / ORIENTATION[k] - 1) <= 0.2} for k, v in measured.items()]  # fmt: skip


def _verdict(r: dict[str, Any]) -> str:
    if r["target"] is None:
        return "info"
    return "**met**" if r["passed"] else "**not met**"


def render(env: dict[str, Any], suites: list[dict[str, Any]], *, mode: str, command: str, gpu: dict[str, Any] | None) -> str:
    """The whole RESULTS.md text."""
    lines = [
        "# raydf benchmarks",
        "",
        f"Written by `{command}` on {env['date']} ({mode} mode). Every ratio is two measurements of the same run "
        "(see `benchmarks/common.py` for the rules); rerun to refresh.",
        "",
        "## Machine",
        "",
        f"- CPU: {env['cpu']}, {env['cores']} cores usable, {env['memory_gib']} GiB RAM; load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_start'])}",
        f"- Python {env['python']} on {env['platform']}",
        "- " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
        "## Ratios against targets",
        "",
        "| suite | ratio | value | target | verdict | detail |",
        "|---|---|---|---|---|---|",
    ]
    for s in suites:
        for r in s["ratios"]:
            target = "" if r["target"] is None else f"{r['op']} {r['target']}"
            lines.append(f"| {s['suite']} | {r['name']} | {_fmt(r['value'])} | {target} | {_verdict(r)} | {_fmt(r['detail'])} |")
    orient = _orientation(suites)
    if orient:
        lines += ["", "## The naive reference against the brief's orientation figures", "",
                  "The reference (`benchmarks/reference.py`, frozen) measured in this run; the naive 32-frame video is the sum "
                  "of its stage rates (32 faces, 2 clips, 32 detections, decode).", "", *_table(orient)]  # fmt: skip
    for s in suites:
        lines += ["", f"## {s['suite']} ({s['wall_s']:.0f} s)", "", _DESCRIPTIONS.get(s["suite"], ""), ""]
        for name, rows in s["tables"].items():
            lines += [f"### {name}", "", *_table(rows), ""]
        if s["notes"]:
            lines += [f"- {n}" for n in s["notes"]] + [""]
        if s.get("error"):
            lines += [f"**The suite failed:** `{_fmt(s['error'])}`", ""]
    lines += ["## GPU", ""]
    if gpu and gpu.get("device", "cpu") != "cpu":
        lines += [
            f"Card: **{gpu['device']}** (torch {gpu['torch']}, Python {gpu['python']}), {gpu['style_config']} + slow_r50, "
            f"T={gpu['T']}, {gpu['videos_per_batch']} videos per call. Best precision within tolerance: "
            f"{gpu['best']} at **{gpu['best_videos_per_s']:.1f} videos/s** (target >= 25 on one H100).",
            "",
            *_table(gpu["rows"]),
            "",
        ]
    else:
        lines += [
            "No GPU figures: no GPU machine was lent to the session that wrote this file. On a GPU machine run "
            "`python -m benchmarks.gpu --out benchmarks/results/gpu.json` (torch + the feature stage only, under 5 "
            "minutes), then `python -m benchmarks --render-only` to put its table here with the card's name.",
            "",
        ]
        if gpu:
            lines += ["The same script's CPU dry run (tolerances of the half precisions, checked in the tests):", "", *_table(gpu["rows"]), ""]
    return "\n".join(lines).rstrip() + "\n"
