"""Bundles are written and signed beside their folder, then swapped in: a writer killed at any
moment (a real SIGKILL of a real process) leaves the previous signed bundle or the new signed one;
our leftovers go on the next write. Modes follow the umask (set and restored in the test)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fleet_support import write_fleet

import regiontrt as rt
from regiontrt import deploy
from regiontrt.deploy import bundle as bundle_module
from regiontrt.errors import SignatureError

pytest.importorskip("model_signing", reason="needs model-signing (pip install 'regiontrt[fleet]')")
pytest.importorskip("fsspec", reason="needs fsspec (pip install 'regiontrt[fleet]')")
pytest.importorskip("tuf", reason="needs python-tuf (pip install 'regiontrt[fleet]')")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("atomic")
    private, public = deploy.keygen(root / "keys")
    fleet = write_fleet(root / "src", regions=("EU",))
    with cf.ThreadPoolExecutor(1) as pool:
        assert deploy.build_fleet(fleet, root / "dist", executor=pool, sign_key=private).ok
    return {"root": root, "private": private, "public": public,
            "bundle": root / "dist" / "digits" / "1.0.0" / "EU"}


def _rewrite(source: Path, dest: Path, key: Path | None) -> Path:
    """Write ``source``'s bundle again at ``dest`` (what a fleet build does at its end)."""
    b = rt.load_bundle(source)
    variants = [({"name": v.target, "role": v.role}, b.load_variant(v)) for v in b.variants]
    return deploy.write_bundle(dest, name=b.name, version=b.version,
                               region_engine=b.onnx_engine(), variants=variants, sign_key=key)


_WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_fleet_atomic import _rewrite
print("ready", flush=True)
while True:
    _rewrite(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
"""


def _ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir()
                  if p.name.startswith(f".{folder.name}.rtrt-") and p.is_dir())


def test_killed_writer_always_leaves_a_signed_bundle(built, tmp_path):
    dest = tmp_path / "dist" / "EU"
    _rewrite(built["bundle"], dest, built["private"])
    rng = random.Random(19)
    mid_write = 0
    for run in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(built["bundle"]), str(dest),
             str(built["private"]), str(Path(__file__).parent)],
            stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.6) + 0.1 * run)  # somewhere inside a write
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert rt.load_bundle(dest, trust=built["public"]).version == "1.0.0", f"run {run}"
        mid_write += bool(_ours(dest))  # a kill inside a write leaves its temporary folder
    assert mid_write, "no kill landed inside a write: the test proved nothing"
    _rewrite(built["bundle"], dest, built["private"])  # the next write clears our leftovers
    assert _ours(dest) == []
    assert rt.load_bundle(dest, trust=built["public"]).region == "EU"


def test_failure_between_steps_keeps_the_previous_signed_bundle(built, tmp_path, monkeypatch):
    dest = tmp_path / "EU"
    _rewrite(built["bundle"], dest, built["private"])
    before = (dest / "bundle.sig").read_bytes()

    def fail(*args, **kwargs):
        raise SignatureError("injected: the signer failed")

    monkeypatch.setattr(bundle_module, "sign_bundle", fail)
    with pytest.raises(SignatureError, match="injected"):
        _rewrite(built["bundle"], dest, built["private"])
    assert (dest / "bundle.sig").read_bytes() == before and _ours(dest) == []
    rt.load_bundle(dest, trust=built["public"])
    monkeypatch.undo()

    # Without RENAME_EXCHANGE, killed between "old aside" and "new in": the next write restores.
    monkeypatch.setattr(bundle_module, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def killed_after_aside(src, dst):
        real_rename(src, dst)
        if ".rtrt-old-" in str(dst):
            raise KeyboardInterrupt  # stands for SIGKILL: no cleanup runs past this point

    monkeypatch.setattr(bundle_module.os, "rename", killed_after_aside)
    with pytest.raises(KeyboardInterrupt):
        _rewrite(built["bundle"], dest, built["private"])
    monkeypatch.undo()
    assert not dest.exists() and [p for p in _ours(dest) if ".rtrt-old-" in p]
    _rewrite(built["bundle"], dest, built["private"])
    assert _ours(dest) == []
    rt.load_bundle(dest, trust=built["public"])


def _modes(folder: Path) -> set[tuple[str, int]]:
    out = {("dir", stat.S_IMODE(folder.stat().st_mode))}
    out |= {("file", stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir() if p.is_file()}
    return out


@pytest.mark.parametrize(("mask", "group_readable", "want_dir", "want_file"), [
    (0o022, False, 0o755, 0o644), (0o027, False, 0o750, 0o640), (0o077, False, 0o700, 0o600),
    (0o077, True, 0o750, 0o640),
])
def test_modes_follow_the_umask(built, tmp_path, mask, group_readable, want_dir, want_file):
    registry = tmp_path / "registry"
    old = os.umask(mask)
    try:
        dest = _rewrite(built["bundle"], tmp_path / "dist" / "digits" / "1.0.0" / "EU",
                        built["private"])
        deploy.publish(tmp_path / "dist", str(registry), key=built["private"])
        result = deploy.pull(str(registry), "digits", region="EU", into=tmp_path / "site",
                             trust=built["public"], group_readable=group_readable)
    finally:
        os.umask(old)
    assert _modes(dest) == {("dir", 0o777 & ~mask), ("file", 0o666 & ~mask)}
    assert _modes(result.path) == {("dir", want_dir), ("file", want_file)}
    current = stat.S_IMODE((tmp_path / "site" / "digits" / "current").stat().st_mode)
    assert current == want_file
    shutil.rmtree(tmp_path / "site")


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_regiontrt_sign_writes_the_signature_with_the_umask(built, tmp_path, mask):
    folder = tmp_path / "b"
    shutil.copytree(built["bundle"], folder)
    (folder / "bundle.sig").unlink()
    old = os.umask(mask)
    try:
        deploy.sign_bundle(folder, built["private"])
    finally:
        os.umask(old)
    assert stat.S_IMODE((folder / "bundle.sig").stat().st_mode) == 0o666 & ~mask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no signer debris
    rt.load_bundle(folder, trust=built["public"])


def test_a_signed_bundle_holding_onnx_under_a_plan_label_is_refused(built, tmp_path):
    """Issue 19: an int8 ONNX payload labelled as a TensorRT plan, with a made-up compliance
    record, inside a bundle signed by a trusted key, was pulled, selected and served as EU."""
    import hashlib
    import json

    from hostile import forge, qdq_model

    folder = tmp_path / "b"
    shutil.copytree(built["bundle"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    good = manifest["variants"][0]
    blob = (folder / good["file"]).read_bytes()

    def as_plan(meta: dict) -> None:
        meta.update(payload_format="tensorrt-plan", backend={"name": "onnxruntime"},
                    compliance={"compliant": True, "checked": "made up", "reasons": ["ok"]})

    evil = forge(blob, as_plan, payload=qdq_model().SerializeToString())
    (folder / "evil.engine").write_bytes(evil)
    manifest["variants"].insert(0, {**good, "target": "evil", "file": "evil.engine",
                                    "payload_format": "tensorrt-plan",
                                    "sha256": hashlib.sha256(evil).hexdigest(),
                                    "size": len(evil)})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "bundle.sig").unlink()
    deploy.sign_bundle(folder, built["private"])  # the key holder signs it: still refused
    with pytest.raises(rt.errors.ArtifactError, match="payload_format"):
        rt.load_bundle(folder, trust=built["public"])
