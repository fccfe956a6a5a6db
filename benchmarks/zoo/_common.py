"""Helpers shared by the zoo's families: FP32 sessions, box matching, ratio metrics, images.

Nothing here downloads anything: models come from :class:`benchmarks.zoo.base.Wheel`, images from
scikit-image's bundled samples (``skimage.data``), augmented deterministically by seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ocr_det_cls import Box, box_f1
from benchmarks.zoo.base import Feeds, Outputs, ZooAssetError

#: scikit-image sample photographs (all RGB, shipped inside the scikit-image wheel).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera",
                  "immunohistochemistry", "hubble_deep_field", "retina", "cat", "colorwheel")


@lru_cache(maxsize=16)
def session(path: str) -> Any:
    """A cached single-threaded ONNX Runtime CPU session for an FP32 model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the machine's cores are shared; one thread is reproducible
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def run(path: Path, feeds: Feeds) -> Outputs:
    """All outputs of the FP32 model at ``path`` on one feed dict."""
    return [np.asarray(o) for o in session(str(path)).run(None, feeds)]


def input_name(path: Path, index: int = 0) -> str:
    """Name of the model's ``index``-th graph input."""
    return str(session(str(path)).get_inputs()[index].name)


def match_boxes(reference: Sequence[Box], predicted: Sequence[Box],
                iou: float = 0.5) -> np.ndarray:
    """``[tp, fp, fn]`` of one image: one-to-one greedy matching at ``iou`` (via
    :func:`benchmarks.ocr_det_cls.box_f1`, whose F1 is ``2 tp / (n_ref + n_pred)``)."""
    n_ref, n_pred = len(reference), len(predicted)
    if n_ref + n_pred == 0:
        return np.zeros(3)
    tp = round(box_f1([reference], [predicted], iou) * (n_ref + n_pred) / 2)
    return np.array([tp, n_pred - tp, n_ref - tp], dtype=np.float64)


def f1_from_counts(stats: np.ndarray) -> float:
    """F1 from stacked ``[tp, fp, fn]`` rows (1.0 when neither side found anything)."""
    tp, fp, fn = (float(v) for v in np.asarray(stats, dtype=np.float64)[:, :3].sum(axis=0))
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def ratio(stats: np.ndarray) -> float:
    """``sum(column 0) / sum(column 1)`` (0 when the denominator is 0)."""
    num, den = (float(v) for v in np.asarray(stats, dtype=np.float64)[:, :2].sum(axis=0))
    return num / den if den else 0.0


def fingerprint(feeds: Feeds) -> str:
    """A digest of one feed dict (to check that calibration and evaluation do not overlap)."""
    h = hashlib.sha256()
    for name in sorted(feeds):
        arr = np.ascontiguousarray(feeds[name])
        h.update(name.encode() + str(arr.shape).encode() + str(arr.dtype).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@lru_cache(maxsize=len(SKIMAGE_PHOTOS))
def _photo(name: str) -> np.ndarray:
    try:
        from skimage import data
    except ImportError as exc:
        raise ZooAssetError("the vision zoo models need scikit-image: pip install "
                            "scikit-image") from exc
    img = np.asarray(getattr(data, name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.uint8)


def augmented_photo(rng: np.random.Generator, out_hw: tuple[int, int]) -> np.ndarray:
    """One scikit-image photo, randomly cropped (40-100 % of a side), flipped, scaled to
    ``out_hw``, colour-jittered and noised: ``H x W x 3`` uint8 RGB."""
    from PIL import Image

    img = _photo(SKIMAGE_PHOTOS[int(rng.integers(len(SKIMAGE_PHOTOS)))])
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
        (out_hw[1], out_hw[0]), Image.Resampling.BILINEAR), dtype=np.float64)
    gain = rng.uniform(0.7, 1.3, size=3)  # per-channel colour jitter
    out = out * gain + rng.uniform(-25, 25) + rng.normal(0, rng.uniform(0, 10), out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)
