"""The region registry: presets, user TOML, validation of region definitions."""

from __future__ import annotations

import pytest

import regiontrt as rt
from regiontrt.precision.regions import Region, RegionRegistry, default_regions
from regiontrt.precision.types import Precision


def test_presets_follow_the_policy_matrix():
    regions = default_regions()
    assert {"NA", "EU", "SEA", "APAC", "CERTIFIED"} <= set(regions)
    assert regions["NA"].precisions[0] is Precision.INT8 and regions["NA"].budget == 0.02
    eu = regions["EU"]
    assert Precision.INT8 in eu.forbidden and eu.budget == 0.005
    assert eu.precisions[0] is Precision.FP16
    for name in ("SEA", "APAC"):
        assert regions[name].precisions[0] is Precision.INT8 and regions[name].budget == 0.03
    assert regions["CERTIFIED"].precisions == (Precision.FP32,)
    assert {Precision.FP16, Precision.INT8} <= regions["CERTIFIED"].forbidden


def test_lookup_is_case_insensitive_and_unknown_names_list_known_ones():
    assert default_regions()["eu"].name == "EU"
    with pytest.raises(rt.errors.UnknownRegionError, match="known regions: NA, EU"):
        default_regions()["MARS"]


def test_user_toml_adds_and_overrides(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        '[regions.JP]\nprecisions = ["int8", "fp16"]\nbudget = 0.01\nmetric = "relative_l2"\n'
        'latency_p99_ms = 5\ntags = { site = "osaka" }\n'
        '[regions.EU]\nprecisions = ["fp32"]\nforbidden = ["int8", "fp16"]\nbudget = 0.001\n'
    )
    registry = rt.load_regions(path, into=default_regions().copy())
    assert registry["JP"].tags == {"site": "osaka"} and registry["JP"].latency_p99_ms == 5
    assert registry["EU"].precisions == (Precision.FP32,)
    assert default_regions()["EU"].precisions[0] is Precision.FP16  # the default is untouched


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[regions.X]\nprecisions = ["int8"]\nforbidden = ["int8"]\n', "allowed and forbidden"),
        ('[regions.X]\nprecisions = ["int4"]\n', "unknown precision"),
        ('[regions.X]\nprecisions = []\n', "at least one precision"),
        ('[regions.X]\nmetric = "bleu"\n', "unknown metric"),
        ('[regions.X]\nbudget = -1\n', "budget"),
        ('[regions.X]\ncolour = "red"\n', "unknown keys"),
        ("[regions.X\n", "invalid TOML"),
        ("title = 'no regions'\n", r"\[regions.NAME\]"),
    ],
)
def test_bad_region_files_raise_typed_errors(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(rt.errors.RegionConfigError, match=match):
        RegionRegistry().update_from_toml(path)


def test_missing_region_file(tmp_path):
    with pytest.raises(rt.errors.RegionConfigError, match="not found"):
        rt.load_regions(tmp_path / "nope.toml", into=RegionRegistry())


def test_region_round_trips_through_dict():
    region = Region("X", precisions=("fp16", "fp32"), forbidden=("int8",), budget=0.1,
                    tags={"a": "b"})
    again = Region.from_dict("X", region.to_dict())
    assert again == region
    assert not region.allows("int8") and region.allows("fp16")
