"""The fluent, immutable :class:`RegionalEngineBuilder`.

One base builder holds the model; each ``for_region``/``with_*`` call returns a new builder, so a
base fans out to many regions without any of them seeing another's settings::

    base = RegionalEngineBuilder.from_onnx("model.onnx")
    eu = base.for_region("EU").with_validation(eu_data).build()
    jp = base.for_region("APAC").with_calibrator(data=jp_calib).with_validation(jp_val).build()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from regiontrt.backends import Backend, backend_names
from regiontrt.backends.tactics import TacticSelector
from regiontrt.build.pipeline import run_build
from regiontrt.build.stages import Stages
from regiontrt.build.state import Shared, State
from regiontrt.build.torch_export import export_module
from regiontrt.calibration import AutoCalibrator, Calibrator, get_calibrator
from regiontrt.data.sources import DataLike
from regiontrt.errors import InvalidArgumentError, RegionTRTError, ShapeProfileError
from regiontrt.graph.arithmetic import Int8Arithmetic
from regiontrt.graph.io import ModelSource, load_model
from regiontrt.precision.metrics import MetricSpec, check_metric_spec
from regiontrt.precision.policy import PrecisionPolicy
from regiontrt.precision.regions import Region, get_region
from regiontrt.precision.types import Precision
from regiontrt.runtime.engine import Engine
from regiontrt.shapes.profiles import ShapeProfile


class RegionalEngineBuilder:
    """Builds a region's engine from one ONNX model under that region's policy.

    Create it with :meth:`from_onnx`; every other method returns a new builder.
    """

    def __init__(self, shared: Shared, state: State) -> None:
        self._shared = shared
        self._state = state

    @classmethod
    def from_onnx(cls, source: ModelSource) -> RegionalEngineBuilder:
        """Start from an ONNX model: a path, a ``ModelProto`` or serialized bytes.

        External data is inlined (it must lie beside the model file), so every engine's payload
        is self-contained and its hash covers the weights.

        Raises:
            InvalidModelError: unreadable or invalid model, or a source of the wrong type.
        """
        return cls(Shared(load_model(source)), State())

    @classmethod
    def from_torch(cls, module: Any, example_inputs: Any, dynamic_shapes: Any = None,
                   **export_kwargs: Any) -> RegionalEngineBuilder:
        """Start from a PyTorch module, exported to ONNX (the ``torch`` extra; docs/torch.md).

        The module is exported with ``torch.onnx.export(..., dynamo=True)`` in eval mode; the
        builder then behaves exactly as :meth:`from_onnx` on the exported model. The engine's
        metadata ``model`` records ``source: "torch"``, the torch version, the exporter and the
        SHA-256 of the exported bytes.

        Args:
            module: a ``torch.nn.Module``.
            example_inputs: a tensor or a tuple of the forward's positional arguments.
            dynamic_shapes: ``torch.export`` dynamic shapes, e.g.
                ``{"x": {0: torch.export.Dim("batch")}}`` for a dynamic batch.
            export_kwargs: passed to ``torch.onnx.export``; ``exporter="torchscript"`` or
                ``"auto"`` selects PyTorch's older exporter (see docs/torch.md).

        Raises:
            BackendUnavailable: PyTorch is not installed.
            InvalidModelError: the export failed (naming the unsupported operator), or the
                exported model is invalid.
        """
        exported = export_module(module, example_inputs, dynamic_shapes, **export_kwargs)
        builder = cls(Shared(load_model(exported.onnx_bytes)), State())
        builder._shared.origin = exported.provenance()
        return builder

    def _with(self, **changes: Any) -> RegionalEngineBuilder:
        return RegionalEngineBuilder(self._shared, dataclasses.replace(self._state, **changes))

    # -- fluent configuration -----------------------------------------------------------------
    def for_region(self, region: str | Region) -> RegionalEngineBuilder:
        """Target a preset or registered region name (case-insensitive), or a :class:`Region`."""
        if not isinstance(region, (str, Region)):
            raise InvalidArgumentError(
                f"for_region takes a region name or a Region, not {type(region).__name__}"
            )
        return self._with(region=get_region(region))

    def with_precision(
        self, policy: PrecisionPolicy | str | Precision | Sequence[str | Precision]
    ) -> RegionalEngineBuilder:
        """Override the region's precision list (a forbidden one is refused at build)."""
        if not isinstance(policy, (PrecisionPolicy, str, Precision, list, tuple)):
            raise InvalidArgumentError(
                f"with_precision takes a PrecisionPolicy or precision names, not "
                f"{type(policy).__name__}"
            )
        if not isinstance(policy, PrecisionPolicy):
            policy = PrecisionPolicy(policy)
        return self._with(policy=policy)

    def with_calibrator(
        self, calibrator: Calibrator | str | None = None, *, data: DataLike | None = None,
        executor: Any = None,
    ) -> RegionalEngineBuilder:
        """INT8: the range calibrator (default ``auto``: lowest-error range per tensor) and data.

        Args:
            calibrator: a :class:`Calibrator` or a method name.
            data: the region's calibration data (see docs/data.md); with ``executor``, paths or
                URLs of ``.npz``/``.npy`` files or folders, a Dask bag or array, or a list of
                batches.
            executor: collect the statistics on these workers: a ``concurrent.futures``
                executor (the same executors as fleet builds) or a ``dask.distributed.Client``.
                Each worker runs the model on its shards and the driver merges the statistics,
                which equal a single process's bit for bit (docs/data.md, "Distributed
                calibration").
        """
        if isinstance(calibrator, str):
            calibrator = get_calibrator(calibrator)
        elif calibrator is not None and not isinstance(calibrator, Calibrator):
            raise InvalidArgumentError(
                f"with_calibrator takes a Calibrator or a method name, not "
                f"{type(calibrator).__name__}"
            )
        if executor is not None:
            calibrator = (calibrator or AutoCalibrator()).distributed(executor)
        changes: dict[str, Any] = {"calibrator": calibrator}
        if data is not None:
            changes["calibration_data"] = data
        return self._with(**changes)

    def with_shape_profile(
        self, profile: ShapeProfile | Mapping[str, Any]
    ) -> RegionalEngineBuilder:
        """Input shapes the engine accepts (a :class:`ShapeProfile` or its ``shapes`` dict)."""
        if not isinstance(profile, ShapeProfile):
            if not isinstance(profile, Mapping):
                raise InvalidArgumentError(
                    f"with_shape_profile takes a ShapeProfile or {{input: shapes}}, not "
                    f"{type(profile).__name__}"
                )
            try:
                profile = ShapeProfile(profile)
            except RegionTRTError:
                raise
            except (TypeError, ValueError, OverflowError) as exc:
                raise ShapeProfileError(f"invalid shape profile {profile!r:.200}: {exc}") from exc
        return self._with(shape_profile=profile)

    def with_tactics(self, tactics: TacticSelector) -> RegionalEngineBuilder:
        """Builder settings (optimization level, timing cache, RTX targets...)."""
        if not isinstance(tactics, TacticSelector):
            raise InvalidArgumentError(
                f"with_tactics takes a TacticSelector, not {type(tactics).__name__}"
            )
        return self._with(tactics=tactics)

    def with_backend(self, backend: str | Backend = "auto") -> RegionalEngineBuilder:
        """``"onnxruntime"``, ``"tensorrt"``, ``"tensorrt-rtx"``, ``"auto"`` or an instance."""
        if isinstance(backend, str):
            if backend != "auto" and backend not in backend_names():
                raise InvalidArgumentError(
                    f"unknown backend {backend!r}; known: auto, {', '.join(backend_names())}"
                )
        elif not isinstance(backend, Backend):
            raise InvalidArgumentError(
                f"with_backend takes a backend name or a Backend, not {type(backend).__name__}"
            )
        return self._with(backend=backend)

    def with_validation(self, data: DataLike, metric: MetricSpec = None) -> RegionalEngineBuilder:
        """The region's validation data, and the metric (default: the region's).

        Args:
            data: the region's own validation data.
            metric: a built-in name (``"auto"``, ``"top1"``, ``"relative_l2"``, ``"max_abs"``,
                ``"cosine"``), a callable ``(reference, candidate) -> loss`` over every output,
                or a mapping ``{output: name or callable}`` (outputs left out are ``auto``).
                See :mod:`regiontrt.precision.metrics`; a metric that cannot apply to an output is
                refused at :meth:`build` before any work.
        """
        check_metric_spec(metric)  # fail early on an unknown name
        return self._with(validation_data=data, metric=metric)

    def with_pinned_inputs(self, values: Mapping[str, Any], *, auto: bool = True
                           ) -> RegionalEngineBuilder:
        """Inputs that are constant in this deployment (a sample rate, say), made constants.

        The engine is built from the model with these inputs folded in: an ``If`` they decide
        is replaced by the branch taken, so its layers are calibrated, quantized and converted
        like any other and TensorRT sees no data-dependent condition. The data given to
        :meth:`with_calibrator` and :meth:`with_validation` may hold these inputs or not (a batch
        with another value is refused). The engine's metadata records the values
        (``pinned_inputs``) and where each came from (``pinned_from``); the engine accepts a
        pinned input only at its value (and drops it), any other raises
        :class:`~regiontrt.errors.PinnedInputMismatch`.

        Args:
            values: input name -> the value it always has.
            auto: where int8 is tried, also pin (logged, recorded) each input that decides an
                ``If`` and holds one value in every calibration and validation batch (the
                default; a builder that never calls this method pins so too). ``False`` pins
                ``values`` only: ``with_pinned_inputs({}, auto=False)`` keeps every ``If``.
        """
        if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
            raise InvalidArgumentError(
                f"with_pinned_inputs takes {{input name: value}}, not {type(values).__name__}")
        if not isinstance(auto, bool):
            raise InvalidArgumentError(f"auto must be True or False, not {auto!r}")
        return self._with(pinned_inputs=dict(values), auto_pin=auto)

    def with_stages(self, **stages: Any) -> RegionalEngineBuilder:
        """Replace build stages: ``validate``, ``compile``, ``search``, ``backend_build``,
        ``comply``, ``package``.

        Each is a callable of the shape :mod:`regiontrt.build.stages` documents, e.g.
        ``.with_stages(package=lambda engine, path: publish(engine))``.
        """
        known = {f.name for f in dataclasses.fields(Stages)}
        unknown = sorted(set(stages) - known)
        if unknown or not all(callable(v) for v in stages.values()):
            raise InvalidArgumentError(
                f"with_stages takes callables for {sorted(known)}; got {sorted(stages)}")
        return self._with(stages=dataclasses.replace(self._state.stages, **stages))

    def with_int8_arithmetic(self, arithmetic: Int8Arithmetic | str) -> RegionalEngineBuilder:
        """Which int8 arithmetic an ONNX Runtime engine is checked on and runs.

        ``"tensorrt"`` (the default, and the only one for TensorRT targets): Q/DQ evaluated
        unfused, as TensorRT does; the same decision and the same outputs on any CPU.
        ``"fused"``: ONNX Runtime's own int8 kernels on this CPU, faster on the CPU but
        CPU-dependent: the check records this CPU's int8 features, and a site whose CPU
        differs follows its region's ``cpu_mismatch`` (see :mod:`regiontrt.graph.arithmetic`).
        """
        try:
            mode = Int8Arithmetic.parse(arithmetic)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from exc
        return self._with(int8_arithmetic=mode)

    def with_calibration_check(
        self, *, strict: bool | None = None, threshold: float = 0.01
    ) -> RegionalEngineBuilder:
        """How the calibration/validation mismatch check reacts.

        Args:
            strict: fail instead of warn (default: the region's ``strict_calibration``).
            threshold: largest accepted share of validation values beyond a calibrated range.
        """
        if strict is not None and not isinstance(strict, bool):
            raise InvalidArgumentError(f"strict must be True, False or None, not {strict!r:.40}")
        if (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)
                or not 0 <= threshold <= 1):
            raise InvalidArgumentError(f"threshold must be a number in 0..1, not {threshold!r:.40}")
        return self._with(strict_calibration=strict, mismatch_threshold=threshold)

    @property
    def region(self) -> Region | None:
        return self._state.region

    @property
    def model(self) -> onnx.ModelProto:
        """A copy of the source model."""
        out = onnx.ModelProto()
        out.CopyFrom(self._shared.model)
        return out

    # -- build --------------------------------------------------------------------------------
    def build(self, path: str | Path | None = None) -> Engine:
        """Build the region's engine; optionally save it to ``path``.

        Each allowed precision is tried in order: compiled into the graph, validated against the
        FP32 model on the region's data, and kept if within budget (int8 first tries keeping its
        most sensitive layers in higher precision).

        Raises:
            PolicyViolation: a forbidden precision was asked for or produced.
            AccuracyBudgetExceeded: no allowed precision met the budget (lists each attempt).
            DataError: validation or calibration data missing, empty or mis-shaped.
        """
        return run_build(self._shared, self._state, path)


__all__ = ["RegionalEngineBuilder"]
