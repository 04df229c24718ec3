"""Explanations of a verdict (raydf.explain): integrated gradients per frame, SmoothGrad heat maps.

Real components throughout: face crops cut from ``skimage.data.astronaut()`` under small
geometric/colour changes, the real FeatureExtractor (slow_r50 + psp_tiny, seeded random
init) for the features, and a FusionClassifier with fitted feature statistics.
"""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raydf.config import ContentConfig, FusionConfig, StyleConfig
from raydf.explain import clip_frame_weights, explain, frame_importance, heat_maps, overlay_png
from raydf.models.fusion import FusionClassifier

T, S = 20, 64  # 20 frames -> one 16-frame clip plus 4 frames no clip covers


def _crops(t: int, size: int) -> np.ndarray:
    """(t, size, size, 3) uint8: the astronaut's face, drifting, rotating and brightening a little."""
    from skimage.data import astronaut

    img = astronaut()
    out = []
    for i in range(t):
        m = cv2.getRotationMatrix2D((224.0 + i, 117.0), 2.0 * np.sin(i / 3), 1.0 + 0.01 * i)
        frame = cv2.warpAffine(img, m, (512, 512), borderMode=cv2.BORDER_REFLECT101)
        face = frame[52:182, 159:289].astype(np.float32) * (0.9 + 0.01 * i)
        out.append(cv2.resize(np.clip(face, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out)


@pytest.fixture(scope="module")
def extractor():
    from raydf.features import FeatureExtractor
    from raydf.models.weights import RandomInitWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        return FeatureExtractor(ContentConfig(), StyleConfig(config="psp_tiny"), device="cpu")


@pytest.fixture(scope="module")
def video(extractor):
    """Crops, real features and validity of one T-frame video (two frames without a face)."""
    crops = _crops(T, S)
    feats = extractor(crops[None])
    valid = np.ones(T, bool)
    valid[[3, 11]] = False
    return crops, feats.content[0], feats.style[0], valid


@pytest.fixture(scope="module")
def model(video):
    """A small fusion classifier whose standardisation is fitted to features like the video's."""
    _, content, style, valid = video
    torch.manual_seed(0)
    m = FusionClassifier(FusionConfig(gru_hidden=32, d_model=32, transformer_layers=1, transformer_heads=2, ff_dim=64, fc_hidden=16))
    # Statistics of a pretend training split: the video's own moments, shifted so the
    # baseline (the mean) is not the video itself.
    m.set_feature_stats(
        torch.from_numpy(content.mean(0) * 0.9), torch.from_numpy(content.std(0) + 1e-3 + 0.1 * np.abs(content.mean(0))),
        torch.from_numpy(style[valid].mean(0) * 0.9), torch.from_numpy(style[valid].std(0) + 1e-3),
    )  # fmt: skip
    return m.eval()


def test_frame_scores_sum_to_logit_minus_baseline_logit(model, video):
    _, content, style, valid = video
    fi = frame_importance(model, content, style, valid)
    change = fi.logit - fi.baseline_logit
    assert abs(change) > 1e-3  # the test would be empty if video and baseline scored alike
    assert abs(fi.completeness_gap) <= 1e-4 * max(1.0, abs(change))
    np.testing.assert_allclose(fi.scores, fi.style_scores + fi.content_scores, rtol=1e-6, atol=1e-7)
    # The logit is the model's own on the video.
    with torch.no_grad():
        logit = model(torch.from_numpy(content)[None], torch.from_numpy(style)[None], torch.from_numpy(valid)[None])[0]
    assert fi.logit == pytest.approx(float(logit), abs=1e-5)


def test_few_quadrature_steps_leave_a_larger_gap_than_many(model, video):
    _, content, style, valid = video
    gaps = [abs(frame_importance(model, content, style, valid, steps=n).completeness_gap) for n in (1, 32)]
    assert gaps[1] < gaps[0]


def test_frames_without_a_face_get_no_style_attribution_even_with_nan_codes(model, video):
    _, content, style, valid = video
    style = style.copy()
    style[~valid] = np.nan  # what a store might hold for a frame whose code the model never reads
    fi = frame_importance(model, content, style, valid)
    assert np.isfinite(fi.scores).all()
    assert (fi.style_scores[~valid] == 0).all() and (fi.style_scores[valid] != 0).any()
    assert fi.valid.tolist() == valid.tolist()
    # Frames 16..19 lie beyond the one 16-frame clip: no content attribution reaches them.
    assert (fi.content_scores[16:] == 0).all() and (fi.content_scores[:16] != 0).all()
    assert not set(fi.top_frames(T).tolist()) & {3, 11}


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 70), clip_len=st.integers(1, 20))
def test_clip_weights_follow_the_frames_each_clip_was_cut_from(t, clip_len):
    k = max(1, t // clip_len)
    w = clip_frame_weights(t, k, clip_len)
    assert w.shape == (k, t)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    if t >= clip_len:
        for i in range(k):
            assert (w[i, i * clip_len : (i + 1) * clip_len] == pytest.approx(1.0 / clip_len))
        assert (w[:, k * clip_len :] == 0).all()
    else:  # circular padding: frame j appears ceil/floor(clip_len / t) times in the one clip
        counts = np.bincount(np.arange(clip_len) % t, minlength=t)
        np.testing.assert_allclose(w[0], counts / clip_len, rtol=1e-6)


def test_explanation_shapes_ranges_and_json(model, extractor, video):
    crops, content, style, valid = video
    ex = explain(model, extractor, crops, content, style, valid, top_k=3, samples=2)
    assert ex.when.scores.shape == (T,) and ex.when.scores.dtype == np.float32
    assert ex.where.maps.shape == (3, S, S) and ex.where.maps.dtype == np.float32
    assert ex.where.frames.tolist() == ex.when.top_frames(3).tolist()
    assert valid[ex.where.frames].all()
    assert ex.where.maps.min() >= 0.0 and ex.where.maps.max() == pytest.approx(1.0)
    assert ex.probability == pytest.approx(1 / (1 + np.exp(-ex.logit)))
    d = json.loads(json.dumps(ex.to_dict(map_size=16)))
    assert np.asarray(d["where"]["maps"]).shape == (3, 16, 16)
    assert len(d["when"]["scores"]) == T and d["when"]["valid"] == valid.tolist()
    assert d["where"]["frames"] == ex.where.frames.tolist()


def test_the_same_inputs_give_the_same_explanation(model, extractor, video):
    crops, content, style, valid = video
    a = explain(model, extractor, crops, content, style, valid, top_k=2, samples=2, seed=5)
    b = explain(model, extractor, crops, content, style, valid, top_k=2, samples=2, seed=5)
    c = explain(model, extractor, crops, content, style, valid, top_k=2, samples=2, seed=6)
    assert a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(a.where.maps, b.where.maps)
    np.testing.assert_array_equal(a.when.scores, c.when.scores)  # the seed is SmoothGrad's only
    assert not np.array_equal(a.where.maps, c.where.maps)


def test_heat_maps_differentiate_the_extractors_own_style_codes(model, extractor, video):
    """The pixel path recomputes exactly the codes the extractor stored, so its gradient is that model's."""
    from raydf.explain import _style_codes

    crops, _, style, _ = video
    codes = _style_codes(extractor.style_model, extractor.style_cfg, torch.from_numpy(crops).float(), extractor.dtype, 8)
    np.testing.assert_allclose(codes.detach().numpy(), style, rtol=1e-4, atol=1e-5)


def test_plain_gradient_map_is_the_normalised_input_gradient(model, extractor, video):
    crops, content, style, valid = video
    hm = heat_maps(model, extractor, crops, content, style, valid, [5], samples=1, noise=0.0)
    assert hm.method == "gradient"
    # Finite differences along the gradient's own direction agree with its squared norm.
    from raydf.explain import _style_codes

    def logit(x):  # (S, S, 3) float 0..255 -> logit with frame 5's code from x
        code = _style_codes(extractor.style_model, extractor.style_cfg, x[None], extractor.dtype, 8)[0]
        s = torch.from_numpy(style).clone()
        s[5] = code
        return model(torch.from_numpy(content)[None], s[None], torch.from_numpy(valid)[None])[0]

    x = torch.from_numpy(crops[5]).double().float().requires_grad_(True)
    (g,) = torch.autograd.grad(logit(x * 1.0), x)
    saliency = g.abs().amax(-1)
    np.testing.assert_allclose(hm.maps[0], (saliency / saliency.max()).numpy(), rtol=1e-4, atol=1e-5)
    d = g / g.norm()
    with torch.no_grad():
        fd = (logit(x + 0.5 * d) - logit(x - 0.5 * d)) / 1.0
    assert float(fd) == pytest.approx(float(g.norm()), rel=0.05)


def test_a_frame_whose_code_the_model_ignores_gets_an_empty_map(model, extractor, video):
    crops, content, style, valid = video
    hm = heat_maps(model, extractor, crops, content, style, valid, [3, 4], samples=2)
    assert not valid[3] and valid[4]
    assert (hm.maps[0] == 0).all() and hm.maps[1].max() == pytest.approx(1.0)


def test_explaining_leaves_the_model_in_its_mode(model, extractor, video):
    crops, content, style, valid = video
    model.train()
    try:
        frame_importance(model, content, style, valid, steps=4)
        assert model.training
    finally:
        model.eval()


def test_overlay_png_is_the_crop_under_the_colour_map(video):
    crops, *_ = video
    hm = np.linspace(0, 1, 8 * 8, dtype=np.float32).reshape(8, 8)
    png = overlay_png(crops[0], hm)
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (S, S, 3)
    plain = cv2.imdecode(np.frombuffer(overlay_png(crops[0], hm, alpha=0.0), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(plain[..., ::-1], crops[0])
    assert overlay_png(crops[0], hm) == png


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c, ct, s, v: (c.astype(np.float32), ct, s, v), "uint8"),
        (lambda c, ct, s, v: (c, ct, s[:-1], v), "style"),
        (lambda c, ct, s, v: (c, np.concatenate([ct, ct]), s, v), "clips"),
    ],
)
def test_inputs_that_do_not_fit_are_refused(model, extractor, video, change, match):
    with pytest.raises(ValueError, match=match):
        explain(model, extractor, *change(*video))
    for frames in ([T], [-1], [2, 2]):
        with pytest.raises(ValueError, match="frames"):
            heat_maps(model, extractor, *video, frames)
    with pytest.raises(ValueError, match="method"):
        heat_maps(model, extractor, *video, [1], method="lime")


