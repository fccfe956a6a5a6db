"""The :class:`Engine`: a built payload, its region metadata, a guarded ``infer`` and a benchmark.

An engine is created by :meth:`RegionalEngineBuilder.build` or :func:`load_engine`. Its runtime
(ONNX Runtime, or TensorRT on cuda-python buffers) is loaded on first use, so reading metadata
never needs a GPU. :func:`inspect` reads only the header.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from regiontrt import _display
from regiontrt.backends import Backend, Runner, get_backend, load_payload
from regiontrt.backends.guard import check_names, check_tensor
from regiontrt.errors import (
    ArtifactError,
    EngineRuntimeError,
    InputError,
    InvalidArgumentError,
    PolicyViolation,
    RegionTRTError,
)
from regiontrt.graph.io import TensorSpec
from regiontrt.precision.compliance import ComplianceReport, check_artifact
from regiontrt.precision.validation import PrecisionTrial, ValidationReport
from regiontrt.precision.validator import validate_engine
from regiontrt.runtime import artifact
from regiontrt.runtime.arrays import has_data as _has_data
from regiontrt.runtime.arrays import shape_dtype as _shape_dtype
from regiontrt.runtime.arrays import without_pinned
from regiontrt.runtime.benchmarking import BenchmarkReport, timed_calls, timings_report
from regiontrt.runtime.export import export_payload
from regiontrt.runtime.sampling import sample_inputs
from regiontrt.runtime.schema import check_payload, validate_header
from regiontrt.shapes.buckets import Bucketing
from regiontrt.shapes.profiles import Profile, select_profile

#: The provenance of an engine built in this process (its header's records are first-hand).
BUILT_HERE = "built in this process"
#: The provenance of an engine built by this process's fleet run (on its own Dask workers).
FLEET_BUILT = "built by this fleet run"
#: Largest total size of the inputs :meth:`Engine.sample_inputs` generates.
MAX_SAMPLE_BYTES = 1 << 30


class Engine:
    """A region's built engine.

    The payload is checked on construction as :func:`load_engine` checks a file: an ONNX payload
    is parsed and scanned (it must be self-contained and hold nothing its region forbids), a
    TensorRT plan must not be an ONNX model under a plan label, and, for a region that forbids a
    precision, a plan is accepted only with a ``provenance`` (a plan cannot be opened without
    TensorRT, so its build records are only as good as where the header came from).

    Args:
        metadata: the engine's metadata (as written in the container header).
        payload: the backend payload (ONNX bytes or a TensorRT plan).
        backend: backend instance to run it; resolved from the metadata when omitted.
        provenance: who vouches for the header's build records: regiontrt passes ``"built in
            this process"`` or ``"signature verified with <key>"``. Pass it only for metadata you
            produced or verified yourself.

    Raises:
        ArtifactError: metadata outside the schema, or a payload that does not match it.
        PolicyViolation: the payload holds (or, for a plan, cannot be shown not to hold) a
            precision the region forbids.
    """

    def __init__(
        self, metadata: Mapping[str, Any], payload: bytes, *, backend: Backend | None = None,
        provenance: str | None = None,
    ) -> None:
        try:
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
            self._metadata = copy.deepcopy(dict(metadata))
            self._payload = bytes(payload)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ArtifactError(
                "Engine needs a metadata mapping and payload bytes (use load_engine for files)"
            ) from exc
        validate_header(self._metadata, known_backend=backend is None, payload=False)
        self._backend = backend
        self._runner: Runner | None = None
        self._lock = threading.Lock()
        self._passed_inputs: set[tuple[Any, ...]] = set()  # (name, shape, dtype) sets checked
        self.provenance = provenance
        # Checked here, not on first use: infer, serve and export_payload must never see a
        # payload save() would refuse.
        self._compliance = check_artifact(self._metadata,
                                          check_payload(self._metadata, self._payload),
                                          provenance=provenance)
        if not self._compliance.compliant:
            raise PolicyViolation(f"refused: {self._compliance.summary()}",
                                  region=self.region)
        try:
            self.inputs = [TensorSpec.from_dict(d) for d in self._metadata["inputs"]]
            self.outputs = [TensorSpec.from_dict(d) for d in self._metadata["outputs"]]
            self.profiles = [Profile.from_dict(p) for p in self._metadata["shape_profiles"]]
            buckets = self._metadata.get("shape_buckets")
            self.bucketing = Bucketing.from_dict(buckets) if buckets else None
            pinned = self._metadata.get("pinned_inputs") or {}  # accepted at their value only
            self._pinned = {str(k): np.asarray(v) for k, v in pinned.items()}
        except (KeyError, TypeError, ValueError, AssertionError, OverflowError) as exc:
            raise ArtifactError(f"engine metadata is inconsistent: {exc}") from exc

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

    def validate(self, data: Any, reference: Any) -> PrecisionTrial:
        """Re-check this engine as it runs here, on this site's ``data``, against ``reference``
        (the FP32 model), with the metric and budget it was built under: see
        :func:`regiontrt.precision.validator.validate_engine`."""
        return validate_engine(self, data, reference)

    def _repr_html_(self) -> str | None:
        return _display.html(self)

    # -- running ----------------------------------------------------------------------------
    def _get_runner(self) -> Runner:
        with self._lock:
            if self._runner is None:
                backend = self._backend or get_backend(self.backend_name)
                fmt = self._metadata["payload_format"]
                if getattr(backend, "payload_format", fmt) != fmt:
                    raise ArtifactError(f"the {backend.name} backend runs "
                                        f"{backend.payload_format!r} payloads; this engine's "
                                        f"payload is {fmt!r} (refused before loading)")
                try:  # the provenance is what vouches for a plan that carries host code
                    backend.check_compatible(self._metadata)
                    self._runner = load_payload(backend, self._payload, self._metadata,
                                                self.provenance)
                except RegionTRTError:
                    raise
                except Exception as exc:  # the runtime's own errors, on a payload it refuses
                    raise EngineRuntimeError(f"the {backend.name} backend cannot load this "
                                             f"engine's payload: {exc}") from exc
                self._backend = backend
            return self._runner

    def check_inputs(self, feeds: Any, *, profiles: bool = True) -> dict[str, Any]:
        """Validate names, dtypes, ranks and (``profiles``) profile ranges; returns a dict.

        Raises:
            InputError: wrong names, dtypes or ranks.
            ShapeOutOfProfile: shapes outside every optimization profile.
            PinnedInputMismatch: a pinned input holds another value (at its own: dropped).
        """
        if not isinstance(feeds, Mapping):
            if len(self.inputs) != 1:
                names = ", ".join(s.name for s in self.inputs)
                raise InputError(f"this engine has several inputs ({names}); pass a dict")
            feeds = {self.inputs[0].name: feeds}
        feeds = without_pinned(feeds, self._pinned) if self._pinned else feeds
        passed = self._passed_inputs
        # numpy feeds that passed before skip the checks: they depend on name, shape, dtype alone
        key = tuple((n, v.shape, v.dtype) for n, v in feeds.items() if type(v) is np.ndarray)
        if profiles and len(key) == len(feeds) and key in passed:
            return dict(feeds)
        expected = {s.name: s for s in self.inputs}
        check_names(feeds, self.inputs)
        shapes: dict[str, tuple[int, ...]] = {}
        for name, value in feeds.items():
            if not _has_data(value):
                raise InputError(
                    f"input {name!r} is a {type(value).__name__} with a shape but no data: pass "
                    "a numpy array, a CUDA array (__cuda_array_interface__) or a DLPack tensor"
                )
            try:
                shape, dtype = _shape_dtype(value)
            except (TypeError, ValueError, KeyError) as exc:
                raise InputError(f"input {name!r} cannot be read as an array: {exc}") from exc
            check_tensor(expected[name], shape, dtype,
                         device=hasattr(value, "__cuda_array_interface__"))
            shapes[name] = shape
        if profiles:
            select_profile(self.profiles, shapes)
            if len(key) == len(feeds) and len(passed) < 1024:  # bounded: beyond, re-check
                passed.add(key)
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
                # names, dtypes, ranks (pinned inputs dropped) before padding
                feeds, info = self.bucketing.pad(self.check_inputs(feeds, profiles=False))
        checked = self.check_inputs(feeds)
        runner = self._runner or self._get_runner()  # loaded once; the lock only until then
        try:
            result = runner.run(checked, outputs=outputs)
            return self.bucketing.unpad(result, info) if info and self.bucketing else result
        except RegionTRTError:
            raise
        except Exception as exc:  # the runtime failed on inputs that passed every check
            raise EngineRuntimeError(f"the {self.backend_name} runtime failed: {exc}") from exc

    def sample_inputs(self, batch: int | None = None, seed: int = 0,
                      shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
        """Random inputs at the first profile's ``opt`` shape.

        Args:
            batch: overrides axis 0 of every input.
            seed: seed of the random values.
            shapes: ``{input: shape}`` to use instead of the profile's ``opt`` shape.

        Raises:
            InvalidArgumentError: ``batch`` is not a positive integer.
            InputError: an input has a dynamic dimension other than axis 0 (which runs at
                ``batch``, default 1) that neither a profile nor ``shapes`` fixes (guessing 1
                would time a meaningless input), or the inputs would exceed
                :data:`MAX_SAMPLE_BYTES`.
            ShapeOutOfProfile: the shapes lie outside every profile (checked before allocating).
        """
        return sample_inputs(self.inputs, self.profiles, batch=batch, seed=seed, shapes=shapes,
                             max_bytes=MAX_SAMPLE_BYTES)

    def benchmark(
        self,
        iterations: int = 100,
        warmup: int = 10,
        batch: int | None = None,
        feeds: Mapping[str, Any] | None = None,
        max_seconds: float | None = 10.0,
    ) -> BenchmarkReport:
        """Time ``iterations`` inferences after ``warmup`` untimed ones, within ``max_seconds``.

        The CPU backend times each call with ``time.perf_counter_ns``; TensorRT times host-to-
        device, compute and device-to-host separately with CUDA events. Inputs are the first
        profile's ``opt`` shape unless ``batch`` or ``feeds`` say otherwise. A large model at a
        large ``opt`` shape can take seconds a call: the run stops at ``max_seconds`` (warmup
        included, at least one timed call) and warns how many calls it timed; ``None`` times
        them all.
        """
        for key, value, low in (("iterations", iterations, 1), ("warmup", warmup, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidArgumentError(f"{key} must be an integer >= {low}, got {value!r}")
        checked = self.check_inputs(feeds if feeds is not None else self.sample_inputs(batch))
        runner = self._get_runner()
        try:
            timings = timed_calls(runner, checked, iterations, warmup, max_seconds)
        except RegionTRTError:
            raise
        except Exception as exc:
            raise EngineRuntimeError(f"the {self.backend_name} runtime failed: {exc}") from exc
        first_shape = _shape_dtype(next(iter(checked.values())))[0]
        return timings_report(self.backend_name, self.region, timings,
                              batch=int(first_shape[0]) if first_shape else 1,
                              sla_p99_ms=self._metadata["region"].get("latency_p99_ms"))

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the ``.engine`` container atomically, after checking its compliance.

        Raises:
            PolicyViolation: the payload holds a precision its region forbids.
            ArtifactError: the file cannot be written (nothing is left half-written).
        """
        report = self.compliance()
        if not report.compliant:  # cannot happen since construction checks; kept as the gate
            raise PolicyViolation(f"not saved: {report.summary()}", region=self.region)
        return artifact.write(path, self._metadata, self._payload)

    def compliance(self) -> ComplianceReport:
        """Whether this engine's payload respects its region, as checked on construction
        (see :mod:`regiontrt.precision.compliance`)."""
        return self._compliance

    def to_bytes(self) -> bytes:
        """The container bytes, as :meth:`save` writes them."""
        return artifact.encode(self._metadata, self._payload)

    def export_payload(self, path: str | Path) -> tuple[Path, Path]:
        """Write the bare payload (for trtexec, Triton...) and a JSON sidecar with the metadata.

        Returns:
            ``(payload_path, sidecar_path)``; the sidecar is ``<payload_path>.json``.
        """
        return export_payload(path, self._metadata, self._payload)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Free the runtime (buffers, contexts); the engine can be run again later."""
        with self._lock:
            if self._runner is not None:
                self._runner.close()
                self._runner = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def load_engine(path: str | Path, *, backend: str | Backend | None = None,
                trust: Any = None) -> Engine:
    """Read and verify an ``.engine`` file.

    Args:
        path: the container file.
        backend: backend to run it with; by default the one that built it.
        trust: public key file(s) or folder; when given, the detached signature
            ``<path>.sig`` must verify with one of them (see :mod:`regiontrt.runtime.trust`).

    Raises:
        ArtifactError: truncated, corrupted or tampered file; a header outside the schema; an
            ONNX payload that differs from its header or names external data.
        PolicyViolation: the payload holds a precision the engine's region forbids.
        InvalidArgumentError: ``backend`` is not a backend name or instance.
        SignatureError: with ``trust``: unsigned, untrusted key, or changed file.
    """
    chosen = _choose_backend(backend)
    provenance = None
    if trust is None:
        metadata, payload = artifact.read(path)
    else:
        from regiontrt.runtime.trust import read_verified

        # The bytes are read once and the signature checked over those very bytes: a writer
        # swapping the file after the check cannot change what runs.
        blob, key = read_verified(path, trust)
        metadata, payload = artifact.decode(blob, str(path))
        del blob
        provenance = f"signature verified with {key.name}"
    validate_header(metadata, known_backend=chosen is None)
    try:
        return Engine(metadata, payload, backend=chosen, provenance=provenance)
    except PolicyViolation as exc:
        raise PolicyViolation(f"{path}: refused at load: {exc}", region=exc.region,
                              path=str(path)) from None


def _choose_backend(backend: Any) -> Backend | None:
    if backend is None or isinstance(backend, Backend):
        return backend
    if not isinstance(backend, str):
        raise InvalidArgumentError(
            f"backend must be a name or a Backend instance, got {type(backend).__name__}"
        )
    try:
        return get_backend(backend)
    except RegionTRTError:
        raise
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from exc
