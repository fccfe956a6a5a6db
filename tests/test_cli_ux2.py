"""Issue 22, "for people, round 2": what a new operator meets, through ``regiontrt.cli.main``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fleet_support import write_fleet

from regiontrt.cli import build_parser, main

pytest.importorskip("model_signing", reason="needs model-signing (pip install 'regiontrt[fleet]')")
pytest.importorskip("fsspec", reason="needs fsspec (pip install 'regiontrt[fleet]')")

FLEET_COMMANDS = ("build", "keygen", "sign", "publish", "refresh", "pull", "select", "rollback",
                  "triton-export")


def _build(root: Path, version: str, out: Path) -> None:
    fleet = write_fleet(root / "src", regions=("CERTIFIED",), version=version)
    assert main(["fleet", "build", str(fleet), "--out", str(out), "--sign",
                 str(root / "keys" / "private.pem"), "-q"]) == 0


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """1.0.0 and 1.1.0 of CERTIFIED built into ONE --out folder, as docs/fleet.md shows."""
    root = tmp_path_factory.mktemp("ux2")
    assert main(["fleet", "keygen", str(root / "keys")]) == 0
    _build(root, "1.0.0", root / "dist")
    return root


def _publish(root: Path, dist: Path, registry: Path, capsys) -> tuple[int, str, str]:
    status = main(["fleet", "publish", str(dist), str(registry), "--key",
                   str(root / "keys" / "private.pem")])
    got = capsys.readouterr()
    return status, got.out, got.err


def test_fleet_help_lists_every_fleet_command_and_each_runs_under_fleet(tmp_path, capsys):
    fleet = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
                 if a[0] == "fleet")[1]
    text = fleet.format_help()
    for command in FLEET_COMMANDS:
        assert f"    {command}" in text, command
    # The same implementation behind both spellings.
    assert main(["fleet", "keygen", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "public.pem").is_file()
    assert main(["keygen", str(tmp_path / "k2")]) == 0
    capsys.readouterr()


def test_keygen_refusal_names_force(tmp_path, capsys):
    assert main(["fleet", "keygen", str(tmp_path)]) == 0
    before = (tmp_path / "private.pem").read_bytes()
    assert main(["fleet", "keygen", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "refusing to overwrite" in err
    assert (tmp_path / "private.pem").read_bytes() == before
    assert main(["fleet", "keygen", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "private.pem").read_bytes() != before


def test_publishing_one_out_folder_twice_skips_what_is_published(dist, tmp_path, capsys):
    root, registry = dist, tmp_path / "registry"
    out = tmp_path / "dist"
    shutil.copytree(root / "dist", out)
    status, text, _ = _publish(root, out, registry, capsys)
    assert status == 0 and "latest is now 1.0.0" in text
    _build(root, "1.1.0", out)  # the docs' flow: the next version into the same --out
    capsys.readouterr()
    status, text, err = _publish(root, out, registry, capsys)
    assert status == 0, err
    assert "skipped digits 1.0.0 CERTIFIED: already published with identical content" in text
    assert "published " in text and "1.1.0" in text and "latest is now 1.1.0" in text
    # An older version published later: latest does not move, and the operator is told.
    _build(root, "0.9.0", tmp_path / "old")
    capsys.readouterr()
    status, text, err = _publish(root, tmp_path / "old", registry, capsys)
    assert status == 0, err
    assert "latest stays 1.1.0" in text and "0.9.0 is older" in text
    # A bundle of a published version whose content changed is refused, and nothing moves.
    changed = tmp_path / "changed"
    shutil.copytree(out / "digits" / "1.1.0", changed / "digits" / "1.1.0")
    assert main(["fleet", "sign", str(changed), "--key", str(root / "keys" / "private.pem")]) == 0
    capsys.readouterr()
    status, _, err = _publish(root, changed, registry, capsys)
    assert status == 2 and "already published with different content" in err
    assert "--overwrite" in err


def _site(dist: Path, tmp_path: Path, capsys) -> tuple[Path, Path]:
    """A registry of 1.0.0 and 1.1.0, and a site serving 1.0.0."""
    root, registry, out = dist, tmp_path / "registry", tmp_path / "dist"
    shutil.copytree(root / "dist", out)
    _build(root, "1.1.0", out)
    assert _publish(root, out, registry, capsys)[0] == 0
    assert main(["fleet", "pull", str(registry), "digits", "--region", "CERTIFIED", "--into",
                 str(tmp_path / "site"), "--trust", str(root / "keys" / "public.pem"),
                 "--version", "1.0.0"]) == 0
    capsys.readouterr()
    return registry, tmp_path / "site"


def _pull(dist: Path, registry: Path, site: Path, key: str = "public.pem") -> int:
    return main(["fleet", "pull", str(registry), "digits", "--region", "CERTIFIED", "--into",
                 str(site), "--trust", str(dist / "keys" / key)])


@pytest.mark.parametrize("file", ["model.onnx", "bundle.sig"])
def test_tampered_pull_says_what_was_kept_and_what_to_do(dist, tmp_path, capsys, file):
    registry, site = _site(dist, tmp_path, capsys)
    path = registry / "digits" / "1.1.0" / "CERTIFIED" / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert _pull(dist, registry, site) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\\x" not in err and "b'" not in err and 'b"' not in err
    assert ".staging-" not in err and file in err
    assert "nothing was installed; 1.0.0 keeps serving" in err
    assert err.count("next: ") == 1 and "re-publish" in err
    assert main(["fleet", "select", str(site / "digits")]) == 0


def test_private_key_as_trust_is_refused_before_any_download(dist, tmp_path, capsys):
    registry, _ = _site(dist, tmp_path, capsys)
    fresh = tmp_path / "fresh"
    assert _pull(dist, registry, fresh, key="private.pem") == 2
    err = capsys.readouterr().err
    assert "is a private key; pass the public key" in err
    assert not fresh.exists()  # nothing created, nothing downloaded


def test_rollback_twice_is_worded_by_direction(dist, tmp_path, capsys):
    registry, site = _site(dist, tmp_path, capsys)
    assert _pull(dist, registry, site) == 0
    capsys.readouterr()
    install = str(site / "digits")
    assert main(["fleet", "rollback", install]) == 0
    assert "rolled back" in (out := capsys.readouterr().out) and "from 1.1.0 to 1.0.0" in out
    assert main(["rollback", install]) == 0
    out = capsys.readouterr().out
    assert "rolled back" not in out and "from 1.0.0 to 1.1.0" in out and "forward" in out


@pytest.fixture(scope="module")
def deferred_bundle(dist):
    """CERTIFIED built for cpu and dc-h100 (a TensorRT target this machine cannot build)."""
    fleet = write_fleet(dist / "src-h100", regions=("CERTIFIED",), targets=("cpu", "dc-h100"))
    out = dist / "dist-h100"
    assert main(["fleet", "build", str(fleet), "--out", str(out), "-q"]) == 0
    return out / "digits" / "1.0.0" / "CERTIFIED"


def test_triton_export_of_a_deferred_target_says_it_was_deferred(deferred_bundle, tmp_path,
                                                                  capsys):
    from regiontrt import deploy

    if any(v.target == "dc-h100" for v in deploy.load_bundle(deferred_bundle).variants):
        pytest.skip("this machine built the dc-h100 plan (an sm90 GPU): nothing was deferred")
    assert main(["fleet", "triton-export", str(deferred_bundle), "--into", str(tmp_path),
                 "--target", "dc-h100"]) == 2
    err = capsys.readouterr().err
    assert "'dc-h100' was deferred" in err and "no plan" in err and "cpu" in err
    assert not list(tmp_path.iterdir())


def test_triton_export_defaults_to_the_cpu_variant_and_maps_the_version(deferred_bundle,
                                                                         tmp_path, capsys):
    from google.protobuf import text_format
    from test_triton_export import _model_config_pb2

    from regiontrt import deploy

    pytest.importorskip("tritonclient", reason="needs tritonclient[http] (the test extra)")
    bundle = deploy.load_bundle(deferred_bundle)
    assert main(["triton-export", str(deferred_bundle), "--into", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "variant cpu (onnxruntime)" in out and "version 1" in out
    folder = tmp_path / "digits_CERTIFIED"
    cpu = next(v for v in bundle.variants if v.target == "cpu")
    assert (folder / "1" / "model.onnx").read_bytes() == bundle.load_variant(cpu).payload
    config = text_format.Parse((folder / "config.pbtxt").read_text(), _model_config_pb2()
                               .ModelConfig())
    params = deploy.triton.parse_parameters(config)
    assert params["regiontrt.variant"] == "cpu" and params["regiontrt.version"] == "1.0.0"
    assert "regiontrt.latency_p99_ms" not in params  # CERTIFIED has no SLA: no empty string
    assert all(value != "" for key, value in params.items() if key != "regiontrt.forbidden")
    assert main(["fleet", "triton-export", str(deferred_bundle), "--into", str(tmp_path),
                 "--version", "3"]) == 0
    assert (folder / "3" / "model.onnx").is_file()
    with pytest.raises(SystemExit) as exc:  # argparse: Triton versions are integers
        main(["triton-export", str(deferred_bundle), "--into", str(tmp_path),
              "--version", "1.0.0"])
    assert exc.value.code == 2 and "--version" in capsys.readouterr().err


def test_notebook_views_are_short_and_speak_python(dist):
    import json

    import regiontrt as rt
    from regiontrt import deploy

    bundle = deploy.load_bundle(dist / "dist" / "digits" / "1.0.0" / "CERTIFIED")
    engine_file = bundle.path / bundle.variants[0].file
    info = rt.inspect(engine_file)
    text = repr(info)
    assert "\n" not in text and len(text) < 300 and text.startswith("EngineInfo(")
    assert "region='CERTIFIED'" in text and "precision='fp32'" in text
    assert info["region"]["name"] == "CERTIFIED" and json.loads(json.dumps(info)) == dict(info)
    selection = bundle.select()
    short = repr(selection)
    assert "\n" not in short and len(short) < 300 and "variant='cpu'" in short
    page = selection._repr_html_()
    assert "<table>" in page and "selected cpu" in page
    assert all(c.target in page for c in selection.reasons)
    view = bundle._repr_html_()
    assert view and "--bench" not in view and "not measured" in view


SHAPE = "input:1x1x8x8,32x1x8x8,64x1x8x8"


def _npz(path: Path, region: str, kind: str, scale: float = 1.0) -> str:
    import numpy as np

    from regiontrt import demo

    data = demo.region_data(region)
    values = (data.calibration if kind == "calib" else data.validation)[:64]
    np.savez(path, input=(values * scale).astype(values.dtype))
    return str(path)


def test_calibration_mismatch_warning_is_one_clean_line(tmp_path, capsys, monkeypatch):
    from regiontrt import demo

    monkeypatch.chdir(tmp_path)
    status = main(["build", str(demo.model_path()), "--region", "NA", "--shape", SHAPE,
                   # calibration at a quarter of the validation's scale: the check must warn
                   "--calibration", _npz(tmp_path / "c.npz", "NA", "calib", scale=0.25),
                   "--validation", _npz(tmp_path / "v.npz", "NA", "val"), "-q"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "outside the calibrated ranges" in line]
    assert status == 0 and lines, err[-600:]
    [line] = lines
    assert line.startswith("warning: region 'NA'")
    assert ".py:" not in err and "warnings.warn" not in err and "UserWarning" not in err


def test_build_says_what_it_will_not_do_as_asked(tmp_path, capsys, monkeypatch):
    from regiontrt import demo

    monkeypatch.chdir(tmp_path)
    assert main(["build", str(demo.model_path()), "--region", "EU", "--shape", "input:8x1x8x8",
                 "--calibration", _npz(tmp_path / "c.npz", "EU", "calib"),
                 "--validation", _npz(tmp_path / "v.npz", "EU", "val"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: --calibration is ignored: region EU" in err
    assert "warning: --shape input:8x1x8x8: one shape, so the engine gets a fixed profile" in err
    engine = next(tmp_path.glob("*.engine"))
    # the warning says the truth: the profile is fixed at that one shape
    import regiontrt as rt

    assert rt.inspect(engine)["shape_profiles"] == [{"input": [[8, 1, 8, 8]] * 3}]
    assert main(["bench", str(engine), "--iterations", "10", "--warmup", "1"]) == 0
    got = capsys.readouterr()
    assert "warning: --iterations 10: a p99 from 10 samples is not meaningful" in got.err
    assert main(["bench", str(engine), "--iterations", "100", "--warmup", "1", "--json"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_demo_table_shows_an_sla_miss_in_the_table(tmp_path, capsys, monkeypatch):
    import dataclasses

    from regiontrt.precision import regions

    real = regions.get_region
    monkeypatch.setattr(regions, "get_region", lambda name: dataclasses.replace(
        real(name), latency_p99_ms=1e-6))  # an SLA no machine meets
    assert main(["demo", "--regions", "eu", "--out", str(tmp_path / "demo"), "-q"]) == 0
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.startswith("EU")]
    assert "> SLA 1e-06: MISS" in row


def test_benchmark_stops_at_its_time_budget_and_says_so():
    """Issue 22: engine.benchmark(iterations=100) ran 4 min 10 s silently at a large OPT shape."""
    import time

    import numpy as np
    from onnx import TensorProto, helper

    import regiontrt as rt

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]),
        opset_imports=[helper.make_opsetid("", 17)])
    engine = rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED").build()
    runner = engine._get_runner()
    slow_run = runner.time_once

    def slow(feeds):  # stands for a model whose OPT shape takes 50 ms a call
        time.sleep(0.05)
        return slow_run(feeds)

    runner.time_once = slow  # type: ignore[method-assign]
    started = time.perf_counter()
    with pytest.warns(UserWarning, match=r"stopped after \d+ of 1000 timed calls"):
        report = engine.benchmark(iterations=1000, warmup=0, max_seconds=0.5,
                                  feeds={"x": np.ones((2, 4), np.float32)})
    assert time.perf_counter() - started < 2.0
    assert 1 <= report.iterations < 1000
    full = engine.benchmark(iterations=3, warmup=0, max_seconds=None,
                            feeds={"x": np.ones((2, 4), np.float32)})
    assert full.iterations == 3
    with pytest.raises(rt.errors.InvalidArgumentError, match="max_seconds"):
        engine.benchmark(iterations=3, max_seconds=0)


def test_calibration_says_how_much_memory_its_activations_take(monkeypatch, caplog):
    """Issue 22: an INT8 build of 32 images of 3x256x256 peaked at 5.5 GB without a word."""
    import logging

    import numpy as np
    from onnx import TensorProto, helper

    from regiontrt.calibration import collect

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])]),
        opset_imports=[helper.make_opsetid("", 17)])
    batches = [{"x": np.random.default_rng(i).normal(size=(8, 256)).astype(np.float32)}
               for i in range(2)]
    with caplog.at_level(logging.INFO, logger="regiontrt.calibration"):
        collect.collect_statistics(model, batches)
    assert any("GiB stay alive while calibrating" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(collect, "MEMORY_WARNING_BYTES", 0)
    with pytest.warns(UserWarning, match="pass smaller calibration batches"):
        collect.collect_statistics(model, batches)


def test_auto_metric_judges_an_lstm_state_as_a_state_not_class_scores():
    """Found walking getting-started with a G2P LSTM encoder (outputs [N, 256] LSTM states):
    ``auto`` judged them by top-1 over "256 classes"."""
    from onnx import TensorProto, helper

    from regiontrt.graph.io import output_specs
    from regiontrt.precision.metrics import plan_metrics

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 16, 4], [0.1] * 64)
    r = helper.make_tensor("r", TensorProto.FLOAT, [1, 16, 4], [0.1] * 64)
    nodes = [helper.make_node("LSTM", ["x", "w", "r"], ["", "h"], hidden_size=4),
             helper.make_node("Squeeze", ["h", "axes"], ["state"]),
             helper.make_node("Gemm", ["state", "fc"], ["logits"])]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    fc = helper.make_tensor("fc", TensorProto.FLOAT, [4, 3], [0.5] * 12)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [5, 2, 4])], [
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 4]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3])], [w, r, axes, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plan = plan_metrics("auto", output_specs(model), model=model)
    chosen = {m.output: m for m in plan.per_output}
    assert chosen["state"].metric == "relative_l2" and "LSTM" in chosen["state"].why
    assert chosen["logits"].metric == "top1"


def test_a_pull_with_another_key_names_the_bundle_not_a_staging_folder(dist, tmp_path, capsys):
    """Walking docs/fleet.md: with the wrong --trust the message began "downloaded  the
    signature..." (the deleted staging folder cut out, leaving a dangling word)."""
    registry, site = _site(dist, tmp_path, capsys)
    assert main(["keygen", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert main(["fleet", "pull", str(registry), "digits", "--region", "CERTIFIED", "--into",
                 str(site), "--trust", str(tmp_path / "other" / "public.pem")]) == 2
    err = capsys.readouterr().err
    assert "the downloaded bundle: the signature does not verify with any trusted key" in err
    assert "downloaded  " not in err and ".staging-" not in err
    assert "nothing was installed; 1.0.0 keeps serving" in err
