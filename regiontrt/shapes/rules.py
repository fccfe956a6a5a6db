"""Output lengths as formulas of the input shape, read from the model by shape inference.

A width-bucketed engine runs a padded input and must cut each bucketed output back to the length
the model gives for the *real* input. That length is the model's business (strides, paddings,
pooling, ceil or floor modes), so it is derived from the model: ONNX Runtime's symbolic shape
inference runs once with every dynamic input dimension as a symbol, and the output dimension
comes back as a formula, e.g. PP-OCRv4's recogniser gives
``floor(floor(floor(s3/2 - 1/2)/2)/2 - 1/2) + 1`` for its time axis (``s3``: the image width).

Where the inference cannot name a length, :mod:`regiontrt.shapes.length_fit` measures a formula from
the model instead; either way the formula is stored in the engine's metadata in this module's
syntax (a measured one with the widths it was measured at) and evaluated per request, exactly
(rational arithmetic), by a small evaluator that accepts only arithmetic, ``floor``/``ceiling``/
``Max``/``Min``/``Mod``/``Abs`` and the declared symbols: metadata comes from files, and files
are not trusted.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from regiontrt.errors import ShapeProfileError

MAX_RULE_CHARS = 4000
MAX_MEASURED = 4096
_FUNCS: dict[str, Any] = {
    "floor": lambda a: Fraction(math.floor(a)),
    "ceiling": lambda a: Fraction(math.ceil(a)),
    "Abs": lambda a: abs(a),
    "Max": lambda *a: max(a),
    "Min": lambda *a: min(a),
    "Mod": lambda a, b: a % b,
}
_BINOPS: dict[type, Any] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: lambda a, b: a % b,
}


def _eval(node: ast.AST, env: Mapping[str, int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.Name):
        return Fraction(env[node.id])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand, env)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return Fraction(_BINOPS[type(node.op)](_eval(node.left, env), _eval(node.right, env)))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        exponent = _eval(node.right, env)
        if exponent.denominator != 1 or not 0 <= exponent <= 8:
            raise ValueError(f"exponent {exponent} not allowed")
        return Fraction(_eval(node.left, env) ** int(exponent))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS and not node.keywords):
        return Fraction(_FUNCS[node.func.id](*(_eval(a, env) for a in node.args)))
    raise ValueError(f"{type(node).__name__} not allowed in a shape formula")


def _parse(rule: str, symbols: Sequence[str]) -> ast.Expression:
    """Parse and check a formula: only allowed syntax, only declared symbols."""
    if not isinstance(rule, str) or len(rule) > MAX_RULE_CHARS:
        raise ShapeProfileError("shape formula missing or too long")
    try:
        tree = ast.parse(rule, mode="eval")
    except SyntaxError as exc:
        raise ShapeProfileError(f"shape formula {rule!r} does not parse: {exc.msg}") from None
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    unknown = names - set(symbols) - set(_FUNCS)
    if unknown:
        raise ShapeProfileError(f"shape formula {rule!r} uses unknown names {sorted(unknown)}")
    try:  # evaluate once at 64 everywhere to reject disallowed syntax now, not per request
        _eval(tree, dict.fromkeys(symbols, 64))
    except ZeroDivisionError:
        pass
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise ShapeProfileError(f"shape formula {rule!r} is not allowed: {exc}") from None
    return tree


@dataclass
class LengthRules:
    """Bucketed output lengths as formulas of the input dimensions.

    Attributes:
        symbols: ``{symbol: (input, axis)}``: the dynamic input dimensions the formulas use.
        rules: ``{output: formula}``: the length of each bucketed output along its axis.
        measured: ``{output: widths}`` for formulas measured from the model (shape-only runs at
            these widths of its one bucketed axis) rather than read by symbolic inference.
    """

    symbols: dict[str, tuple[str, int]]
    rules: dict[str, str]
    measured: dict[str, list[int]] = field(default_factory=dict)
    _trees: dict[str, ast.Expression] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[int, ...], dict[str, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.symbols = {str(s): (str(n), int(a)) for s, (n, a) in self.symbols.items()}
        self.rules = {str(k): str(v) for k, v in self.rules.items()}
        self.measured = _check_measured(self.measured, self.rules)
        self._trees = {out: _parse(rule, list(self.symbols)) for out, rule in self.rules.items()}

    def lengths(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """``{output: length}`` for inputs of the given (unpadded) shapes; cached per shape.

        Raises:
            ShapeProfileError: a formula needs an input that is not in ``shapes``, or gives a
                negative or fractional length.
        """
        try:
            values = tuple(int(shapes[n][a]) for n, a in self.symbols.values())
        except (KeyError, IndexError):
            raise ShapeProfileError(
                f"output length formulas need the shapes of {sorted(self.symbols.values())}"
            ) from None
        cached = self._cache.get(values)
        if cached is not None:
            return cached
        env = dict(zip(self.symbols, values))
        out: dict[str, int] = {}
        for name, tree in self._trees.items():
            try:
                value = _eval(tree, env)
            except (ZeroDivisionError, ValueError, OverflowError) as exc:
                raise ShapeProfileError(f"output {name!r}: length formula failed: {exc}") from None
            if value.denominator != 1 or value < 0:
                raise ShapeProfileError(f"output {name!r}: length formula gave {value}")
            out[name] = int(value)
        if len(self._cache) < 65536:  # bounded: one entry per distinct request shape
            self._cache[values] = out
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"symbols": {s: list(v) for s, v in self.symbols.items()},
                             "rules": dict(self.rules)}
        if self.measured:
            d["measured"] = {out: list(widths) for out, widths in self.measured.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LengthRules:
        return cls({s: (v[0], v[1]) for s, v in d["symbols"].items()}, dict(d["rules"]),
                   d.get("measured") or {})


def _check_measured(measured: Any, rules: Mapping[str, str]) -> dict[str, list[int]]:
    """``measured`` as ``{output: widths}``; it comes from files, so its size is bounded."""
    if not isinstance(measured, Mapping) or not set(measured) <= set(rules):
        raise ShapeProfileError("measured widths must name outputs that have a formula")
    out: dict[str, list[int]] = {}
    for name, widths in measured.items():
        if (not isinstance(widths, (list, tuple)) or len(widths) > MAX_MEASURED
                or not all(type(w) is int and w > 0 for w in widths)):
            raise ShapeProfileError(f"output {name!r}: measured widths must be at most "
                                    f"{MAX_MEASURED} positive integers")
        out[str(name)] = list(widths)
    return out


def _infer(model: Any) -> Any:
    """``SymbolicShapeInference.infer_shapes`` without its side effect.

    ONNX Runtime's own entry point saves ``sym_shape_infer_temp.onnx`` into the current folder
    when a single tensor stays unknown; a library must not write files it was not asked for, and
    the outputs may be known even when some inner tensor is not. This runs the same steps.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
    inference._preprocess(model)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_


