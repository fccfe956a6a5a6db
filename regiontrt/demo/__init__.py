"""The demo model and per-region data shipped with regiontrt.

``regiontrt demo`` builds one engine per preset region from what this package ships, so it needs no
download and no training:

* ``digits_cnn.onnx``: a small residual CNN classifying scikit-learn's 8x8 handwritten digits
  (stem Conv-BN-ReLU; a 16-channel residual block; a 32-channel residual block with a strided
  1x1 projection; GlobalAveragePool, Flatten, Gemm). Input ``input`` float32 ``[N, 1, 8, 8]``,
  output ``logits`` float32 ``[N, 10]``. BatchNormalization is kept as separate nodes: folding it
  is the library's job.
* ``digits.npz``: the digits themselves (``X`` uint8 ``[1797, 8, 8]`` with values 0..16, ``y``
  int64) and the split used everywhere (``train_index``; ``calibration_index`` and
  ``validation_index`` are held out: the model never saw them).
* ``regions.npz``: for each region, ``<REGION>/calibration`` ``[256, 1, 8, 8]`` and
  ``<REGION>/validation`` ``[360, 1, 8, 8]`` float32 images with ``<REGION>/labels`` int64 (of the
  validation images). Every region uses the same held-out digits seen through its own "camera",
  so differences between regions come from the shift alone; a region's calibration and validation
  images are disjoint.

Region shifts
-------------
Pixels are normalised intensities (digit value / 16, so the reference camera maps ink to 1 and
paper to 0). A region's camera is modelled by :func:`apply_shift`::

    y = gain * (0.5 + contrast * (x - 0.5)) + offset + noise_std * N(0, 1)

applied in that order: contrast about mid-grey, then exposure gain, then a black-level offset, then
independent Gaussian read noise per pixel. Nothing is clipped: the values stand for linear sensor
readings after black-level subtraction, which can exceed 1 (exposure headroom) and dip below 0
(read noise). That is what makes a calibration set from one region unfit for another.

============  =====  ======  ========  =========  =========================================
region        gain   offset  contrast  noise_std  camera
============  =====  ======  ========  =========  =========================================
NA            1.10   +0.05   1.00      0.00       mildly brighter
EU            1.00   0.00    0.70      0.00       washed out (lower contrast)
SEA           1.00   0.00    1.00      0.12       noisy sensor
APAC          1.60   0.00    1.20      0.00       strongly brighter, higher contrast
CERTIFIED     1.00   0.00    1.00      0.00       the reference camera (clean)
============  =====  ======  ========  =========  =========================================

``scripts/make_demo.py`` in the repository regenerates every file here reproducibly.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from regiontrt.errors import DataError, InvalidModelError, UnknownRegionError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "REGIONS",
    "SHIFTS",
    "Digits",
    "RegionData",
    "apply_shift",
    "describe_shift",
    "digits",
    "load_model",
    "model_path",
    "region_data",
]

MODEL_FILE = "digits_cnn.onnx"
DIGITS_FILE = "digits.npz"
REGIONS_FILE = "regions.npz"

REGIONS: tuple[str, ...] = ("NA", "EU", "SEA", "APAC", "CERTIFIED")

# The documented camera of each region (see the module docstring); regions.npz records the
# parameters it was made with, and the tests check that they agree with these.
SHIFTS: dict[str, dict[str, float]] = {
    "NA": {"gain": 1.1, "offset": 0.05, "contrast": 1.0, "noise_std": 0.0},
    "EU": {"gain": 1.0, "offset": 0.0, "contrast": 0.7, "noise_std": 0.0},
    "SEA": {"gain": 1.0, "offset": 0.0, "contrast": 1.0, "noise_std": 0.12},
    "APAC": {"gain": 1.6, "offset": 0.0, "contrast": 1.2, "noise_std": 0.0},
    "CERTIFIED": {"gain": 1.0, "offset": 0.0, "contrast": 1.0, "noise_std": 0.0},
}

# Pixel value of full ink in the raw digits (sklearn's digits count ink in 4x4 cells: 0..16).
DIGITS_MAX = 16.0

# Keeps files extracted from a zipped install alive until the interpreter exits.
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


@dataclass(frozen=True)
class RegionData:
    """One region's shipped data.

    Attributes:
        calibration: float32 ``[n_cal, 1, 8, 8]`` images for INT8 calibration.
        validation: float32 ``[n_val, 1, 8, 8]`` images for accuracy validation.
        labels: int64 ``[n_val]`` digit of each validation image.
        calibration_index: int64 indices of the calibration images into :func:`digits`.
        validation_index: int64 indices of the validation images into :func:`digits`.
        shift: the camera parameters the images were made with (keywords of :func:`apply_shift`).
    """

    calibration: np.ndarray
    validation: np.ndarray
    labels: np.ndarray
    calibration_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    validation_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    shift: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Digits:
    """The bundled digits and their split.

    Attributes:
        images: float32 ``[1797, 1, 8, 8]`` in [0, 1] (raw value / 16), the reference camera.
        labels: int64 ``[1797]``.
        train_index: indices the demo model was trained on.
        calibration_index: held-out indices used for every region's calibration set.
        validation_index: held-out indices used for every region's validation set.
    """

    images: np.ndarray
    labels: np.ndarray
    train_index: np.ndarray
    calibration_index: np.ndarray
    validation_index: np.ndarray


def _resource(name: str) -> Path:
    res = resources.files(__name__).joinpath(name)
    path = _extracted.enter_context(resources.as_file(res))
    if not path.is_file():
        raise DataError(
            f"the demo file {name!r} is missing from the regiontrt package ({path}); "
            "regenerate it with `python scripts/make_demo.py` from a source checkout"
        )
    return path


def model_path() -> Path:
    """Path of the shipped demo model ``digits_cnn.onnx``.

    Raises:
        InvalidModelError: the file is missing from the installed package.
    """
    try:
        return _resource(MODEL_FILE)
    except DataError as exc:
        raise InvalidModelError(str(exc)) from None


def load_model() -> onnx.ModelProto:
    """The shipped demo model, loaded and checked by the ONNX checker."""
    from regiontrt.graph.io import load_model as _load

    return _load(model_path())


@functools.cache
def _npz(name: str) -> dict[str, np.ndarray]:
    with np.load(_resource(name), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    for arr in arrays.values():
        arr.setflags(write=False)  # cached: callers get copies
    return arrays


def digits() -> Digits:
    """The bundled 8x8 digits (reference camera, values in [0, 1]) and the demo's split."""
    d = _npz(DIGITS_FILE)
    images = (d["X"].astype(np.float32) / np.float32(DIGITS_MAX))[:, None, :, :]
    return Digits(
        images=images,
        labels=d["y"].astype(np.int64),
        train_index=d["train_index"].copy(),
        calibration_index=d["calibration_index"].copy(),
        validation_index=d["validation_index"].copy(),
    )


