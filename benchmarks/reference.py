"""The naive per-video reference, frozen: what the speed-ups are measured against.

Do not optimise this file. It is the report's code path written the straightforward
way, with raydf's model classes (same weights, same seeded init) but the reference
settings:

* decode: OpenCV reads every frame of the video into memory (BGR -> RGB), then the T
  uniform indices ``round(linspace(0, n - 1, T))`` are taken (circular padding if short);
* faces: facenet-pytorch ``MTCNN(keep_all=True)`` with its defaults (``min_face_size=20``,
  full resolution), one batched ``detect`` over the T frames; the most probable face of
  each frame, 20% margin, square, 256 x 256; centre crop when there is none;
* style: the pSp encoder's ``codes()`` (all 18 levels) in contiguous layout at batch 4,
  BatchNorm unfolded; level 9 is kept;
* content: ``slow_r50`` in contiguous layout, BatchNorm unfolded, one call for the K clips;
* ``model.eval()`` under ``torch.no_grad()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from raydf.config import ExtractConfig
from raydf.models.content import load_content_model
from raydf.models.style import load_style_encoder

__all__ = ["NaiveReference", "ReferenceResult", "STYLE_BATCH"]

STYLE_BATCH = 4  # faces per pSp call in the reference


@dataclass
class ReferenceResult:
    content: np.ndarray  # (K, 2048)
    style: np.ndarray  # (T, 512)
    valid: np.ndarray  # (T,) bool
    boxes: np.ndarray  # (T, 4)
    wall: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    cpu: dict[str, float] = field(default_factory=dict)  # stage -> process CPU seconds


class NaiveReference:
    """decode all frames -> MTCNN at full resolution -> pSp ``codes()`` -> slow_r50, one video at a time."""

    def __init__(self, cfg: ExtractConfig) -> None:
        from facenet_pytorch import MTCNN

        self.cfg = cfg
        self.mtcnn = MTCNN(keep_all=True, device="cpu")  # facenet defaults: min_face_size=20, no downscaling
        self.style = load_style_encoder(cfg.style.weights, cfg.style.config, level=cfg.style.level, seed=cfg.style.seed).eval()
        self.content = load_content_model(cfg.content.weights, seed=cfg.content.seed).eval()

    # ---- stages --------------------------------------------------------------------------------
    def decode(self, path: str) -> np.ndarray:
        cap = cv2.VideoCapture(path)
        frames = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
        if not frames:
            raise RuntimeError(f"no frames in {path}")
        n, t = len(frames), self.cfg.video.num_frames
        idx = np.round(np.linspace(0, n - 1, t)).astype(int) if n >= t else np.arange(t) % n
        return np.stack([frames[i] for i in idx])  # (T, H, W, 3)

    def faces(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size, margin = self.cfg.faces.crop_size, self.cfg.faces.margin
        t, h, w = frames.shape[:3]
        boxes_all, probs_all = self.mtcnn.detect(frames)
        crops = np.empty((t, size, size, 3), np.uint8)
        valid = np.zeros(t, bool)
        boxes = np.zeros((t, 4), np.float32)
        for i in range(t):
            b, p = boxes_all[i], probs_all[i]
            if b is None or p[0] is None or float(np.max(p)) < self.cfg.faces.min_face_prob:
                side = min(w, h)
                l, tp = (w - side) // 2, (h - side) // 2
                r, bt = l + side, tp + side
            else:
                box = np.asarray(b[int(np.argmax(p))], np.float32)
                boxes[i], valid[i] = box, True
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                side = max(box[2] - box[0], box[3] - box[1]) * (1 + margin)
                l = int(round(min(max(cx - side / 2, 0), max(w - side, 0))))
                tp = int(round(min(max(cy - side / 2, 0), max(h - side, 0))))
                r, bt = int(round(min(l + side, w))), int(round(min(tp + side, h)))
            crops[i] = cv2.resize(frames[i, tp:bt, l:r], (size, size), interpolation=cv2.INTER_AREA)
        return crops, valid, boxes

    def style_codes(self, crops: np.ndarray) -> np.ndarray:
        s = self.cfg.style
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, 256, 256)
        x = (x - s.mean) / s.std
        out = []
        with torch.no_grad():
            for i in range(0, len(x), STYLE_BATCH):
                out.append(self.style.codes(x[i : i + STYLE_BATCH])[:, s.level])  # all 18 codes, keep one
        return torch.cat(out).numpy()  # (T, 512)

    def content_features(self, crops: np.ndarray) -> np.ndarray:
        c = self.cfg.content
        t = len(crops)
        k = max(1, t // c.clip_len)
        idx = np.arange(max(t, c.clip_len)) % t
        x = torch.from_numpy(crops[idx][: k * c.clip_len]).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(c.size, c.size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - c.mean) / c.std
        x = x.reshape(k, c.clip_len, 3, c.size, c.size).permute(0, 2, 1, 3, 4).contiguous()  # (K, 3, L, 112, 112)
        with torch.no_grad():
            return self.content(x).numpy()  # (K, 2048)

    # ---- one video -------------------------------------------------------------------------------
    def __call__(self, path: str) -> ReferenceResult:
        wall, cpu = {}, {}

        def stage(name, fn, *args):  # noqa: ANN001, ANN202
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn(*args)
            wall[name], cpu[name] = time.perf_counter() - w0, time.process_time() - c0
            return out

        frames = stage("decode", self.decode, path)
        crops, valid, boxes = stage("faces", self.faces, frames)
        content = stage("content", self.content_features, crops)
        style = stage("style", self.style_codes, crops)
        return ReferenceResult(content=content, style=style, valid=valid, boxes=boxes, wall=wall, cpu=cpu)
