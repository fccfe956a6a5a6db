"""Every refusal of a pull: a typed error, the installed version still serving, nothing
half-installed. Registries are real folders; the interrupted pulls go through a real HTTP server
on 127.0.0.1 that cuts a transfer, and through a pull process killed mid-transfer."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fleet_support import region_batches, serve, write_fleet

import regiontrt as rt
from regiontrt import deploy
from regiontrt.deploy.tuf_repo import Repository
from regiontrt.errors import (
    BundleError,
    DowngradeError,
    PolicyViolation,
    RegistryError,
    SignatureError,
)
from regiontrt.runtime import artifact

pytest.importorskip("model_signing", reason="needs model-signing (pip install 'regiontrt[fleet]')")
fsspec = pytest.importorskip("fsspec", reason="needs fsspec (pip install 'regiontrt[fleet]')")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Versions 1.0.0 and 1.1.0 of NA and EU, signed, published to a folder registry."""
    root = tmp_path_factory.mktemp("fleet")
    keys = deploy.keygen(root / "keys")
    other = deploy.keygen(root / "other")
    with cf.ThreadPoolExecutor(2) as pool:  # any Executor works; threads keep the setup fast
        for version in ("1.0.0", "1.1.0"):
            fleet = write_fleet(root / "src", regions=("NA", "EU"), version=version)
            result = deploy.build_fleet(fleet, root / "dist", executor=pool, sign_key=keys[0])
            assert result.ok, result.table()
    deploy.publish(root / "dist", str(root / "registry"), key=keys[0])
    return {"root": root, "private": keys[0], "public": keys[1], "other": other[0]}


@pytest.fixture
def site(built, tmp_path):
    """A fresh copy of the registry and an install of 1.0.0 EU from it."""
    registry = tmp_path / "registry"
    shutil.copytree(built["root"] / "registry", registry)
    deploy.pull(str(registry), "digits", region="EU", into=tmp_path / "site",
                trust=built["public"], version="1.0.0")
    return registry, tmp_path / "site" / "digits"


def _assert_still_serving(install: Path, public: Path, version: str = "1.0.0") -> None:
    assert deploy.installed_version(install) == version
    assert not [p.name for p in install.iterdir() if p.name.startswith((".staging", ".trash"))]
    assert sorted(p.name for p in (install / "versions").iterdir()) == [f"{version}_EU"]
    bundle = rt.load_bundle(install, trust=public)
    out = bundle.select().engine.infer(region_batches("EU", "val")[0])["logits"]
    assert out.shape == (64, 10) and np.isfinite(out).all()


def _pull(registry: Path, install: Path, public: Path, **kwargs):
    return deploy.pull(str(registry), "digits", region="EU", into=install.parent, trust=public,
                       **kwargs)


@pytest.mark.parametrize("file", ["model.onnx", "cpu.engine", "manifest.json", "bundle.sig"])
def test_one_changed_byte_in_any_published_file(built, site, file):
    registry, install = site
    path = registry / "digits" / "1.1.0" / "EU" / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    # A flipped byte in the manifest may leave it unparsable: then it is refused before the
    # signature check (the file list comes from it), as a BundleError.
    expected = (SignatureError, BundleError) if file == "manifest.json" else SignatureError
    with pytest.raises(expected):
        _pull(registry, install, built["public"])
    _assert_still_serving(install, built["public"])


def test_edited_manifest_is_refused(built, site):
    registry, install = site
    path = registry / "digits" / "1.1.0" / "EU" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["region"]["budget"] = 0.5  # a valid, plausible edit: loosen the accuracy budget
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(SignatureError, match=r"manifest\.json"):
        _pull(registry, install, built["public"])
    _assert_still_serving(install, built["public"])


def test_signature_by_untrusted_key_is_refused(built, site, tmp_path):
    registry, install = site
    deploy.sign_bundle(registry / "digits" / "1.1.0" / "EU", built["other"])
    with pytest.raises(SignatureError, match="any trusted key"):
        _pull(registry, install, built["public"])
    _assert_still_serving(install, built["public"])


def test_downgrade_is_refused_unless_allowed_and_rollback(built, site):
    registry, install = site
    assert _pull(registry, install, built["public"]).version == "1.1.0"  # latest
    with pytest.raises(DowngradeError):
        _pull(registry, install, built["public"], version="1.0.0")
    assert deploy.installed_version(install) == "1.1.0"
    assert deploy.rollback(install) == "1.0.0"  # rollback keeps the previous version
    assert deploy.rollback(install) == "1.1.0"
    result = _pull(registry, install, built["public"], version="1.0.0", allow_downgrade=True)
    assert result.changed and deploy.installed_version(install) == "1.0.0"


