"""Which int8 arithmetic an ONNX Runtime session performs, and what it depends on.

ONNX Runtime's CPU provider fuses ``DequantizeLinear -> Conv/MatMul -> QuantizeLinear`` into its
own integer kernels (``QLinearConv``, ``MatMulIntegerToFloat``, ``QLinearMatMul``, ...). Their
u8 x s8 products are summed in 16-bit pairs on CPUs without VNNI (``vpmaddubsw`` saturates), in
32 bits with AVX-512 VNNI, AVX-VNNI or AMX: the same graph gives different int8 results on
different machines. TensorRT never computes that way: it runs Q/DQ with int32 accumulation.

Two arithmetics, so a decision names the one it was made on:

* :attr:`Int8Arithmetic.TENSORRT` (``"tensorrt"``): the session option
  ``session.disable_quant_qdq = 1`` keeps Q/DQ nodes unfused, so ONNX Runtime runs them as float
  fake-quantisation (quantise, round, clip, dequantise) around float kernels: the arithmetic
  TensorRT performs, the same on any CPU up to float rounding.
* :attr:`Int8Arithmetic.FUSED` (``"fused"``): ONNX Runtime's own int8 kernels on this CPU, what an
  ONNX Runtime engine runs by default; fast, and its results depend on the CPU features that
  :func:`int8_cpu_features` reports.

Every ONNX Runtime session regiontrt opens to judge a precision takes its options from
:func:`session_options`, so no check runs on an arithmetic it did not name.
"""

from __future__ import annotations

import enum
import functools
import platform
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from regiontrt.graph.io import TensorSpec

#: CPU flags (Linux ``/proc/cpuinfo`` names) that change what ONNX Runtime's fused int8 kernels
#: compute or which kernel runs: the dot-product instructions and their vector widths.
INT8_CPU_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx_vnni_int8",
    "amx_int8", "amx_tile", "asimddp", "i8mm", "sve",
)


