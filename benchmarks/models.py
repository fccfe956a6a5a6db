"""Models and data for the quantization benchmarks.

* ``demo``: the model shipped in :mod:`regiontrt.demo` (8x8 digits).
* ``resnet13``: a ResNet-style CNN for the same digits upsampled to 16x16: a stem Conv-BN-ReLU
  and three stages (16, 32, 64 channels) of two basic residual blocks each (Conv-BN-ReLU, Conv-BN,
  Add, ReLU); the first block of stages 2 and 3 is strided with a 1x1 Conv-BN projection. That is
  13 3x3 Conv-BN layers (plus 2 1x1 projections) and 6 residual Adds, then GlobalAveragePool,
  Flatten, Gemm. Input ``input`` float32 ``[N, 1, 16, 16]``, output ``logits`` ``[N, 10]``.
  It is trained once with the repository's numpy trainer (``scripts/_numpy_*.py``, on the demo's
  training split) and cached at ``benchmarks/cache/resnet13.onnx``, so benchmarks never retrain.

:func:`benchmark_data` gives calibration and held-out arrays that neither model was trained on.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from regiontrt.demo import SHIFTS, apply_shift, digits, region_data
from regiontrt.demo import load_model as load_demo_model
from regiontrt.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
RESNET13_PATH = ROOT / "benchmarks" / "cache" / "resnet13.onnx"
RESNET13_SEED = 1313
RESNET13_EPOCHS = 20
UPSAMPLE = 2  # 8x8 digits -> 16x16
MODELS = ("demo", "resnet13")


def _trainer() -> tuple[ModuleType, ModuleType]:
    """The numpy trainer's modules from ``scripts/`` (not a package: its folder joins the path)."""
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module("_numpy_cnn"), importlib.import_module("_numpy_train")


def upsample(images: np.ndarray, factor: int = UPSAMPLE) -> np.ndarray:
    """Nearest-neighbour upsampling of NCHW images (each pixel becomes a factor x factor block)."""
    return np.ascontiguousarray(images.repeat(factor, axis=2).repeat(factor, axis=3))


