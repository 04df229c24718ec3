"""Face crops with facenet-pytorch MTCNN: one face track per video, 20% margin, 256x256.

Detection runs batched over the sampled frames of a video, on copies
downscaled to at most ``detect_max_side`` pixels on the long side; boxes are
mapped back to full resolution and crops are cut from the full-resolution
frames. One track per video: the most confident face of the whole video
anchors it, then every other frame takes the detection nearest the track's
box in the neighbouring frame. A frame without an acceptable face falls back
to a centre crop with ``valid=False``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from raydf.config import FaceConfig

log = logging.getLogger(__name__)

__all__ = ["FaceCrops", "FaceCropper", "expand_box", "center_square", "box_iou"]


@dataclass(frozen=True)
class FaceCrops:
    """Per-frame face crops of one video."""

    crops: np.ndarray  # (T, S, S, 3) uint8 RGB
    valid: np.ndarray  # (T,) bool, False where the centre-crop fallback was used
    boxes: np.ndarray  # (T, 4) float32 detected box x1, y1, x2, y2 (full-res pixels); 0 where invalid
    probs: np.ndarray  # (T,) float32 detection probability; 0 where invalid


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes ``x1, y1, x2, y2``."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def expand_box(box: np.ndarray, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Square crop box: side ``max(w, h) * (1 + margin)`` about the box centre, kept inside the frame.

    The square is shifted back into the frame when it fits, and clipped only when it is
    larger than the frame, so crops keep the face's aspect ratio.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1.0 + margin)
    side = max(side, 2.0)
    left, top = cx - side / 2, cy - side / 2
    left = min(max(left, 0.0), max(width - side, 0.0))
    top = min(max(top, 0.0), max(height - side, 0.0))
    l, t = int(round(left)), int(round(top))
    r, b = int(round(min(left + side, width))), int(round(min(top + side, height)))
    return l, t, max(r, l + 1), max(b, t + 1)


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square of the frame (the report's centre-crop fallback)."""
    side = min(width, height)
    l, t = (width - side) // 2, (height - side) // 2
    return l, t, l + side, t + side


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


class FaceCropper:
    """CPU stage: sampled frames (T, H, W, 3) uint8 -> :class:`FaceCrops`.

    The MTCNN networks are loaded once per instance (once per Ray actor).
    """

    def __init__(self, cfg: FaceConfig | None = None, *, device: str = "cpu") -> None:
        from facenet_pytorch import MTCNN

        self.cfg = cfg or FaceConfig()
        self._mtcnn = MTCNN(
            keep_all=True,
            select_largest=False,  # detections sorted by probability
            min_face_size=self.cfg.min_face_size,
            thresholds=list(self.cfg.thresholds),
            post_process=False,
            device=device,
        )

    def detect(self, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """All faces per frame: a list of (boxes (n, 4) full-res float32, probs (n,)) for each frame."""
        t, h, w = frames.shape[:3]
        long_side = max(h, w)
        scale = 1.0
        if self.cfg.detect_max_side and long_side > self.cfg.detect_max_side:
            scale = self.cfg.detect_max_side / long_side
        short = min(h, w) * scale
        self._mtcnn.min_face_size = max(self.cfg.min_face_size, int(self.cfg.min_face_frac * short))
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, t, self.cfg.detect_batch):
            chunk = frames[start : start + self.cfg.detect_batch]  # (b, H, W, 3)
            if scale != 1.0:
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                chunk = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in chunk])
            boxes, probs = self._mtcnn.detect(np.ascontiguousarray(chunk))
            for b, p in zip(boxes, probs):
                if b is None:
                    out.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))
                    continue
                b = np.asarray(b, dtype=np.float32).reshape(-1, 4) / scale
                p = np.asarray(p, dtype=np.float32).reshape(-1)
                keep = p >= self.cfg.min_face_prob
                out.append((b[keep], p[keep]))
        return out

    @staticmethod
    def track(detections: list[tuple[np.ndarray, np.ndarray]]) -> list[int | None]:
        """Pick one detection per frame: anchor on the most confident face, then follow the nearest box.

        A detection whose centre is further than one box size from the track's previous box is
        another face, not ours: that frame gets no face.
        """
        t = len(detections)
        best = max(
            ((p.max(), i, int(p.argmax())) for i, (_, p) in enumerate(detections) if len(p)),
            default=None,
        )
        choice: list[int | None] = [None] * t
        if best is None:
            return choice
        _, anchor, j = best
        choice[anchor] = j

        def follow(order: range) -> None:
            prev = detections[anchor][0][j]
            for i in order:
                boxes = detections[i][0]
                if not len(boxes):
                    continue
                c_prev = (prev[:2] + prev[2:]) / 2
                size = max(prev[2] - prev[0], prev[3] - prev[1], 1.0)
                dist = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - c_prev, axis=1) / size
                k = int(dist.argmin())
                if dist[k] <= 1.0:
                    choice[i] = k
                    prev = boxes[k]

        follow(range(anchor + 1, t))
        follow(range(anchor - 1, -1, -1))
        return choice

    def __call__(self, frames: np.ndarray) -> FaceCrops:
        """Crop one face track from the sampled frames of a video (T, H, W, 3) uint8."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
        t, h, w = frames.shape[:3]
        size = self.cfg.crop_size
        detections = self.detect(frames)
        choice = self.track(detections)
        crops = np.empty((t, size, size, 3), np.uint8)
        valid = np.zeros(t, bool)
        boxes = np.zeros((t, 4), np.float32)
        probs = np.zeros(t, np.float32)
        for i in range(t):
            k = choice[i]
            if k is None:
                l, tp, r, b = center_square(w, h)
            else:
                box = detections[i][0][k]
                boxes[i] = box
                probs[i] = detections[i][1][k]
                valid[i] = True
                l, tp, r, b = expand_box(box, self.cfg.margin, w, h)
            crops[i] = _resize(frames[i, tp:b, l:r], size)
        return FaceCrops(crops=crops, valid=valid, boxes=boxes, probs=probs)
