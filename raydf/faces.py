"""Face crops of a video's subject: MTCNN detections linked into face tracks, 20% margin, 256x256.

Detection is facenet-pytorch's MTCNN (its pretrained P/R/O-nets, scale pyramid, thresholds,
NMS and box regressions, Zhang et al. 2016), run at full resolution on every sampled frame.
The smallest face searched for is ``FaceConfig.min_face_size`` full-resolution pixels at every
frame size, which sets the pyramid's first scale exactly as ``MTCNN(min_face_size=...)``
does; nothing is detected on a downscaled copy, so a small face in a 4K frame is searched
for like one in a 640x480 frame.

What differs from facenet's ``detect_face`` is how, not what, it computes:

* resampling: every pyramid level and every R/O-net input is an ``area`` resample (a mean
  over integer pixel windows, ``F.interpolate(mode="area")``), so one summed-area table of
  the uint8 frame gives them all with a few gathers, instead of ~600 ``interpolate`` calls
  on a float copy of the frame per batch. Window sums are exact integers (int32 tables, or
  float64 ones for frames whose total could pass 2**31), so the network inputs equal
  facenet's up to float rounding;
* the networks run channels-last with facenet's weights, max pooling on channels-last or
  strided views (PyTorch's NCHW ``max_pool2d(ceil_mode=True)`` is several times slower),
  both heads of a stage in one layer, in cache-sized pieces (a pyramid level of a few
  frames, 64 R-net or 16 O-net candidates per call);
* on CPU, frames run in parallel on torch's thread count with one intra-op thread each, and
  the summed-area table's memory is kept between calls.

Boxes equal ``MTCNN.detect`` within 1e-3 px and probabilities within 1e-5 (tested on one,
several, small, edge-cut, odd-sized, grayscale, face-free and 4K frames).

Which face is the video's subject: detections of all sampled frames are linked into tracks
(a detection joins the track whose last box is nearest, within ``link_distance`` box sizes
and ``link_size_ratio`` in size, in frame-relative coordinates so that frames of different
sizes link), and the main track is the one with the largest **presence x mean box area**
(frames with the face / T, times its mean box area as a fraction of the frame): the "largest
face" convention of FaceForensics++ and DFDC preprocessing, made to hold over the whole video
so that a sharp bystander or a one-frame false positive does not win over the subject.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from raydf.config import FaceConfig

log = logging.getLogger(__name__)

__all__ = [
    "FaceCrops",
    "FaceTrack",
    "FaceCropper",
    "MTCNNDetector",
    "link_tracks",
    "expand_box",
    "center_square",
    "box_iou",
    "table_nbytes",
]

_INT32_SAFE = (2**31 - 1) // 255  # pixels per frame whose uint8 sum always fits int32
_NORM_SHIFT, _NORM_SCALE = 127.5, 0.0078125  # facenet's network input normalisation


@dataclass(frozen=True)
class FaceCrops:
    """One face track of a video: per-frame crops, where the face was found, and the track's standing.

    Frames where this person was not found hold the centre-crop fallback with ``valid=False``.
    """

    crops: np.ndarray  # (T, S, S, 3) uint8 RGB
    valid: np.ndarray  # (T,) bool, False where the centre-crop fallback was used
    boxes: np.ndarray  # (T, 4) float32 detected box x1, y1, x2, y2 (full-res pixels); 0 where invalid
    probs: np.ndarray  # (T,) float32 detection probability; 0 where invalid
    track_id: int = 0  # 0 = the video's main face; 1, 2, ... further faces by descending score
    score: float = 0.0  # presence x mean box area (fraction of the frame); 0 for the no-face fallback
    note: str = ""  # "" or a plain-words remark about the video (e.g. frames too small to search)


@dataclass(frozen=True)
class FaceTrack:
    """One person's detections linked across the sampled frames."""

    frames: np.ndarray  # (n,) int64 frame positions, increasing
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2 in each frame's full-res pixels
    probs: np.ndarray  # (n,) float32
    score: float  # presence x mean box area = sum of box areas (fractions of the frame) / T


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
    if h == 0 or w == 0:
        return np.zeros((size, size, 3), np.uint8)
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


