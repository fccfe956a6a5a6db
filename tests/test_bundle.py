"""Bundles: the load_bundle contract, selection reasons, install folders, detached signatures."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import shutil

import numpy as np
import pytest
from fleet_support import region_batches, write_fleet

import regiontrt as rt
from regiontrt import deploy
from regiontrt.errors import ArtifactError, BundleError, SignatureError

pytest.importorskip("model_signing", reason="needs model-signing (pip install 'regiontrt[fleet]')")
pytest.importorskip("fsspec", reason="needs fsspec (pip install 'regiontrt[fleet]')")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    private, public = deploy.keygen(root / "keys")
    fleet = write_fleet(root / "src", regions=("EU", "CERTIFIED"), targets=("cpu", "dc-h100"))
    with cf.ThreadPoolExecutor(2) as pool:
        result = deploy.build_fleet(fleet, root / "dist", executor=pool, sign_key=private)
    assert result.ok, result.table()
    return {"root": root, "result": result, "private": private, "public": public}


def test_bundle_contract(dist):
    bundle = rt.load_bundle(dist["result"].bundles["EU"], trust=dist["public"])
    assert (bundle.name, bundle.version, bundle.region) == ("digits", "1.0.0", "EU")
    assert bundle.precision == "fp16"  # EU forbids int8; fp16 fits its budget on the demo
    [variant] = bundle.variants
    assert (variant.target, variant.backend, variant.file, variant.role) == (
        "cpu", "onnxruntime", "cpu.engine", "latency")
    assert variant.sha256 == hashlib.sha256((bundle.path / variant.file).read_bytes()).hexdigest()
    assert [d["name"] for d in bundle.deferred] == ["dc-h100"]
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["validation"]["chosen"] == "fp16"
    assert manifest["variants"][0]["source_onnx_sha256"] == manifest["onnx"]["sha256"]
    assert "private" not in " ".join(p.name for p in bundle.path.iterdir())

    selection = bundle.select()
    assert selection.variant == variant and not selection.rebuilt
    assert [c.option for c in selection.reasons] == ["variant", "rebuild", "variant"]
    assert selection.reasons[-1].chosen and not selection.reasons[0].chosen
    feeds = region_batches("EU", "val")[0]
    same = bundle.load_variant(variant).infer(feeds)["logits"]
    np.testing.assert_array_equal(selection.engine.infer(feeds)["logits"], same)
    # The bundled ONNX alone runs the same graph (the fallback when no variant fits).
    np.testing.assert_array_equal(bundle.onnx_engine().infer(feeds)["logits"], same)


def test_select_falls_back_to_the_bundled_onnx(dist, tmp_path):
    folder = tmp_path / "EU"
    shutil.copytree(dist["result"].bundles["EU"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["variants"] = []
    (folder / "manifest.json").write_text(json.dumps(manifest))
    selection = rt.load_bundle(folder).select(rebuild=False)
    assert selection.variant is None and selection.reasons[-1].option == "onnx"
    assert selection.engine.precision == "fp16"
    with pytest.raises(SignatureError):  # that edit is caught by the signature
        rt.load_bundle(folder, trust=dist["public"])


def test_unsigned_and_extra_files_are_refused(dist, tmp_path):
    folder = tmp_path / "CERTIFIED"
    shutil.copytree(dist["result"].bundles["CERTIFIED"], folder)
    (folder / "notes.txt").write_text("added after signing")
    with pytest.raises(SignatureError, match="notes"):
        rt.load_bundle(folder, trust=dist["public"])
    (folder / "notes.txt").unlink()
    rt.load_bundle(folder, trust=dist["public"])
    (folder / "bundle.sig").unlink()
    with pytest.raises(SignatureError, match="not signed"):
        rt.load_bundle(folder, trust=dist["public"])


def test_changed_variant_is_refused_without_signature_check(dist, tmp_path):
    folder = tmp_path / "EU"
    shutil.copytree(dist["result"].bundles["EU"], folder)
    data = bytearray((folder / "cpu.engine").read_bytes())
    data[-1] ^= 0xFF
    (folder / "cpu.engine").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        rt.load_bundle(folder)


def test_manifest_with_unsafe_file_name_is_refused(dist, tmp_path):
    folder = tmp_path / "EU"
    shutil.copytree(dist["result"].bundles["EU"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["variants"][0]["file"] = "../../etc/passwd"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plain file"):
        rt.load_bundle(folder)


def test_load_engine_checks_a_detached_signature(dist, tmp_path):
    engine = tmp_path / "eu.engine"
    shutil.copy(dist["result"].bundles["EU"] / "cpu.engine", engine)
    with pytest.raises(SignatureError, match="not signed"):
        rt.load_engine(engine, trust=dist["public"])
    deploy.sign_file(engine, dist["private"])
    assert rt.load_engine(engine, trust=dist["public"]).precision == "fp16"
    other = deploy.keygen(tmp_path / "other")[1]
    with pytest.raises(SignatureError):
        rt.load_engine(engine, trust=other)
    assert rt.load_engine(engine, trust=[other, dist["public"]]).region == "EU"
    data = bytearray(engine.read_bytes())
    data[100] ^= 0x01
    engine.write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        rt.load_engine(engine, trust=dist["public"])
    with pytest.raises(ArtifactError):  # without trust, the container's own digests still catch it
        rt.load_engine(engine)


def test_keygen_refuses_to_overwrite_a_private_key(tmp_path):
    private, public = deploy.keygen(tmp_path)
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(SignatureError, match="exists"):
        deploy.keygen(tmp_path)