def test_neighbour_ig_totals_are_the_logit_change_from_the_neighbours(model, extractor, video):
    from raydf.explain import _PixelContext

    crops, content, style, valid = video
    frames = np.array([0, 4, 12])  # the first frame (one neighbour) and two next to faceless frames 3 and 11
    hm = heat_maps(model, extractor, crops, content, style, valid, frames, method="neighbour_ig", steps=16)
    assert hm.method == "neighbour_ig" and hm.maps.shape == (3, S, S)
    ctx = _PixelContext(model, extractor, crops, content, style, valid, frames)
    ref = ctx.neighbour_reference()
    # Frame 4's neighbours are 2 and 5 (3 has no face); frame 0 has only frame 1.
    np.testing.assert_allclose(ref[1].numpy(), (crops[2].astype(np.float32) + crops[5]) / 2 / 255, atol=1e-6)
    np.testing.assert_allclose(ref[0].numpy(), crops[1] / np.float32(255), atol=1e-6)
    with torch.no_grad():
        changes = [float(ctx.logits(ctx.x0[None])[0] - ctx.logits(torch.where(torch.arange(3)[:, None, None, None] == j, ref, ctx.x0)[None])[0])
                   for j in range(3)]  # fmt: skip
    np.testing.assert_allclose(hm.totals, changes, rtol=0.02, atol=1e-4)


