"""Face crops with facenet-pytorch MTCNN: one face track per video, 20% margin, 256x256.

Detection runs batched over the sampled frames of a video, on copies
downscaled to at most ``detect_max_side`` pixels on the long side; boxes are
mapped back to full resolution and crops are cut from the full-resolution
frames. One track per video: the most confident face of the whole video
anchors it, then every other frame takes the detection nearest the track's
box in the neighbouring frame. A frame without an acceptable face falls back
to a centre crop with ``valid=False``.

Detection is facenet-pytorch's three-stage MTCNN (its P/R/O-nets and helpers)
with the resampling done on an integral image of the uint8 frames: every
pyramid level and every R/O-net input crop is an ``area`` resample, i.e. a mean
over integer pixel windows, so one summed-area table gives them all with a few
gathers instead of ~600 ``interpolate`` calls per batch. Results equal facenet's
``MTCNN.detect`` up to float rounding (sums are exact in int32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from raydf.config import FaceConfig

log = logging.getLogger(__name__)

__all__ = ["FaceCrops", "FaceCropper", "expand_box", "center_square", "box_iou", "mtcnn_detect"]


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


def _integral(imgs: np.ndarray) -> torch.Tensor:
    """Summed-area table of uint8 frames (B, H, W, 3) -> (B, H+1, W+1, 3) int32, zero first row/column."""
    b, h, w, c = imgs.shape
    table = np.empty((b, h + 1, w + 1, c), np.int32)
    for i in range(b):
        cv2.integral(imgs[i], table[i], sdepth=cv2.CV_32S)
    return torch.from_numpy(table)


def _windows(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.interpolate(mode="area")`` (adaptive average pooling) windows of ``length`` pixels onto ``size``.

    Window ``i`` covers ``[floor(i * L / size), ceil((i + 1) * L / size))``, offset by ``start``.
    """
    i = torch.arange(size, dtype=torch.int64)
    lo = (i[None] * length[:, None]) // size  # (n, size)
    hi = -((-(i[None] + 1) * length[:, None]) // size)
    return start[:, None] + lo, start[:, None] + hi


def _area_all(table: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Whole frames area-resampled to (out_h, out_w): (B, 3, out_h, out_w) float32 (channels-last memory)."""
    h, w = table.shape[1] - 1, table.shape[2] - 1
    zero = torch.zeros(1, dtype=torch.int64)
    r0, r1 = (v[0] for v in _windows(zero, torch.tensor([h]), out_h))
    c0, c1 = (v[0] for v in _windows(zero, torch.tensor([w]), out_w))
    rows = table.index_select(1, r1) - table.index_select(1, r0)  # (B, out_h, W+1, 3)
    sums = rows.index_select(2, c1) - rows.index_select(2, c0)  # (B, out_h, out_w, 3)
    count = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).to(torch.float32)  # (out_h, out_w)
    return (sums.to(torch.float32) / count[None, :, :, None]).permute(0, 3, 1, 2)


def _area_crops(table: torch.Tensor, image: torch.Tensor, y0, y1, x0, x1, size: int) -> torch.Tensor:  # noqa: ANN001
    """Boxes ``[y0, y1) x [x0, x1)`` of frames ``image`` area-resampled to size x size: (n, 3, size, size) float32."""
    r0, r1 = _windows(y0, y1 - y0, size)  # (n, size)
    c0, c1 = _windows(x0, x1 - x0, size)
    n, (_, h1, w1, ch) = len(image), table.shape
    flat = table.view(-1, ch)
    base = (image * h1)[:, None, None]

    def corner(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        idx = (base + r[:, :, None]) * w1 + c[:, None, :]  # (n, size, size) flat pixel index
        return flat.index_select(0, idx.reshape(-1)).view(n, size, size, ch)

    sums = corner(r1, c1) - corner(r0, c1) - corner(r1, c0) + corner(r0, c0)
    count = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :]).to(torch.float32)  # (n, size, size)
    return (sums.to(torch.float32) / count[..., None]).permute(0, 3, 1, 2)


@torch.inference_mode()
def mtcnn_detect(mtcnn, imgs: np.ndarray) -> list[np.ndarray]:  # noqa: ANN001 - facenet_pytorch.MTCNN
    """facenet-pytorch's ``detect_face`` on uint8 frames (B, H, W, 3), resampling through an integral image.

    The stages, thresholds, NMS and box regressions are facenet's own (its helpers are
    called); only how the network inputs are resampled differs, and not in value.

    Returns:
        Per frame, an (n, 5) float32 array of ``x1, y1, x2, y2, prob`` in input pixels,
        in facenet's order (descending probability after its final NMS).
    """
    from facenet_pytorch.models.utils.detect_face import bbreg, batched_nms_numpy, generateBoundingBox, pad, rerec
    from torchvision.ops.boxes import batched_nms

    threshold, factor = mtcnn.thresholds, mtcnn.factor
    b, h, w = imgs.shape[:3]
    table = _integral(np.ascontiguousarray(imgs))

    m = 12.0 / mtcnn.min_face_size
    minl = min(h, w) * m
    scales = []
    scale_i = m
    while minl >= 12:  # facenet's pyramid, float for float
        scales.append(scale_i)
        scale_i = scale_i * factor
        minl = minl * factor

    # First stage: P-Net over the pyramid.
    boxes_l, inds_l, picks_l = [], [], []
    offset = 0
    for scale in scales:
        im_data = _area_all(table, int(h * scale + 1), int(w * scale + 1))  # (B, 3, h', w')
        reg, probs = mtcnn.pnet((im_data - 127.5) * 0.0078125)
        boxes_scale, inds_scale = generateBoundingBox(reg, probs[:, 1], scale, threshold[0])
        boxes_l.append(boxes_scale)
        inds_l.append(inds_scale)
        pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], inds_scale, 0.5)
        picks_l.append(pick + offset)
        offset += boxes_scale.shape[0]
    picks = torch.cat(picks_l)
    boxes, image_inds = torch.cat(boxes_l)[picks], torch.cat(inds_l)[picks]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    qq1 = boxes[:, 0] + boxes[:, 5] * regw
    qq2 = boxes[:, 1] + boxes[:, 6] * regh
    qq3 = boxes[:, 2] + boxes[:, 7] * regw
    qq4 = boxes[:, 3] + boxes[:, 8] * regh
    boxes = rerec(torch.stack([qq1, qq2, qq3, qq4, boxes[:, 4]]).permute(1, 0))

    def crops(boxes: torch.Tensor, image_inds: torch.Tensor, size: int):  # noqa: ANN202
        y, ey, x, ex = (torch.from_numpy(v).to(torch.int64) for v in pad(boxes, w, h))
        keep = (ey > y - 1) & (ex > x - 1)  # facenet skips empty boxes
        return _area_crops(table, image_inds[keep], y[keep] - 1, ey[keep], x[keep] - 1, ex[keep], size), keep

    # Second stage: R-Net on 24x24 crops.
    if len(boxes) > 0:
        im_data, keep = crops(boxes, image_inds, 24)
        boxes, image_inds = boxes[keep], image_inds[keep]
        out0, out1 = (o.permute(1, 0) for o in mtcnn.rnet((im_data - 127.5) * 0.0078125))
        score = out1[1, :]
        ipass = score > threshold[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))

    # Third stage: O-Net on 48x48 crops.
    if len(boxes) > 0:
        im_data, keep = crops(boxes, image_inds, 48)
        boxes, image_inds = boxes[keep], image_inds[keep]
        out0, _, out2 = (o.permute(1, 0) for o in mtcnn.onet((im_data - 127.5) * 0.0078125))
        score = out2[1, :]
        ipass = score > threshold[2]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)
        boxes = bbreg(boxes, mv)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds = boxes[pick], image_inds[pick]

    boxes_np = boxes.numpy().astype(np.float32, copy=False)
    inds_np = image_inds.numpy()
    return [boxes_np[inds_np == i].reshape(-1, 5) for i in range(b)]


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
            for det in mtcnn_detect(self._mtcnn, chunk):  # (n, 5) per frame
                keep = det[:, 4] >= self.cfg.min_face_prob
                out.append((det[keep, :4] / np.float32(scale), det[keep, 4].copy()))
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
