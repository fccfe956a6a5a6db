"""PP-OCRv4's text detector (DBNet) and direction classifier: data, post-processing, metrics.

Both models come from the ``rapidocr-onnxruntime`` wheel, like the recogniser
(:mod:`benchmarks.ocr`), and the data are rendered the same way:

* detector: pages of ``DET_SHAPE`` pixels holding a few rendered lines (Latin and CJK) on a
  noisy background. Its task metric is the F1 of the quantized model's boxes against the FP32
  model's boxes at IoU 0.5, after PaddleOCR's DB post-processing (probability threshold 0.3,
  2x2 dilation, box score threshold 0.5, unclip ratio 1.6, boxes of side under 3 dropped). The
  rendered lines are horizontal (tilt under 2 degrees), so boxes are axis-aligned rectangles,
  where DB's polygon unclip is an offset of each side by ``area * ratio / perimeter``;
* classifier: lines resized to 48 x 192 (PaddleOCR's ``cls_image_shape``), half of them turned
  by 180 degrees; its task metric is top-1 agreement with FP32 (as issue 12 defines it), with
  the accuracy on that label reported beside it.
"""

from __future__ import annotations

import importlib.util
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks import ocr

DET_MODEL_NAME = "ch_PP-OCRv4_det_infer.onnx"
CLS_MODEL_NAME = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
DET_SHAPE = (256, 320)  # one page size: ONNX Runtime's histogram calibrators need one shape
CLS_SHAPE = (48, 192)
DB_THRESH, DB_BOX_THRESH, DB_UNCLIP, DB_MIN_SIZE = 0.3, 0.5, 1.6, 3
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def model_path(name: str) -> Path:
    """A model file of the installed ``rapidocr_onnxruntime`` package (not imported)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise ocr.OCRAssetMissing("pip install --no-deps rapidocr-onnxruntime")
    found = sorted(Path(spec.origin).parent.rglob(name))
    if not found:
        raise ocr.OCRAssetMissing(f"{name} not found in rapidocr_onnxruntime; reinstall it")
    return found[0]


def _normalise(rgb: np.ndarray) -> np.ndarray:
    """PaddleOCR's input: BGR (it reads with OpenCV), scaled to [-1, 1], CHW."""
    arr = rgb.astype(np.float32)[:, :, ::-1].transpose(2, 0, 1)
    return (arr / 255.0 - 0.5) / 0.5


def render_pages(n: int, seed: int) -> list[np.ndarray]:
    """``n`` pages of ``DET_SHAPE`` with up to 7 lines each, as ``[1, 3, H, W]`` float32."""
    from PIL import Image

    rng = random.Random(f"det:{seed}")
    h, w = DET_SHAPE
    pages = []
    for i in range(n):
        base = rng.randint(170, 250)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 6, (h, w, 3))
        page = np.clip(base + noise, 0, 255).astype(np.uint8)
        y = rng.randint(4, 24)
        lines = ocr.render_lines(ocr.SCRIPTS[i % 2], rng.randint(4, 7), seed=1000 * seed + i,
                                 height=rng.randint(18, 30))
        for image, _text in lines:
            lh, lw = image.shape[:2]
            if lw > w - 8:
                lw = w - 8
                image = np.asarray(Image.fromarray(image).resize((lw, lh)))
            if y + lh > h - 4:
                break
            x = rng.randint(4, w - lw - 4)
            page[y : y + lh, x : x + lw] = image
            y += lh + rng.randint(6, 20)
        pages.append(_normalise(page)[None])
    return pages


def db_boxes(prob: np.ndarray) -> list[Box]:
    """PaddleOCR's DB post-processing of one ``[H, W]`` probability map (see module doc)."""
    from scipy import ndimage

    # origin -1: the 2x2 kernel grows regions right and down, as OpenCV's dilate does with its
    # default anchor (PaddleOCR dilates with cv2)
    mask = ndimage.binary_dilation(prob > DB_THRESH, structure=np.ones((2, 2), bool), origin=-1)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    h, w = prob.shape
    boxes: list[Box] = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        bw, bh = x1 - x0, y1 - y0
        if min(bw, bh) < DB_MIN_SIZE:
            continue
        if float(prob[y0:y1, x0:x1].mean()) < DB_BOX_THRESH:
            continue
        d = bw * bh * DB_UNCLIP / (2.0 * (bw + bh))
        if min(bw, bh) + 2 * d < DB_MIN_SIZE + 2:
            continue
        boxes.append((max(0.0, x0 - d), max(0.0, y0 - d), min(float(w), x1 + d),
                      min(float(h), y1 + d)))
    return boxes


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_f1(reference: Sequence[Sequence[Box]], predicted: Sequence[Sequence[Box]],
           iou: float = 0.5) -> float:
    """F1 of predicted boxes against reference boxes, one-to-one greedy matching at ``iou``."""
    matched = n_ref = n_pred = 0
    for ref, pred in zip(reference, predicted):
        n_ref, n_pred = n_ref + len(ref), n_pred + len(pred)
        pairs = sorted(((_iou(r, p), i, j) for i, r in enumerate(ref)
                        for j, p in enumerate(pred)), reverse=True)
        used_r: set[int] = set()
        used_p: set[int] = set()
        for value, i, j in pairs:
            if value < iou:
                break
            if i not in used_r and j not in used_p:
                used_r.add(i)
                used_p.add(j)
                matched += 1
    if n_ref + n_pred == 0:
        return 1.0
    return 2.0 * matched / (n_ref + n_pred)


def page_boxes(outputs: Sequence[np.ndarray]) -> list[list[Box]]:
    """Boxes of every page of detector outputs (``[N, 1, H, W]`` per batch)."""
    return [db_boxes(np.asarray(o)[k, 0]) for o in outputs for k in range(len(o))]


def cls_lines(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` classifier inputs ``[n, 3, 48, 192]`` and labels (1: turned by 180 degrees)."""
    from PIL import Image

    h, w = CLS_SHAPE
    rng = random.Random(f"cls:{seed}")
    xs, labels = [], []
    for k, script in enumerate(ocr.SCRIPTS):
        count = n // 2 + (n % 2 if k == 0 else 0)
        for image, _ in ocr.render_lines(script, count, seed=500 + seed):
            turned = rng.random() < 0.5
            if turned:
                image = image[::-1, ::-1]
            rw = min(w, math.ceil(h * image.shape[1] / image.shape[0]))
            resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((rw, h)))
            x = np.zeros((3, h, w), np.float32)
            x[:, :, :rw] = _normalise(resized)
            xs.append(x)
            labels.append(int(turned))
    order = np.random.default_rng(seed).permutation(len(xs))
    return np.stack(xs)[order], np.asarray(labels)[order]
