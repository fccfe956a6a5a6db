"""PP-OCRv4's recogniser, detector and direction classifier from the ``rapidocr-onnxruntime`` wheel.

The data and post-processing are those of :mod:`benchmarks.ocr` (rendered noisy text lines, greedy
CTC decoding, CER) and :mod:`benchmarks.ocr_det_cls` (rendered pages, DB boxes, box F1, lines
turned by 180 degrees); this module only wraps them in the :class:`ZooModel` interface. The
wheel is pinned and downloaded with ``pip download`` so the zoo works where it is not installed.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from benchmarks import ocr, ocr_det_cls
from benchmarks.zoo._common import f1_from_counts, match_boxes, ratio
from benchmarks.zoo.base import Outputs, Split, Wheel, ZooModel

_WHEEL = dict(requirement="rapidocr-onnxruntime==1.4.4",
              filename="rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
              sha256="971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf")
REC = Wheel(**_WHEEL, member=f"rapidocr_onnxruntime/models/{ocr.REC_MODEL_NAME}")
DET = Wheel(**_WHEEL, member=f"rapidocr_onnxruntime/models/{ocr_det_cls.DET_MODEL_NAME}")
CLS = Wheel(**_WHEEL, member=f"rapidocr_onnxruntime/models/{ocr_det_cls.CLS_MODEL_NAME}")
#: One width for every calibration line of the recogniser: ONNX Runtime's Entropy and
#: Percentile calibrators stack all batches' activations into one array and fail on the
#: varying widths of bucketed lines (every tool gets these same lines).
CALIBRATION_WIDTH = 640


class PPOCRRec(ZooModel):
    """SVTR-LCNet CTC recogniser; per line ``[edits, ref_chars]`` of the candidate's decode
    against FP32's decode (accents stripped), aggregated as CER = sum / sum."""

    name = "ppocr-rec"
    family = "ocr-recognition"
    metric = "CER vs FP32"
    higher_is_better = False

    def model_path(self) -> Path:
        return REC.fetch()

    @cached_property
    def chars(self) -> list[str]:
        """The recogniser's CTC alphabet (from the model's metadata)."""
        return ocr.charset(self.model_path())

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        """Lines of Latin and CJK text (half each), one line per feed; evaluation widths
        bucketed by 160, calibration lines all :data:`CALIBRATION_WIDTH` wide."""
        sets = ocr.make_ocr_sets(seed=seed, n_calibration=n_calibration,
                                 n_held_out=n_evaluation, batch_size=1,
                                 calibration_width=CALIBRATION_WIDTH)
        return Split(calibration=sets.calibration,
                     evaluation=[{sets.input_name: b.x} for b in sets.held_out])

    def sample_stats(self, reference: Outputs, candidate: Outputs) -> np.ndarray:
        ref = ocr.normalize_text(ocr.ctc_decode(reference[0], self.chars))
        hyp = ocr.normalize_text(ocr.ctc_decode(candidate[0], self.chars))
        return np.array([ocr.levenshtein(ref, hyp), len(ref)], dtype=np.float64)

    def aggregate(self, stats: np.ndarray) -> float:
        return ratio(stats)


class PPOCRDet(ZooModel):
    """DBNet text detector; per page ``[tp, fp, fn]`` of the candidate's DB boxes against FP32's
    at IoU 0.5, aggregated as F1."""

    name = "ppocr-det"
    family = "ocr-detection (dense probability map)"
    metric = "box F1@IoU0.5 vs FP32"

    def model_path(self) -> Path:
        return DET.fetch()

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        """Rendered 256 x 320 pages with 4-7 noisy lines each."""
        return Split(
            calibration=[{"x": p} for p in ocr_det_cls.render_pages(n_calibration, 2 * seed)],
            evaluation=[{"x": p} for p in ocr_det_cls.render_pages(n_evaluation, 2 * seed + 1)])

    def sample_stats(self, reference: Outputs, candidate: Outputs) -> np.ndarray:
        ref = ocr_det_cls.db_boxes(np.asarray(reference[0])[0, 0])
        hyp = ocr_det_cls.db_boxes(np.asarray(candidate[0])[0, 0])
        return match_boxes(ref, hyp)

    def aggregate(self, stats: np.ndarray) -> float:
        return f1_from_counts(stats)


class PPOCRCls(ZooModel):
    """MobileNetV3 0/180-degree text direction classifier; per line 1 when the candidate's
    top-1 equals FP32's."""

    name = "ppocr-cls"
    family = "classifier (MobileNetV3, text direction)"
    metric = "top-1 agreement with FP32"

    def model_path(self) -> Path:
        return CLS.fetch()

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        """Rendered lines resized to 48 x 192, half turned by 180 degrees."""
        cal, _ = ocr_det_cls.cls_lines(n_calibration, 2 * seed)
        ev, _ = ocr_det_cls.cls_lines(n_evaluation, 2 * seed + 1)
        return Split(calibration=[{"x": x[None]} for x in cal],
                     evaluation=[{"x": x[None]} for x in ev])

    def sample_stats(self, reference: Outputs, candidate: Outputs) -> np.ndarray:
        return np.array([float(np.argmax(reference[0]) == np.argmax(candidate[0]))])


MODELS: list[ZooModel] = [PPOCRRec(), PPOCRDet(), PPOCRCls()]
