"""ONNX's own node conformance suite through clean(), to_fp16() and a CERTIFIED FP32 build.

``onnx.backend.test.case.node.collect_testcases()`` ships ~1,900 small models with inputs and
expected outputs. A case counts when ONNX Runtime, our reference executor, runs the original
model correctly as shipped (computed here, never listed by hand); each counted case then goes
through every pass and is compared with its expected outputs. Outcomes per pass:

* ok: the outputs match (the case's own tolerance; FP16 within 1e-2, see ``_FP16_TOL``);
* typed: refused with a :class:`~regiontrt.errors.RegionTRTError` (a CERTIFIED site refuses a
  model that is itself float16 or quantized; the Engine API takes tensors, not sequences);
* wrong: outputs differ; invalid: the ONNX checker refuses a result whose original it accepts, or
  ONNX Runtime cannot run it; untyped: any other exception.

The test requires 0 wrong, 0 invalid, 0 untyped for every pass and prints one line of counts per
pass (shown in the terminal even without ``-s``).
"""

from __future__ import annotations

import collections
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from regiontrt.errors import RegionTRTError

ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime, a required dependency")
node_cases = pytest.importorskip("onnx.backend.test.case.node", reason="needs onnx's test cases")
Runner = pytest.importorskip("onnx.backend.test.runner", reason="needs onnx's runner").Runner

# float16 keeps 11 significant bits (a relative step of 9.8e-4): 1e-2 allows about ten
# roundings along a chain of ops, and the FP16 pass keeps the ill-conditioned ones float32.
_FP16_TOL = 1e-2
_BAD = ("wrong", "invalid", "untyped")


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    feeds: list[dict[str, Any]]
    expected: list[list[Any]]
    rtol: float
    atol: float


@dataclass
class Tally:
    outcomes: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: collections.defaultdict(list))
    seconds: float = 0.0

    def add(self, outcome: str, case: str, detail: str = "") -> None:
        self.outcomes[outcome].append((case, detail[:300]))

    def count(self, outcome: str) -> int:
        return len(self.outcomes.get(outcome, []))

    def line(self, stage: str) -> str:
        typed = collections.Counter(d.split(":")[0] for _, d in self.outcomes.get("typed", []))
        kinds = ", ".join(f"{k} {v}" for k, v in typed.most_common())
        extra = "".join(f", {k} {self.count(k)}" for k in sorted(self.outcomes)
                        if k not in ("ok", "typed", *_BAD))
        return (f"node suite / {stage}: ok {self.count('ok')}, "
                + ", ".join(f"{k} {self.count(k)}" for k in _BAD)
                + f", typed refusals {self.count('typed')}" + (f" ({kinds})" if kinds else "")
                + extra + f" [{self.seconds:.1f} s]")


def _np(value: Any) -> Any:
    """Case data as ONNX Runtime takes it (TensorProto and numpy scalars to arrays)."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, list):
        return [_np(v) for v in value]
    return value


def _session(model: onnx.ModelProto) -> Any:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1  # a per-session pool costs more than these tiny graphs
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, case: Case) -> list[list[Any]]:
    session = _session(model)
    # Copies: ONNX Runtime writes training-mode BatchNormalization's running mean into its input.
    return [session.run(None, _copy(feeds)) for feeds in case.feeds]


def _copy(feeds: dict[str, Any]) -> dict[str, Any]:
    return {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v
            for k, v in feeds.items()}


def _matches(got: list[list[Any]], case: Case, rtol: float, atol: float) -> str | None:
    try:
        for out, exp in zip(got, case.expected):
            Runner.assert_similar_outputs(exp, out, rtol, atol)
    except Exception as exc:
        return " ".join(str(exc).split())[:300]
    return None


def _valid(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        return " ".join(str(exc).split())[:300]
    return None


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    """The node cases ONNX Runtime runs correctly as shipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        shipped = [c for c in node_cases.collect_testcases() if c.kind == "node"]
    runnable = []
    for c in shipped:
        names = [v.name for v in c.model.graph.input]
        case = Case(c.name, c.model,
                    [{n: _np(v) for n, v in zip(names, ins)} for ins, _ in c.data_sets],
                    [[_np(o) for o in outs] for _, outs in c.data_sets], c.rtol, c.atol)
        try:
            if _matches(_run(case.model, case), case, case.rtol, case.atol) is None:
                runnable.append(case)
        except Exception:
            continue  # ONNX Runtime cannot run the original: nothing to hold a pass to
    print(f"\nnode suite: {len(runnable)} of {len(shipped)} cases run correctly in "
          f"ONNX Runtime {ort.__version__} as shipped (onnx {onnx.__version__})")
    assert len(runnable) > len(shipped) // 2, "the conformance cases did not load"
    return runnable


