"""End to end: fleet build on a real Dask LocalCluster (2 worker processes) and on the local
process pool -> sign -> publish to a folder -> pull over HTTP (http.server on 127.0.0.1, through
fsspec) -> select -> infer equals the region's engine built directly."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from fleet_support import region_batches, serve, write_fleet

import regiontrt as rt
from regiontrt import demo, deploy
from regiontrt.cli import main
from regiontrt.runtime import artifact

pytest.importorskip("distributed", reason="needs dask[distributed] (regiontrt[fleet])")
pytest.importorskip("aiohttp", reason="needs aiohttp for http:// pulls (regiontrt[fleet])")
pytest.importorskip("model_signing", reason="needs model-signing (regiontrt[fleet])")
pytestmark = pytest.mark.rtx  # the tensorrt-rtx cells build on the CPU with tensorrt-rtx

REGIONS = ("NA", "EU", "CERTIFIED")
PROFILE = {"input": [(1, 1, 8, 8), (32, 1, 8, 8), (64, 1, 8, 8)]}


def _summary(result: deploy.FleetResult) -> dict[tuple[str, str], tuple[str, str | None, str]]:
    """Per cell: status, precision and the hash of the precision-compiled ONNX it came from."""
    out = {}
    for cell in result.cells:
        source = ""
        if cell.engine is not None:
            source = artifact.decode(cell.engine)[0]["source_onnx_sha256"]
        out[(cell.region, cell.target)] = (cell.status, cell.precision, source)
    return out


def _direct(region: str) -> rt.Engine:
    builder = (rt.RegionalEngineBuilder.from_onnx(demo.model_path())
               .for_region(region).with_shape_profile(PROFILE)
               .with_validation(region_batches(region, "val")))
    if region == "NA":
        builder = builder.with_calibrator("entropy", data=region_batches(region, "calib"))
    return builder.build()


@pytest.mark.slow
def test_fleet_dask_sign_publish_pull_http_select(tmp_path):
    from distributed import Client, LocalCluster

    fleet = write_fleet(tmp_path / "src", regions=REGIONS, targets=("cpu", "rtx", "dc-h100"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        on_dask = deploy.build_fleet(fleet, tmp_path / "dask", executor=client.get_executor())
        # The CLI reaches the same cluster by address (a one-region fleet keeps it short).
        small = write_fleet(tmp_path / "small", regions=("CERTIFIED",), targets=("cpu",))
        assert main(["fleet", "build", str(small), "--out", str(tmp_path / "cli"),
                     "--scheduler", cluster.scheduler_address]) == 0
    local = deploy.build_fleet(fleet, tmp_path / "dist", workers=2)

    # Every cell is in the table, the same on Dask as on the local pool.
    assert on_dask.ok and local.ok, on_dask.table() + "\n" + local.table()
    assert len(local.cells) == len(REGIONS) * 3
    assert _summary(on_dask) == _summary(local)
    table = local.table()
    for region in REGIONS:
        assert region in table
    statuses = {(c.region, c.target): c.status for c in local.cells}
    assert {statuses[(r, "dc-h100")] for r in REGIONS} == {"deferred"}
    assert {statuses[(r, t)] for r in REGIONS for t in ("cpu", "rtx")} == {"built"}

    keys = tmp_path / "keys"
    _, public = deploy.keygen(keys)
    for folder in local.bundles.values():
        deploy.sign_bundle(folder, keys / "private.pem")
    registry = tmp_path / "registry"
    deploy.publish(tmp_path / "dist", str(registry), key=keys / "private.pem")
    assert deploy.read_index(str(registry), "digits")["latest"] == "1.0.0"

    with serve(registry) as url:
        for region in REGIONS:
            result = deploy.pull(url, "digits", region=region, into=tmp_path / f"site-{region}",
                                 trust=public)
            assert result.changed and result.version == "1.0.0"
            bundle = rt.load_bundle(tmp_path / f"site-{region}" / "digits", trust=public)
            assert (bundle.name, bundle.version, bundle.region) == ("digits", "1.0.0", region)
            # One precision decision per region: every variant derives from the bundled ONNX.
            onnx_sha = hashlib.sha256((bundle.path / "model.onnx").read_bytes()).hexdigest()
            assert bundle.onnx_sha256 == onnx_sha
            for variant in bundle.variants:
                assert bundle.load_variant(variant).metadata["source_onnx_sha256"] == onnx_sha
            selection = bundle.select()
            reasons = {c.target: c for c in selection.reasons}
            assert not reasons["rtx"].chosen and reasons["rtx"].reason  # no RTX GPU on CI
            assert "deferred" in reasons["dc-h100"].reason
            assert selection.variant is not None and selection.variant.target == "cpu"

            direct = _direct(region)
            assert selection.engine.precision == direct.precision
            assert hashlib.sha256(direct.payload).hexdigest() == onnx_sha
            feeds = region_batches(region, "val")[0]
            np.testing.assert_array_equal(selection.engine.infer(feeds)["logits"],
                                          direct.infer(feeds)["logits"])
    precisions = {r: rt.load_bundle(local.bundles[r]).precision for r in REGIONS}
    assert precisions["CERTIFIED"] == "fp32" and precisions["EU"] != "int8"
