"""``explain``: do the heat maps of :mod:`raydf.explain` point at the manipulated region?

A sanity measurement on the generated dataset (:mod:`raydf.synth`), where every frame of a fake
is manipulated inside a known soft ellipse over the face (``SynthConfig.mask_axes`` of the
ground-truth face box, rotated with the camera roll) and nowhere else:

1. Generate a training set (seed 0) and a held-out set (seed 1); sample T=32 frames, crop faces
   with the pipeline's MTCNN cropper (``raydf.faces.FaceCropper``, 20% margin, 256 px) and compute
   features with ``FeatureExtractor`` (slow_r50 + psp_tiny, seeded random init: the demo's setup).
2. Train a :class:`FusionClassifier` in-process on the training set with the demo's recipe
   (``raydf.demo.demo_train_config``: AdamW, cosine restarts, mixup; feature standardisation from
   the training split) and score the held-out set (ROC-AUC).
3. For each held-out fake, :func:`raydf.explain.explain` picks the ``top_k`` frames by integrated
   gradients and draws heat maps; the manipulated region of each of those frames is mapped into
   its crop (the crop window is :func:`raydf.faces.expand_box` of the detected box).
4. Score: the fraction of a heat map's mass inside the region, against

   * **a centred Gaussian blob** of the same total mass, sigma = S/4 (fixed; also reported with
     sigma matched to the map's own spread, ``E|p - c|^2 = 2 sigma^2``);
   * **the same method on a randomised model** (the model-parameter randomisation test of
     Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): the fusion classifier's
     learned weights re-drawn (seeded), its feature standardisation kept, on the same frames;
   * for context, a uniform map (= the region's area fraction) and a positive control, the
     oracle map ``|fake - real|`` (the paired real video cropped with the fake's windows).

``python -m benchmarks.explain [--quick] [--workdir DIR]`` writes ``results/explain.json``;
``python -m benchmarks --render-only`` puts it in RESULTS.md once ``explain`` is in the runner's
suite list. Arrays (crops, features) are cached in the work dir, so reruns skip extraction.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SuiteResult, dump_json

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
NUM_FRAMES = 32  # report: T=32
TOP_K = 4
BLOB_SIGMA = 0.25  # fixed blob: sigma = S / 4
METHODS = ("smoothgrad", "neighbour_ig")


@dataclass(frozen=True)
class Split:
    """One generated split through crops and features (arrays over its N videos)."""

    records: list[dict[str, Any]]  # synth metadata, one per video
    crops: np.ndarray  # (N, T, S, S, 3) uint8
    valid: np.ndarray  # (N, T) bool
    boxes: np.ndarray  # (N, T, 4) float32 detected boxes (frame px)
    indices: np.ndarray  # (N, T) int32 sampled frame indices
    content: np.ndarray  # (N, K, 2048) float32
    style: np.ndarray  # (N, T, 512) float32
    label: np.ndarray  # (N,) int
    paired_real: np.ndarray  # (N, T, S, S, 3) uint8: the real video cropped with this video's windows


def prepare(root: Path, *, videos: int, seed: int, extractor, cropper) -> Split:  # noqa: ANN001
    """Generate (or reuse) a dataset under ``root`` and its crops/features (cached in ``root/arrays.npz``)."""
    from raydf.faces import _resize, expand_box
    from raydf.synth import make_dataset, read_metadata
    from raydf.video import read_video

    cache = root / "arrays.npz"
    if not (root / "metadata.jsonl").exists():
        make_dataset(root, videos=videos, seed=seed, overwrite=True)
    records = read_metadata(root)
    if cache.exists():
        with np.load(cache) as z:
            return Split(records, **{k: z[k] for k in z.files})
    margin, size = cropper.cfg.margin, cropper.cfg.crop_size
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("crops", "valid", "boxes", "indices", "content", "style", "label", "paired_real")}
    by_id = {r["video_id"]: r for r in records}
    for r in records:
        video = read_video(str(root / r["file"]), NUM_FRAMES)
        faces = cropper(video.frames)
        feats = extractor(faces.crops[None])
        real = read_video(str(root / by_id[r["source_id"]]["file"]), NUM_FRAMES).stack()  # (T, H, W, 3)
        paired = np.empty_like(faces.crops)
        for t in range(NUM_FRAMES):
            if faces.valid[t]:
                l, tp, rr, b = expand_box(faces.boxes[t], margin, r["width"], r["height"])
                paired[t] = _resize(real[t, tp:b, l:rr], size)
            else:
                paired[t] = faces.crops[t]
        for k, v in (("crops", faces.crops), ("valid", faces.valid), ("boxes", faces.boxes), ("indices", video.indices),
                     ("content", feats.content[0]), ("style", feats.style[0]), ("label", np.int64(r["label"])),
                     ("paired_real", paired)):  # fmt: skip
            cols[k].append(v)
    arrays = {k: np.stack(v) for k, v in cols.items()}
    np.savez(cache, **arrays)
    return Split(records, **arrays)


def train_model(split: Split, *, epochs: int | None = None):  # noqa: ANN201 - FusionClassifier
    """A FusionClassifier trained in-process with the demo's recipe on ``split``."""
    import torch

    from raydf.demo import demo_train_config
    from raydf.models.fusion import FusionClassifier
    from raydf.recipe import make_optimizer, make_scheduler, seed_everything
    from raydf.train import B_CONTENT, B_LABEL, B_STYLE, B_VALID, run_epoch

    cfg = demo_train_config()
    seed_everything(cfg.seed)
    c, s = torch.from_numpy(split.content), torch.from_numpy(split.style)
    v, y = torch.from_numpy(split.valid), torch.from_numpy(split.label).float()
    model = FusionClassifier(cfg.model)
    model.set_feature_stats(*feature_stats(split))
    opt = make_optimizer(model, cfg)
    sch = make_scheduler(opt, cfg)
    rng = np.random.default_rng(cfg.seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs or cfg.max_epochs):
        order = torch.from_numpy(rng.permutation(len(y)))
        batches = [{B_CONTENT: c[i], B_STYLE: s[i], B_VALID: v[i], B_LABEL: y[i]} for i in order.split(cfg.batch_size)]
        run_epoch(model, batches, loss_fn=loss_fn, optimizer=opt, cfg=cfg, rng=rng)
        sch.step()
    return model.eval()


