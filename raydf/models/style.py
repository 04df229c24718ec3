"""pSp ``GradualStyleEncoder`` (IR-SE-50) written for raydf, with a registry of configurations.

Parameter names and shapes of the faithful configuration ``psp_ir_se50`` are
exactly those of the official ``psp_ffhq_encode.pt`` encoder (Richardson et al.,
"Encoding in Style", CVPR 2021), so that checkpoint loads with ``strict=True``.
Smaller registered configurations run the same code with narrower/shallower
settings (tests and the demo on CPU).

``codes(x)`` gives all 18 style codes (B, 18, 512) like pSp; ``forward(x)``
gives one level (the report uses level 9) and computes only what that level
needs: the body, the FPN path up to its pyramid level, and that single head.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from raydf.models.weights import WeightsError, load_checkpoint, random_provenance, seeded

log = logging.getLogger(__name__)

__all__ = [
    "PSPEncoderSpec",
    "STYLE_CONFIGS",
    "register_style_config",
    "GradualStyleEncoder",
    "load_style_encoder",
    "style_input",
]


@dataclass(frozen=True)
class PSPEncoderSpec:
    """Sizes of a GradualStyleEncoder. Defaults are the official IR-SE-50 (pSp ``encoder_type=GradualStyleEncoder``)."""

    name: str = "psp_ir_se50"
    stem_channels: int = 64
    block_channels: tuple[int, int, int, int] = (64, 128, 256, 512)  # IR-50 stages
    block_units: tuple[int, int, int, int] = (3, 4, 14, 3)  # IR-50: 24 bottlenecks
    se_reduction: int = 16
    head_channels: int = 512  # GradualStyleBlock conv width
    style_dim: int = 512  # W+ width of StyleGAN2
    n_styles: int = 18  # 1024px StyleGAN2: 18 style inputs
    coarse_ind: int = 3  # styles [0, 3) from the 16x16 map
    middle_ind: int = 7  # styles [3, 7) from 32x32, [7, 18) from 64x64
    input_size: int = 256  # pSp resizes faces to 256x256


STYLE_CONFIGS: dict[str, PSPEncoderSpec] = {}


def register_style_config(spec: PSPEncoderSpec) -> PSPEncoderSpec:
    """Add a configuration to the registry (name must be new)."""
    if spec.name in STYLE_CONFIGS:
        raise ValueError(f"style config {spec.name!r} is already registered")
    STYLE_CONFIGS[spec.name] = spec
    return spec


register_style_config(PSPEncoderSpec())
# Same code, ~1/60 of the FLOPs: for CPU tests and the demo. Keeps the (B, 18, 512) output.
register_style_config(
    PSPEncoderSpec(
        name="psp_tiny",
        stem_channels=16,
        block_channels=(16, 32, 64, 128),
        block_units=(1, 1, 2, 1),
        se_reduction=8,
        head_channels=64,
    )
)


class SEModule(nn.Module):
    """Squeeze-and-excitation gate (ReLU, sigmoid), no biases, as in IR-SE."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # (B, C, 1, 1)
        return x * w