def model_symbols(model: Any) -> dict[str, tuple[str, int]]:
    """``{symbol: (input, axis)}`` for every dynamic input dimension, in declaration order."""
    initializers = {init.name for init in model.graph.initializer}
    symbols: dict[str, tuple[str, int]] = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                symbols[f"s{len(symbols)}"] = (vi.name, axis)
    return symbols


def symbolic_length_rules(model: Any, outputs: Mapping[str, int]
                          ) -> tuple[dict[str, str], dict[str, str]]:
    """Formulas for ``outputs`` (``{output: axis}``) from symbolic shape inference of ``model``.

    The formulas use the symbols of :func:`model_symbols`.

    Returns:
        ``({output: formula}, {output: why not})``: every output is in exactly one of them; the
        second holds those the inference cannot name (``sympy`` missing, an operator it does not
        know, a length that passes through a computed ``Reshape``...).
    """
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    symbols = model_symbols(work)
    by_input = {v: s for s, v in symbols.items()}
    for vi in work.graph.input:
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if (vi.name, axis) in by_input:
                dim.Clear()
                dim.dim_param = by_input[(vi.name, axis)]
    del work.graph.value_info[:]
    for vi in work.graph.output:  # declared output dims would pin the answer: infer them
        vi.type.tensor_type.ClearField("shape")
    try:
        inferred = _infer(work)
    except Exception as exc:  # sympy missing, unknown ops, >2 GB models: say so, measure
        why = f"symbolic shape inference failed ({type(exc).__name__}: {exc})"
        return {}, dict.fromkeys(outputs, why)
    by_name = {vi.name: vi for vi in inferred.graph.output}
    rules: dict[str, str] = {}
    missing: dict[str, str] = {}
    for output, axis in outputs.items():
        vi = by_name.get(output)
        dims = list(vi.type.tensor_type.shape.dim) if vi is not None else []
        if axis >= len(dims):
            missing[output] = f"symbolic shape inference gave no axis {axis}"
            continue
        dim = dims[axis]
        rule = str(dim.dim_value) if dim.HasField("dim_value") else dim.dim_param
        try:
            _parse(rule, list(symbols))
        except ShapeProfileError as exc:
            missing[output] = f"symbolic shape inference gave no formula: {exc}"
            continue
        rules[output] = rule
    return rules, missing