# ---- MTCNN on a summed-area table ------------------------------------------------------------

# On CPU, work is cut into pieces whose activations stay in cache: on a 2-core EPYC here, P-Net
# on one 1080p level at a time is 3x faster than on 16 frames at once, R-Net on 64 candidates
# 3.5x faster than on 3,600 (and large temporaries cost page faults on every call). A GPU
# takes each stage whole.
_CPU_CHUNKS = (2**17, 64, 16, 256)  # P-Net level pixels, R-Net and O-Net candidates per call; candidates per crop gather
_GPU_CHUNKS = (2**26, 2**14, 2**12, 2**14)

Table = np.ndarray | torch.Tensor  # summed-area table (B, H+1, W+1, 3): numpy on CPU, torch elsewhere


def table_nbytes(frames: int, height: int, width: int) -> int:
    """Bytes of the summed-area table of ``frames`` RGB frames of height x width (int32, or float64 above ~8.4 Mpx)."""
    return frames * (height + 1) * (width + 1) * 3 * (8 if height * width > _INT32_SAFE else 4)


def _integral(imgs: np.ndarray, device: torch.device, buffer: np.ndarray | None = None) -> Table:
    """Summed-area table of uint8 frames (B, H, W, 3) -> (B, H+1, W+1, 3), zero first row/column.

    int32 while a whole frame's sum fits (H*W*255 < 2**31, i.e. up to ~8.4 Mpx); float64 above
    (exact for integers below 2**53), since int32 sums of a bright 4096x2160 frame overflow.
    On CPU the table is written into ``buffer`` (flat uint8, at least :func:`table_nbytes`).
    """
    b, h, w, c = imgs.shape
    wide = h * w > _INT32_SAFE
    if device.type == "cpu":
        dtype, shape = np.dtype(np.float64 if wide else np.int32), (b, h + 1, w + 1, c)
        n = table_nbytes(b, h, w)
        table = buffer[:n].view(dtype).reshape(shape) if buffer is not None and buffer.nbytes >= n else np.empty(shape, dtype)
        for i in range(b):
            cv2.integral(imgs[i], table[i], sdepth=cv2.CV_64F if wide else cv2.CV_32S)
        return table
    dtype = torch.int64 if wide else torch.int32
    x = torch.from_numpy(imgs).to(device)  # (B, H, W, 3) uint8: the smallest thing to upload
    table = torch.zeros((b, h + 1, w + 1, c), dtype=dtype, device=device)
    table[:, 1:, 1:] = x.to(dtype).cumsum(1, dtype=dtype).cumsum(2, dtype=dtype)
    return table


def _take(table: Table, index: torch.Tensor, axis: int) -> Table:
    """``table`` gathered along ``axis`` (numpy's take copies whole rows several times faster than index_select)."""
    if isinstance(table, np.ndarray):
        return np.take(table, index.numpy(), axis=axis)
    return table.index_select(axis, index)