class Int8Arithmetic(str, enum.Enum):
    """How Q/DQ graphs are evaluated on ONNX Runtime (see the module docstring)."""

    TENSORRT = "tensorrt"
    FUSED = "fused"

    @classmethod
    def parse(cls, value: Any) -> Int8Arithmetic:
        """``value`` as an arithmetic; a ``ValueError`` names the choices."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(
                f"int8 arithmetic must be one of {', '.join(a.value for a in cls)}, got {value!r}"
            ) from None

    @property
    def portable(self) -> bool:
        """Whether results are the same on every CPU (up to float rounding)."""
        return self is Int8Arithmetic.TENSORRT


_SEALED_KEY = "session.model_external_initializers_file_folder_path"
_EMPTY_DIR: list[str] = []


def no_spinning(options: Any) -> Any:
    """Turn off the spinning of ONNX Runtime's idle intra-op threads in ``options``: they
    busy-wait between runs on every core by default, taking the cores the rest of the process
    needs (calibration's overlapped folding, a server's event loop, its clients)."""
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def seal(options: Any) -> Any:
    """Point ONNX Runtime's external-data folder at an empty private folder, so no model handed
    over as bytes can make it read a file (ONNX Runtime resolves some external-data locations,
    e.g. in function attribute defaults, against the working directory). Payloads are checked
    for external data before this; this makes the working directory irrelevant regardless."""
    try:
        folder = options.get_session_config_entry(_SEALED_KEY)
    except Exception:  # not set yet: ONNX Runtime raises for a missing key
        folder = ""
    if not folder:
        if not _EMPTY_DIR:
            _EMPTY_DIR.append(tempfile.mkdtemp(prefix="regiontrt-no-external-data-"))
        options.add_session_config_entry(_SEALED_KEY, _EMPTY_DIR[0])
    return options


def session_options(arithmetic: Int8Arithmetic | str = Int8Arithmetic.TENSORRT, *,
                    threads: int = 0, options: Any = None) -> Any:
    """``onnxruntime.SessionOptions`` that evaluate Q/DQ in ``arithmetic``.

    Args:
        arithmetic: :attr:`Int8Arithmetic.TENSORRT` (unfused Q/DQ) or ``FUSED``.
        threads: intra-op threads (0: ONNX Runtime's default).
        options: options to complete instead of new ones.
    """
    import onnxruntime as ort

    so = options if options is not None else ort.SessionOptions()
    so.log_severity_level = 3
    seal(so)
    if threads:
        so.intra_op_num_threads = int(threads)
    if Int8Arithmetic.parse(arithmetic) is Int8Arithmetic.TENSORRT:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return so


#: numpy's CPUID names for the flags of :data:`INT8_CPU_FLAGS` it detects.
_NUMPY_NAMES = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                "AVX512VNNI": "avx512_vnni", "ASIMDDP": "asimddp", "SVE": "sve"}


def _numpy_flags() -> frozenset[str] | None:
    """The flags numpy detected with CPUID at import (``None`` where it does not say)."""
    import importlib

    features: dict[str, bool] | None = None
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # 2.x, 1.x
        try:
            features = importlib.import_module(module).__cpu_features__
            break
        except (ImportError, AttributeError):
            continue
    if features is None:
        return None
    return frozenset(ours for name, ours in _NUMPY_NAMES.items() if features.get(name))


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def _flags() -> frozenset[str]:
    """This CPU's int8 flags: CPUID's as numpy read them, and from ``/proc/cpuinfo`` the ones
    numpy does not detect (AVX-VNNI, AMX, I8MM), trusted only where it agrees with CPUID on
    the others: under an emulator ``/proc/cpuinfo`` describes the host, not the CPU the
    program sees (and runs ONNX Runtime's kernels on)."""
    cpuinfo = _cpuinfo_flags().intersection(INT8_CPU_FLAGS)
    cpuid = _numpy_flags()
    if cpuid is None:
        return cpuinfo
    known = frozenset(_NUMPY_NAMES.values())
    if cpuinfo.intersection(known) != cpuid:
        return cpuid
    return cpuid | (cpuinfo - known)


def int8_cpu_features() -> dict[str, Any]:
    """This machine's CPU features that change ONNX Runtime's fused int8 results.

    Returns:
        ``{"machine": ..., "flags": [...]}``: the architecture and the subset of
        :data:`INT8_CPU_FLAGS` present.
    """
    return {"machine": platform.machine().lower(), "flags": sorted(_flags())}


def evaluation_record(arithmetic: Int8Arithmetic | str) -> dict[str, Any]:
    """What a precision check ran on, for an engine's metadata (``evaluation``)."""
    import onnxruntime

    mode = Int8Arithmetic.parse(arithmetic)
    return {
        "int8_arithmetic": mode.value,
        "portable": mode.portable,
        "onnxruntime": str(onnxruntime.__version__),
        "cpu": int8_cpu_features(),
    }


def cpu_differences(recorded: Any) -> list[str]:
    """How this CPU differs from a recorded :func:`int8_cpu_features` in what int8 depends on.

    An empty list when they match or when nothing usable was recorded.
    """
    if not isinstance(recorded, dict):
        return []
    here = int8_cpu_features()
    out = []
    if isinstance(recorded.get("machine"), str) and recorded["machine"] != here["machine"]:
        out.append(f"architecture {recorded['machine']} there, {here['machine']} here")
    theirs = recorded.get("flags")
    if isinstance(theirs, list) and all(isinstance(f, str) for f in theirs):
        gone = sorted(set(theirs) - set(here["flags"]))
        new = sorted(set(here["flags"]) - set(theirs))
        if gone:
            out.append("missing here: " + ", ".join(gone))
        if new:
            out.append("only here: " + ", ".join(new))
    return out


def make_session(model: onnx.ModelProto | bytes, options: Any = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU for ``model``."""
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString(deterministic=True)
    so = seal(options if options is not None else ort.SessionOptions())
    so.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])


def cast_feeds(feeds: Mapping[str, Any], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Contiguous numpy arrays in the declared dtypes (used by host-side runners)."""
    by_name = {s.name: s for s in specs}
    # np.require keeps 0-d inputs 0-d (np.ascontiguousarray would make them 1-d).
    return {
        name: np.require(np.asarray(value, dtype=by_name[name].dtype), requirements="C")
        for name, value in feeds.items()
    }
