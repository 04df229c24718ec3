"""``raydf detect``: one clip scored by a trained model through the extraction's own per-video path.

:class:`Detector` rebuilds the extractors a model was trained on (the same weights, checked
by sha256, or the same seeded random init; the same precision where the device allows),
runs :func:`raydf.extract.extract_one` -- the pipeline's two stages -- and applies the fusion
classifier to every face track. A video's probability is the maximum over its tracks
(DFDC's rule: a video is fake if any face in it is), so its score equals the one
evaluation logged for the same file. The service (:mod:`raydf.serve`) runs the same two
halves, :meth:`Detector.crop` and :meth:`Detector.score`, in two deployments.

The result is one documented JSON object (:class:`DetectResult`, ``raydf detect --json``
and ``POST /v1/detect``)::

    {
      "schema": "raydf.detect/1",
      "video": "clip.mp4",
      "fake_probability": 0.87,          # the video's score: max over face tracks
      "label": "fake",                   # "fake" when fake_probability >= threshold
      "threshold": 0.5,
      "aggregation": "max",
      "model": {"source": "runs:/.../bundle", "provenance": {"content": "...", "style": "..."},
                "precision": "fp32", "warning": ""},
      "faces": [{"track_id": 0, "fake_probability": 0.87, "track_score": 0.12,
                 "boxes": [[x1, y1, x2, y2] | null, ...],   # per sampled frame, full-resolution pixels
                 "valid": [true, ...], "probs": [0.99, ...]}],
      "frames": [{"index": 0, "time_s": 0.0, "face_valid": true, "evidence": 0.03}, ...],
      "notes": ["..."],                  # plain-words remarks (few faces, precision, tiny frames)
      "timings": {"load_s": .., "read_s": .., "decode_s": .., "faces_s": .., "content_s": ..,
                  "style_s": .., "classify_s": .., "total_s": ..},
      "explanation": null | {...}        # raydf.explain, with --explain
    }

``frames[i].evidence`` is the deciding track's per-frame attribution of the fake logit
(integrated gradients over the style and content sequences, :mod:`raydf.explain`; logit units,
positive pushes towards fake), null where the frame has no face. ``explanation`` (with
``--explain``) explains the deciding track (``track_id``): ``frame_importance`` (per sampled
frame, null where no face), ``heatmaps`` (for the most important frames: ``frame``, ``time_s``,
``box``, ``score``, the face ``crop`` as a PNG data URL and the 32x32 ``heatmap`` in [0, 1]),
and the full :meth:`raydf.explain.Explanation.to_dict` -- ``when`` (integrated gradients: method,
baseline, completeness gap, style and content parts) and ``where`` (SmoothGrad settings, maps,
``overlays``: each map over its crop as a PNG data URL).
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from raydf import schema as S
from raydf.bundle import BundleError, ExtractorMismatch, ModelBundle, resolve_model
from raydf.explain import explain as explain_verdict
from raydf.explain import frame_importance, overlay_png
from raydf.extract import CROPS, CropStage, ExtractError, FeatureStage, crop_one, expected_provenance, features_one
from raydf.video import SampledVideo, VideoDecodeError

log = logging.getLogger(__name__)

__all__ = [
    "DETECT_SCHEMA",
    "TrackResult",
    "FrameResult",
    "ModelInfo",
    "DetectResult",
    "Detector",
    "detect",
    "log_explanations",
    "BundleError",
]

DETECT_SCHEMA = "raydf.detect/1"


@dataclass(frozen=True)
class TrackResult:
    """One face track of the clip."""

    track_id: int
    fake_probability: float
    track_score: float  # presence x mean box area (the main-face rule)
    boxes: list[list[float] | None]  # per sampled frame; None where this face was not found
    valid: list[bool]
    probs: list[float]  # MTCNN probability per frame (0 where not found)


@dataclass(frozen=True)
class FrameResult:
    """One sampled frame."""

    index: int  # frame index in the decoded stream
    time_s: float  # from the stream's pts
    face_valid: bool  # the deciding track has a face here
    evidence: float | None  # importance of this frame to the fake logit (None where no face)


@dataclass(frozen=True)
class ModelInfo:
    source: str
    provenance: dict[str, str]
    precision: str  # precision of the model's training features
    warning: str  # plain words when scores of real videos are not meaningful; "" otherwise


@dataclass(frozen=True)
class DetectResult:
    """The answer of ``raydf detect`` and of the service (see the module docstring)."""

    video: str
    fake_probability: float
    label: str
    threshold: float
    model: ModelInfo
    faces: list[TrackResult]
    frames: list[FrameResult]
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    aggregation: str = "max"
    explanation: dict[str, Any] | None = None
    schema: str = DETECT_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for a person."""
        valid = np.mean(self.faces[0].valid) if self.faces else 0.0
        return (
            f"{self.video}: {self.label.upper()}  P(fake) = {self.fake_probability:.4f}  "
            f"({len(self.faces)} face track{'s' if len(self.faces) != 1 else ''}, faces in {valid:.0%} of frames, "
            f"{self.timings.get('total_s', 0.0):.1f}s)"
        )