def _windows(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.interpolate(mode="area")`` (adaptive average pooling) windows of ``length`` pixels onto ``size``.

    Window ``i`` covers ``[floor(i * L / size), ceil((i + 1) * L / size))``, offset by ``start``.
    Returns (n, size) first and one-past-last pixel indices.
    """
    i = torch.arange(size, dtype=torch.int64, device=start.device)
    lo = (i[None] * length[:, None]) // size  # (n, size)
    hi = -((-(i[None] + 1) * length[:, None]) // size)
    return start[:, None] + lo, start[:, None] + hi


def _normalise(sums: Table, count: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Window sums (..., 3) -> facenet's network input (mean - 127.5) / 128, float32 (..., 3)."""
    sums = torch.from_numpy(sums) if isinstance(sums, np.ndarray) else sums
    return (sums.to(device=device, dtype=torch.float32) / count).sub_(_NORM_SHIFT).mul_(_NORM_SCALE)


def _area_level(table: Table, out_h: int, out_w: int, device: torch.device) -> torch.Tensor:
    """Whole frames area-resampled to (out_h, out_w) and normalised: (B, 3, out_h, out_w) float32, channels-last."""
    h, w = table.shape[1] - 1, table.shape[2] - 1
    zero = torch.zeros(1, dtype=torch.int64)
    r0, r1 = (v[0].to(device) for v in _windows(zero, torch.tensor([h]), out_h))
    c0, c1 = (v[0].to(device) for v in _windows(zero, torch.tensor([w]), out_w))
    rows = _take(table, r1, 1)  # (B, out_h, W+1, 3)
    rows -= _take(table, r0, 1)
    sums = _take(rows, c1, 2)  # (B, out_h, out_w, 3)
    sums -= _take(rows, c0, 2)
    count = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).to(torch.float32)[None, :, :, None]  # (1, out_h, out_w, 1)
    return _normalise(sums, count, device).permute(0, 3, 1, 2)


def _area_crops(table: Table, image: torch.Tensor, y0, y1, x0, x1, size: int, device: torch.device) -> torch.Tensor:  # noqa: ANN001
    """Boxes ``[y0, y1) x [x0, x1)`` of frames ``image`` area-resampled to size x size and normalised.

    Returns (n, 3, size, size) float32, channels-last.
    """
    r0, r1 = _windows(y0, y1 - y0, size)  # (n, size)
    c0, c1 = _windows(x0, x1 - x0, size)
    n, (_, h1, w1, ch) = len(image), table.shape
    flat = table.reshape(-1, ch)
    base = (image * h1)[:, None, None]

    def corner(r: torch.Tensor, c: torch.Tensor) -> Table:
        idx = (base + r[:, :, None]) * w1 + c[:, None, :]  # (n, size, size) flat pixel index
        return _take(flat, idx.reshape(-1), 0)

    sums = corner(r1, c1)  # (n * size * size, 3)
    sums -= corner(r0, c1)
    sums -= corner(r1, c0)
    sums += corner(r0, c0)
    count = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :]).to(device=device, dtype=torch.float32).reshape(-1, 1)
    return _normalise(sums, count, device).view(n, size, size, ch).permute(0, 3, 1, 2)


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(x, 2, 2, ceil_mode=True)`` as a max of four strided views (exact, ~10x faster here)."""
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2), value=float("-inf"))
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]), torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def _pool3(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(x, 3, 2, ceil_mode=True)`` on channels-last memory (the NCHW kernel is far slower)."""
    return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2, ceil_mode=True)


def _conv(x: torch.Tensor, conv: torch.nn.Conv2d, prelu: torch.nn.PReLU) -> torch.Tensor:
    return F.prelu(F.conv2d(x, conv.weight, conv.bias), prelu.weight)


def _two_class(logits: torch.Tensor) -> torch.Tensor:
    """Probability of class 1 of a two-way softmax over dim 1: ``sigmoid(l1 - l0)``."""
    return torch.sigmoid(logits[:, 1] - logits[:, 0])


