"""Content + style features of batches of face-crop videos (plain PyTorch, no Ray).

One object holds both extractors so a Ray actor, ``raydf detect`` and the
benchmarks all run the same code: uint8 crops in, float32 features out, under
``inference_mode``, channels-last, BatchNorm folded into the convs, half precision
(fp16 or bf16) when asked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from raydf.config import ContentConfig, StyleConfig
from raydf.models.content import content_clips, load_content_model, num_clips
from raydf.models.style import load_style_encoder, style_input

log = logging.getLogger(__name__)

__all__ = ["Features", "FeatureExtractor", "resolve_precision", "resolve_cpu_precision", "native_bf16", "BF16_EMULATED_SLOWDOWN"]

# Measured on an AVX2-only CPU (no avx512_bf16 / AMX), batch 4, 2 threads (benchmarks/RESULTS.md):
# bf16 is emulated there and slower than fp32 by these factors.
BF16_EMULATED_SLOWDOWN = {"pSp (style)": 7.0, "slow_r50 (content)": 68.0}


def native_bf16(cpu_flags: frozenset[str] | None = None) -> bool:
    """The CPU computes bf16 natively (``avx512_bf16`` or AMX ``amx_bf16`` in its flags)."""
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_cpu_precision(requested: str, cpu_flags: frozenset[str] | None = None) -> tuple[str, str]:
    """The CPU feature precision for a requested one, and a warning ("" when none).

    ``fp32`` stays fp32 (the default: the same features on every machine); ``auto`` is bf16 only
    where the CPU has native bf16, else fp32; an explicit ``bf16`` stays bf16 but warns with the
    measured slowdown where bf16 is emulated.
    """
    native = native_bf16(cpu_flags)
    if requested == "auto":
        return ("bf16" if native else "fp32"), ""
    if requested == "bf16" and not native:
        slow = ", ".join(f"{k} {v:.0f}x" for k, v in BF16_EMULATED_SLOWDOWN.items())
        return "bf16", (
            "cpu_precision=bf16 on a CPU without native bf16 (no avx512_bf16/AMX): bf16 is emulated here and "
            f"measured SLOWER than fp32 ({slow}); use cpu_precision: fp32 (or auto)"
        )
    return requested, ""


def resolve_precision(cfg, device: str | None = None) -> str:  # noqa: ANN001 - ExtractConfig
    """The precision feature actors use for ``cfg`` on ``device`` (default: CUDA when available).

    CUDA: fp16 when ``cfg.half_precision`` (V100 has no bf16), else fp32. CPU: :func:`resolve_cpu_precision`.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        return "fp16" if cfg.half_precision else "fp32"
    precision, warning = resolve_cpu_precision(cfg.cpu_precision)
    if warning:
        log.warning("%s", warning)
    return precision


@dataclass(frozen=True)
class Features:
    """Features of B videos."""

    content: np.ndarray  # (B, K, 2048) float32
    style: np.ndarray  # (B, T, 512) float32
    t_content: float  # seconds for the whole batch
    t_style: float


class FeatureExtractor:
    """uint8 face crops (B, T, S, S, 3) -> content (B, K, 2048) and style (B, T, 512).

    Args:
        content: content extractor settings (weights, seed, clip size, normalisation).
        style: style extractor settings (weights, registered config, level, normalisation).
        device: ``"cpu"``, ``"cuda"`` ... (default: CUDA when available).
        half: run in fp16 on CUDA (V100 has no bf16). Ignored on CPU.
        cpu_precision: ``"fp32"``, ``"bf16"`` or ``"auto"``, the precision on CPU (bf16 pays off only
            on CPUs with native bf16, avx512_bf16 / AMX: :func:`resolve_cpu_precision`).
        style_batch: faces per pSp forward call (bounds activation memory); default 8 on CPU
            (per-face cost is flat from 1 to 8 and rises beyond), 128 on GPU.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` weights and activations; overrides
            ``half``. Features stay within the tolerance tested in ``tests/test_benchmarks.py``.
    """

    PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    def __init__(
        self,
        content: ContentConfig | None = None,
        style: StyleConfig | None = None,
        *,
        device: str | None = None,
        half: bool = False,
        style_batch: int | None = None,
        precision: str | None = None,
        cpu_precision: str = "fp32",
    ) -> None:
        self.content_cfg = content or ContentConfig()
        self.style_cfg = style or StyleConfig()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision is None:
            precision = ("fp16" if half else "fp32") if self.device.type == "cuda" else resolve_cpu_precision(cpu_precision)[0]
        if precision not in self.PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(self.PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.dtype = self.PRECISIONS[precision]
        self.style_batch = style_batch or (128 if self.device.type == "cuda" else 8)
        c, s = self.content_cfg, self.style_cfg
        self.content_model = load_content_model(c.weights, seed=c.seed).fold_batchnorm()
        self.style_model = load_style_encoder(s.weights, s.config, level=s.level, seed=s.seed).fold_batchnorm()
        # Channels-last layouts let oneDNN (CPU) and cuDNN (GPU) pick their fastest conv kernels:
        # measured here, pSp 0.80 -> 0.91 and slow_r50 0.57 -> 0.74 of the matmul peak. Folding
        # the conv -> BatchNorm pairs (above) removes ~80 passes over the activations.
        self.content_model.to(self.device, dtype=self.dtype, memory_format=torch.channels_last_3d)
        self.style_model.to(self.device, dtype=self.dtype, memory_format=torch.channels_last)
        for m in (self.content_model, self.style_model):
            m.eval()
            m.requires_grad_(False)

    @property
    def content_provenance(self) -> str:
        return self.content_model.provenance

    @property
    def style_provenance(self) -> str:
        return self.style_model.provenance

    def num_clips(self, num_frames: int) -> int:
        return num_clips(num_frames, self.content_cfg.clip_len)

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> Features:
        """Features of B videos' crops (B, T, S, S, 3) uint8."""
        if crops.ndim != 5 or crops.dtype != np.uint8:
            raise ValueError(f"expected uint8 crops (B, T, S, S, 3), got {crops.dtype} {crops.shape}")
        b, t = crops.shape[:2]
        faces = torch.from_numpy(np.ascontiguousarray(crops))
        if self.device.type == "cuda":
            faces = faces.pin_memory().to(self.device, non_blocking=True)
        c, s = self.content_cfg, self.style_cfg

        t0 = time.perf_counter()
        clips = content_clips(faces, clip_len=c.clip_len, size=c.size, mean=c.mean, std=c.std)  # (B*K, 3, L, 112, 112)
        clips = clips.to(self.dtype).contiguous(memory_format=torch.channels_last_3d)
        content = self.content_model(clips)  # (B*K, 2048)
        content = content.float().reshape(b, -1, content.shape[-1]).cpu().numpy()  # (B, K, 2048)
        t1 = time.perf_counter()

        flat = faces.reshape(b * t, *faces.shape[2:])  # (B*T, S, S, 3)
        codes = []
        for start in range(0, b * t, self.style_batch):
            x = style_input(flat[start : start + self.style_batch], mean=s.mean, std=s.std)  # (n, 3, 256, 256)
            x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
            codes.append(self.style_model(x).float())  # (n, 512)
        style = torch.cat(codes).reshape(b, t, -1).cpu().numpy()  # (B, T, 512)
        t2 = time.perf_counter()
        return Features(content=content, style=style, t_content=t1 - t0, t_style=t2 - t1)
