"""Bundles: the load_bundle contract, selection reasons, install folders, detached signatures."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import shutil
from html.parser import HTMLParser

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


def test_select_prefers_the_asked_role(tmp_path):
    fleet = write_fleet(tmp_path / "src", regions=("CERTIFIED",), targets=("cpu", "cpu-batch"))
    with cf.ThreadPoolExecutor(1) as pool:
        result = deploy.build_fleet(fleet, tmp_path / "dist", executor=pool)
    bundle = rt.load_bundle(result.bundles["CERTIFIED"])
    assert {v.target: v.role for v in bundle.variants} == {"cpu": "latency",
                                                           "cpu-batch": "throughput"}
    assert bundle.select().variant.target == "cpu"
    assert bundle.select(role="throughput").variant.target == "cpu-batch"
    assert bundle.select(role="latency").variant.target == "cpu"


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
    assert rt.load_engine(engine, trust=dist["public"].parent).region == "EU"  # a key folder
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


class _Rows(HTMLParser):
    """Tags and the text of every table row (a real parser, not regexes)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.rows: list[list[str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].append("")

    def handle_data(self, data):
        if self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


def _rows(html: str) -> _Rows:
    parser = _Rows()
    parser.feed(html)
    return parser


def test_notebook_views_of_a_fleet_result_and_a_bundle(dist, tmp_path):
    result = dist["result"]
    assert repr(result) == ("FleetResult(fleet='digits', version='1.0.0', cells=4 (2 built, "
                            f"2 deferred, 0 failed), bundles=['CERTIFIED', 'EU'], "
                            f"seconds={result.seconds:.1f})")
    parsed = _rows(result._repr_html_())
    assert "script" not in parsed.tags
    for cell in result.cells:  # the cells table: one row per cell with its status
        assert any(row[:4] == [cell.region, cell.target, cell.backend, cell.status]
                   for row in parsed.rows), (cell, parsed.rows)
    statuses = {(c.region, c.target): c.status for c in result.cells}
    assert set(statuses.values()) == {"built", "deferred"}

    bundle = rt.load_bundle(result.bundles["EU"])
    assert repr(bundle).endswith("variants=['cpu'], deferred=['dc-h100'])")
    parsed = _rows(bundle._repr_html_())
    matrix = next(i for i, r in enumerate(parsed.rows) if r[:1] == ["region"])
    header, row = parsed.rows[matrix], parsed.rows[matrix + 1]
    assert header == ["region", "cpu", "dc-h100"] and row[0] == "EU"
    assert "fp16" in row[1] and "compliant" in row[1] and "deferred" in row[2]

    # Names and reasons come from files: a hostile one shows as text, never as markup.
    hostile = "<script>alert(1)</script>"
    bad = deploy.FleetResult(result.fleet, [*result.cells, deploy.CellResult(
        hostile, "cpu", "onnxruntime", "failed", error=f"<img src=x onerror=alert(1)>{hostile}")],
        {}, 0.0)
    folder = tmp_path / "EU"
    shutil.copytree(result.bundles["EU"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["deferred"][0].update(name=hostile, reason=hostile)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for html in (bad._repr_html_(), rt.load_bundle(folder)._repr_html_()):
        parsed = _rows(html)
        assert "script" not in parsed.tags and "<img src=x" not in html
        assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert any(hostile in cell for row in parsed.rows for cell in row)