def _check_graph(tally: Tally, case: Case, original: onnx.ModelProto,
                 result: onnx.ModelProto, rtol: float, atol: float) -> bool:
    why = _valid(result)
    if why is not None and _valid(original) is None:
        tally.add("invalid", case.name, why)
        return False
    try:
        got = _run(result, case)
    except Exception as exc:
        tally.add("invalid", case.name, f"ONNX Runtime: {exc}")
        return False
    why = _matches(got, case, rtol, atol)
    if why is not None:
        tally.add("wrong", case.name, why)
        return False
    tally.add("ok", case.name)
    return True


def _apply(tally: Tally, case: Case, fn: Any, *args: Any) -> onnx.ModelProto | None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn(*args)
        except RegionTRTError as exc:
            tally.add("typed", case.name, f"{type(exc).__name__}: {exc}")
            return None
        except Exception as exc:
            tally.add("untyped", case.name, f"{type(exc).__name__}: {exc}")
            return None
    if any("skipped" in str(w.message) for w in caught):
        tally.add("conservative fallback", case.name, str(caught[0].message))
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def passes(cases: list[Case]) -> dict[str, Tally]:
    """Every counted case through clean(), then to_fp16() of the cleaned graph."""
    from regiontrt.graph.clean import clean
    from regiontrt.graph.fp16 import cast_count, to_fp16

    tallies = {"clean": Tally(), "to_fp16": Tally()}
    converted = 0
    for case in cases:
        start = time.perf_counter()
        cleaned = _apply(tallies["clean"], case, clean, case.model)
        ok = cleaned is not None and _check_graph(tallies["clean"], case, case.model, cleaned,
                                                  case.rtol, case.atol)
        middle = time.perf_counter()
        tallies["clean"].seconds += middle - start
        if not ok:
            continue
        assert cleaned is not None
        half = _apply(tallies["to_fp16"], case, to_fp16, cleaned)
        if half is not None:
            converted += cast_count(half) > cast_count(cleaned)
            _check_graph(tallies["to_fp16"], case, case.model, half,
                         max(case.rtol, _FP16_TOL), max(case.atol, _FP16_TOL))
        tallies["to_fp16"].seconds += time.perf_counter() - middle
    tallies["to_fp16"].outcomes["converted to float16"] = [("", "")] * converted
    return tallies


def _report(capsys: pytest.CaptureFixture[str], stage: str, tally: Tally) -> None:
    with capsys.disabled():
        print(f"\n{tally.line(stage)}")
        shown = (*_BAD, "typed") if os.environ.get("REGIONTRT_NODE_SUITE_VERBOSE") else _BAD
        for outcome in shown:
            for name, detail in tally.outcomes.get(outcome, [])[:300]:
                print(f"  {outcome}: {name}: {detail}")


def test_clean_keeps_every_case(passes: dict[str, Tally], capsys: pytest.CaptureFixture[str]
                                ) -> None:
    tally = passes["clean"]
    _report(capsys, "clean", tally)
    assert {k: tally.count(k) for k in _BAD} == dict.fromkeys(_BAD, 0)
    assert tally.count("typed") == 0  # clean() refuses nothing: it leaves alone


def test_fp16_keeps_every_case(passes: dict[str, Tally], capsys: pytest.CaptureFixture[str]
                               ) -> None:
    tally = passes["to_fp16"]
    _report(capsys, "to_fp16", tally)
    assert {k: tally.count(k) for k in _BAD} == dict.fromkeys(_BAD, 0)
    # Not vacuous: most float models really compute in float16 afterwards.
    assert tally.count("converted to float16") > tally.count("ok") // 4


def test_certified_fp32_build_keeps_every_case(cases: list[Case],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Each case built for CERTIFIED (FP32 only) with its inputs as validation data."""
    import regiontrt as rt

    tally = Tally()
    start = time.perf_counter()
    base_tactics = rt.TacticSelector(cpu_threads=1)
    for case in cases:
        has_inputs = bool(case.feeds and case.feeds[0])

        def build(case: Case = case, has_inputs: bool = has_inputs) -> Any:
            builder = (rt.RegionalEngineBuilder.from_onnx(case.model).for_region("CERTIFIED")
                       .with_tactics(base_tactics))
            if has_inputs:  # a model without inputs needs no data: generated ones check it
                builder = builder.with_validation([_copy(f) for f in case.feeds])
            engine = builder.build()
            return [list(engine.infer(_copy(feeds)).values()) for feeds in case.feeds]

        got = _apply(tally, case, build)
        if got is None:
            continue
        why = _matches(got, case, case.rtol, case.atol)
        tally.add("ok" if why is None else "wrong", case.name, why or "")
    tally.seconds = time.perf_counter() - start
    _report(capsys, "CERTIFIED fp32 build", tally)
    assert {k: tally.count(k) for k in _BAD} == dict.fromkeys(_BAD, 0)
    assert tally.count("ok") > len(cases) // 2