def feature_stats(split: Split):  # noqa: ANN201 - four tensors
    """Per-dimension mean/std of content and valid-frame style, as ``raydf.train.feature_stats`` computes them."""
    import torch

    out = []
    for x in (split.content.reshape(-1, split.content.shape[-1]), split.style[split.valid]):
        x = x.astype(np.float64)
        mean, var = x.mean(0), x.var(0)
        floor = (1e-3 * np.median(np.sqrt(var))) ** 2 + 1e-30
        out += [torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var + floor)).float()]
    return out


def randomised(model):  # noqa: ANN001, ANN201
    """The model with its learned weights re-drawn (seeded) and its feature standardisation kept."""
    import torch

    from raydf.models.fusion import FusionClassifier

    torch.manual_seed(12345)
    other = FusionClassifier(model.cfg)
    for name in ("content_mean", "content_std", "style_mean", "style_std"):
        getattr(other, name).copy_(getattr(model, name))
    return other.eval()


def region_masks(record: dict[str, Any], indices: np.ndarray, boxes: np.ndarray, valid: np.ndarray, *,
                 crop_size: int, margin: float, mask_axes: tuple[float, float]) -> np.ndarray:  # fmt: skip
    """(T, S, S) bool: crop pixels inside the manipulated ellipse of each sampled frame.

    The ellipse is synth's: centred on the ground-truth face box of that frame, semi-axes
    ``mask_axes`` x (box w, h), rotated by the camera roll; its soft edge ends at radius 1, so
    ``r < 1`` is every pixel the manipulation touched. Crop pixel centres map to frame pixels
    through the crop window ``expand_box(detected box)``. Frames without a face: all False.
    """
    from raydf.faces import expand_box
    from raydf.synth import Motion

    motion = Motion(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["motion"].items()})
    roll = motion.at(np.asarray(indices, np.float64) / record["fps"])["roll_deg"]  # (T,)
    out = np.zeros((len(indices), crop_size, crop_size), bool)
    centres = np.arange(crop_size) + 0.5
    for t, i in enumerate(indices):
        if not valid[t]:
            continue
        l, tp, r, b = expand_box(boxes[t], margin, record["width"], record["height"])
        x1, y1, x2, y2 = record["boxes"][i]
        xs, ys = np.meshgrid(centres * (r - l) / crop_size + l - 0.5, centres * (b - tp) / crop_size + tp - 0.5)
        dx, dy = xs - (x1 + x2) / 2, ys - (y1 + y2) / 2
        a = math.radians(roll[t])
        u = (math.cos(a) * dx + math.sin(a) * dy) / (mask_axes[0] * (x2 - x1))
        w = (-math.sin(a) * dx + math.cos(a) * dy) / (mask_axes[1] * (y2 - y1))
        out[t] = u * u + w * w < 1.0
    return out


