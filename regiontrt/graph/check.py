"""Does a rewritten graph still compute what the original model computes?

Every build runs the original model and the graph a pass produced (:func:`~regiontrt.graph.clean.
clean` for every precision) with ONNX Runtime on the same inputs (the region's validation data,
or :func:`generated_inputs` when there is none) and compares every output:

* the same output names, element types and shapes;
* integers, booleans and strings exactly;
* floats element by element within ``rtol`` (default: 1e-3, or 8 machine epsilons of the
  output's type where that is larger: float16 round-off is far above it) and ``atol`` =
  ``rtol`` times the largest finite magnitude of the reference output, with NaN where the
  reference has NaN and the same infinities. 1e-3 of the output's scale is what folding a
  BatchNormalization into a convolution legitimately moves a deep network's float32 outputs by
  (PP-OCRv4 rec: 1.7e-4 on a softmax); a wrong fold (a sliced ``Shape``, a dropped attribute)
  moves them by far more.

Outputs that differ between two runs of the *original* model (unseeded random ops, training-mode
Dropout) are compared by type and shape only. A difference raises :class:`~regiontrt.errors.
GraphPassError` naming the pass, the output and the first differing element.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from regiontrt.errors import GraphPassError
from regiontrt.graph.arithmetic import Int8Arithmetic, session_options
from regiontrt.graph.io import TensorSpec

Batch = Mapping[str, Any]
Outputs = dict[str, Any]


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check_pass` compared."""

    pass_name: str
    batches: int
    outputs: int
    max_abs_diff: float
    values_skipped: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass": self.pass_name,
            "batches": self.batches,
            "outputs": self.outputs,
            "max_abs_diff": self.max_abs_diff,
            "values_not_compared": list(self.values_skipped),
        }



DEFAULT_RTOL = 1e-3

def run_onnx(model: onnx.ModelProto | bytes, batches: Sequence[Batch], *,
             threads: int = 0,
             arithmetic: Int8Arithmetic | str = Int8Arithmetic.TENSORRT) -> list[Outputs]:
    """Outputs of ``model`` with ONNX Runtime (CPU, default optimizations) for each batch.

    Args:
        model: the model, or its serialization.
        batches: ``{input: array}`` feeds.
        threads: intra-op threads (0: ONNX Runtime's default, one per core). Each session
            starts its own pool, which costs more than running a small graph: pass 1 there.
        arithmetic: how Q/DQ nodes are evaluated (:mod:`regiontrt.graph.arithmetic`); the
            default, TensorRT's unfused Q/DQ, gives the same result on any CPU.
    """
    return reference_outputs(model, batches, threads=threads, twice=False,
                             arithmetic=arithmetic)[0]


def reference_outputs(model: onnx.ModelProto | bytes, batches: Sequence[Batch], *,
                      threads: int = 0, twice: bool = True,
                      arithmetic: Int8Arithmetic | str = Int8Arithmetic.TENSORRT,
                      ) -> tuple[list[Outputs], set[str]]:
    """Like :func:`run_onnx`, and (``twice``) the outputs that change when the first batch runs
    again: unseeded random ops and training-mode Dropout make them nondeterministic."""
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString(deterministic=True)
    options = session_options(arithmetic, threads=threads)
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = [dict(zip(names, session.run(names, _private(batch)))) for batch in batches]
    changing: set[str] = set()
    if twice and batches:
        again = dict(zip(names, session.run(names, _private(batches[0]))))
        changing = {n for n, v in results[0].items() if not _identical(v, again[n])}
    return results, changing


def _private(batch: Batch) -> dict[str, Any]:
    """Copies of the feeds: ONNX Runtime may write into an input buffer it aliases to an output
    (training-mode BatchNormalization updates its running mean in place), which would change the
    data every later run sees."""
    return {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v
            for k, v in batch.items()}


