"""Feature precision follows what the CPU really has, is part of the feature identity, and travels
with the model (issue: integrity). CI machines differ (AVX-512 with native bf16, AVX2 only), so the
resolution is pinned here for every capability rather than measured on whatever runs the tests."""

from __future__ import annotations

import pytest
import torch

from raydf.bundle import ModelBundle
from raydf.config import ExtractConfig, FusionConfig, load_config
from raydf.extract import store_config
from raydf.features import BF16_EMULATED_SLOWDOWN, native_bf16, resolve_cpu_precision

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl"}
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX = AVX512 | {"amx_bf16", "amx_tile"}


@pytest.mark.parametrize(
    ("flags", "requested", "expected", "warns"),
    [
        (AVX2, "fp32", "fp32", False),
        (AVX2, "auto", "fp32", False),  # emulated bf16 is 7-68x slower: auto never picks it
        (AVX2, "bf16", "bf16", True),  # an explicit request is honoured, with the measured slowdown
        (AVX512, "auto", "fp32", False),  # AVX-512 without avx512_bf16 still emulates bf16
        (AVX512, "bf16", "bf16", True),
        (AVX512_BF16, "auto", "bf16", False),
        (AVX512_BF16, "bf16", "bf16", False),
        (AVX512_BF16, "fp32", "fp32", False),  # the default: the same features on every machine
        (AMX, "auto", "bf16", False),
    ],
)
def test_cpu_precision_resolution_for_every_capability(flags, requested, expected, warns):
    precision, warning = resolve_cpu_precision(requested, flags)
    assert precision == expected
    assert bool(warning) == warns
    if warns:
        assert "7x" in warning and "68x" in warning and "fp32" in warning
    assert native_bf16(flags) == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_the_default_is_fp32_and_the_slowdown_is_the_measured_one():
    assert ExtractConfig().cpu_precision == "fp32"
    assert BF16_EMULATED_SLOWDOWN == {"pSp (style)": 7.0, "slow_r50 (content)": 68.0}


def test_precision_and_decoder_are_part_of_the_feature_identity():
    base = store_config(load_config(ExtractConfig, {"style": {"config": "psp_tiny"}}), precision="fp32", decoder="pyav=1")
    bf16 = store_config(load_config(ExtractConfig, {"style": {"config": "psp_tiny"}}), precision="bf16", decoder="pyav=1")
    other = store_config(load_config(ExtractConfig, {"style": {"config": "psp_tiny"}}), precision="fp32", decoder="pyav=2")
    assert any(d.startswith("feature_config.precision") for d in base.diff(bf16))
    assert any(d.startswith("feature_config.decoder") for d in base.diff(other))
    faces = store_config(load_config(ExtractConfig, {"style": {"config": "psp_tiny"}, "faces": {"max_tracks": 2}}), precision="fp32", decoder="pyav=1")
    assert any("faces.max_tracks" in d for d in base.diff(faces))
    # actor counts and resources do not change the numbers
    actors = store_config(load_config(ExtractConfig, {"style": {"config": "psp_tiny"}, "crop_actors": [1, 4]}), precision="fp32", decoder="pyav=1")
    assert base.diff(actors) == []


def _bundle(precision: str) -> ModelBundle:
    from raydf.models.fusion import FusionClassifier

    torch.manual_seed(0)
    fusion = load_config(FusionConfig, {"gru_hidden": 16, "d_model": 16, "transformer_heads": 2, "ff_dim": 16, "fc_hidden": 8, "transformer_layers": 1})
    cfg = load_config(ExtractConfig, {"style": {"config": "psp_tiny"}, "video": {"num_frames": 16}})
    return ModelBundle(FusionClassifier(fusion).state_dict(), fusion, store_config(cfg, precision=precision, decoder="pyav=test"))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_bundle_records_the_precision_and_detect_rebuilds_at_it(tmp_path, precision):
    from raydf.detect import Detector

    path = _bundle(precision).save(tmp_path / "raydf_model.pt")
    bundle = ModelBundle.load(path)
    assert bundle.precision == precision
    cfg = bundle.extract_config()
    assert (cfg.half_precision, cfg.cpu_precision) == ((True, "fp32") if precision == "fp16" else (False, precision))
    det = Detector(bundle, str(path), device="cpu", load_extractors=False)
    if precision == "fp16":  # this machine cannot: it says so in every answer
        assert det.precision == "fp32" and any("fp16" in n for n in det.notes)
    else:
        assert det.precision == precision