def test_neighbour_ig_finds_nothing_in_a_still_video(model, extractor, video):
    crops, content, style, valid = video
    still = np.repeat(crops[:1], T, axis=0)
    hm = heat_maps(model, extractor, still, content, style, valid, [1, 7], method="neighbour_ig", steps=2)
    assert (hm.maps == 0).all() and np.allclose(hm.totals, 0)


# ---- sanity measurement (slow): do the maps point at the manipulated region? ---------------------------
@pytest.mark.slow
def test_sanity_measurement_on_generated_fakes(tmp_path):
    """benchmarks/explain.py on a small generated set: the region geometry is right and every number is measured.

    Positive control: the oracle map |fake - real| (the paired real cropped with the fake's
    windows) puts more of its mass inside the region derived from synth's metadata than a
    centred Gaussian and than a uniform map, so the measurement can see a map that points at
    the manipulation. The explanation's own numbers are reported in benchmarks/RESULTS.md.
    """
    from benchmarks import explain as bench
    from raydf.faces import FaceCropper
    from raydf.features import FeatureExtractor
    from raydf.models.weights import RandomInitWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        fx = FeatureExtractor(ContentConfig(), StyleConfig(config="psp_tiny"), device="cpu")
    cropper = FaceCropper()
    train = bench.prepare(tmp_path / "train", videos=2, seed=0, extractor=fx, cropper=cropper)
    test = bench.prepare(tmp_path / "heldout", videos=1, seed=1, extractor=fx, cropper=cropper)
    model = bench.train_model(train, epochs=4)
    rows = bench.measure(model, fx, test, top_k=2)
    assert sum(test.label) >= 1 and {r["method"] for r in rows} == set(bench.METHODS)
    assert len(rows) == 2 * len(bench.METHODS) * sum(test.label)
    for key in ("explanation", "blob", "blob_matched", "randomised", "uniform", "oracle"):
        vals = np.array([r[key] for r in rows])
        assert (np.isnan(vals) | ((vals >= 0) & (vals <= 1))).all(), key
    oracle, blob, uniform = (np.mean([r[k] for r in rows]) for k in ("oracle", "blob", "uniform"))
    assert oracle > blob > uniform
    s = bench.summarise(rows, bench.METHODS[0])
    assert s["frames"] == 2 * sum(test.label) and 0 <= s["explanation"] <= 1
