"""Output lengths as formulas of the input shape, read from the model by shape inference.

A width-bucketed engine runs a padded input and must cut each bucketed output back to the length
the model gives for the *real* input. That length is the model's business (strides, paddings,
pooling, ceil or floor modes), so it is derived from the model: ONNX Runtime's symbolic shape
inference runs once with every dynamic input dimension as a symbol, and the output dimension
comes back as a formula, e.g. PP-OCRv4's recogniser gives
``floor(floor(floor(s3/2 - 1/2)/2)/2 - 1/2) + 1`` for its time axis (``s3``: the image width).

The formula is stored in the engine's metadata and evaluated per request, exactly (rational
arithmetic), by a small evaluator that accepts only arithmetic, ``floor``/``ceiling``/``Max``/
``Min``/``Mod``/``Abs`` and the declared symbols: metadata comes from files, and files are not
trusted.
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .errors import ShapeProfileError

log = logging.getLogger("regiontrt.shapes")

MAX_RULE_CHARS = 4000
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
    """

    symbols: dict[str, tuple[str, int]]
    rules: dict[str, str]
    _trees: dict[str, ast.Expression] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[int, ...], dict[str, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.symbols = {str(s): (str(n), int(a)) for s, (n, a) in self.symbols.items()}
        self.rules = {str(k): str(v) for k, v in self.rules.items()}
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
        return {"symbols": {s: list(v) for s, v in self.symbols.items()}, "rules": dict(self.rules)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LengthRules:
        return cls({s: (v[0], v[1]) for s, v in d["symbols"].items()}, dict(d["rules"]))


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


def derive_length_rules(model: Any, outputs: Mapping[str, int]) -> LengthRules | None:
    """Formulas for ``outputs`` (``{output: axis}``) from symbolic shape inference of ``model``.

    Returns ``None`` (and logs why) when the inference cannot run (``sympy`` missing, an
    operator it does not know) or leaves a length undetermined.
    """
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    symbols: dict[str, tuple[str, int]] = {}
    initializers = {init.name for init in work.graph.initializer}
    for vi in work.graph.input:
        if vi.name in initializers:
            continue
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                name = f"s{len(symbols)}"
                symbols[name] = (vi.name, axis)
                dim.Clear()
                dim.dim_param = name
    del work.graph.value_info[:]
    for vi in work.graph.output:  # declared output dims would pin the answer: infer them
        vi.type.tensor_type.ClearField("shape")
    try:
        inferred = _infer(work)
    except Exception as exc:  # sympy missing, unknown ops, >2 GB models: say so, fall back
        log.warning("cannot derive bucketed output lengths from the model (%s: %s); cutting "
                    "outputs back with floor(len * original / padded)", type(exc).__name__, exc)
        return None
    by_name = {vi.name: vi for vi in inferred.graph.output}
    rules: dict[str, str] = {}
    for output, axis in outputs.items():
        vi = by_name.get(output)
        dims = list(vi.type.tensor_type.shape.dim) if vi is not None else []
        if axis >= len(dims):
            log.warning("output %r axis %d: shape inference gave no length; cutting it back "
                        "with floor(len * original / padded)", output, axis)
            return None
        dim = dims[axis]
        rule = str(dim.dim_value) if dim.HasField("dim_value") else dim.dim_param
        try:
            _parse(rule, list(symbols))
        except ShapeProfileError as exc:
            log.warning("output %r axis %d: %s; cutting it back with floor(len * original / "
                        "padded)", output, axis, exc)
            return None
        rules[output] = rule
    used = {n.id for r in rules.values() for n in ast.walk(ast.parse(r, mode="eval"))
            if isinstance(n, ast.Name)}
    kept = {s: v for s, v in symbols.items() if s in used}
    log.info("bucketed output lengths from the model: %s (%s)",
             ", ".join(f"{o} = {r}" for o, r in rules.items()),
             ", ".join(f"{s} = {n} axis {a}" for s, (n, a) in kept.items()) or "constant")
    return LengthRules(kept, rules)
