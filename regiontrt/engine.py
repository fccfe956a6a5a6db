"""The :class:`Engine`: a built payload, its region metadata, a guarded ``infer`` and a benchmark.

An engine is created by :meth:`RegionalEngineBuilder.build` or :func:`load_engine`. Its runtime
(ONNX Runtime, or TensorRT on cuda-python buffers) is loaded on first use, so reading metadata
never needs a GPU. :func:`inspect` reads only the header.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from . import artifact
from ._fs import atomic_write_bytes, atomic_write_text
from .backends import Backend, Runner, Timing, get_backend
from .errors import ArtifactError, InputError
from .graph.io import TensorSpec
from .shapes import Bucketing, Profile, select_profile
from .validation import ValidationReport

if TYPE_CHECKING:
    from .report import EngineInfo

PAYLOAD_SUFFIX = {"onnx": ".onnx", "tensorrt-plan": ".plan", "tensorrt-rtx-plan": ".plan"}


@dataclass(frozen=True)
class BenchmarkReport:
    """Latency statistics of :meth:`Engine.benchmark`, in milliseconds.

    ``h2d_ms``/``compute_ms``/``d2h_ms`` are means of each phase where the backend separates
    them (CUDA events on the GPU); on the CPU the whole call is compute.
    """

    backend: str
    timer: str
    iterations: int
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    h2d_ms: float
    compute_ms: float
    d2h_ms: float
    sla_p99_ms: float | None = None

    @property
    def meets_sla(self) -> bool | None:
        """Whether p99 is within the region's SLA (``None`` without one)."""
        return None if self.sla_p99_ms is None else self.p99_ms <= self.sla_p99_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["meets_sla"] = self.meets_sla
        return d


def _shape_dtype(value: Any) -> tuple[tuple[int, ...], np.dtype]:
    cai = getattr(value, "__cuda_array_interface__", None)
    if cai is not None:
        return tuple(int(d) for d in cai["shape"]), np.dtype(cai["typestr"])
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            return tuple(int(d) for d in value.shape), np.dtype(str(value.dtype).split(".")[-1])
        except TypeError:
            pass
    arr = np.asarray(value)
    return arr.shape, arr.dtype


