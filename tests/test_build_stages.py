"""The build's stages are plain callables a user can run or replace."""

from __future__ import annotations

import dataclasses

import pytest

import regiontrt as rt
from regiontrt import demo
from regiontrt.build import Candidate, Stages, compile_precision, package_engine
from regiontrt.data.sources import split_batches
from regiontrt.precision.types import Precision


def _eu() -> rt.RegionalEngineBuilder:
    data = split_batches({"input": demo.region_data("EU").validation[:64]}, 32)
    return rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("EU") \
        .with_validation(data)


def test_replacing_the_package_stage(tmp_path) -> None:
    packaged = []

    def publish(engine: rt.Engine, path) -> rt.Engine:
        packaged.append((engine.precision, path))
        return package_engine(engine, tmp_path / "published.engine")

    engine = _eu().with_stages(package=publish).build("ignored.engine")
    assert packaged == [("fp16", "ignored.engine")]
    assert (tmp_path / "published.engine").is_file() and engine.precision == "fp16"


def test_a_compile_stage_that_wraps_the_default_sees_every_precision() -> None:
    seen = []

    def refuse_fp16(precision: Precision, ctx) -> Candidate:
        seen.append(precision)
        candidate = compile_precision(precision, ctx)
        if precision is Precision.FP16:  # a site rule the library does not know
            return dataclasses.replace(candidate, variant=None, note="fp16 refused by site")
        return candidate

    engine = _eu().with_stages(compile=refuse_fp16).build()
    assert seen == [Precision.FP16, Precision.FP32] and engine.precision == "fp32"
    assert engine.report.trials[0].note.startswith("fp16 refused by site")


def test_stages_are_checked_and_the_builder_stays_immutable() -> None:
    base = _eu()
    with pytest.raises(rt.errors.InvalidArgumentError, match="with_stages"):
        base.with_stages(publish=print)
    with pytest.raises(rt.errors.InvalidArgumentError):
        base.with_stages(package="not callable")
    changed = base.with_stages(package=package_engine)
    assert base._state.stages == Stages() and changed is not base


def test_validate_and_search_stages_are_replaceable() -> None:
    from regiontrt.build import stages as st
    from regiontrt.precision.mixed import search_mixed_precision

    calls = {"validate": 0, "search": 0}

    def validate(*args, **kwargs):
        calls["validate"] += 1
        return st.make_validator(*args, **kwargs)

    def search(*args, **kwargs):
        calls["search"] += 1
        return search_mixed_precision(*args, **kwargs)

    data = demo.region_data("SEA")
    strict = rt.Region("TIGHT", ("int8", "fp32"), budget=1e-6, metric="relative_l2")
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region(strict)
              .with_calibrator("entropy", data=split_batches({"input": data.calibration}, 64))
              .with_validation(split_batches({"input": data.validation[:128]}, 64))
              .with_calibration_check(strict=False)
              .with_stages(validate=validate, search=search).build())
    assert calls == {"validate": 1, "search": 1}
    assert engine.precision == "fp32"  # the search ran and int8 still missed 1e-6
    assert "mixed_precision" in engine.metadata["calibration"]