def _region_name(region: str) -> str:
    if not isinstance(region, str) or region.upper() not in REGIONS:
        raise UnknownRegionError(
            f"no demo data for region {region!r}; the demo ships {', '.join(REGIONS)}"
        )
    return region.upper()


def region_data(region: str) -> RegionData:
    """The shipped calibration and validation data of a preset region (case-insensitive).

    Raises:
        UnknownRegionError: ``region`` is not one of :data:`REGIONS`.
    """
    name = _region_name(region)
    d = _npz(REGIONS_FILE)
    keys = ("gain", "offset", "contrast", "noise_std")
    shift = dict(zip(keys, (float(v) for v in d[f"{name}/shift"]), strict=True))
    return RegionData(
        calibration=d[f"{name}/calibration"].copy(),
        validation=d[f"{name}/validation"].copy(),
        labels=d[f"{name}/labels"].copy(),
        calibration_index=d[f"{name}/calibration_index"].copy(),
        validation_index=d[f"{name}/validation_index"].copy(),
        shift=shift,
    )


def apply_shift(
    images: np.ndarray,
    *,
    gain: float = 1.0,
    offset: float = 0.0,
    contrast: float = 1.0,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """See ``images`` through another camera: ``gain*(0.5 + contrast*(x - 0.5)) + offset + noise``.

    Args:
        images: float images of the reference camera, values in about [0, 1]; any shape.
        gain: exposure gain (> 0); 1.6 makes ink 60 % brighter.
        offset: black-level offset added to every pixel.
        contrast: contrast about mid-grey 0.5 (>= 0); below 1 washes the image out.
        noise_std: standard deviation of independent Gaussian read noise per pixel (>= 0).
        rng: the random generator for the noise; only drawn from when ``noise_std > 0``, and a
            fresh unseeded one when omitted (pass one for reproducible data).

    Returns:
        A new float32 array of the same shape; nothing is clipped.

    Raises:
        DataError: non-numeric images or out-of-range parameters.
    """
    x = np.asarray(images)
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"apply_shift needs numeric images, got dtype {x.dtype}")
    params = {"gain": gain, "offset": offset, "contrast": contrast, "noise_std": noise_std}
    for key, value in params.items():
        if not math.isfinite(value):
            raise DataError(f"apply_shift: {key} must be finite, got {value!r}")
    if gain <= 0 or contrast < 0 or noise_std < 0:
        raise DataError(
            f"apply_shift: need gain > 0, contrast >= 0 and noise_std >= 0, got {params}"
        )
    out = np.float32(gain) * (np.float32(0.5) + np.float32(contrast) * (x.astype(np.float32) - 0.5))
    out += np.float32(offset)
    if noise_std > 0:
        gen = rng if rng is not None else np.random.default_rng()
        out += gen.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_std)
    return out.astype(np.float32, copy=False)


def describe_shift(region_or_params: str | dict[str, float]) -> str:
    """One line saying what a region's camera does, e.g. ``"gain x1.6, contrast x1.2"``.

    Raises:
        UnknownRegionError: an unknown region name.
    """
    if isinstance(region_or_params, str):
        params = SHIFTS[_region_name(region_or_params)]
    else:
        params = region_or_params
    parts = []
    if params.get("gain", 1.0) != 1.0:
        parts.append(f"gain x{params['gain']:g}")
    if params.get("contrast", 1.0) != 1.0:
        parts.append(f"contrast x{params['contrast']:g}")
    if params.get("offset", 0.0) != 0.0:
        parts.append(f"offset {params['offset']:+g}")
    if params.get("noise_std", 0.0) != 0.0:
        parts.append(f"noise std {params['noise_std']:g}")
    return ", ".join(parts) if parts else "clean (reference camera)"