def centred_gaussian(size: int, sigma: float) -> np.ndarray:
    """(S, S) float64 isotropic Gaussian at the crop centre, total mass 1."""
    c = np.arange(size) + 0.5 - size / 2
    g = np.exp(-(c[None, :] ** 2 + c[:, None] ** 2) / (2.0 * sigma * sigma))
    return g / g.sum()


def matched_sigma(h: np.ndarray) -> float:
    """Sigma of the centred isotropic Gaussian with the same mean squared distance from the centre as ``h``."""
    size = h.shape[0]
    c = np.arange(size) + 0.5 - size / 2
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    return math.sqrt(float((h * r2).sum() / h.sum()) / 2.0)


def mass_inside(h: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the (non-negative) heat map's mass inside ``mask``; NaN for an all-zero map."""
    total = float(h.sum())
    return float(h[mask].sum() / total) if total > 0 else float("nan")


def measure(model, extractor, split: Split, *, methods=METHODS, top_k: int = TOP_K) -> list[dict[str, Any]]:  # noqa: ANN001
    """Per explained frame of every fake: in-region mass of each method (trained, randomised), the blobs, the oracle."""
    from raydf.explain import explain, heat_maps
    from raydf.synth import SynthConfig

    rand = randomised(model)
    size = split.crops.shape[2]
    fixed_blob = centred_gaussian(size, BLOB_SIGMA * size)
    rows = []
    for n, rec in enumerate(split.records):
        if rec["label"] != 1:
            continue
        args = (split.crops[n], split.content[n], split.style[n], split.valid[n])
        masks = region_masks(rec, split.indices[n], split.boxes[n], split.valid[n], crop_size=size, margin=0.2,
                             mask_axes=SynthConfig().mask_axes)  # fmt: skip
        oracle = np.abs(split.crops[n].astype(np.float32) - split.paired_real[n].astype(np.float32)).sum(-1)  # (T, S, S)
        for method in methods:
            ex = explain(model, extractor, *args, top_k=top_k, method=method)
            frames = ex.where.frames
            other = heat_maps(rand, extractor, *args, frames, method=method)
            for j, t in enumerate(frames):
                m = masks[t]
                h = ex.where.maps[j].astype(np.float64)
                rows.append({
                    "video": rec["video_id"], "family": rec["family"], "frame": int(t), "method": method,
                    "p_fake": ex.probability, "explanation": mass_inside(h, m),
                    "blob": mass_inside(fixed_blob, m),
                    "blob_matched": mass_inside(centred_gaussian(size, matched_sigma(h)), m) if h.sum() > 0 else float("nan"),
                    "randomised": mass_inside(other.maps[j].astype(np.float64), m),
                    "uniform": float(m.mean()), "oracle": mass_inside(oracle[t], m),
                })  # fmt: skip
    return rows


def cost(model, extractor, split: Split, *, reps: int = 2) -> list[dict[str, Any]]:  # noqa: ANN001
    """CPU-seconds of one ``explain`` call (first fake of ``split``) per method, and the faithful pSp's estimate.

    Measured with the process's CPU clock (all threads); the psp_ir_se50 figure multiplies the
    pSp passes a call makes (``top_k * samples`` or ``top_k * steps`` faces) by one face's
    forward+backward through the faithful encoder, measured here at batch 4.
    """
    import torch

    from raydf.explain import PIXEL_IG_STEPS, SMOOTHGRAD_SAMPLES, explain
    from raydf.models.style import load_style_encoder

    n = int(np.flatnonzero(split.label == 1)[0])
    args = (split.crops[n], split.content[n], split.style[n], split.valid[n])
    enc = load_style_encoder(None, "psp_ir_se50").fold_batchnorm().to(memory_format=torch.channels_last)
    enc.requires_grad_(False)
    x = torch.randn(4, 3, 256, 256).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    t0 = time.process_time()
    enc(x).sum().backward()
    face = (time.process_time() - t0) / 4
    rows = []
    for method, passes in (("smoothgrad", TOP_K * SMOOTHGRAD_SAMPLES), ("neighbour_ig", TOP_K * PIXEL_IG_STEPS)):
        times = []
        for _ in range(reps):
            t0 = time.process_time()
            explain(model, extractor, *args, top_k=TOP_K, method=method)
            times.append(time.process_time() - t0)
        rows.append({"method": method, "CPU-s per video (psp_tiny)": round(min(times), 2), "pSp passes": passes,
                     "psp_ir_se50 CPU-s per face fwd+bwd": round(face, 2),
                     "estimated CPU-s per video (psp_ir_se50)": round(passes * face, 1)})  # fmt: skip
    return rows


def summarise(rows: list[dict[str, Any]], method: str, family: str | None = None) -> dict[str, Any]:
    sel = [r for r in rows if r["method"] == method and (family is None or r["family"] == family)]
    keys = ("explanation", "blob", "randomised", "blob_matched", "uniform", "oracle")
    out: dict[str, Any] = {"method": method, "fakes": family or "all", "frames": len(sel)}
    for k in keys:
        vals = np.asarray([r[k] for r in sel], np.float64)
        out[k] = round(float(np.nanmean(vals)), 3) if np.isfinite(vals).any() else float("nan")
    expl, blob, rnd = (np.asarray([r[k] for r in sel]) for k in ("explanation", "blob", "randomised"))
    ok = np.isfinite(expl) & np.isfinite(rnd)
    out["frames beating blob"] = round(float(np.mean(expl[ok] > blob[ok])), 3) if ok.any() else float("nan")
    out["frames beating randomised"] = round(float(np.mean(expl[ok] > rnd[ok])), 3) if ok.any() else float("nan")
    out["sign test p (vs randomised)"] = sign_test(expl[ok], rnd[ok])
    return out


def sign_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired sign test of ``a > b`` over frames (ties dropped); NaN without pairs."""
    from scipy.stats import binomtest

    wins, losses = int(np.sum(a > b)), int(np.sum(a < b))
    return round(float(binomtest(wins, wins + losses).pvalue), 3) if wins + losses else float("nan")


def run(quick: bool = False, workdir: str | None = None, *, style_weights: str | None = None,
        content_weights: str | None = None) -> SuiteResult:  # fmt: skip
    """The suite: train on one generated seed, explain the fakes of another, score the maps.

    With ``style_weights`` (the official pSp FFHQ encoder) the faithful ``psp_ir_se50`` runs
    instead of ``psp_tiny``; ``content_weights`` loads slow_r50's Kinetics weights. Without them
    both are the seeded random init the demo uses.
    """
    import torch
    from sklearn.metrics import roc_auc_score

    from raydf.config import ContentConfig, StyleConfig
    from raydf.faces import FaceCropper
    from raydf.features import FeatureExtractor

    t0 = time.perf_counter()
    pretrained = style_weights is not None or content_weights is not None
    work = Path(workdir or "explain-bench") / (("explain-quick" if quick else "explain") + ("-pretrained" if pretrained else ""))
    train_videos, test_videos = (8, 4) if quick else (16, 8)
    style_cfg = StyleConfig(weights=style_weights) if style_weights else StyleConfig(config="psp_tiny")
    extractor = FeatureExtractor(ContentConfig(weights=content_weights), style_cfg, device="cpu")
    cropper = FaceCropper()
    train = prepare(work / "train", videos=train_videos, seed=0, extractor=extractor, cropper=cropper)
    test = prepare(work / "heldout", videos=test_videos, seed=1, extractor=extractor, cropper=cropper)
    t_prep = time.perf_counter() - t0
    model = train_model(train)
    with torch.no_grad():
        logits = model(torch.from_numpy(test.content), torch.from_numpy(test.style), torch.from_numpy(test.valid))
    auc = float(roc_auc_score(test.label, logits.numpy()))
    t1 = time.perf_counter()
    rows = measure(model, extractor, test)
    t_explain = time.perf_counter() - t1
    costs = cost(model, extractor, test)

    res = SuiteResult("explain")
    summary = [summarise(rows, m, f) for m in METHODS for f in (None, "blend", "flicker")]
    for m in METHODS:
        s = summarise(rows, m)
        mean = {k: float(np.nanmean([r[k] for r in rows if r["method"] == m])) for k in ("explanation", "blob", "randomised")}
        fakes = int(sum(test.label))
        res.ratio(f"{m}: in-region mass, explanation / centred Gaussian (sigma S/4)", mean["explanation"] / mean["blob"], 1.0,
                  detail=f"{mean['explanation']:.3f} vs {mean['blob']:.3f}; {s['frames beating blob']:.0%} of {s['frames']} "
                         f"frames of {fakes} held-out fakes beat it")  # fmt: skip
        res.ratio(f"{m}: in-region mass, explanation / randomised model", mean["explanation"] / mean["randomised"], 1.0,
                  detail=f"{mean['explanation']:.3f} vs {mean['randomised']:.3f}; {s['frames beating randomised']:.0%} of "
                         f"{s['frames']} frames beat it (sign test p={s['sign test p (vs randomised)']:.2f})")  # fmt: skip
    res.tables["in-region heat-map mass (held-out fakes, top-4 frames each)"] = summary
    res.tables["cost of one explanation (T=32, top-4 frames, 2 cores)"] = costs
    res.config = {"train_videos": train_videos, "heldout_videos": test_videos, "T": NUM_FRAMES, "top_k": TOP_K,
                  "style": f"psp_ir_se50 ({style_weights})" if style_weights else "psp_tiny (random init)",
                  "content": f"slow_r50 ({content_weights})" if content_weights else "slow_r50 (random init)", "heldout_auc": round(auc, 3),
                  "seconds": {"prepare": round(t_prep, 1), "explain": round(t_explain, 1)}, "rows": rows}  # fmt: skip
    res.notes.append(f"Held-out ROC-AUC of the trained model: {auc:.3f} ({len(test.label)} videos, seed 1; trained on seed 0).")
    res.notes.append(f"Explaining {sum(1 for r in rows if r['method'] == METHODS[0]) // TOP_K or 0} fakes took {t_explain:.0f} s "
                     f"with both methods on both models (psp_tiny, 2 cores).")  # fmt: skip
    res.wall_s = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.explain", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 training and 4 held-out pairs instead of 16 and 8")
    p.add_argument("--workdir", default="explain-bench", help="scratch folder (videos, cached arrays)")
    p.add_argument("--style-weights", default=None, help="psp_ffhq_encode.pt path/URI (default: psp_tiny, random init)")
    p.add_argument("--content-weights", default=None, help="SLOW_8x8_R50.pyth path/URI (default: random init)")
    p.add_argument("--out", default=str(HERE / "results" / "explain.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = run(quick=args.quick, workdir=args.workdir, style_weights=args.style_weights, content_weights=args.content_weights).to_dict()
    out["mode"] = "quick" if args.quick else "full"
    dump_json(out, args.out)
    for r in out["ratios"]:
        print(f"{r['name']}: {r['value']:.3f} ({r['detail']})")
    for rows in out["tables"].values():
        for row in rows:
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