def check_pass(
    pass_name: str,
    reference: Sequence[Outputs],
    candidate: onnx.ModelProto | Callable[[], Sequence[Outputs]],
    batches: Sequence[Batch],
    *,
    skip_values: set[str] | frozenset[str] = frozenset(),
    rtol: float = DEFAULT_RTOL,
) -> CheckResult:
    """Compare ``candidate`` on ``batches`` with the original model's ``reference`` outputs.

    Args:
        pass_name: the pass that produced ``candidate`` (named in the error).
        reference: the original model's outputs for each batch (:func:`run_onnx`).
        candidate: the graph the pass produced, or a function returning its outputs for
            ``batches`` (say, a cache of them).
        batches: the inputs ``reference`` was computed on.
        skip_values: outputs compared by type and shape only (nondeterministic ones).
        rtol: relative tolerance for float outputs (raised to 8 epsilons of their type).

    Raises:
        GraphPassError: ``candidate`` cannot run, or an output differs.
    """
    try:
        got = candidate() if callable(candidate) else run_onnx(candidate, batches)
    except Exception as exc:
        raise GraphPassError(
            pass_name, f"ONNX Runtime cannot run the graph it produced: {exc}"
        ) from exc
    worst = 0.0
    for i, (ref, out) in enumerate(zip(reference, got)):
        if list(ref) != list(out):
            raise GraphPassError(pass_name, f"outputs {list(ref)} became {list(out)}")
        for name, want in ref.items():
            diff = compare(want, out[name], rtol=rtol, values=name not in skip_values)
            if isinstance(diff, str):
                raise GraphPassError(pass_name, f"output {name!r}, batch {i}: {diff}")
            worst = max(worst, diff)
    return CheckResult(pass_name, len(batches), len(reference[0]) if reference else 0, worst,
                       tuple(sorted(skip_values)))


def compare(want: Any, got: Any, *, rtol: float = DEFAULT_RTOL, values: bool = True) -> float | str:
    """The largest absolute float difference of ``got`` from ``want``, or why they differ."""
    if isinstance(want, list) or isinstance(got, list):  # sequence outputs
        if not isinstance(want, list) or not isinstance(got, list) or len(want) != len(got):
            return "sequence outputs differ in kind or length"
        diffs = [compare(w, g, rtol=rtol, values=values) for w, g in zip(want, got)]
        errors = [d for d in diffs if isinstance(d, str)]
        return errors[0] if errors else max([0.0, *(float(d) for d in diffs)])
    if want is None or got is None:  # empty optional outputs
        return 0.0 if want is None and got is None else "an optional output lost or gained a value"
    a, b = np.asarray(want), np.asarray(got)
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{b.dtype}{list(b.shape)} where the original gives {a.dtype}{list(a.shape)}"
    if not values or a.size == 0:
        return 0.0
    if a.dtype.kind not in "fc":
        bad = np.flatnonzero(a.ravel() != b.ravel())
        if bad.size:
            k = int(bad[0])
            return f"element {k} is {b.ravel()[k]!r} where the original gives {a.ravel()[k]!r}"
        return 0.0
    return _compare_floats(a, b, rtol)


def _compare_floats(a: np.ndarray, b: np.ndarray, rtol: float) -> float | str:
    rtol = max(rtol, 8 * float(np.finfo(a.dtype).eps))
    x, y = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64), b.astype(
        np.complex128 if a.dtype.kind == "c" else np.float64)
    finite = np.isfinite(x)
    same_special = (np.isnan(x) & np.isnan(y)) | (~finite & (x == y))
    scale = float(np.abs(x[finite]).max()) if finite.any() else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(x - y)
        ok = same_special | (finite & (diff <= rtol * scale + rtol * np.abs(x)))
    if not ok.all():
        k = int(np.flatnonzero(~ok.ravel())[0])
        return (f"element {k} is {y.ravel()[k]!r} where the original gives {x.ravel()[k]!r} "
                f"(tolerance {rtol:g} relative)")
    return float(diff[finite].max()) if finite.any() else 0.0


