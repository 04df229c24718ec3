"""``gpu``: the feature stage on one GPU at fp32, fp16 and bf16, with each half precision
checked against fp32, and the CPU cores needed to feed the GPU at that rate.

Needs torch and raydf's feature stage only (``raydf.features`` and ``raydf.models``:
torch, numpy, pyyaml, and pytorchvideo + fvcore + iopath for ``slow_r50``); no Ray, no
PyAV, so it runs on a lent GPU machine with its own Python and torch::

    python -m benchmarks.gpu                      # faithful models, T=32, ~2-4 min on one GPU
    python -m benchmarks.gpu --dry-run --device cpu   # seconds, any machine (what the tests run)

It prints one table and, with ``--out``, writes it as JSON. Features are computed from the
same uint8 face crops at every precision; a precision passes when the relative L2 error
of both content and style against fp32 is within :data:`TOLERANCE`.

CPU cores per GPU = GPU videos/s x (decode+sample + face-crop CPU-seconds per video).
The CPU cost is measured here when OpenCV and facenet-pytorch are importable (a
generated 640x480 clip written with OpenCV), else taken from ``--cpu-s-per-video``
(the ``extract`` suite's stage table gives it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# relative L2 error of a precision's features against fp32 (content and style); tested in tests/test_benchmarks.py
TOLERANCE = {"fp32": 0.0, "fp16": 1e-2, "bf16": 3e-2}


def _crops(batch: int, t: int, size: int, seed: int = 0) -> np.ndarray:
    """Face-like uint8 crops (B, T, S, S, 3): smooth shapes plus noise, a slow drift over T."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((batch, t, size, size, 3), np.uint8)
    for b in range(batch):
        cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.35)
        base = rng.uniform(60, 200, 3)
        for i in range(t):
            d = np.sqrt((xx - cx - 0.002 * i) ** 2 + (yy - cy) ** 2)
            face = np.clip(1.2 - d / r, 0, 1)[..., None]  # (S, S, 1)
            img = base * (0.4 + 0.6 * face) + 40 * np.sin(8 * xx + i * 0.1)[..., None] + rng.normal(0, 6, (size, size, 3))
            out[b, i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-12))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_precision(
    precision: str, crops: np.ndarray, *, device: str, style_config: str, reps: int, budget_s: float
) -> tuple[dict[str, Any], Any]:
    """Videos/s of ``FeatureExtractor`` at ``precision`` on ``crops`` (B videos per call) and its features."""
    from raydf.config import ContentConfig, StyleConfig
    from raydf.features import FeatureExtractor

    ex = FeatureExtractor(ContentConfig(), StyleConfig(config=style_config), device=device, precision=precision)
    dev = ex.device
    feats = ex(crops)  # warm-up (cuDNN autotune, allocator)
    _sync(dev)
    times, t_content, t_style = [], [], []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        f = ex(crops)
        _sync(dev)
        times.append(time.perf_counter() - t0)
        t_content.append(f.t_content)
        t_style.append(f.t_style)
        if time.perf_counter() - start > budget_s:
            break
    b = crops.shape[0]
    row = {
        "precision": precision,
        "videos/s": b / float(np.median(times)),
        "s/batch": float(np.median(times)),
        "content s/batch": float(np.median(t_content)),
        "style s/batch": float(np.median(t_style)),
        "reps": len(times),
    }
    del ex
    if dev.type == "cuda":
        row["peak GPU GiB"] = torch.cuda.max_memory_allocated(dev) / 2**30
        torch.cuda.empty_cache()
    return row, feats