def resnet13(
    path: Path | None = None, *, epochs: int = RESNET13_EPOCHS, verbose: bool = False
) -> onnx.ModelProto:
    """The ResNet-13-style benchmark model, trained on first use and cached as ONNX.

    Args:
        path: where the trained model is cached (default ``benchmarks/cache/resnet13.onnx``). An
            existing file is loaded as is; otherwise the model is trained (about a minute on two
            cores) and written there atomically.
        epochs: training epochs when the cache is missing.
        verbose: print the training progress.
    """
    path = RESNET13_PATH if path is None else Path(path)
    if path.is_file():
        return onnx.load(str(path))
    nc, nt = _trainer()
    d = digits()
    x, y = upsample(d.images[d.train_index]), d.labels[d.train_index]
    net = nc.resnet((16, 32, 64), 2, seed=RESNET13_SEED)

    def jitter(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Translate and re-expose at 8x8 (the digits' own resolution), then upsample.
        return upsample(nt.jitter(batch[:, :, ::UPSAMPLE, ::UPSAMPLE], rng))

    cfg = nt.TrainConfig(
        epochs=epochs,
        batch=64,
        lr=3e-3,
        seed=RESNET13_SEED,
        augment=jitter,
        log=print if verbose else None,
    )
    seconds = nt.train(net, x, y, cfg)
    held = np.concatenate([d.calibration_index, d.validation_index])
    acc = float((net.predict(upsample(d.images[held])).argmax(1) == d.labels[held]).mean())
    model = nc.to_onnx(
        net,
        height=8 * UPSAMPLE,
        width=8 * UPSAMPLE,
        graph_name="resnet13",
        producer="regiontrt-benchmarks",
        doc="ResNet-style CNN (13 3x3 Conv-BN, 6 residual Adds) for 16x16 upsampled digits.",
        metadata={
            "description": "regiontrt benchmark model: ResNet-style CNN, stages 16/32/64 x 2 "
            "basic blocks, for scikit-learn's digits upsampled to 16x16",
            "training": f"numpy AdamW, {epochs} epochs, seed {RESNET13_SEED}",
            "heldout_top1": f"{acc:.4f}",
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString(deterministic=True))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if verbose:
        print(f"resnet13: trained in {seconds:.1f} s, held-out top-1 {acc:.2%}, wrote {path}")
    return model


def load_benchmark_model(name: str) -> onnx.ModelProto:
    """``"demo"`` or ``"resnet13"``."""
    if name == "demo":
        return load_demo_model()
    if name == "resnet13":
        return resnet13()
    raise DataError(f"unknown benchmark model {name!r}; known: {', '.join(MODELS)}")


@dataclass(frozen=True)
class BenchmarkData:
    """Calibration and held-out inputs for one model, none of them seen in training.

    Attributes:
        calibration: float32 ``[n_calibration, 1, H, W]``.
        heldout: float32 ``[n_heldout, 1, H, W]``, disjoint from the calibration images.
        labels: int64 ``[n_heldout]``.
    """

    calibration: np.ndarray
    heldout: np.ndarray
    labels: np.ndarray


def benchmark_data(
    model: str = "resnet13", *, region: str = "CERTIFIED", n_calibration: int = 256, seed: int = 0
) -> BenchmarkData:
    """Calibration and held-out data of a demo region, sized for ``model``.

    The held-out set is the region's 360 validation images. The first (up to) 256 calibration
    samples are the region's shipped calibration images; beyond those (for memory-scaling runs up to
    1024 and more) the same held-out calibration digits are shot again through the region's camera
    with a small random exposure change (gain x U(0.9, 1.1), offset U(-0.03, 0.03), plus read noise
    0.02), so every sample is new data from the same distribution and none is a validation image.

    Args:
        model: ``"demo"`` (8x8) or ``"resnet13"`` (16x16, upsampled).
        region: one of :data:`regiontrt.demo.REGIONS`.
        n_calibration: number of calibration samples (>= 1).
        seed: seed of the extra calibration samples.

    Raises:
        DataError: an unknown model or ``n_calibration < 1``.
        UnknownRegionError: an unknown region.
    """
    if model not in MODELS:
        raise DataError(f"unknown benchmark model {model!r}; known: {', '.join(MODELS)}")
    if n_calibration < 1:
        raise DataError(f"n_calibration must be >= 1, got {n_calibration}")
    rd = region_data(region)
    parts = [rd.calibration[:n_calibration]]
    missing = n_calibration - len(parts[0])
    if missing > 0:
        rng = np.random.default_rng([seed, n_calibration])
        clean = digits().images[rd.calibration_index]
        picks = rng.integers(0, len(clean), missing)
        params = dict(SHIFTS[region.upper()])
        gains = rng.uniform(0.9, 1.1, missing)
        offsets = rng.uniform(-0.03, 0.03, missing)
        extra = np.empty((missing, *clean.shape[1:]), np.float32)
        for i, (pick, gain, offset) in enumerate(zip(picks, gains, offsets, strict=True)):
            p = {
                **params,
                "gain": params["gain"] * gain,
                "offset": params["offset"] + offset,
                "noise_std": float(np.hypot(params["noise_std"], 0.02)),
            }
            extra[i] = apply_shift(clean[pick], rng=rng, **p)
        parts.append(extra)
    calibration, heldout = np.concatenate(parts), rd.validation
    if model == "resnet13":
        calibration, heldout = upsample(calibration), upsample(heldout)
    return BenchmarkData(calibration=calibration, heldout=heldout, labels=rd.labels)


if __name__ == "__main__":
    started = time.perf_counter()
    m = resnet13(verbose=True)
    print(f"resnet13 ready in {time.perf_counter() - started:.1f} s: {len(m.graph.node)} nodes")