def _identical(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
                and all(_identical(x, y) for x, y in zip(a, b)))
    if a is None or b is None:
        return a is None and b is None
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype.kind in "fc":
        return bool(np.array_equal(x, y, equal_nan=True))
    return bool(np.array_equal(x, y))


def generated_inputs(specs: Sequence[TensorSpec],
                     shapes: Mapping[str, Sequence[int]] | None = None,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """One batch of inputs for ``specs`` when no data is given, from Polygraphy's seeded
    ``DataLoader``.

    Shapes come from ``shapes`` (say, a profile's ``opt``), else the declared static dimensions
    with 1 for each dynamic one. Floats are uniform in [-1, 1]; integers are 0 or 1 (valid
    indices and counts for most ops); booleans random. Polygraphy generates no strings, so
    string inputs are short words chosen here.
    """
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import DataLoader
    from polygraphy.logger import G_LOGGER

    shapes = shapes or {}
    meta, ranges, strings = TensorMetadata(), {}, {}
    for spec in specs:
        shape = tuple(int(d) for d in shapes.get(spec.name) or (
            d if isinstance(d, int) else 1 for d in spec.shape))
        if spec.dtype.kind in "OUS":
            words = np.array(["a", "bc", "def"], dtype=object)
            strings[spec.name] = words[np.random.default_rng(seed).integers(0, 3, size=shape)]
            continue
        meta.add(spec.name, spec.dtype, shape)
        ranges[spec.name] = (-1.0, 1.0) if spec.dtype.kind in "fc" else (0, 1)
    out: dict[str, np.ndarray] = {}
    if len(meta):
        with G_LOGGER.verbosity(G_LOGGER.ERROR):  # it logs every generated batch otherwise
            batch = DataLoader(seed=seed, iterations=1, input_metadata=meta, val_range=ranges)[0]
        out = {name: np.asarray(value) for name, value in batch.items()}
    return {spec.name: out[spec.name] if spec.name in out else strings[spec.name]
            for spec in specs}


def metric_view(reference: Mapping[str, Any], candidate: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The float outputs an accuracy metric can score, and why the others differ (or None).

    Metrics compute in float64, so integer, boolean and string outputs are compared exactly here
    instead (a changed class index or token is never "close"). In the float outputs, positions
    where both sides hold NaN, or the same infinity, are set to 0 on both sides: they agree,
    and left as they are they would make every metric NaN.
    """
    ref_f: dict[str, Any] = {}
    cand_f: dict[str, Any] = {}
    for name, want in reference.items():
        got = candidate.get(name)
        pieces_w = want if isinstance(want, list) else [want]
        pieces_g = got if isinstance(got, list) else [got]
        if len(pieces_w) != len(pieces_g):
            return {}, {}, f"output {name!r}: {len(pieces_g)} batches vs {len(pieces_w)}"
        arrays_w = [np.asarray(w) for w in pieces_w]
        arrays_g = [np.asarray(g) for g in pieces_g]
        if not all(w.dtype.kind in "fc" for w in arrays_w):
            for w, g in zip(arrays_w, arrays_g):
                diff = compare(w, g, values=True)
                if isinstance(diff, str):
                    return {}, {}, f"output {name!r}: {diff}"
            continue
        fixed_w, fixed_g = [], []
        for w, g in zip(arrays_w, arrays_g):
            if w.shape == g.shape:
                agree = (np.isnan(w) & np.isnan(g)) | (np.isinf(w) & (w == g))
                w, g = np.where(agree, 0, w), np.where(agree, 0, g)
            fixed_w.append(w)
            fixed_g.append(g)
        ref_f[name] = fixed_w if isinstance(want, list) else fixed_w[0]
        cand_f[name] = fixed_g if isinstance(got, list) else fixed_g[0]
    return ref_f, cand_f, None