class Subsample(nn.Module):
    """``x[..., ::stride, ::stride]``: what IR-SE's ``MaxPool2d(1, stride)`` shortcut computes, without a copy."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class BottleneckIRSE(nn.Module):
    """IR-SE bottleneck: BN-conv-PReLU-conv(stride)-BN-SE plus a (projected) shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int, se_reduction: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = Subsample(stride)  # pSp's MaxPool2d(1, stride); no parameters
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, se_reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """StyleGAN2's equalised-learning-rate linear layer (weights scaled by 1/sqrt(in) at run time)."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """Map a (B, C, S, S) pyramid level to one style code: log2(S) stride-2 convs, then EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int, style_dim: int) -> None:
        super().__init__()
        self.out_c = out_c
        num_pools = int(math.log2(spatial))
        layers: list[nn.Module] = [nn.Conv2d(in_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            layers += [nn.Conv2d(out_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, style_dim, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)  # (B, C, S, S) -> (B, out_c, 1, 1)
        return self.linear(x.reshape(-1, self.out_c))  # (B, style_dim)


class GradualStyleEncoder(nn.Module):
    """pSp encoder: IR-SE body, FPN (c3 -> p2 -> p1), 18 GradualStyleBlocks.

    Attributes:
        spec: the configuration.
        level: the style level returned by :meth:`forward`.
        latent_avg: (n_styles, style_dim) average latent added to the codes (zeros when absent).
        provenance: ``sha256:<hex>`` of the weights file or ``random:<seed>:<config>``.
    """

    def __init__(self, spec: PSPEncoderSpec | str = "psp_ir_se50", *, level: int = 9) -> None:
        super().__init__()
        spec = STYLE_CONFIGS[spec] if isinstance(spec, str) else spec
        if not 0 <= level < spec.n_styles:
            raise ValueError(f"style level must be in [0, {spec.n_styles}), got {level}")
        self.spec = spec
        self.level = level
        self.provenance = "unset"
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, spec.stem_channels, (3, 3), 1, 1, bias=False),
            nn.BatchNorm2d(spec.stem_channels),
            nn.PReLU(spec.stem_channels),
        )
        units: list[nn.Module] = []
        in_c = spec.stem_channels
        for depth, n in zip(spec.block_channels, spec.block_units):
            units.append(BottleneckIRSE(in_c, depth, 2, spec.se_reduction))
            units += [BottleneckIRSE(depth, depth, 1, spec.se_reduction) for _ in range(n - 1)]
            in_c = depth
        self.body = nn.Sequential(*units)
        # Taps of the feature pyramid: the ends of stages 2, 3 and 4 (indices 6, 20, 23 in IR-50).
        ends = [sum(spec.block_units[: i + 1]) - 1 for i in range(4)]
        self._c1, self._c2, self._c3 = ends[1], ends[2], ends[3]
        top = spec.block_channels[3]
        s3 = spec.input_size // 16  # c3 resolution (16 for 256 input)
        self.styles = nn.ModuleList()
        for i in range(spec.n_styles):
            spatial = s3 if i < spec.coarse_ind else (2 * s3 if i < spec.middle_ind else 4 * s3)
            self.styles.append(GradualStyleBlock(top, spec.head_channels, spatial, spec.style_dim))
        self.latlayer1 = nn.Conv2d(spec.block_channels[2], top, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(spec.block_channels[1], top, kernel_size=1, stride=1, padding=0)
        # Not part of the official encoder state dict (it lives beside it in the checkpoint).
        self.register_buffer("latent_avg", torch.zeros(spec.n_styles, spec.style_dim), persistent=False)
        self.has_latent_avg = False

    @staticmethod
    def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Bilinear with align_corners=True, as pSp does, so odd sizes also line up.
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y

    def _pyramid(self, x: torch.Tensor, depth: int) -> list[torch.Tensor]:
        """Body + FPN. ``depth`` 1 -> [c3]; 2 -> [c3, p2]; 3 -> [c3, p2, p1]."""
        x = self.input_layer(x)  # (B, 3, 256, 256) -> (B, 64, 256, 256)
        c1 = c2 = c3 = None
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self._c1:
                c1 = x  # (B, 128, 64, 64)
            elif i == self._c2:
                c2 = x  # (B, 256, 32, 32)
            elif i == self._c3:
                c3 = x  # (B, 512, 16, 16)
        maps = [c3]
        if depth >= 2:
            p2 = self._upsample_add(c3, self.latlayer1(c2))  # (B, 512, 32, 32)
            maps.append(p2)
            if depth >= 3:
                maps.append(self._upsample_add(p2, self.latlayer2(c1)))  # (B, 512, 64, 64)
        return maps

    def _group(self, i: int) -> int:
        return 0 if i < self.spec.coarse_ind else (1 if i < self.spec.middle_ind else 2)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """All style codes: (B, 3, 256, 256) in [-1, 1] -> (B, 18, 512), ``latent_avg`` added."""
        maps = self._pyramid(x, 3)
        out = torch.stack([head(maps[self._group(i)]) for i, head in enumerate(self.styles)], dim=1)  # (B, 18, 512)
        return out + self.latent_avg.to(out.dtype)

    @torch.no_grad()
    def fold_batchnorm(self) -> GradualStyleEncoder:
        """Fold every BatchNorm that follows a conv into that conv (inference only; in place).

        The stem's, each bottleneck's second conv's and each projected shortcut's BatchNorm
        become conv biases (same outputs up to float rounding, ~28 fewer passes over the
        activations). The BatchNorm *before* each bottleneck's first conv stays: with zero
        padding it cannot be folded exactly. Call after loading weights, in eval mode.
        """
        if self.training:
            raise RuntimeError("fold_batchnorm() is for inference: call .eval() first")
        self.input_layer[0] = fuse_conv_bn_eval(self.input_layer[0], self.input_layer[1])
        self.input_layer[1] = nn.Identity()
        for unit in self.body:
            res = unit.res_layer
            res[3] = fuse_conv_bn_eval(res[3], res[4])  # conv(stride) -> BN
            res[4] = nn.Identity()
            if isinstance(unit.shortcut_layer, nn.Sequential):
                unit.shortcut_layer[0] = fuse_conv_bn_eval(unit.shortcut_layer[0], unit.shortcut_layer[1])
                unit.shortcut_layer[1] = nn.Identity()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The configured level only: (B, 3, 256, 256) in [-1, 1] -> (B, 512); equals ``codes(x)[:, level]``."""
        g = self._group(self.level)
        maps = self._pyramid(x, g + 1)
        code = self.styles[self.level](maps[g])  # (B, 512)
        return code + self.latent_avg[self.level].to(code.dtype)


def style_input(faces: torch.Tensor, *, mean: float = 0.5, std: float = 0.5, size: int = 256) -> torch.Tensor:
    """uint8 face crops (N, H, W, 3) -> normalised float (N, 3, size, size) in [-1, 1] (report: N(.5, .5))."""
    x = faces.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W) in [0, 1]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.sub_(mean).div_(std)


def load_style_encoder(
    weights: str | None,
    config: str = "psp_ir_se50",
    *,
    level: int = 9,
    seed: int = 0,
) -> GradualStyleEncoder:
    """Build the style encoder and load its weights (eval mode, CPU).

    Args:
        weights: path or fsspec URI of the official ``psp_ffhq_encode.pt`` (a dict whose
            ``state_dict`` holds ``encoder.*`` and ``decoder.*`` keys, plus ``latent_avg``),
            or of a bare encoder state dict. ``None``: seeded random init, with a loud warning.
        config: a registered configuration (``STYLE_CONFIGS``).
        level: the style level :meth:`GradualStyleEncoder.forward` returns.
        seed: seed of the random initialisation when ``weights`` is None.

    Raises:
        WeightsError: the file is missing/corrupt or its keys/shapes do not match (strict loading).
        KeyError: unknown configuration.
    """
    if config not in STYLE_CONFIGS:
        raise KeyError(f"unknown style config {config!r}; registered: {sorted(STYLE_CONFIGS)}")
    if weights is None:
        with seeded(seed):
            model = GradualStyleEncoder(config, level=level)
        model.provenance = random_provenance(seed, config, "style (pSp)")
        return model.eval()

    model = GradualStyleEncoder(config, level=level)
    ckpt, provenance = load_checkpoint(weights)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{weights}: expected a dict checkpoint, got {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{weights} does not fit style config {config!r}: {exc}") from exc
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None:
        latent_avg = torch.as_tensor(latent_avg, dtype=torch.float32).reshape(-1, model.spec.style_dim)
        if latent_avg.shape[0] == 1:  # learn_in_w checkpoints store one (512,) vector
            latent_avg = latent_avg.expand(model.spec.n_styles, -1)
        if latent_avg.shape != model.latent_avg.shape:
            raise WeightsError(f"{weights}: latent_avg has shape {tuple(latent_avg.shape)}, expected {tuple(model.latent_avg.shape)}")
        model.latent_avg.copy_(latent_avg)
        model.has_latent_avg = True
    model.provenance = provenance
    log.info("loaded style encoder %s from %s (%s)", config, weights, provenance)
    return model.eval()
