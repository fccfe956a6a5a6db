"""Bucketed output lengths: inferred symbolically, else measured from the model.

:func:`derive_length_rules` asks ONNX Runtime's symbolic shape inference first
(:mod:`regiontrt.shapes.rules`); an output whose length it cannot name is measured: ONNX Runtime
runs the FP32 model on zeros at a few dozen widths of the bucketed axis (batch and other dims at
the profile's min, or 1; only the output shapes are read, and the session computes only the
bucketed outputs), and :mod:`regiontrt.shapes.length_fit` fits the formula. The measured formula is
stored like an inferred one, with the widths it was measured at.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from regiontrt.errors import ShapeProfileError
from regiontrt.graph.arithmetic import seal
from regiontrt.shapes.length_fit import (
    LengthFit,
    LengthMismatch,
    Probe,
    fit_length,
    lowest_runnable,
)
from regiontrt.shapes.rules import LengthRules, model_symbols, symbolic_length_rules

log = logging.getLogger("regiontrt.shapes")


class ShapeProbe:
    """Runs the FP32 model on zeros with ONNX Runtime and reads the output lengths.

    Args:
        model: the ONNX model.
        outputs: ``{output: axis}`` whose lengths are read; the session computes only these.
        shapes: the input shapes to run with; ``axis`` of ``input`` is set per width.
        bucketed: ``(input, axis)``: the axis the widths go into.
    """

    def __init__(self, model: Any, outputs: Mapping[str, int],
                 shapes: Mapping[str, Sequence[int]], bucketed: tuple[str, int]) -> None:
        import onnx
        import onnx_graphsurgeon as gs
        import onnxruntime as ort

        # Cut to what the bucketed outputs need: ONNX Runtime runs every node of a graph,
        # wanted or not. Their declared dims go too (they would only make it warn).
        graph = gs.import_onnx(model)
        graph.outputs = [t for t in graph.outputs if t.name in outputs]
        for tensor in graph.outputs:
            tensor.shape = None
        graph.cleanup()
        work = gs.export_onnx(graph)
        initializers = {init.name for init in work.graph.initializer}
        self._dtypes = {
            vi.name: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            for vi in work.graph.input if vi.name not in initializers}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.log_severity_level = 4  # failures at too small widths are expected and caught
        seal(options)
        self._session = ort.InferenceSession(work.SerializeToString(), options,
                                             providers=["CPUExecutionProvider"])
        self._outputs = dict(outputs)
        self.shapes = {k: list(v) for k, v in shapes.items()}
        self.bucketed = bucketed
        self._cache: dict[tuple[int, str], dict[str, int] | None] = {}

    def lengths(self, width: int, variant: str = "base",
                shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, int] | None:
        """``{output: length}`` at ``width``, or ``None`` where the model fails there."""
        key = (width, variant)
        if key not in self._cache:
            feeds = {}
            for name, dtype in self._dtypes.items():
                shape = list((shapes or self.shapes)[name])
                if name == self.bucketed[0]:
                    shape[self.bucketed[1]] = width
                feeds[name] = np.zeros(shape, dtype)
            try:
                got = self._session.run(list(self._outputs), feeds)
            except Exception:  # ONNX Runtime raises its own types: any failure means "not here"
                self._cache[key] = None
            else:
                for name, arr in zip(self._outputs, got):
                    if np.ndim(arr) <= self._outputs[name]:
                        raise ShapeProfileError(f"output {name!r} has shape {np.shape(arr)}: "
                                                f"no axis {self._outputs[name]} to cut back")
                self._cache[key] = {name: int(np.shape(arr)[self._outputs[name]])
                                    for name, arr in zip(self._outputs, got)}
        return self._cache[key]

    def probe(self, output: str) -> Probe:
        """A probe of one output for :func:`fit_length`."""
        def length(width: int) -> int | None:
            got = self.lengths(width)
            return None if got is None else got[output]
        return length


def _run_shapes(model: Any, profiles: Sequence[Any] | None, bucketed: tuple[str, int]
                ) -> tuple[dict[str, list[int]], dict[str, list[int]] | None]:
    """Input shapes to measure with, and other ones to check the formula at.

    With profiles: the first profile's min shapes, checked at its opt shapes. Without: the
    declared dimensions with dynamic ones 1, checked with them 4. The second is ``None`` where
    it differs from the first only along the bucketed axis (which every run sets anyway).
    """
    initializers = {init.name for init in model.graph.initializer}
    declared = {vi.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 0
                          for d in vi.type.tensor_type.shape.dim]
                for vi in model.graph.input if vi.name not in initializers}
    if profiles:
        ranges = profiles[0].ranges
        base = {n: list(ranges[n].min) if n in ranges else [d or 1 for d in dims]
                for n, dims in declared.items()}
        other = {n: list(ranges[n].opt) if n in ranges else [d or 1 for d in dims]
                 for n, dims in declared.items()}
    else:
        base = {n: [d or 1 for d in dims] for n, dims in declared.items()}
        other = {n: [d or 4 for d in dims] for n, dims in declared.items()}
    name, axis = bucketed
    if name in base and axis < len(base[name]):
        base[name][axis] = other[name][axis] = 1
    return base, (other if other != base else None)


def _check_rule(probe: ShapeProbe, output: str, fit: LengthFit, symbol: str) -> None:
    """The rule as the engine will evaluate it, against every measured width."""
    name, axis = probe.bucketed
    rules = LengthRules({symbol: (name, axis)}, {output: fit.rule(symbol)})
    for w in fit.widths:
        truth = (probe.lengths(w) or {}).get(output)
        got = rules.lengths({name: (0,) * axis + (w,)})[output]
        if got != truth:  # a bug here, not in the model: refuse rather than cut wrong
            raise ShapeProfileError(f"output {output!r}: the measured formula "
                                    f"{fit.rule(symbol)} gives {got} at width {w}, the model "
                                    f"{truth}")


def _measure_output(probe: ShapeProbe, output: str, why: str, symbol: str, low: int, high: int,
                    boundaries: Sequence[int], other: dict[str, list[int]] | None) -> LengthFit:
    try:
        fit = fit_length(probe.probe(output), low, high, boundaries=boundaries)
    except LengthMismatch as exc:
        raise LengthMismatch(f"cannot bucket output {output!r}: {why}, and measuring it failed: "
                             f"{exc}", exc.width, exc.length) from exc
    except ShapeProfileError as exc:
        raise ShapeProfileError(f"cannot bucket output {output!r}: {why}, and measuring it "
                                f"failed: {exc}") from exc
    for w in (low, high) if other is not None else ():
        got = probe.lengths(w, "other", other)
        if got is not None and got[output] != fit(w):
            raise LengthMismatch(
                f"cannot bucket output {output!r}: {why}, and its length depends on more than "
                f"the bucketed axis: at width {w} the model gives {fit(w)} with inputs of "
                f"shapes {probe.shapes} but {got[output]} with {other} (the bucketed axis set "
                "to the width; pass the engine's shape profiles to measure at their shapes)",
                w, got[output])
    _check_rule(probe, output, fit, symbol)
    log.info("bucketed output %r: %s; measured its length at %d widths in %d..%d: %s", output,
             why, len(fit.widths), low, high, fit.rule(symbol))
    return fit


def derive_length_rules(model: Any, outputs: Mapping[str, int],
                        buckets: Mapping[str, Mapping[int, Sequence[int]]], *,
                        profiles: Sequence[Any] | None = None) -> LengthRules:
    """Each bucketed output's length as a formula of the input shape.

    Symbolic shape inference first; an output it cannot name is measured (see the module
    docstring) over the widths ``1..largest bucket`` the model runs at.

    Args:
        model: the FP32 ONNX model.
        outputs: ``{output: axis}`` cut back after a padded run.
        buckets: ``{input: {axis: sizes}}``; measuring needs exactly one bucketed axis.
        profiles: the engine's shape profiles (objects with ``ranges``); their first profile's
            min shapes set the other dimensions of the runs, and the formula is checked at its
            opt shapes. Without them, dynamic dimensions other than the bucketed one are 1.

    Raises:
        ShapeProfileError: an output cannot be measured or no formula fits it
            (:class:`LengthMismatch`, naming a measured counter-example).
    """
    rules, missing = symbolic_length_rules(model, outputs)
    symbols = model_symbols(model)
    measured: dict[str, list[int]] = {}
    if missing:
        names = ", ".join(repr(o) for o in missing)
        axes = [(n, a) for n, ax in buckets.items() for a in ax]
        if len(axes) != 1:
            raise ShapeProfileError(f"cannot bucket outputs {names}: {next(iter(missing.values()))}"
                                    f"; measuring the length needs one bucketed axis, not {axes}")
        symbol = next((s for s, v in symbols.items() if v == axes[0]), None)
        if symbol is None:
            raise ShapeProfileError(f"cannot bucket outputs {names}: input {axes[0][0]!r} axis "
                                    f"{axes[0][1]} is not a dynamic dimension of the model")
        sizes = buckets[axes[0][0]][axes[0][1]]
        shapes, other = _run_shapes(model, profiles, axes[0])
        try:
            probe = ShapeProbe(model, {o: outputs[o] for o in missing}, shapes, axes[0])
            low = lowest_runnable(lambda w: None if probe.lengths(w) is None else 0,
                                  max(sizes))
        except ShapeProfileError as exc:
            raise ShapeProfileError(f"cannot bucket outputs {names}: the length must be measured "
                                    f"and {exc} (input shapes {shapes})") from exc
        except Exception as exc:  # ONNX Runtime cannot load it: a custom operator, a bad file
            raise ShapeProfileError(f"cannot bucket outputs {names}: the length must be measured "
                                    f"but ONNX Runtime cannot run the model ({exc})") from exc
        for output, why in missing.items():
            fit = _measure_output(probe, output, why, symbol, low, max(sizes), sizes, other)
            rules[output], measured[output] = fit.rule(symbol), list(fit.widths)
    used = {n.id for r in rules.values() for n in ast.walk(ast.parse(r, mode="eval"))
            if isinstance(n, ast.Name)}
    kept = {s: v for s, v in symbols.items() if s in used}
    log.info("bucketed output lengths: %s (%s)",
             ", ".join(f"{o} = {r}" for o, r in rules.items()),
             ", ".join(f"{s} = {n} axis {a}" for s, (n, a) in kept.items()) or "constant")
    return LengthRules(kept, rules, measured)
