"""``models``: pSp and slow_r50 achieved GFLOP/s as a fraction of this machine's matmul peak.

FLOPs are counted once per model form with ``FlopCounterMode`` (what is executed:
``codes()`` runs all 18 heads, ``forward`` only level 9's path). Each rep times the
matmul peak and then one model call right after it, at the same thread count; the
reported fraction is the median of the per-rep fractions. Variants are applied to one
model in place, in the order of the table (the faithful pSp holds ~1 GB of weights).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import SuiteResult, count_flops, cores, matmul_flops, matmul_peak, median, timed, torch_threads

log = logging.getLogger(__name__)

# Orientation figures of the brief (reference code, 2 threads, batch 4): fraction of the matmul peak.
ORIENTATION = {"psp_reference": 0.55, "slow_r50_reference": 0.28}


def _measure(call: Callable[[], Any], flops: float, items: int, reps: int) -> dict[str, float]:
    """Warm up, then ``reps`` x (matmul peak, one call). Per-item seconds and fraction of the peak."""
    call()
    fractions, per_item, shares, peaks = [], [], [], []
    for _ in range(reps):
        pk = matmul_peak()
        peak = matmul_flops() / pk.wall
        t, _ = timed(call)
        fractions.append(flops / t.wall / peak)
        per_item.append(t.wall / items)
        shares.append(t.cpu / (t.wall * torch.get_num_threads()))
        peaks.append(peak / 1e9)
    return {
        "s_per_item": median(per_item),
        "gflops_per_s": flops / 1e9 / median([p * items for p in per_item]),
        "peak_gflops": median(peaks),
        "fraction_of_peak": median(fractions),
        "cpu_share": median(shares),
    }


def _row(model: str, variant: str, batch: int, gflop_item: float, m: dict[str, float], note: str = "") -> dict[str, Any]:
    return {
        "model": model,
        "variant": variant,
        "batch": batch,
        "GFLOP/item": round(gflop_item, 1),
        "s/item": round(m["s_per_item"], 3),
        "GFLOP/s": round(m["gflops_per_s"], 1),
        "peak GFLOP/s": round(m["peak_gflops"], 1),
        "fraction of peak": round(m["fraction_of_peak"], 3),
        "cpu share": round(m["cpu_share"], 2),
        "note": note,
    }


def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` under ``torch.no_grad()`` (the reference's inference setting)."""

    def call() -> Any:
        with torch.no_grad():
            return fn()

    return call


def inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` under ``torch.inference_mode()`` (what FeatureExtractor uses)."""

    def call() -> Any:
        with torch.inference_mode():
            return fn()

    return call


def _compile(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.nn.Module, float]:
    t0 = time.perf_counter()
    compiled = torch.compile(model)
    with torch.inference_mode():
        compiled(x)
    return compiled, time.perf_counter() - t0


def bench_psp(result: SuiteResult, *, reps: int, batches: list[int], compile_: bool, bf16: bool) -> None:
    from raydf.models.style import load_style_encoder

    model = load_style_encoder(None, "psp_ir_se50", level=9, seed=0).eval()
    one = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        f_codes = count_flops(lambda: model.codes(one))
        f_level = count_flops(lambda: model(one))
    result.config["psp_gflop_per_face"] = {"codes (18 levels)": f_codes / 1e9, "forward (level 9)": f_level / 1e9}
    b0 = 4
    x = {b: torch.rand(b, 3, 256, 256) * 2 - 1 for b in sorted(set(batches) | {b0})}
    rows = result.tables.setdefault("models", [])
    cl = torch.channels_last

    def run(variant: str, call: Callable[[], Any], flops: float, b: int, note: str = "") -> dict[str, float]:
        m = _measure(call, flops * b, b, reps)
        rows.append(_row("pSp IR-SE-50", variant, b, flops / 1e9, m, note))
        log.info("pSp %s b%d: %.3f s/face, %.2f of peak", variant, b, m["s_per_item"], m["fraction_of_peak"])
        return m

    ref = run("reference: codes() all 18 levels, contiguous, no_grad", no_grad(lambda: model.codes(x[b0])), f_codes, b0)
    run("forward level 9 only, contiguous, no_grad", no_grad(lambda: model(x[b0])), f_level, b0)
    model.to(memory_format=cl)
    xc = {b: v.contiguous(memory_format=cl) for b, v in x.items()}
    run("+ channels-last", no_grad(lambda: model(xc[b0])), f_level, b0)
    run("+ inference_mode", inference(lambda: model(xc[b0])), f_level, b0)
    model.fold_batchnorm()
    best = run("+ BatchNorm folded (FeatureExtractor, fp32)", inference(lambda: model(xc[b0])), f_level, b0)
    for b in batches:
        if b != b0:
            run("FeatureExtractor fp32, other batch", inference(lambda b=b: model(xc[b])), f_level, b)
    if compile_:
        compiled, secs = _compile(model, xc[b0])
        run("+ torch.compile (inductor)", inference(lambda: compiled(xc[b0])), f_level, b0, f"compile {secs:.0f}s")
    if bf16:
        mb = copy.deepcopy(model).to(torch.bfloat16)
        xb = xc[b0].to(torch.bfloat16)
        run("bf16 weights+activations (CPU avx512_bf16)", inference(lambda: mb(xb)), f_level, b0, "vs the fp32 peak")
        del mb
    result.ratio(
        "pSp encoder (level 9, as FeatureExtractor runs it, fp32) / matmul peak",
        best["fraction_of_peak"], 0.75, ">=", f"{best['s_per_item']:.3f} s/face at {torch.get_num_threads()} threads, batch {b0}",
    )
    result.ratio(
        "pSp reference codes() / matmul peak (orientation 0.55)",
        ref["fraction_of_peak"], None, detail=f"{ref['s_per_item']:.3f} s/face",
    )
    result.ratio(
        "pSp seconds per face: FeatureExtractor fp32 / reference",
        best["s_per_item"] / ref["s_per_item"], None, detail="fewer FLOPs (one level) and a faster layout",
    )
    result.config["psp_s_per_face"] = {"reference": ref["s_per_item"], "fp32": best["s_per_item"]}


def bench_slow_r50(result: SuiteResult, *, reps: int, batches: list[int], compile_: bool, bf16: bool) -> None:
    from raydf.models.content import load_content_model

    model = load_content_model(None, seed=0).eval()
    with torch.no_grad():
        f_clip = count_flops(lambda: model(torch.randn(1, 3, 16, 112, 112)))
    result.config["slow_r50_gflop_per_clip"] = f_clip / 1e9
    b0 = 4
    x = {b: torch.randn(b, 3, 16, 112, 112) for b in sorted(set(batches) | {b0})}
    rows = result.tables.setdefault("models", [])
    c3 = torch.channels_last_3d

    def run(variant: str, call: Callable[[], Any], b: int, note: str = "") -> dict[str, float]:
        m = _measure(call, f_clip * b, b, reps)
        rows.append(_row("slow_r50", variant, b, f_clip / 1e9, m, note))
        log.info("slow_r50 %s b%d: %.3f s/clip, %.2f of peak", variant, b, m["s_per_item"], m["fraction_of_peak"])
        return m

    ref = run("reference: contiguous, no_grad", no_grad(lambda: model(x[b0])), b0)
    model.to(memory_format=c3)
    xc = {b: v.contiguous(memory_format=c3) for b, v in x.items()}
    run("+ channels-last-3d", no_grad(lambda: model(xc[b0])), b0)
    run("+ inference_mode", inference(lambda: model(xc[b0])), b0)
    model.fold_batchnorm()
    best = run("+ BatchNorm folded (FeatureExtractor, fp32)", inference(lambda: model(xc[b0])), b0)
    for b in batches:
        if b != b0:
            run("FeatureExtractor fp32, other batch", inference(lambda b=b: model(xc[b])), b)
    if compile_:
        compiled, secs = _compile(model, xc[b0])
        run("+ torch.compile (inductor)", inference(lambda: compiled(xc[b0])), b0, f"compile {secs:.0f}s")
    if bf16:
        mb = copy.deepcopy(model).to(torch.bfloat16)
        xb = xc[b0].to(torch.bfloat16)
        run("bf16 weights+activations (CPU avx512_bf16)", inference(lambda: mb(xb)), b0, "vs the fp32 peak")
        del mb
    result.ratio(
        "slow_r50 (as FeatureExtractor runs it, fp32) / matmul peak",
        best["fraction_of_peak"], 0.50, ">=", f"{best['s_per_item']:.3f} s/clip at {torch.get_num_threads()} threads, batch {b0}",
    )
    result.ratio(
        "slow_r50 reference / matmul peak (orientation 0.28)", ref["fraction_of_peak"], None, detail=f"{ref['s_per_item']:.3f} s/clip"
    )
    result.config["slow_r50_s_per_clip"] = {"reference": ref["s_per_item"], "fp32": best["s_per_item"]}


def run(*, quick: bool, workdir: str) -> SuiteResult:  # noqa: ARG001 - same signature as the other suites
    result = SuiteResult("models")
    reps = 3 if quick else 5
    batches = [4] if quick else [1, 4, 8]
    threads = cores()
    result.config.update({"threads": threads, "reps": reps, "batches": batches, "torch.compile": not quick})
    with torch_threads(threads):
        bench_psp(result, reps=reps, batches=batches, compile_=not quick, bf16=True)
        bench_slow_r50(result, reps=reps, batches=batches, compile_=not quick, bf16=True)
    result.notes.append(
        f"{threads} torch threads, wall time; peak = 2048x2048 fp32 torch.mm at the same thread count, timed right "
        "before each call. 'cpu share' = process CPU time / (wall x threads): well below 1 means the run was preempted."
    )
    result.notes.append(
        "oneDNN convolutions can beat MKL's sgemm here (MKL runs its AVX2 path on AMD), so fractions above 1 are possible."
    )
    if quick:
        result.notes.append("quick mode: batch 4 only, no torch.compile (its compile time alone is minutes on 2 cores).")
    return result