def cpu_cost_per_video(t: int) -> tuple[float | None, str]:
    """Decode+sample and face-crop CPU-seconds per video, measured on a generated 640x480 clip."""
    try:
        import av  # noqa: F401  (read_video probes every file with PyAV)
        import cv2

        from raydf.config import FaceConfig
        from raydf.faces import FaceCropper
        from raydf.video import read_video
    except ImportError as exc:  # PyAV, facenet-pytorch or OpenCV missing on this machine
        return None, f"not measured ({exc})"
    try:  # a real face when scikit-image is there (MTCNN's cost depends on what it finds)
        from skimage import data

        face = cv2.resize(data.astronaut(), (320, 320), interpolation=cv2.INTER_AREA)
    except ImportError:
        face = _crops(1, 1, 320)[0, 0]
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "clip.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 480))
        for i in range(100):  # 4 s, the face drifting
            canvas = np.full((480, 640, 3), 90, np.uint8)
            x = 100 + i
            canvas[80:400, x : x + 320] = face[..., ::-1]
            writer.write(canvas)
        writer.release()
        cropper = FaceCropper(FaceConfig())
        cropper(read_video(path, t).frames)  # warm-up
        c0 = time.process_time()
        cropper(read_video(path, t).frames)
        return time.process_time() - c0, f"measured here (640x480 mp4v clip, T={t}, OpenCV + MTCNN)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t, batch = args.frames, args.batch
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        precisions = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        card = torch.cuda.get_device_name(device)
    else:
        from raydf.features import native_bf16

        # fp16 convolutions on CPU are not a deployment target; emulated bf16 (AVX2) is 7-68x slower than fp32
        precisions = ["fp32"] + (["bf16"] if native_bf16() else [])
        card = "cpu"
    crops = _crops(batch, t, 256)
    rows, feats = [], {}
    t_start = time.perf_counter()
    for p in precisions:
        row, f = measure_precision(p, crops, device=str(device), style_config=args.style_config, reps=args.reps,
                                   budget_s=args.budget_s / len(precisions))  # fmt: skip
        feats[p] = f
        rows.append(row)
    ref = feats["fp32"]
    for row in rows:
        f = feats[row["precision"]]
        row["content rel err"] = _rel(f.content, ref.content)
        row["style rel err"] = _rel(f.style, ref.style)
        row["within tolerance"] = max(row["content rel err"], row["style rel err"]) <= TOLERANCE[row["precision"]]
        row["tolerance"] = TOLERANCE[row["precision"]]
    cpu_s, how = (args.cpu_s_per_video, "given") if args.cpu_s_per_video is not None else cpu_cost_per_video(t)
    best = max((r for r in rows if r["within tolerance"]), key=lambda r: r["videos/s"])
    for row in rows:
        row["CPU cores to feed"] = None if cpu_s is None else row["videos/s"] * cpu_s
    return {
        "device": card,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "style_config": args.style_config,
        "T": t,
        "videos_per_batch": batch,
        "rows": rows,
        "best": best["precision"],
        "best_videos_per_s": best["videos/s"],
        "cpu_s_per_video_decode_faces": cpu_s,
        "cpu_cost_source": how,
        "wall_s": time.perf_counter() - t_start,
    }


def format_table(res: dict[str, Any]) -> str:
    cols = ["precision", "videos/s", "s/batch", "content s/batch", "style s/batch", "content rel err", "style rel err",
            "tolerance", "within tolerance", "CPU cores to feed"]  # fmt: skip
    if any("peak GPU GiB" in r for r in res["rows"]):
        cols.append("peak GPU GiB")

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}"
        return "n/a" if v is None else str(v)

    lines = [
        f"feature stage on {res['device']} (torch {res['torch']}, python {res['python']}): {res['style_config']} + slow_r50, "
        f"T={res['T']}, {res['videos_per_batch']} videos per call",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in res["rows"]]
    lines.append(
        f"best within tolerance: {res['best']} at {res['best_videos_per_s']:.2f} videos/s; decode+faces "
        f"{fmt(res['cpu_s_per_video_decode_faces'])} CPU-s/video ({res['cpu_cost_source']}); wall {res['wall_s']:.0f} s"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--frames", type=int, default=32, help="T, frames per video")
    p.add_argument("--batch", type=int, default=8, help="videos per feature call")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=200.0, help="time budget for the timed reps, all precisions")
    p.add_argument("--style-config", default="psp_ir_se50")
    p.add_argument("--cpu-s-per-video", type=float, default=None, help="decode+faces CPU-s per video (else measured)")
    p.add_argument("--dry-run", action="store_true", help="tiny run: psp_tiny, T=16, 2 videos, 1 rep")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.dry_run:
        args.frames, args.batch, args.reps, args.style_config = 16, 2, 1, "psp_tiny"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(format_table(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return 0 if all(r["within tolerance"] for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