def test_eu_bundle_holding_an_int8_variant_is_refused(built, site):
    registry, install = site
    eu = registry / "digits" / "1.1.0" / "EU"
    na = built["root"] / "dist" / "digits" / "1.1.0" / "NA"
    meta, payload = artifact.read(na / "cpu.engine")
    assert meta["precision"] == "int8"
    meta["region"] = json.loads((eu / "manifest.json").read_text())["region"]
    blob = artifact.encode(meta, payload)
    (eu / "int8.engine").write_bytes(blob)
    manifest = json.loads((eu / "manifest.json").read_text())
    manifest["variants"].append({**manifest["variants"][0], "target": "int8",
                                 "file": "int8.engine", "size": len(blob),
                                 "sha256": hashlib.sha256(blob).hexdigest()})
    (eu / "manifest.json").write_text(json.dumps(manifest))
    deploy.sign_bundle(eu, built["private"])  # even signed by the trusted key
    _resign_registry(registry, eu, built["private"])  # and listed by the registry's metadata
    with pytest.raises(PolicyViolation, match="int8"):
        rt.load_bundle(eu, trust=built["public"])
    with pytest.raises(PolicyViolation):
        _pull(registry, install, built["public"])
    _assert_still_serving(install, built["public"])


def _resign_registry(registry: Path, bundle: Path, key: Path) -> None:
    """What a publisher holding the key could do: sign metadata naming the bundle's files."""
    fs = fsspec.filesystem("file")
    repo = Repository.open(fs, str(registry / "digits"), key)
    repo.add_bundle("digits", bundle.parent.name, bundle.name,
                    {p.name: p for p in bundle.iterdir()})
    repo.commit()


def test_variant_of_another_region_is_refused(built, tmp_path):
    eu = tmp_path / "EU"
    shutil.copytree(built["root"] / "dist" / "digits" / "1.0.0" / "EU", eu)
    na = built["root"] / "dist" / "digits" / "1.0.0" / "NA"
    shutil.copy(na / "cpu.engine", eu / "cpu.engine")
    manifest = json.loads((eu / "manifest.json").read_text())
    manifest["variants"][0].update(
        size=(eu / "cpu.engine").stat().st_size,
        sha256=hashlib.sha256((eu / "cpu.engine").read_bytes()).hexdigest())
    (eu / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises((BundleError, PolicyViolation)):
        rt.load_bundle(eu)


class _Cut(http.server.SimpleHTTPRequestHandler):
    """Sends half of every ``.engine`` file, then closes the connection."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.endswith(".engine"):
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        return None


def test_transfer_cut_midway_is_refused(built, site):
    registry, install = site
    with serve(registry, _Cut) as url, pytest.raises(RegistryError):
        deploy.pull(url, "digits", region="EU", into=install.parent, trust=built["public"])
    _assert_still_serving(install, built["public"])


_PULL = """
import sys
from regiontrt import deploy
deploy.pull(sys.argv[1], "digits", region="EU", into=sys.argv[2], trust=sys.argv[3])
"""


def test_killed_pull_leaves_install_untouched_and_next_pull_clears_debris(built, site):
    registry, install = site
    started, release = threading.Event(), threading.Event()

    class Stall(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.endswith(".engine") and not release.is_set():
                data = Path(self.translate_path(self.path)).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:1000])
                self.wfile.flush()
                started.set()
                release.wait(20)  # hold the transfer open until the client is killed
                return None
            return super().do_GET()

    with serve(registry, Stall) as url:
        proc = subprocess.Popen([sys.executable, "-c", _PULL, url, str(install.parent),
                                 str(built["public"])])
        try:
            assert started.wait(60), "the pull never reached the engine file"
            deadline = time.monotonic() + 10
            while not list(install.glob(".staging-*")) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
        debris = list(install.glob(".staging-*"))
        assert debris, "a killed pull leaves its staging folder"
        assert deploy.installed_version(install) == "1.0.0"
        rt.load_bundle(install, trust=built["public"]).select()  # still serving
        result = deploy.pull(url, "digits", region="EU", into=install.parent,
                             trust=built["public"])
    assert result.changed and result.version == "1.1.0"
    assert not list(install.glob(".staging-*"))
    assert sorted(p.name for p in (install / "versions").iterdir()) == ["1.0.0_EU", "1.1.0_EU"]
