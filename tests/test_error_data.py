"""Errors carry data (the setting to change, the region, the file), not prose to parse."""

from __future__ import annotations

import pickle

import pytest

import regiontrt as rt
from regiontrt import demo
from regiontrt.errors import SETTINGS, DataError, ShapeOutOfProfile


def test_a_missing_setting_is_named_for_each_front_door() -> None:
    with pytest.raises(DataError) as info:
        rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("EU").build()
    exc = info.value
    assert (exc.setting, exc.region) == ("validation", "EU")
    assert SETTINGS["validation"].api in str(exc)
    assert "--validation FILE_OR_FOLDER" in exc.render("cli")
    assert "validation = FOLDER_OR_URL" in exc.render("fleet")
    assert "{setting}" not in str(exc) + exc.render("cli") + exc.render("fleet")


def test_int8_without_calibration_names_both_ways_out() -> None:
    data = [{"input": demo.region_data("NA").validation[:16]}]
    with pytest.raises(DataError) as info:
        (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("NA")
         .with_validation(data).build())
    exc = info.value
    assert exc.setting == "calibration" and exc.also == ("precisions",)
    cli = exc.render("cli")
    assert "--calibration" in cli and "--precision" in cli and ".with_" not in cli


def test_fields_survive_pickling_and_shape_errors_carry_theirs() -> None:
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("CERTIFIED")
              .with_shape_profile({"input": [(1, 1, 8, 8), (2, 1, 8, 8), (4, 1, 8, 8)]})
              .build())
    with pytest.raises(ShapeOutOfProfile) as info:
        engine.infer({"input": demo.region_data("EU").validation[:9]})
    exc = info.value
    assert exc.setting == "shape_profile" and "--shape" in exc.render("cli")
    copy = pickle.loads(pickle.dumps(exc))
    assert (type(copy), copy.setting, str(copy)) == (ShapeOutOfProfile, exc.setting, str(exc))
    with pytest.raises(ValueError, match="unknown settings"):
        DataError("x", setting="nope")