class MTCNNDetector:
    """facenet-pytorch's MTCNN face detector with its pretrained weights, resampling through a summed-area table.

    Same pyramid, stages, thresholds, NMS and box regressions as
    ``facenet_pytorch.MTCNN.detect`` (facenet_pytorch/models/utils/detect_face.py, whose box
    helpers it calls); see the module docstring for what is computed differently. On CPU the
    summed-area table's memory is kept between calls (allocating it afresh costs more than
    filling it).

    Args:
        thresholds: P-, R- and O-net probability thresholds.
        factor: scale step of the image pyramid.
        device: where the networks and the summed-area tables live.
    """

    def __init__(self, *, thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709, device: str | torch.device = "cpu") -> None:
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = (net().eval().to(self.device) for net in (PNet, RNet, ONet))
        p = self.pnet  # both 1x1 heads of P-Net as one conv: (6, 32, 1, 1) = 2 logits + 4 offsets
        self._p_head = (torch.cat([p.conv4_1.weight, p.conv4_2.weight]), torch.cat([p.conv4_1.bias, p.conv4_2.bias]))
        self._chunks = _CPU_CHUNKS if self.device.type == "cpu" else _GPU_CHUNKS
        self._buffers: dict[int, np.ndarray] = {}  # worker -> (bytes,) uint8: its last summed-area table's memory
        self._pool: ThreadPoolExecutor | None = None  # frame-parallel workers on CPU, made on first use
        self._pool_size = 0

    @staticmethod
    def scales(height: int, width: int, min_face_size: float, factor: float = 0.709) -> list[float]:
        """facenet's pyramid: ``12 / min_face_size`` times powers of ``factor`` while the short side stays >= 12 px."""
        m = 12.0 / min_face_size
        minl = min(height, width) * m
        out, scale = [], m
        while minl >= 12:  # float for float as facenet computes it
            out.append(scale)
            scale, minl = scale * factor, minl * factor
        return out

    def _p(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net: (B, 3, h, w) -> box offsets (B, 4, h', w'), face probability (B, h', w')."""
        p = self.pnet
        x = _pool2(_conv(x, p.conv1, p.prelu1))
        x = _conv(x.contiguous(memory_format=torch.channels_last), p.conv2, p.prelu2)
        x = _conv(x, p.conv3, p.prelu3)
        y = F.conv2d(x, *self._p_head)  # (B, 6, h', w')
        return y[:, 2:], _two_class(y[:, :2])

    def _r(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """R-Net: (n, 3, 24, 24) -> box offsets (n, 4), face probability (n,)."""
        r = self.rnet
        x = _pool3(_conv(x, r.conv1, r.prelu1))
        x = _pool3(_conv(x, r.conv2, r.prelu2))
        x = _conv(x, r.conv3, r.prelu3)  # (n, 64, 3, 3)
        x = x.permute(0, 3, 2, 1).reshape(len(x), -1)  # facenet flattens (n, W, H, C)
        x = F.prelu(F.linear(x, r.dense4.weight, r.dense4.bias), r.prelu4.weight)
        return F.linear(x, r.dense5_2.weight, r.dense5_2.bias), _two_class(F.linear(x, r.dense5_1.weight, r.dense5_1.bias))

    def _o(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """O-Net: (n, 3, 48, 48) -> box offsets (n, 4), face probability (n,) (landmarks are not needed)."""
        o = self.onet
        x = _pool3(_conv(x, o.conv1, o.prelu1))
        x = _pool3(_conv(x, o.conv2, o.prelu2))
        x = _pool2(_conv(x, o.conv3, o.prelu3))
        x = _conv(x.contiguous(memory_format=torch.channels_last), o.conv4, o.prelu4)  # (n, 128, 3, 3)
        x = x.permute(0, 3, 2, 1).reshape(len(x), -1)
        x = F.prelu(F.linear(x, o.dense5.weight, o.dense5.bias), o.prelu5.weight)
        return F.linear(x, o.dense6_2.weight, o.dense6_2.bias), _two_class(F.linear(x, o.dense6_1.weight, o.dense6_1.bias))

    def _stage(self, table: Table, boxes: torch.Tensor, image_inds: torch.Tensor, size: int, net, chunk: int):  # noqa: ANN001, ANN205
        """R- or O-net on the boxes' crops: (kept boxes (k, 5), their frames (k,), offsets (k, 4), probabilities (k,))."""
        h, w = table.shape[1] - 1, table.shape[2] - 1
        # facenet's pad(): integer box clipped to [1, w] x [1, h], then pixels [y-1, ey) x [x-1, ex)
        q = boxes[:, :4].trunc().to(torch.int64)
        x, y = q[:, 0].clamp_min(1), q[:, 1].clamp_min(1)
        ex, ey = q[:, 2].clamp_max(w), q[:, 3].clamp_max(h)
        keep = (ey > y - 1) & (ex > x - 1)  # facenet skips empty boxes
        boxes, image_inds, x, y, ex, ey = boxes[keep], image_inds[keep], x[keep], y[keep], ex[keep], ey[keep]
        regs, probs = [], []
        crop_chunk = self._chunks[3]
        for a in range(0, len(boxes), crop_chunk):
            s = slice(a, a + crop_chunk)
            data = _area_crops(table, image_inds[s], y[s] - 1, ey[s], x[s] - 1, ex[s], size, self.device)  # (n, 3, size, size)
            for c in range(0, len(data), chunk):
                reg, prob = net(data[c : c + chunk])
                regs.append(reg)
                probs.append(prob)
        return boxes, image_inds, torch.cat(regs), torch.cat(probs)

    def __call__(self, imgs: np.ndarray, min_face_size: float) -> list[np.ndarray]:
        """Faces in uint8 frames of one size (B, H, W, 3), as ``MTCNN(min_face_size=...).detect`` finds them.

        Args:
            imgs: (B, H, W, 3) uint8 RGB frames, all of one size.
            min_face_size: smallest face searched for, in the frames' pixels (sets the first
                pyramid scale to ``12 / min_face_size``).

        Returns:
            Per frame, an (n, 5) float32 array of ``x1, y1, x2, y2, prob`` in the frames'
            pixels, in facenet's order (descending probability after its final NMS).

        Raises:
            ValueError: if the frames' short side is under 12 px (one P-Net window).
        """
        b, h, w = imgs.shape[:3]
        if min(h, w) < 12:
            raise ValueError(f"frames of {w}x{h} px are smaller than one P-Net window (12 px)")
        workers = min(torch.get_num_threads(), b) if self.device.type == "cpu" else 1
        if workers <= 1:
            return self._detect(imgs, min_face_size, 0)
        # Frames in parallel, one intra-op thread per worker: these small layers spend more time
        # in OpenMP barriers than computing when every op is split across threads (6x the CPU
        # time at 2 threads on a loaded machine here). torch's thread count is process-wide, so
        # it is 1 for the duration of the call and restored after.
        threads = torch.get_num_threads()
        if self._pool_size < workers:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool, self._pool_size = ThreadPoolExecutor(workers, thread_name_prefix="raydf-mtcnn"), workers
        parts = np.array_split(np.arange(b), workers)

        def work(k: int) -> list[np.ndarray]:
            torch.set_num_threads(1)
            return self._detect(imgs[parts[k]], min_face_size, k)

        try:
            done = list(self._pool.map(work, range(workers)))
        finally:
            torch.set_num_threads(threads)
        return [d for part in done for d in part]

    @torch.inference_mode()
    def _detect(self, imgs: np.ndarray, min_face_size: float, worker: int) -> list[np.ndarray]:
        from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, generateBoundingBox, rerec
        from torchvision.ops.boxes import batched_nms

        b, h, w = imgs.shape[:3]
        # A frame whose short side is under the minimum face (facenet: no pyramid, torch.cat
        # fails) is searched at the one scale that maps its short side to 12 px.
        scales = self.scales(h, w, min_face_size, self.factor) or [12.0 / min(h, w)]
        t_p, t_r, t_o = self.thresholds
        buffer = self._buffers.get(worker)
        if self.device.type == "cpu" and (buffer is None or buffer.nbytes < table_nbytes(b, h, w)):
            buffer = self._buffers[worker] = np.empty(table_nbytes(b, h, w), np.uint8)
        table = _integral(np.ascontiguousarray(imgs), self.device, buffer)  # (B, H+1, W+1, 3)

        # First stage: P-Net over the pyramid, NMS per scale and frame, then per frame.
        boxes_l, inds_l = [], []
        for scale in scales:
            oh, ow = int(h * scale + 1), int(w * scale + 1)
            step = max(1, self._chunks[0] // (oh * ow))
            for f in range(0, b, step):
                reg, prob = self._p(_area_level(table[f : f + step], oh, ow, self.device))
                boxes_s, inds_s = generateBoundingBox(reg, prob, scale, t_p)  # (k, 9): box, score, offsets
                pick = batched_nms(boxes_s[:, :4], boxes_s[:, 4], inds_s, 0.5)
                boxes_l.append(boxes_s[pick])
                inds_l.append(inds_s[pick] + f)
        boxes, image_inds = torch.cat(boxes_l), torch.cat(inds_l)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds = boxes[pick], image_inds[pick]
        reg_w, reg_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = rerec(torch.stack([
            boxes[:, 0] + boxes[:, 5] * reg_w, boxes[:, 1] + boxes[:, 6] * reg_h,
            boxes[:, 2] + boxes[:, 7] * reg_w, boxes[:, 3] + boxes[:, 8] * reg_h, boxes[:, 4],
        ], dim=1))  # fmt: skip

        # Second stage: R-Net on 24x24 crops.
        if len(boxes) > 0:
            boxes, image_inds, reg, score = self._stage(table, boxes, image_inds, 24, self._r, self._chunks[1])
            ipass = score > t_r
            boxes = torch.cat((boxes[ipass, :4], score[ipass, None]), dim=1)
            image_inds, reg = image_inds[ipass], reg[ipass]
            pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
            boxes = rerec(bbreg(boxes[pick], reg[pick]))
            image_inds = image_inds[pick]

        # Third stage: O-Net on 48x48 crops, then NMS by overlap over the smaller box.
        if len(boxes) > 0:
            boxes, image_inds, reg, score = self._stage(table, boxes, image_inds, 48, self._o, self._chunks[2])
            ipass = score > t_o
            boxes = torch.cat((boxes[ipass, :4], score[ipass, None]), dim=1)
            image_inds = image_inds[ipass]
            boxes = bbreg(boxes, reg[ipass])
            pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
            boxes, image_inds = boxes[pick], image_inds[pick]

        boxes_np = boxes.cpu().numpy().astype(np.float32, copy=False)
        inds_np = image_inds.cpu().numpy()
        return [boxes_np[inds_np == i].reshape(-1, 5) for i in range(b)]


# ---- tracks ----------------------------------------------------------------------------------


def link_tracks(
    detections: Sequence[tuple[np.ndarray, np.ndarray]],
    sizes: Sequence[tuple[int, int]],
    *,
    max_distance: float = 1.0,
    max_size_ratio: float = 2.0,
) -> list[FaceTrack]:
    """Link per-frame detections into face tracks, best first.

    Boxes are compared in frame-relative coordinates (x / width, y / height), so frames of
    different sizes link. Frame by frame, each detection joins the track whose last box is
    nearest: centre distance in units of that box's width and height at most
    ``max_distance``, side ratio (square root of the area ratio) at most ``max_size_ratio``;
    pairs are taken greedily, nearest first, one detection per track and frame. A detection
    left over starts a new track. A track may skip frames where its face was missed.

    Args:
        detections: per frame, boxes (n, 4) float x1, y1, x2, y2 in that frame's pixels and probabilities (n,).
        sizes: per frame, its (width, height) in pixels.
        max_distance: link radius, in box sizes.
        max_size_ratio: largest side ratio between a track's last box and a new one.

    Returns:
        Tracks ordered by score = presence x mean box area (sum over the track's frames of its
        box area as a fraction of the frame, / T), then by mean probability, then first frame.
    """
    t = len(detections)
    tracks: list[dict] = []  # {"frames": [...], "boxes": [...], "probs": [...], "last": (4,) relative box}
    for i, ((boxes, probs), (w, h)) in enumerate(zip(detections, sizes, strict=True)):
        if not len(boxes):
            continue
        rel = np.asarray(boxes, np.float64) / np.array([w, h, w, h], np.float64)  # (n, 4)
        pairs = []
        for k, tr in enumerate(tracks):
            last = tr["last"]
            lw, lh = max(last[2] - last[0], 1e-9), max(last[3] - last[1], 1e-9)
            dx = ((rel[:, 0] + rel[:, 2]) - (last[0] + last[2])) / 2 / lw
            dy = ((rel[:, 1] + rel[:, 3]) - (last[1] + last[3])) / 2 / lh
            dist = np.hypot(dx, dy)  # (n,)
            area = np.clip((rel[:, 2] - rel[:, 0]) * (rel[:, 3] - rel[:, 1]), 1e-18, None)
            side_ratio = np.sqrt(area / (lw * lh))
            ok = (dist <= max_distance) & (side_ratio <= max_size_ratio) & (side_ratio >= 1.0 / max_size_ratio)
            pairs += [(float(dist[j]), k, j) for j in np.flatnonzero(ok)]
        taken_t, taken_d = set(), set()
        for _, k, j in sorted(pairs):
            if k in taken_t or j in taken_d:
                continue
            taken_t.add(k)
            taken_d.add(j)
            tr = tracks[k]
            tr["frames"].append(i), tr["boxes"].append(boxes[j]), tr["probs"].append(probs[j])
            tr["last"], tr["area"] = rel[j], tr["area"] + _rel_area(rel[j])
        for j in range(len(boxes)):
            if j not in taken_d:
                tracks.append({"frames": [i], "boxes": [boxes[j]], "probs": [probs[j]], "last": rel[j], "area": _rel_area(rel[j])})
    out = [
        FaceTrack(
            frames=np.asarray(tr["frames"], np.int64),
            boxes=np.asarray(tr["boxes"], np.float32).reshape(-1, 4),
            probs=np.asarray(tr["probs"], np.float32),
            score=tr["area"] / max(t, 1),
        )
        for tr in tracks
    ]
    out.sort(key=lambda tr: (-tr.score, -float(tr.probs.mean()), int(tr.frames[0])))
    return out


def _rel_area(rel: np.ndarray) -> float:
    return float(max(rel[2] - rel[0], 0.0) * max(rel[3] - rel[1], 0.0))


# ---- the stage -------------------------------------------------------------------------------


class FaceCropper:
    """CPU stage: the sampled frames of a video -> :class:`FaceCrops` face tracks.

    The MTCNN networks are loaded once per instance (once per Ray actor).

    Args:
        cfg: face settings (defaults: :class:`raydf.config.FaceConfig`).
        device: where MTCNN runs (``"cpu"``, ``"cuda"``, ...).
    """

    def __init__(self, cfg: FaceConfig | None = None, *, device: str = "cpu") -> None:
        self.cfg = cfg or FaceConfig()
        self.detector = MTCNNDetector(thresholds=self.cfg.thresholds, device=device)

    @staticmethod
    def _check(frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise ValueError(f"expected frames (T, H, W, 3) or a sequence of (H, W, 3) frames, got an array of shape {frames.shape}")
        out = []
        for i, f in enumerate(frames):
            f = np.asarray(f)
            if f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
                raise ValueError(f"frame {i}: expected uint8 RGB (H, W, 3), got {f.dtype} {f.shape}")
            out.append(f)
        return out

    def _groups(self, frames: list[np.ndarray]) -> tuple[dict[tuple[int, int], list[int]], dict[tuple[int, int], list[int]]]:
        """Frame positions by size (h, w): those searched for faces, and those too small to search."""
        search: dict[tuple[int, int], list[int]] = {}
        tiny: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            h, w = f.shape[:2]
            (tiny if min(h, w) < self.cfg.min_frame_side else search).setdefault((h, w), []).append(i)
        return search, tiny

    def detect(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """All faces per frame at full resolution.

        Args:
            frames: T RGB uint8 frames (H, W, 3), sizes may differ; or an array (T, H, W, 3).

        Returns:
            Per frame, (boxes (n, 4) float32 x1, y1, x2, y2 in that frame's pixels, probs (n,)
            float32), faces with probability >= ``min_face_prob`` in descending probability.
            Frames with a short side under ``min_frame_side`` get no faces.

        Raises:
            ValueError: a frame is not uint8 (H, W, 3).
        """
        frames = self._check(frames)
        return self._detect(frames, self._groups(frames)[0])

    def _detect(self, frames: list[np.ndarray], search: dict[tuple[int, int], list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        cfg = self.cfg
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
        out: list[tuple[np.ndarray, np.ndarray]] = [empty] * len(frames)
        for (h, w), idx in search.items():
            per_call = max(1, min(cfg.detect_batch, cfg.detect_batch_mb * 2**20 // table_nbytes(1, h, w)))
            for start in range(0, len(idx), per_call):
                chunk = idx[start : start + per_call]
                dets = self.detector(np.stack([frames[i] for i in chunk]), cfg.min_face_size)  # (n, 5) per frame
                for i, det in zip(chunk, dets, strict=True):
                    keep = det[:, 4] >= cfg.min_face_prob
                    out[i] = (det[keep, :4].copy(), det[keep, 4].copy())
        return out

    def tracks(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[FaceCrops]:
        """Face tracks of one video's sampled frames: the main face first, then others by score.

        Args:
            frames: T RGB uint8 frames (H, W, 3), sizes may differ (streams change size
                mid-way); or an array (T, H, W, 3).

        Returns:
            1 to ``max_tracks`` :class:`FaceCrops`, ``track_id`` 0, 1, ...: track 0 is the
            video's subject (largest presence x mean box area, see :func:`link_tracks`). With
            no face at all, one track of centre crops with ``valid`` all False.

        Raises:
            ValueError: a frame is not uint8 (H, W, 3).
        """
        frames = self._check(frames)
        search, tiny = self._groups(frames)
        note = _tiny_note(tiny, len(frames), self.cfg.min_frame_side)
        if note:
            log.info("faces: %s", note)
        detections = self._detect(frames, search)
        sizes = [(f.shape[1], f.shape[0]) for f in frames]
        found = link_tracks(detections, sizes, max_distance=self.cfg.link_distance, max_size_ratio=self.cfg.link_size_ratio)
        found = found[: self.cfg.max_tracks]
        if not found:
            return [self._crops(frames, None, 0, note)]
        return [self._crops(frames, tr, k, note) for k, tr in enumerate(found)]

    def __call__(self, frames: Sequence[np.ndarray] | np.ndarray) -> FaceCrops:
        """The main face track of one video's sampled frames (``tracks(frames)[0]``)."""
        return self.tracks(frames)[0]

    def _crops(self, frames: list[np.ndarray], track: FaceTrack | None, track_id: int, note: str) -> FaceCrops:
        t, size = len(frames), self.cfg.crop_size
        crops = np.empty((t, size, size, 3), np.uint8)
        valid = np.zeros(t, bool)
        boxes = np.zeros((t, 4), np.float32)
        probs = np.zeros(t, np.float32)
        if track is not None:
            valid[track.frames], boxes[track.frames], probs[track.frames] = True, track.boxes, track.probs
        for i, f in enumerate(frames):
            h, w = f.shape[:2]
            l, tp, r, b = expand_box(boxes[i], self.cfg.margin, w, h) if valid[i] else center_square(w, h)
            crops[i] = _resize(f[tp:b, l:r], size)
        return FaceCrops(crops, valid, boxes, probs, track_id=track_id, score=track.score if track else 0.0, note=note)


def _tiny_note(tiny: dict[tuple[int, int], list[int]], t: int, min_side: int) -> str:
    if not tiny:
        return ""
    n = sum(len(v) for v in tiny.values())
    sizes = ", ".join(f"{w}x{h}" for h, w in tiny)
    what = f"frame {sizes} is" if len(tiny) == 1 and n == 1 else f"frames of {sizes} px are"
    return f"{what} too small to detect faces in (short side under {min_side} px): {n} of {t} frames centre-cropped"
