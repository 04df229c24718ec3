"""Content and style extractors: the official checkpoint contracts, the pSp reference case, the registry."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from raydf.models.content import build_slow_r50, content_clips, load_content_model
from raydf.models.style import STYLE_CONFIGS, GradualStyleEncoder, load_style_encoder, style_input
from raydf.models.weights import RandomInitWarning, WeightsError
from tests.conftest import DATA


def contract_keys() -> list[tuple[str, tuple[int, ...]]]:
    keys = []
    for line in (DATA / "psp_encoder_keys.tsv").read_text().splitlines():
        name, shape = line.split("\t")
        keys.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return keys


def reference_state(keys) -> dict[str, torch.Tensor]:
    """The weights of PSP-REFERENCE.md, built by its recipe."""
    names = {n for n, _ in keys}
    state = {}
    for name, shape in keys:
        g = torch.Generator().manual_seed(zlib.crc32(("raydf:" + name).encode()))
        if name.endswith("num_batches_tracked"):
            t = torch.tensor(0, dtype=torch.long)
        elif name.endswith("running_var"):
            t = 0.75 + 0.5 * torch.rand(shape, generator=g)
        elif name.endswith("running_mean"):
            t = 0.05 * torch.randn(shape, generator=g)
        elif name.endswith("bias"):
            t = 0.02 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            if name[: -len("weight")] + "running_mean" in names:
                t = 1 + 0.1 * torch.randn(shape, generator=g)
            else:
                t = 0.2 + 0.05 * torch.randn(shape, generator=g)
        elif name.endswith("linear.weight"):
            t = torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / float(np.prod(shape[1:])) ** 0.5
        state[name] = t
    return state


@pytest.fixture(scope="module")
def psp_checkpoint(tmp_path_factory) -> Path:
    """The reference weights saved in the official checkpoint format, with decoder keys to ignore."""
    state = reference_state(contract_keys())
    state["decoder.conv1.conv.weight"] = torch.zeros(1, 512, 512, 3, 3)
    state["decoder.style.1.weight"] = torch.zeros(512, 512)
    latent_avg = 0.05 * torch.randn((18, 512), generator=torch.Generator().manual_seed(2024))
    path = tmp_path_factory.mktemp("psp") / "psp_ffhq_encode.pt"
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": {"encoder_type": "GradualStyleEncoder", "n_styles": 18}}, path)
    return path


def reference_input() -> torch.Tensor:
    return torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(99)) * 2 - 1


def test_faithful_encoder_state_dict_matches_contract_key_for_key():
    ours = [(k, tuple(v.shape)) for k, v in GradualStyleEncoder("psp_ir_se50").state_dict().items()]
    contract = [(k[len("encoder.") :], s) for k, s in contract_keys()]
    assert ours == contract


def test_official_checkpoint_reproduces_reference_codes(psp_checkpoint):
    enc = load_style_encoder(str(psp_checkpoint))
    assert enc.has_latent_avg and enc.provenance.startswith("sha256:")
    with torch.inference_mode():
        codes = enc.codes(reference_input())
        level9 = enc(reference_input())
    ref = np.load(DATA / "psp_reference_codes.npy")
    assert codes.shape == (1, 18, 512)
    assert np.abs(codes.numpy() - ref).max() < 1e-4
    torch.testing.assert_close(level9, codes[:, 9], rtol=0, atol=1e-5)


def test_checkpoint_with_wrong_keys_is_refused(tmp_path, psp_checkpoint):
    ckpt = torch.load(psp_checkpoint, weights_only=True)
    del ckpt["state_dict"]["encoder.styles.9.linear.bias"]
    path = tmp_path / "broken.pt"
    torch.save(ckpt, path)
    with pytest.raises(WeightsError, match="broken.pt"):
        load_style_encoder(str(path))


@pytest.mark.parametrize("loader", [load_style_encoder, load_content_model])
def test_missing_weights_file_is_a_clear_error(tmp_path, loader):
    with pytest.raises(WeightsError, match="absent.pt"):
        loader(str(tmp_path / "absent.pt"))


@pytest.mark.parametrize("loader", [load_style_encoder, load_content_model])
def test_corrupt_weights_file_is_a_clear_error(tmp_path, loader):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="corrupt.pt"):
        loader(str(path))


def test_random_init_is_seeded_warned_and_recorded():
    with pytest.warns(RandomInitWarning):
        a = load_style_encoder(None, "psp_tiny", seed=3)
    b = load_style_encoder(None, "psp_tiny", seed=3)
    c = load_style_encoder(None, "psp_tiny", seed=4)
    assert a.provenance == "random:3:psp_tiny"
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)
    assert not torch.equal(a.styles[9].linear.weight, c.styles[9].linear.weight)


def test_random_init_does_not_disturb_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_style_encoder(None, "psp_tiny", seed=9)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("config", sorted(STYLE_CONFIGS))
def test_every_registered_style_config_gives_18_codes_and_its_level(config):
    enc = load_style_encoder(None, config, level=9, seed=0)
    batch = 1 if config == "psp_ir_se50" else 2  # the faithful one costs ~1 s per face here
    x = torch.rand(batch, 3, 256, 256) * 2 - 1
    with torch.inference_mode():
        codes = enc.codes(x)
        level = enc(x)
    assert codes.shape == (batch, 18, 512)
    torch.testing.assert_close(level, codes[:, 9], rtol=0, atol=1e-5)


def test_style_level_path_skips_other_heads():
    enc = load_style_encoder(None, "psp_tiny", level=1, seed=0)  # a coarse level: no FPN needed
    called = []
    for i, head in enumerate(enc.styles):
        head.register_forward_hook(lambda *_, i=i: called.append(i))
    with torch.inference_mode():
        enc(torch.zeros(1, 3, 256, 256))
    assert called == [1]


def test_style_input_normalises_to_minus_one_one():
    faces = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(256 * 256 * 3 // 2).reshape(1, 256, 256, 3)
    x = style_input(faces)
    assert x.shape == (1, 3, 256, 256) and x.min() == -1 and x.max() == 1


@pytest.fixture(scope="module")
def slow_r50_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(5)
    full = build_slow_r50().eval()
    path = tmp_path_factory.mktemp("slow") / "SLOW_8x8_R50.pyth"
    torch.save({"model_state": full.state_dict(), "epoch": 196, "cfg": "MODEL: {ARCH: slow}"}, path)
    return path, full


def test_official_slow_r50_checkpoint_gives_pytorchvideo_features(slow_r50_checkpoint):
    path, full = slow_r50_checkpoint
    model = load_content_model(str(path))
    assert model.provenance.startswith("sha256:")
    clips = torch.randn(2, 3, 16, 112, 112)
    with torch.inference_mode():
        ours = model(clips)
        x = clips
        for block in full.blocks[:5]:
            x = block(x)
        theirs = x.mean(dim=(2, 3, 4))
    assert ours.shape == (2, 2048)
    torch.testing.assert_close(ours, theirs)


def test_content_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "resnet.pyth"
    torch.save({"model_state": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)
    with pytest.raises(WeightsError, match="resnet.pyth"):
        load_content_model(str(path))


@pytest.mark.parametrize("t,k", [(32, 2), (64, 4), (16, 1), (8, 1)])
def test_content_clips_shapes(t, k):
    faces = torch.randint(0, 256, (3, t, 256, 256, 3), dtype=torch.uint8)
    clips = content_clips(faces)
    assert clips.shape == (3 * k, 3, 16, 112, 112)


def test_content_clips_use_kinetics_normalisation_and_keep_frame_order():
    t = 32
    faces = torch.arange(t, dtype=torch.uint8).mul(8).reshape(1, t, 1, 1, 1).expand(1, t, 256, 256, 3).contiguous()
    clips = content_clips(faces)  # (2, 3, 16, 112, 112)
    expected = (torch.arange(t).float() * 8 / 255 - 0.45) / 0.225
    torch.testing.assert_close(clips[:, 0, :, 0, 0].reshape(-1), expected, rtol=0, atol=1e-5)
