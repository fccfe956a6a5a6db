"""The fleet benchmark's harness: worker counts, regions past the presets, ONNX Runtime targets."""

from __future__ import annotations

import pytest

from regiontrt.deploy.fleet import FleetSpec
from regiontrt.precision.regions import get_region

bench = pytest.importorskip("benchmarks.bench_fleet", reason="run from the repository root")


def test_default_workers_are_1_2_4_capped_at_the_cpus_and_a_list_is_kept():
    assert bench.worker_counts(None, 2) == [1, 2]
    assert bench.worker_counts(None, 1) == [1]
    assert bench.worker_counts(None, 16) == [1, 2, 4]
    assert bench.worker_counts("1,2,4,8,16", 2) == [1, 2, 4, 8, 16]
    with pytest.raises(SystemExit):
        bench.worker_counts("0,2", 2)


@pytest.mark.parametrize("targets", ["all", "onnxruntime"])
def test_fleet_past_the_presets_copies_their_policies(tmp_path, targets):
    fleet = FleetSpec.load(bench.write_fleet(tmp_path, tmp_path / "inputs", 7, targets))
    names = [r.name for r in fleet.regions]
    assert names == ["NA", "EU", "CERTIFIED", "SEA", "APAC", "NA-2", "EU-2"]
    for region in fleet.regions:
        preset = get_region(region.name.split("-")[0]).to_dict()
        assert {**region.region, "name": preset["name"]} == preset
        # calibrated (and int8 tried first) exactly where int8 is allowed
        assert (region.calibration is not None) == ("int8" in preset["precisions"])
        assert region.validation == str(tmp_path / "inputs" / "data" / "val")
    backends = [t.backend for t in fleet.targets]
    assert backends == (["onnxruntime", "tensorrt-rtx"] if targets == "all"
                        else ["onnxruntime", "onnxruntime"])
    assert len(fleet.regions) * len(fleet.targets) == 14
