"""Unit tests of the fusion classifier (plain PyTorch, small widths, CPU)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from raydf.config import FusionConfig
from raydf.models.fusion import FusionClassifier, count_parameters, valid_enough
from raydf.schema import CONTENT_DIM, STYLE_DIM

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box they spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = FusionConfig(gru_hidden=24, d_model=32, transformer_layers=2, transformer_heads=4, ff_dim=48, fc_hidden=16)


def _model(style_flow: bool = False, seed: int = 0, **kw) -> FusionClassifier:
    torch.manual_seed(seed)
    return FusionClassifier(dataclasses.replace(SMALL, style_flow=style_flow, **kw)).eval()


def _batch(b: int, t: int, k: int, seed: int = 0, p_valid: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    content = torch.rand(b, k, CONTENT_DIM, generator=g)  # non-negative, like pooled ReLU features
    style = torch.randn(b, t, STYLE_DIM, generator=g)
    valid = torch.rand(b, t, generator=g) < p_valid
    valid[:, 0] = True  # at least one face per video unless a test says otherwise
    return content, style, valid


@pytest.mark.parametrize("style_flow", [False, True])
@pytest.mark.parametrize(("t", "k"), [(32, 2), (64, 4), (16, 1), (5, 3), (1, 1)])
def test_any_t_and_k_gives_one_logit_per_video(t: int, k: int, style_flow: bool) -> None:
    model = _model(style_flow)
    content, style, valid = _batch(3, t, k)
    logits = model(content, style, valid)
    emb = model.embed(content, style, valid)
    assert logits.shape == (3,)
    assert emb.shape == (3, SMALL.d_model)
    assert model.attention_weights.shape == (3, k, t)
    assert torch.isfinite(logits).all()


def test_the_same_weights_serve_train_and_eval_lengths() -> None:
    model = _model()
    train = model(*_batch(2, 32, 2))
    evaluation = model(*_batch(2, 64, 4))
    assert train.shape == evaluation.shape == (2,)
    assert not torch.allclose(train, evaluation)  # different inputs, both accepted by one model


@pytest.mark.parametrize("style_flow", [False, True])
def test_style_values_at_masked_frames_do_not_change_the_output(style_flow: bool) -> None:
    model = _model(style_flow)
    content, style, valid = _batch(4, 32, 2, p_valid=0.5)
    assert (~valid).any()
    before = model(content, style, valid)
    weights = model.attention_weights
    changed = style.clone()
    changed[~valid] = torch.randn(int((~valid).sum()), STYLE_DIM) * 100.0
    changed[0, ~valid[0]] = float("nan")  # even NaN in a frame without a face stays out
    after = model(content, changed, valid)
    torch.testing.assert_close(after, before)
    assert torch.all(weights[~valid[:, None, :].expand_as(weights)] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 2))


@pytest.mark.parametrize("style_flow", [False, True])
def test_masked_frames_are_skipped_as_if_never_sampled(style_flow: bool) -> None:
    model = _model(style_flow)
    content, style, _ = _batch(1, 20, 2)
    valid = torch.ones(1, 20, dtype=torch.bool)
    valid[0, [3, 4, 11, 19]] = False
    masked = model(content, style, valid)
    dropped = model(content, style[:, valid[0]], None)  # the same video with those frames cut out
    torch.testing.assert_close(masked, dropped)


def test_style_matters_where_frames_are_valid() -> None:
    model = _model()
    content, style, valid = _batch(2, 32, 2)
    before = model(content, style, valid)
    changed = style.clone()
    changed[valid] += 3.0 * torch.randn(int(valid.sum()), STYLE_DIM)
    assert not torch.allclose(model(content, changed, valid), before)


@pytest.mark.parametrize("style_flow", [False, True])
def test_all_masked_video_gives_finite_output_and_gradients(style_flow: bool) -> None:
    model = _model(style_flow).train()
    content, style, valid = _batch(3, 32, 2)
    valid[1] = False
    logits = model(content, style, valid)
    assert torch.isfinite(logits).all()
    assert torch.all(model.attention_weights[1] == 0)
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("style_flow", [False, True])
def test_gradient_reaches_every_parameter(style_flow: bool) -> None:
    model = _model(style_flow, gru_layers=2).train()
    content, style, valid = _batch(4, 32, 2)
    label = torch.tensor([0.0, 1.0, 0.3, 1.0])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(content, style, valid), label)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_eval_is_deterministic_and_independent_of_the_batch() -> None:
    model = _model()
    content, style, valid = _batch(5, 32, 2)
    first = model(content, style, valid)
    second = model(content, style, valid)
    alone = model(content[2:3], style[2:3], valid[2:3])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[2:3])


def test_train_mode_uses_dropout() -> None:
    model = _model().train()
    content, style, valid = _batch(4, 32, 2)
    assert not torch.equal(model(content, style, valid), model(content, style, valid))


def test_style_flow_changes_the_model_input() -> None:
    content, style, valid = _batch(2, 32, 2)
    plain = _model(False, seed=1)(content, style, valid)
    flow = _model(True, seed=1)(content, style, valid)  # same weights, different GRU input
    assert not torch.allclose(plain, flow)


def test_style_flow_ignores_a_constant_style_offset() -> None:
    model = _model(True)
    content, style, valid = _batch(2, 32, 2)
    shifted = style + torch.randn(1, 1, STYLE_DIM)  # same offset on every frame: same first differences
    torch.testing.assert_close(model(content, shifted, valid), model(content, style, valid))


def test_wrong_shapes_are_rejected_with_the_shape_in_the_message() -> None:
    model = _model()
    content, style, valid = _batch(2, 32, 2)
    with pytest.raises(ValueError, match="512"):
        model(content, style[..., :100], valid)
    with pytest.raises(ValueError, match=r"\(2, 32\)"):
        model(content, style, valid[:, :10])


def test_default_config_builds_and_has_the_documented_size() -> None:
    model = FusionClassifier(FusionConfig()).eval()
    content, style, valid = _batch(2, 32, 2)
    assert model(content, style, valid).shape == (2,)
    assert count_parameters(model) == 2_336_001


def test_loss_goes_down_on_a_separable_toy_task() -> None:
    torch.manual_seed(0)
    model = FusionClassifier(dataclasses.replace(SMALL, dropout=0.0))
    content, style, valid = _batch(16, 8, 1, seed=3)
    label = (torch.arange(16) % 2).float()
    style = style * 0.1 + label[:, None, None] * torch.randn(16, 8, STYLE_DIM)  # fakes flicker in style
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(content, style, valid), label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_valid_enough_keeps_videos_with_enough_faces() -> None:
    valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(valid_enough(valid, 0.5), [True, True, False, False])
    np.testing.assert_array_equal(valid_enough(valid, 0.0), [True, True, True, True])
    np.testing.assert_array_equal(valid_enough(valid, 1.0), [True, False, False, False])
    as_tensor = valid_enough(torch.from_numpy(valid), 0.5)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="1.5"):
        valid_enough(valid, 1.5)
