"""Registries over fsspec: memory:// round trip, the index written last, immutable versions."""

from __future__ import annotations

import concurrent.futures as cf
import uuid

import pytest
from fleet_support import write_fleet

import regiontrt as rt
from regiontrt import deploy
from regiontrt.errors import RegistryError

pytest.importorskip("model_signing", reason="needs model-signing (pip install 'regiontrt[fleet]')")
fsspec = pytest.importorskip("fsspec", reason="needs fsspec (pip install 'regiontrt[fleet]')")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    private, public = deploy.keygen(root / "keys")
    with cf.ThreadPoolExecutor(2) as pool:
        for version in ("1.0.0", "1.10.0", "1.9.2"):  # published out of order on purpose
            fleet = write_fleet(root / "src", regions=("CERTIFIED",), version=version)
            assert deploy.build_fleet(fleet, root / f"dist-{version}", executor=pool,
                                      sign_key=private).ok
    return root, public, private


def test_memory_registry_round_trip_and_latest_by_version_order(dist, tmp_path):
    root, public, private = dist
    registry = f"memory://rt-{uuid.uuid4().hex}"
    for version in ("1.0.0", "1.10.0", "1.9.2"):
        deploy.publish(root / f"dist-{version}", registry, key=private)
    index = deploy.read_index(registry, "digits")
    assert sorted(index["versions"]) == ["1.0.0", "1.10.0", "1.9.2"]
    assert index["latest"] == "1.10.0"  # PEP 440 order, not string order
    result = deploy.pull(registry, "digits", region="CERTIFIED", into=tmp_path, trust=public)
    assert result.version == "1.10.0"
    assert rt.load_bundle(tmp_path / "digits", trust=public).select().engine.precision == "fp32"
    with pytest.raises(RegistryError, match="already published"):
        deploy.publish(root / "dist-1.0.0", registry, key=private)
    deploy.publish(root / "dist-1.0.0", registry, key=private, overwrite=True)
    assert deploy.read_index(registry, "digits")["latest"] == "1.10.0"


def test_failed_publish_leaves_the_index_as_it_was(dist, tmp_path):
    root, public, private = dist
    registry = tmp_path / "registry"
    deploy.publish(root / "dist-1.0.0", str(registry), key=private)
    before = (registry / "digits" / "index.json").read_bytes()
    # The signature's destination is taken by a folder: the upload fails after the other files.
    (registry / "digits" / "1.9.2" / "CERTIFIED" / "bundle.sig").mkdir(parents=True)
    with pytest.raises(RegistryError, match="publishing"):
        deploy.publish(root / "dist-1.9.2", str(registry), key=private)
    assert (registry / "digits" / "index.json").read_bytes() == before
    assert (registry / "digits" / "1.9.2" / "CERTIFIED" / "manifest.json").is_file()
    assert deploy.pull(str(registry), "digits", region="CERTIFIED", into=tmp_path / "site",
                       trust=public).version == "1.0.0"
    with pytest.raises(RegistryError, match="not in the registry"):
        deploy.pull(str(registry), "digits", region="CERTIFIED", into=tmp_path / "site",
                    trust=public, version="1.9.2")


def test_unsigned_bundles_are_not_published(tmp_path):
    fleet = write_fleet(tmp_path / "src", regions=("CERTIFIED",))
    with cf.ThreadPoolExecutor(1) as pool:
        deploy.build_fleet(fleet, tmp_path / "dist", executor=pool)
    private, _ = deploy.keygen(tmp_path / "keys")
    with pytest.raises(RegistryError, match="not signed"):
        deploy.publish(tmp_path / "dist", str(tmp_path / "registry"), key=private)
    assert not (tmp_path / "registry").exists()
    with pytest.raises(RegistryError, match="read-only"):
        deploy.publish(tmp_path / "dist", "http://127.0.0.1:1/registry", key=private)