class Engine:
    """A region's built engine.

    Args:
        metadata: the engine's metadata (as written in the container header).
        payload: the backend payload (ONNX bytes or a TensorRT plan).
        backend: backend instance to run it; resolved from the metadata when omitted.
    """

    def __init__(
        self, metadata: Mapping[str, Any], payload: bytes, *, backend: Backend | None = None
    ) -> None:
        self._metadata = copy.deepcopy(dict(metadata))
        self._payload = bytes(payload)
        self._backend = backend
        self._runner: Runner | None = None
        self._lock = threading.Lock()
        try:
            self.inputs = [TensorSpec.from_dict(d) for d in self._metadata["inputs"]]
            self.outputs = [TensorSpec.from_dict(d) for d in self._metadata["outputs"]]
            self.profiles = [Profile.from_dict(p) for p in self._metadata["shape_profiles"]]
            buckets = self._metadata.get("shape_buckets")
            self.bucketing = Bucketing.from_dict(buckets) if buckets else None
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise ArtifactError(f"engine metadata is incomplete: {exc!r}") from None

    # -- metadata ---------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the metadata: region, policy, precision, validation, provenance."""
        return copy.deepcopy(self._metadata)

    @property
    def region(self) -> str:
        return str(self._metadata["region"]["name"])

    @property
    def precision(self) -> str:
        return str(self._metadata["precision"])

    @property
    def backend_name(self) -> str:
        return str(self._metadata["backend"]["name"])

    @property
    def payload(self) -> bytes:
        return self._payload

    def __repr__(self) -> str:
        return (
            f"Engine(region={self.region!r}, precision={self.precision!r}, "
            f"backend={self.backend_name!r})"
        )

    @property
    def report(self) -> ValidationReport:
        """The validation report: every precision tried, its loss against the budget, the choice."""
        return ValidationReport.from_dict(self._metadata.get("validation") or {})

    def _repr_html_(self) -> str:
        from .report import engine_html, html_fragment

        return html_fragment(engine_html(self._metadata, figures=True))

    # -- running ----------------------------------------------------------------------------
    def _get_runner(self) -> Runner:
        with self._lock:
            if self._runner is None:
                backend = self._backend or get_backend(self.backend_name)
                backend.check_compatible(self._metadata)
                self._backend = backend
                self._runner = backend.load(self._payload, self._metadata)
            return self._runner

    def check_inputs(self, feeds: Any) -> dict[str, Any]:
        """Validate names, dtypes, ranks and profile ranges; returns the feeds as a dict.

        Raises:
            InputError: wrong names, dtypes or ranks.
            ShapeOutOfProfile: shapes outside every optimization profile.
        """
        if not isinstance(feeds, Mapping):
            if len(self.inputs) != 1:
                names = ", ".join(s.name for s in self.inputs)
                raise InputError(f"this engine has several inputs ({names}); pass a dict")
            feeds = {self.inputs[0].name: feeds}
        expected = {s.name: s for s in self.inputs}
        missing, unknown = set(expected) - set(feeds), set(feeds) - set(expected)
        if missing or unknown:
            raise InputError(
                f"input names {sorted(feeds)} do not match the engine's {sorted(expected)}"
                + (f"; missing {sorted(missing)}" if missing else "")
                + (f"; unknown {sorted(unknown)}" if unknown else "")
            )
        shapes: dict[str, tuple[int, ...]] = {}
        for name, value in feeds.items():
            spec = expected[name]
            shape, dtype = _shape_dtype(value)
            if dtype != spec.dtype:
                raise InputError(
                    f"input {name!r} has dtype {dtype}, the engine expects {spec.dtype} "
                    f"(convert with .astype(np.{spec.dtype.name}))"
                )
            if len(shape) != spec.rank:
                raise InputError(
                    f"input {name!r} has rank {len(shape)} (shape {shape}), the engine expects "
                    f"rank {spec.rank} (shape {list(spec.shape)})"
                )
            for axis, (got, want) in enumerate(zip(shape, spec.shape)):
                if isinstance(want, int) and got != want:
                    raise InputError(
                        f"input {name!r} axis {axis} is {got}; the engine fixes it at {want}"
                    )
            shapes[name] = shape
        select_profile(self.profiles, shapes)
        return dict(feeds)

    def infer(self, feeds: Any, *, outputs: str = "host") -> dict[str, Any]:
        """Run inference.

        Args:
            feeds: ``{input_name: array}``, or one array for a single-input engine. Arrays on the
                GPU (``__cuda_array_interface__`` or DLPack) are used in place on TensorRT.
            outputs: ``"host"`` for numpy arrays or ``"device"`` for device arrays (GPU only).

        Returns:
            ``{output_name: array}``. With shape buckets, host inputs are padded up to the next
            bucket and the bucketed outputs cut back to the unpadded length.
        """
        info: dict[str, Any] = {}
        if self.bucketing is not None and outputs == "host":
            if not isinstance(feeds, Mapping) and len(self.inputs) == 1:
                feeds = {self.inputs[0].name: feeds}
            if isinstance(feeds, Mapping) and not any(
                hasattr(v, "__cuda_array_interface__") for v in feeds.values()
            ):
                feeds, info = self.bucketing.pad(feeds)
        checked = self.check_inputs(feeds)
        result = self._get_runner().run(checked, outputs=outputs)
        return self.bucketing.unpad(result, info) if info and self.bucketing else result

    def sample_inputs(self, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs at the first profile's ``opt`` shape (``batch`` overrides axis 0)."""
        rng = np.random.default_rng(seed)
        ranges = self.profiles[0].ranges if self.profiles else {}
        feeds = {}
        for spec in self.inputs:
            if spec.name in ranges:
                shape = list(ranges[spec.name].opt)
            else:
                shape = [d if isinstance(d, int) else 1 for d in spec.shape]
            if batch is not None and shape:
                shape[0] = batch
            if spec.dtype.kind == "f":
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        return feeds

    def benchmark(
        self,
        iterations: int = 100,
        warmup: int = 10,
        batch: int | None = None,
        feeds: Mapping[str, Any] | None = None,
    ) -> BenchmarkReport:
        """Time ``iterations`` inferences after ``warmup`` untimed ones.

        The CPU backend times each call with ``time.perf_counter_ns``; TensorRT times host-to-
        device, compute and device-to-host separately with CUDA events.
        """
        if iterations < 1 or warmup < 0:
            raise ValueError("iterations must be >= 1 and warmup >= 0")
        checked = self.check_inputs(feeds if feeds is not None else self.sample_inputs(batch))
        runner = self._get_runner()
        for _ in range(warmup):
            runner.run(checked)
        timings: list[Timing] = [runner.time_once(checked) for _ in range(iterations)]
        total = np.array([t.total_ms for t in timings])
        first = next(iter(checked.values()))
        first_shape = _shape_dtype(first)[0]
        n = int(first_shape[0]) if first_shape else 1
        mean = float(total.mean())
        gpu = self.backend_name != "onnxruntime"
        return BenchmarkReport(
            backend=self.backend_name,
            timer="cuda-events" if gpu else "perf_counter_ns",
            iterations=iterations,
            batch=n,
            p50_ms=float(np.percentile(total, 50)),
            p90_ms=float(np.percentile(total, 90)),
            p99_ms=float(np.percentile(total, 99)),
            mean_ms=mean,
            throughput=n / (mean / 1e3) if mean > 0 else float("inf"),
            h2d_ms=float(np.mean([t.h2d_ms for t in timings])),
            compute_ms=float(np.mean([t.compute_ms for t in timings])),
            d2h_ms=float(np.mean([t.d2h_ms for t in timings])),
            sla_p99_ms=self._metadata["region"].get("latency_p99_ms"),
        )

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the ``.engine`` container atomically."""
        return artifact.write(path, self._metadata, self._payload)

    def to_bytes(self) -> bytes:
        """The container bytes, as :meth:`save` writes them."""
        return artifact.encode(self._metadata, self._payload)

    def export_payload(self, path: str | Path) -> tuple[Path, Path]:
        """Write the bare payload (for trtexec, Triton...) and a JSON sidecar with the metadata.

        Returns:
            ``(payload_path, sidecar_path)``; the sidecar is ``<payload_path>.json``.
        """
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(PAYLOAD_SUFFIX.get(self._metadata["payload_format"], ".bin"))
        sidecar = path.with_name(path.name + ".json")
        meta = self.metadata
        meta["payload_sha256"] = hashlib.sha256(self._payload).hexdigest()
        meta["payload_size"] = len(self._payload)
        atomic_write_bytes(path, self._payload)
        atomic_write_text(sidecar, json.dumps(meta, indent=2, sort_keys=True))
        return path, sidecar

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Free the runtime (buffers, contexts); the engine can be run again later."""
        with self._lock:
            if self._runner is not None:
                self._runner.close()
                self._runner = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def load_engine(path: str | Path, *, backend: str | Backend | None = None) -> Engine:
    """Read and verify an ``.engine`` file.

    Args:
        path: the container file.
        backend: backend to run it with; by default the one that built it.

    Raises:
        ArtifactError: truncated, corrupted or tampered file.
    """
    metadata, payload = artifact.read(path)
    chosen = get_backend(backend) if isinstance(backend, str) else backend
    return Engine(metadata, payload, backend=chosen)


def inspect(path: str | Path, *, verify_payload: bool = True) -> EngineInfo:
    """The engine's metadata, read without a GPU, TensorRT or any runtime.

    The result is a ``dict`` of the header with accessors: ``info.region_name``, ``info.report``
    (the validation report), ``info.region_rules`` (same as ``info["region"]``: the region's
    whole rule set, not only its name) and an HTML view for notebooks.

    Args:
        path: the container file.
        verify_payload: also check the payload digest (reads the whole file).
    """
    from .report import EngineInfo

    return EngineInfo(artifact.verify(path) if verify_payload else artifact.read_header(path))


def summarize(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Human-readable ``(field, value)`` rows of an engine's metadata (for ``inspect``)."""
    region = metadata.get("region", {})
    val = metadata.get("validation") or {}
    calib = metadata.get("calibration") or {}
    rows = [
        ("region", str(region.get("name"))),
        ("precision", str(metadata.get("precision"))),
        ("kept high precision", ", ".join(metadata.get("kept_high_precision", [])) or "-"),
        ("backend", f"{metadata.get('backend', {}).get('name')} "
                    f"{metadata.get('backend', {}).get('version')}"),
        ("target", str(metadata.get("target"))),
        ("metric / budget", f"{val.get('metric')} <= {val.get('budget')}"),
    ]
    for t in val.get("trials", []):
        loss = "-" if t["loss"] is None else f"{t['loss']:.4g}"
        verdict = "accepted" if t["accepted"] else "rejected"
        rows.append((f"  tried {t['precision']}", f"loss {loss} ({verdict}, {t['measured_on']})"))
    rows += [
        ("model sha256", str(metadata.get("model", {}).get("sha256"))),
        ("validation data", str(val.get("data_fingerprint"))),
        ("calibration data", str(calib.get("fingerprint", "-"))),
        ("calibration method", str(calib.get("method", "-"))),
        ("shape profiles", json.dumps(metadata.get("shape_profiles"))),
        ("regiontrt", str(metadata.get("regiontrt_version"))),
        ("created", str(metadata.get("created_at"))),
        ("gpu", str(metadata.get("gpu") or "-")),
    ]
    return rows

