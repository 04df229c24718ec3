"""Content features: pytorchvideo ``slow_r50`` (3D ResNet-50), head removed, global average pool.

The report feeds 16-frame 112x112 face clips normalised with Kinetics
statistics (.45/.225) and pools the last stage to a 2048-d vector per clip.
pytorchvideo's default head (an (8, 7, 7) average pool) does not fit 112-px
clips, so the model here is ``blocks[:5]`` followed by a mean over T, H, W.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from raydf.models.weights import WeightsError, load_checkpoint, random_provenance, seeded

log = logging.getLogger(__name__)

__all__ = ["ContentEncoder", "build_slow_r50", "load_content_model", "content_clips", "num_clips"]

CONTENT_CONFIG = "slow_r50"


def build_slow_r50() -> nn.Module:
    """pytorchvideo's ``slow_r50`` architecture, randomly initialised (never downloads)."""
    from pytorchvideo.models.hub import slow_r50

    return slow_r50(pretrained=False)


class ContentEncoder(nn.Module):
    """``slow_r50`` trunk: normalised clips (B, 3, 16, 112, 112) -> (B, 2048).

    Attributes:
        provenance: ``sha256:<hex>`` of the weights file or ``random:<seed>:slow_r50``.
    """

    def __init__(self, full: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(full.blocks)[:5])  # stem + res2..res5; head (blocks[5]) dropped
        self.provenance = "unset"

    @torch.no_grad()
    def fold_batchnorm(self) -> ContentEncoder:
        """Fold every conv -> BatchNorm pair of the trunk into one conv (inference only; in place).

        Same outputs up to float rounding, 53 fewer passes over the activations. Call after
        loading weights, in eval mode.
        """
        if self.training:
            raise RuntimeError("fold_batchnorm() is for inference: call .eval() first")
        pairs = (("conv", "norm"), ("branch1_conv", "branch1_norm"), ("conv_a", "norm_a"), ("conv_b", "norm_b"), ("conv_c", "norm_c"))
        for module in self.modules():
            for conv_name, norm_name in pairs:
                conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
                if isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d):
                    setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                    setattr(module, norm_name, None)  # pytorchvideo skips a None norm
        return self

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips
        for block in self.blocks:
            x = block(x)  # ... -> (B, 2048, 16, 4, 4) after res5 at 16x112x112
        return x.mean(dim=(2, 3, 4))  # global average pool over T, H, W -> (B, 2048)


def load_content_model(weights: str | None, *, seed: int = 0) -> ContentEncoder:
    """Build the content encoder and load weights (eval mode, CPU).

    Args:
        weights: path or fsspec URI of the official ``SLOW_8x8_R50.pyth`` (a dict whose
            ``model_state`` holds the full model's state dict; a bare state dict is also
            accepted). Loaded strictly into the whole ``slow_r50`` before its head is
            dropped. ``None``: seeded random init, with a loud warning.
        seed: seed of the random initialisation when ``weights`` is None.

    Raises:
        WeightsError: missing/corrupt file, or keys/shapes that do not match.
    """
    if weights is None:
        with seeded(seed):
            full = build_slow_r50()
        model = ContentEncoder(full)
        model.provenance = random_provenance(seed, CONTENT_CONFIG, "content (slow_r50)")
        return model.eval()

    full = build_slow_r50()
    ckpt, provenance = load_checkpoint(weights)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{weights}: expected a dict checkpoint, got {type(ckpt).__name__}")
    state = ckpt.get("model_state", ckpt)
    try:
        full.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{weights} is not a slow_r50 checkpoint: {exc}") from exc
    model = ContentEncoder(full)
    model.provenance = provenance
    log.info("loaded content model from %s (%s)", weights, provenance)
    return model.eval()


def num_clips(num_frames: int, clip_len: int = 16) -> int:
    """K clips for T frames: T // clip_len (T=32 -> 2, T=64 -> 4); at least 1 (short T is padded)."""
    return max(1, num_frames // clip_len)


def content_clips(
    faces: torch.Tensor,
    *,
    clip_len: int = 16,
    size: int = 112,
    mean: float = 0.45,
    std: float = 0.225,
) -> torch.Tensor:
    """uint8 face crops of B videos (B, T, H, W, 3) -> normalised clips (B*K, 3, clip_len, size, size).

    Consecutive runs of ``clip_len`` sampled frames form a clip; frames beyond K*clip_len
    are dropped and T < clip_len is circularly padded. Kinetics normalisation (report: .45/.225).
    """
    b, t = faces.shape[:2]
    k = num_clips(t, clip_len)
    if t < clip_len:
        faces = faces[:, torch.arange(clip_len) % t]
    faces = faces[:, : k * clip_len]  # (B, K*L, H, W, 3)
    x = faces.reshape(b * k * clip_len, *faces.shape[2:]).permute(0, 3, 1, 2).float().div_(255.0)  # (B*K*L, 3, H, W)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.sub_(mean).div_(std)
    x = x.reshape(b * k, clip_len, 3, size, size).permute(0, 2, 1, 3, 4)  # (B*K, 3, L, size, size)
    return x.contiguous()