class Detector:
    """A model and its extractors, loaded once; scores clips.

    Args:
        bundle: the trained model.
        source: where it came from (shown in results).
        style_weights, content_weights: the extractor weight files the model's provenance names
            (not needed for a random-init model).
        device: where the features are computed (default: CUDA when available).
        load_extractors: load the feature extractors now (else on first use, after the clip decoded).

    Raises:
        ExtractorMismatch: the weights are missing or differ from the model's (sha256).
    """

    def __init__(
        self,
        bundle: ModelBundle,
        source: str,
        *,
        style_weights: str | None = None,
        content_weights: str | None = None,
        device: str | None = None,
        load_extractors: bool = True,
    ) -> None:
        t0 = time.perf_counter()
        self.bundle, self.source = bundle, source
        cfg = bundle.extract_config(style_weights=style_weights, content_weights=content_weights)
        prov = expected_provenance(cfg)
        if prov != bundle.store.provenance:
            raise ExtractorMismatch(f"extractor weights differ from the model's: trained on {bundle.store.provenance}, given {prov}")
        self.cfg, self.provenance, self.device = cfg, prov, device
        self.crop_stage = CropStage(replace(cfg, crop_threads=0))  # alone in the process: all cores
        self.precision = bundle.precision
        self.notes: list[str] = []
        if bundle.precision == "fp16" and not _on_cuda(device):
            self.precision = "fp32"
            self.notes.append("the model's features were computed in fp16 on a GPU; this machine computes fp32, so the probability may differ slightly from the one evaluation logged")
        elif bundle.precision == "bf16" and not _on_cuda(device):
            from raydf.features import native_bf16

            if not native_bf16():
                self.notes.append("the model's features are bf16 and this CPU has no native bf16: they are computed emulated (slow)")
        self._feature_stage: FeatureStage | None = None
        self.model = bundle.model()
        if load_extractors:
            _ = self.feature_stage
        self.load_s = time.perf_counter() - t0

    @property
    def feature_stage(self) -> FeatureStage:
        """The content and style extractors, loaded on first use (a bad input fails before they load)."""
        if self._feature_stage is None:
            self._feature_stage = FeatureStage(self.cfg, self.provenance, self.device, precision=self.precision)
        return self._feature_stage

    @classmethod
    def from_model(cls, model: str | None = None, *, tracking_uri: str | None = None, **kwargs: Any) -> Detector:
        """Resolve a model (path, ``runs:/``, ``models:/``, or the newest trained one) and load it."""
        t0 = time.perf_counter()
        bundle, source = resolve_model(model, tracking_uri)
        det = cls(bundle, source, **kwargs)
        det.load_s = time.perf_counter() - t0  # model resolution included
        return det

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            source=self.source,
            provenance=self.bundle.store.provenance.to_dict(),
            precision=self.bundle.precision,
            warning=self.bundle.warning,
        )

    def crop(self, video: str | bytes, name: str | None = None) -> list[dict[str, Any]]:
        """CPU half: decode, sample and crop every face track (crop rows). Raises VideoDecodeError, ExtractError."""
        return crop_one(self.crop_stage, video, name)

    def crop_frames(self, frames: list[np.ndarray], times: np.ndarray, name: str, *, first_index: int = 0) -> list[dict[str, Any]]:
        """CPU half for frames a client streams (RGB uint8, e.g. decoded JPEGs): the crop stage without decoding.

        Raises:
            ExtractError: face detection failed.
        """
        t = len(frames)
        video = SampledVideo(frames=tuple(frames), indices=np.arange(first_index, first_index + t, dtype=np.int32),
                             times=np.asarray(times, np.float64), num_frames=t, fps=0.0, backend="stream", rotation=0)  # fmt: skip
        row = {S.VIDEO_ID: name, S.URI: name, S.LABEL: None, S.DATASET: "", S.SPLIT: "", S.SOURCE_ID: "", S.METHOD: "",
               S.COMPRESSION: "", S.META: "{}"}  # fmt: skip
        rows = self.crop_stage.crop_video(row, video)
        if rows[0][S.STATUS] != S.STATUS_OK:
            raise ExtractError(rows[0][S.ERROR])
        return rows

    def features(self, crop_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Feature half: content and style features of every track (feature rows). Raises ExtractError."""
        return features_one(self.feature_stage, crop_rows)

    def classify(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """(n_tracks,) fake probabilities of feature rows."""
        import torch

        with torch.inference_mode():
            content = torch.from_numpy(np.stack([np.asarray(r[S.CONTENT], np.float32) for r in rows]))  # (n, K, 2048)
            style = torch.from_numpy(np.stack([np.asarray(r[S.STYLE], np.float32) for r in rows]))  # (n, T, 512)
            valid = torch.from_numpy(np.stack([np.asarray(r[S.FACE_VALID], bool) for r in rows]))  # (n, T)
            return torch.sigmoid(self.model(content, style, valid)).numpy().astype(np.float64)

    def score(
        self,
        rows: list[dict[str, Any]],
        name: str,
        *,
        timings: dict[str, float] | None = None,
        explain: bool = False,
        crop_rows: list[dict[str, Any]] | None = None,
    ) -> DetectResult:
        """Classify feature rows of one clip into a :class:`DetectResult`.

        ``frames[i].evidence`` is always the deciding track's integrated-gradients attribution per
        frame (cheap: the fusion model only). With ``explain`` (and the clip's ``crop_rows``, which
        hold the face crops) the result also carries SmoothGrad heat maps on the crops of the most
        important frames (:func:`raydf.explain.explain`).
        """
        t0 = time.perf_counter()
        probs = self.classify(rows)
        t_cls = time.perf_counter() - t0
        best = int(np.argmax(probs))
        prob = float(probs[best])
        deciding = rows[best]
        when = frame_importance(self.model, np.asarray(deciding[S.CONTENT], np.float32), np.asarray(deciding[S.STYLE], np.float32),
                                np.asarray(deciding[S.FACE_VALID], bool), clip_len=self.cfg.content.clip_len)  # fmt: skip
        evidence = when.scores
        faces = [
            TrackResult(
                track_id=int(r[S.TRACK_ID]),
                fake_probability=float(p),
                track_score=float(r.get(S.TRACK_SCORE) or 0.0),
                boxes=[[round(float(v), 2) for v in b] if ok else None for b, ok in zip(np.asarray(r[S.FACE_BOXES]).reshape(-1, 4), r[S.FACE_VALID])],
                valid=[bool(v) for v in r[S.FACE_VALID]],
                probs=[round(float(v), 6) for v in r[S.FACE_PROBS]],
            )
            for r, p in zip(rows, probs)
        ]
        times = np.asarray(deciding.get(S.FRAME_TIMES) if deciding.get(S.FRAME_TIMES) is not None else np.zeros(len(deciding[S.FACE_VALID])))
        frames = [
            FrameResult(index=int(i), time_s=round(float(t), 4), face_valid=bool(v), evidence=(round(float(e), 6) if v else None))
            for i, t, v, e in zip(deciding[S.FRAME_INDICES], times, deciding[S.FACE_VALID], evidence)
        ]
        notes = list(self.notes)
        valid_frac = float(np.mean(deciding[S.FACE_VALID]))
        if valid_frac < self.bundle.fusion_config.min_valid_fraction:
            notes.append(f"a face was found in only {valid_frac:.0%} of the sampled frames; the score is less reliable")
        for r in rows:
            if r.get(S.NOTE):
                notes.append(r[S.NOTE])
        if self.bundle.warning:
            notes.append(self.bundle.warning)
        explanation = None
        if explain:
            if crop_rows is None:
                raise ValueError("an explanation needs the clip's crop rows (the face crops)")
            explanation = self.explain(deciding, next(r for r in crop_rows if r[S.TRACK_ID] == deciding[S.TRACK_ID]))
        main = rows[0]
        stage = {
            "read_s": float(main.get(S.T_READ) or 0.0),
            "decode_s": float(main.get(S.T_DECODE) or 0.0),
            "faces_s": float(main.get(S.T_FACES) or 0.0),
            "content_s": float(sum(r.get(S.T_CONTENT) or 0.0 for r in rows)),
            "style_s": float(sum(r.get(S.T_STYLE) or 0.0 for r in rows)),
            "classify_s": t_cls,
        }
        return DetectResult(
            video=name,
            fake_probability=prob,
            label="fake" if prob >= self.bundle.threshold else "real",
            threshold=self.bundle.threshold,
            model=self.model_info,
            faces=faces,
            frames=frames,
            timings={**stage, **(timings or {})},
            notes=list(dict.fromkeys(notes)),
            explanation=explanation,
        )

    def explain(self, row: dict[str, Any], crop_row: dict[str, Any]) -> dict[str, Any]:
        """*When* and *where* for one track (see the module docstring for the shape).

        :meth:`raydf.explain.Explanation.to_dict` (``when``, ``where``; ``where.overlays``: each heat
        map over its crop as a PNG ``data:`` URL) plus what the web page draws: ``frame_importance``
        per sampled frame (null where no face) and ``heatmaps`` (frame, time, box, the crop as a PNG
        ``data:`` URL and the 32x32 map in [0, 1]).
        """
        size = self.cfg.faces.crop_size
        crops = np.frombuffer(crop_row[CROPS], np.uint8).reshape(-1, size, size, 3)  # (T, S, S, 3)
        valid = np.asarray(row[S.FACE_VALID], bool)
        ex = explain_verdict(self.model, self.feature_stage.extractor, crops, np.asarray(row[S.CONTENT], np.float32),
                             np.asarray(row[S.STYLE], np.float32), valid)  # fmt: skip
        out = ex.to_dict()
        out["where"]["overlays"] = [_png_url(overlay_png(crops[f], m)) for f, m in zip(ex.where.frames, ex.where.maps)]
        times = row.get(S.FRAME_TIMES)
        boxes = np.asarray(row[S.FACE_BOXES]).reshape(-1, 4)
        out.update(
            method="when: integrated gradients over the style and content sequences; where: SmoothGrad through the style encoder",
            track_id=int(row[S.TRACK_ID]),
            frame_importance=[round(float(v), 6) if ok else None for v, ok in zip(ex.when.scores, valid)],
            heatmaps=[
                {
                    "frame": int(f),
                    "time_s": round(float(times[f]), 4) if times is not None else None,
                    "box": [round(float(v), 2) for v in boxes[f]] if valid[f] else None,
                    "score": round(float(ex.when.scores[f]), 6),
                    "crop": _png_url(_png(crops[f])),
                    "heatmap": m,
                }
                for f, m in zip(ex.where.frames, out["where"]["maps"])
            ],
        )
        return out

    def __call__(self, video: str | bytes, name: str | None = None, *, explain: bool = False) -> DetectResult:
        t0 = time.perf_counter()
        label = _name(video, name)
        crop_rows = self.crop(video, label)  # a bad input fails here, before the extractors load
        t1 = time.perf_counter()
        fresh = self._feature_stage is None
        _ = self.feature_stage
        load_s = self.load_s + (time.perf_counter() - t1 if fresh else 0.0)
        result = self.score(self.features(crop_rows), label, explain=explain, crop_rows=crop_rows)
        result.timings["load_s"] = load_s
        result.timings["total_s"] = time.perf_counter() - t0 + self.load_s
        return result


def _png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError("cannot encode a crop as PNG")
    return buf.tobytes()


def _png_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _on_cuda(device: str | None) -> bool:
    import torch

    return (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")


def _name(video: str | bytes, name: str | None) -> str:
    return name or ("<upload>" if isinstance(video, (bytes, bytearray, memoryview)) else str(video))


def log_explanations(detector: Detector, videos: list[tuple[str, str]], run_id: str) -> int:
    """Explain each ``(video_id, uri)`` and log it to an MLflow run under ``explanations/<n>-<video>/``:
    ``explanation.json`` (the verdict, per-frame evidence, heat maps) and one PNG overlay per heat map.

    Returns:
        How many videos were explained (a video that cannot be read is skipped with a warning).
    """
    import json
    import re
    import tempfile
    from pathlib import Path

    from mlflow import MlflowClient

    client, done = MlflowClient(), 0
    with tempfile.TemporaryDirectory() as tmp:
        for n, (video_id, uri) in enumerate(videos):
            try:
                result = detector(uri, name=video_id, explain=True)
            except (VideoDecodeError, ExtractError) as exc:
                log.warning("no explanation for %s: %s", video_id, exc)
                continue
            folder = Path(tmp) / f"{n}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', video_id)[-80:]}"
            folder.mkdir()
            body = result.to_dict()
            overlays = body["explanation"]["where"].pop("overlays")
            for frame, url in zip(body["explanation"]["where"]["frames"], overlays):
                (folder / f"heatmap_frame{frame:03d}.png").write_bytes(base64.b64decode(url.split(",", 1)[1]))
            (folder / "explanation.json").write_text(json.dumps(body, indent=1, default=str))
            client.log_artifacts(run_id, str(folder), f"explanations/{folder.name}")
            done += 1
    return done


def detect(
    video: str,
    *,
    model: str | None = None,
    tracking_uri: str | None = None,
    style_weights: str | None = None,
    content_weights: str | None = None,
    explain: bool = False,
) -> DetectResult:
    """Score one clip with a trained model (see :class:`Detector`).

    Raises (with ``raydf detect``'s exit codes):
        NoModelError: no model where one was looked for (exit code 3).
        ExtractorMismatch, WeightsError: the model's extractors cannot be rebuilt (exit code 4).
        VideoDecodeError, ExtractError, BundleError: bad input (exit code 2).
    """
    det = Detector.from_model(model, tracking_uri=tracking_uri, style_weights=style_weights, content_weights=content_weights,
                              load_extractors=False)  # fmt: skip
    return det(video, explain=explain)

