"""The fleet file, failed cells, and the fleet CLI (one-line errors, exit status)."""

from __future__ import annotations

import shutil

import pytest
from fleet_support import write_fleet

from regiontrt import deploy
from regiontrt.cli import main
from regiontrt.deploy.fleet import FleetSpec, resolve
from regiontrt.errors import FleetError

pytest.importorskip("fsspec", reason="needs fsspec (pip install 'regiontrt[fleet]')")

BASE = {"name": "m", "version": "1.0", "model": "model.onnx",
        "regions": {"EU": {"validation": "val"}},
        "targets": [{"name": "cpu", "backend": "onnxruntime"}]}


def _doc(**changes):
    doc = {**BASE, **changes}
    return {k: v for k, v in doc.items() if v is not None}


def test_paths_resolve_against_the_fleet_file(tmp_path):
    spec = FleetSpec.from_dict(_doc(regions={"EU": {"validation": "data/eu", "precisions":
                                                    ["fp32"]}}), base=str(tmp_path))
    assert spec.model == str(tmp_path / "model.onnx")
    assert spec.regions[0].validation == str(tmp_path / "data" / "eu")
    assert spec.regions[0].region["forbidden"] == ["int8"]  # the preset policy travels along
    assert spec.regions[0].precisions == ("fp32",)
    assert spec.regions[0].to_job()["search_mixed"] is True
    assert resolve("x/../y.npz", "https://cdn.example/fleet") == "https://cdn.example/fleet/y.npz"
    assert resolve("s3://b/k", "/anything") == "s3://b/k"


@pytest.mark.parametrize(("changes", "message"), [
    ({"model": None}, "model"),
    ({"colour": "red"}, "unknown keys"),
    ({"regions": {}}, "regions"),
    ({"regions": {"MARS": {}}}, "MARS"),
    ({"regions": {"EU": {"validaton": "x"}}}, "unknown keys"),
    ({"targets": []}, "targets"),
    ({"targets": [{"name": "x", "backend": "tensorflow"}]}, "backend"),
    ({"targets": [{"name": "../x", "backend": "onnxruntime"}]}, "plain"),
    ({"targets": [{"name": "x", "backend": "onnxruntime", "role": "fast"}]}, "role"),
    ({"targets": [{"name": "x", "backend": "tensorrt", "optimization_level": 9}]}, "0..5"),
    ({"targets": [{"name": "a", "backend": "onnxruntime"}] * 2}, "repeat"),
    ({"version": "../1"}, "version"),
    ({"regions": {"EU": {"search_mixed": "no"}}}, "search_mixed"),
    ({"regions": {"EU": {}, "eu": {}}}, "regions repeat"),
])
def test_bad_fleet_files_are_refused(changes, message):
    with pytest.raises(FleetError, match=message):
        FleetSpec.from_dict(_doc(**changes))


def test_unreadable_toml(tmp_path):
    (tmp_path / "f.toml").write_text("name = ")
    with pytest.raises(FleetError, match="TOML"):
        FleetSpec.load(tmp_path / "f.toml")


def test_a_failed_region_does_not_stop_the_others(tmp_path, capsys):
    fleet = write_fleet(tmp_path, regions=("EU", "CERTIFIED"), targets=("cpu", "dc-h100"))
    shutil.rmtree(tmp_path / "data" / "CERTIFIED" / "val")  # CERTIFIED's data went missing
    code = main(["fleet", "build", str(fleet), "--out", str(tmp_path / "dist"), "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line for line in out.splitlines() if line.startswith(("EU ", "CERTIFIED "))]
    assert len(rows) == 4  # every cell is in the table
    assert all("failed: region decision failed" in r and "data not found" in r
               for r in rows if r.startswith("CERTIFIED"))
    assert any(r.startswith("EU ") and " built" in r for r in rows)
    assert any("deferred: rebuild on node" in r for r in rows if r.startswith("EU "))
    assert deploy.load_bundle(tmp_path / "dist" / "digits" / "1.0.0" / "EU").precision == "fp16"
    assert not (tmp_path / "dist" / "digits" / "1.0.0" / "CERTIFIED").exists()


def test_cli_flow_and_one_line_errors(tmp_path, capsys):
    fleet = write_fleet(tmp_path, regions=("CERTIFIED",), targets=("cpu",))
    assert main(["keygen", str(tmp_path / "keys")]) == 0
    assert main(["fleet", "build", str(fleet), "--out", str(tmp_path / "dist"),
                 "--sign", str(tmp_path / "keys" / "private.pem")]) == 0
    assert main(["publish", str(tmp_path / "dist"), str(tmp_path / "reg"),
                 "--key", str(tmp_path / "keys" / "private.pem")]) == 0
    pull = ["pull", str(tmp_path / "reg"), "digits", "--region", "CERTIFIED",
            "--trust", str(tmp_path / "keys" / "public.pem"), "--into", str(tmp_path / "site")]
    assert main(pull) == 0
    capsys.readouterr()
    assert main(["select", str(tmp_path / "site" / "digits")]) == 0
    out = capsys.readouterr().out
    assert "CERTIFIED (fp32): onnxruntime variant cpu" in out
    assert main(["publish", str(tmp_path / "dist"), str(tmp_path / "reg"),
                 "--key", str(tmp_path / "keys" / "private.pem")]) == 2
    assert main(["rollback", str(tmp_path / "site" / "digits")]) == 2
    assert main(["pull", str(tmp_path / "reg"), "digits", "--region", "EU", "--trust",
                 str(tmp_path / "keys" / "public.pem"), "--into", str(tmp_path / "site")]) == 2
    assert main(["keygen", str(tmp_path / "keys")]) == 2
    assert main(["select", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("regiontrt: error: ") for line in err)
    assert "already published" in err[0] and "no previous version" in err[1]
    assert "no bundle for region 'EU'" in err[2]


def test_regions_file_adds_a_region_without_touching_the_global_registry(tmp_path):
    (tmp_path / "mine.toml").write_text(
        '[regions.LAB]\nprecisions = ["fp32"]\nforbidden = ["int8", "fp16"]\n'
        'budget = 0.001\nmetric = "max_abs"\n')
    spec = FleetSpec.from_dict(_doc(regions_file="mine.toml", regions={"LAB": {}}),
                               base=str(tmp_path))
    assert spec.regions[0].region["metric"] == "max_abs"
    with pytest.raises(FleetError, match="LAB"):
        FleetSpec.from_dict(_doc(regions={"LAB": {}}), base=str(tmp_path))


def test_a_cell_error_names_the_fleet_file_key_not_a_python_method(tmp_path):
    import concurrent.futures as cf

    fleet = write_fleet(tmp_path, regions=("NA",), targets=("cpu",))
    text = fleet.read_text()
    assert 'calibration = "data/NA/calib"' in text
    fleet.write_text(text.replace('calibration = "data/NA/calib"\n', ""))  # NA allows int8
    with cf.ThreadPoolExecutor(1) as pool:
        result = deploy.build_fleet(fleet, tmp_path / "dist", executor=pool)
    [cell] = result.cells
    assert cell.status == "failed" and "calibration = FOLDER_OR_URL in its [regions.NAME]" in (
        cell.error) and ".with_" not in cell.error, cell.error
