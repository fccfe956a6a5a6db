"""Edge updates as TUF does them: the attacks of issue 19's registry probe, each refused with a
typed error and the running install untouched. Registries are real folders, or served by a real
HTTP server on 127.0.0.1 (a thread) that trickles, stalls or never ends; memory is measured with
``tracemalloc`` (Python allocations, where a buffered body would show)."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import fcntl
import http.server
import json
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
from fleet_support import serve, write_fleet

import regiontrt as rt
from regiontrt import deploy
from regiontrt.errors import (
    BundleError,
    DowngradeError,
    RegionTRTError,
    RegistryError,
    RegistryTimeout,
    SignatureError,
    StaleMetadataError,
)

pytest.importorskip("model_signing", reason="needs model-signing (pip install 'regiontrt[fleet]')")
fsspec = pytest.importorskip("fsspec", reason="needs fsspec (pip install 'regiontrt[fleet]')")
pytest.importorskip("tuf", reason="needs python-tuf (pip install 'regiontrt[fleet]')")

from regiontrt.deploy.tuf_client import Session, parse_channels  # noqa: E402
from regiontrt.deploy.tuf_repo import Repository  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """EU bundles of 1.0.0 and 1.1.0, signed; registry states saved after each publish."""
    root = tmp_path_factory.mktemp("tuf")
    private, public = deploy.keygen(root / "keys")
    with cf.ThreadPoolExecutor(2) as pool:
        for version in ("1.0.0", "1.1.0"):
            fleet = write_fleet(root / "src", regions=("EU",), version=version)
            assert deploy.build_fleet(fleet, root / f"dist-{version}", executor=pool,
                                      sign_key=private).ok
    registry = root / "registry"
    deploy.publish(root / "dist-1.0.0", str(registry), key=private)
    shutil.copytree(registry, root / "state-1.0.0")  # what an attacker can record and replay
    deploy.publish(root / "dist-1.1.0", str(registry), key=private)
    return {"root": root, "private": private, "public": public, "registry": registry}


@pytest.fixture
def fresh(built, tmp_path):
    """A copy of the registry at 1.1.0, and an install folder that has seen nothing yet."""
    registry = tmp_path / "registry"
    shutil.copytree(built["registry"], registry)
    return registry, tmp_path / "site"


def _pull(registry, into: Path, public: Path, **kwargs):
    return deploy.pull(str(registry), "digits", region="EU", into=into, trust=public, **kwargs)


def _untouched(install: Path, version: str | None, public: Path | None = None) -> None:
    """The install serves ``version`` (verified with ``public``) with no staging debris."""
    assert deploy.installed_version(install) == version
    assert not list(install.glob(".staging-*"))
    if version is not None:
        assert rt.load_bundle(install, trust=public).version == version


def test_pull_installs_what_the_signed_metadata_says_not_the_index(built, fresh):
    registry, site = fresh
    index = registry / "digits" / "index.json"
    assert json.loads(index.read_text())["latest"] == "1.1.0"
    # A stale (replayed) index, or none at all, decides nothing.
    index.write_text(json.dumps({"name": "digits", "latest": "1.0.0",
                                 "versions": {"1.0.0": {"regions": ["EU"]}}}))
    assert _pull(registry, site, built["public"]).version == "1.1.0"
    index.unlink()
    assert _pull(registry, site, built["public"]).changed is False
    assert (site / "digits" / "tuf" / "timestamp.json").is_file()  # persisted per install


def test_site_anchors_the_registry_root_on_its_trusted_keys(built, fresh, tmp_path):
    registry, site = fresh
    _, stranger = deploy.keygen(tmp_path / "stranger")
    with pytest.raises(SignatureError, match="not signed by any trusted key"):
        _pull(registry, site, stranger)
    assert not (site / "digits" / "tuf" / "root.json").exists()
    # A registry whose metadata another key signed is refused by the publisher too.
    other_private, _ = deploy.keygen(tmp_path / "other")
    with pytest.raises(RegistryError, match="not signed by this key"):
        deploy.publish(built["root"] / "dist-1.0.0", str(registry), key=other_private,
                       overwrite=True)


def test_freeze_expired_metadata_is_refused_and_refresh_revives(built, tmp_path):
    registry, site, key = tmp_path / "registry", tmp_path / "site", built["private"]
    deploy.publish(built["root"] / "dist-1.0.0", str(registry), key=key,
                   expiry={"timestamp": 2})
    assert _pull(registry, site, built["public"]).version == "1.0.0"  # fresh: installs
    frozen = tmp_path / "frozen"
    shutil.copytree(registry, frozen)  # the attacker keeps serving this state
    deploy.publish(built["root"] / "dist-1.1.0", str(registry), key=key,
                   expiry={"timestamp": 2})  # 1.1.0 exists; nobody refreshes it (yet)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until both timestamps have expired
        try:
            _pull(registry, tmp_path / "probe", built["public"])
            shutil.rmtree(tmp_path / "probe")
            time.sleep(0.25)
        except StaleMetadataError:
            break
    # The site that installed 1.0.0 is not kept on it silently, a fresh site installs nothing.
    with pytest.raises(StaleMetadataError, match="expired"):
        _pull(frozen, site, built["public"])
    assert deploy.installed_version(site / "digits") == "1.0.0"
    with pytest.raises(StaleMetadataError):
        _pull(frozen, tmp_path / "new-site", built["public"])
    assert deploy.installed_version(tmp_path / "new-site" / "digits") is None
    # A registry whose publisher stops re-signing looks frozen too, until it refreshes.
    with pytest.raises(StaleMetadataError):
        _pull(registry, site, built["public"])
    assert deploy.refresh(str(registry), "digits", key=key) == 3
    assert _pull(registry, site, built["public"]).version == "1.1.0"
    with pytest.raises(StaleMetadataError):
        _pull(frozen, tmp_path / "new-site", built["public"])


def test_rollback_to_an_older_signed_state_is_refused(built, fresh):
    registry, site = fresh
    assert _pull(registry, site, built["public"]).version == "1.1.0"
    # The registry goes back to the validly signed, unexpired state of 1.0.0.
    shutil.rmtree(registry / "digits" / "tuf")
    shutil.copytree(built["root"] / "state-1.0.0" / "digits" / "tuf", registry / "digits" / "tuf")
    with pytest.raises(DowngradeError, match="rollback"):
        _pull(registry, site, built["public"])
    with pytest.raises(DowngradeError):
        _pull(registry, site, built["public"], version="1.0.0", allow_downgrade=True)
    assert deploy.installed_version(site / "digits") == "1.1.0"
    # A site that never saw 1.1.0 has nothing to compare with: it installs the old, valid state.
    assert _pull(registry, site.parent / "new-site", built["public"]).version == "1.0.0"


@pytest.mark.parametrize("swap", ["one-file", "whole-bundle"])
def test_mix_and_match_is_refused_by_hash(built, fresh, swap):
    registry, site = fresh
    assert _pull(registry, site, built["public"], version="1.0.0").version == "1.0.0"
    old, new = registry / "digits" / "1.0.0" / "EU", registry / "digits" / "1.1.0" / "EU"
    # Files that differ between the two bundles (an engine built in the same second as the other
    # version's can be byte-identical, and then swapping it is no attack at all).
    differ = sorted(p.name for p in old.iterdir()
                    if p.read_bytes() != (new / p.name).read_bytes())
    assert differ, "the two versions' bundles are identical: nothing to mix"
    files = differ[:1] if swap == "one-file" else [p.name for p in old.iterdir()]
    for name in files:  # each one validly signed, for another bundle
        shutil.copy(old / name, new / name)
    with pytest.raises(SignatureError, match="not what any trusted key signed"):
        _pull(registry, site, built["public"])
    _untouched(site / "digits", "1.0.0", built["public"])


def test_size_claimed_by_the_manifest_is_never_used_endless_file_cut(built, fresh):
    """A manifest claiming 2**40 bytes and a 64 MiB body: cut at the signed length."""
    registry, site = fresh
    bundle = registry / "digits" / "1.1.0" / "EU"
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["onnx"]["size"] = 1 << 40
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    deploy.sign_bundle(bundle, built["private"])  # even a validly signed bundle
    with (bundle / "model.onnx").open("ab") as fh:
        for _ in range(64):
            fh.write(b"\0" * MiB)
    tracemalloc.start()
    try:
        with pytest.raises((SignatureError, RegistryError)):
            _pull(registry, site, built["public"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for a 64 MiB body"
    _untouched(site / "digits", None)


class _Endless(http.server.SimpleHTTPRequestHandler):
    """Serves every ``blob.bin`` as an endless body (no Content-Length)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.endswith("blob.bin"):
            return super().do_GET()
        self.send_response(200)
        self.end_headers()
        chunk = b"\xab" * MiB
        try:
            for _ in range(1024):  # 1 GiB, unless the client hangs up first
                self.wfile.write(chunk)
        except OSError:
            pass
        self.close_connection = True
        return None


def test_endless_http_body_is_cut_at_the_signed_length_memory_under_2x(built, fresh):
    registry, site = fresh
    blob = site.parent / "blob.bin"
    blob.write_bytes(b"\xab" * (8 * MiB))  # the signed file: 8 MiB
    repo = Repository.open(fsspec.filesystem("file"), str(registry / "digits"), built["private"])
    repo.add_bundle("digits", "9.0.0", "BIG", {"blob.bin": blob})
    repo.commit()  # the registry serves no such file: the server makes it up, endlessly
    dest = site.parent / "got.bin"
    with serve(registry, _Endless) as url:
        session = Session(url, "digits", site.parent / "tuf", built["public"], timeout_s=60,
                          file_timeout_s=60)
        assert "BIG" in session.refresh()["9.0.0"]
        tracemalloc.start()
        try:
            with pytest.raises(SignatureError, match="signed length"):
                session.download("9.0.0", "BIG", "blob.bin", dest)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 2 * 8 * MiB, f"peak {peak / MiB:.1f} MiB for an 8 MiB file"
    assert dest.stat().st_size <= 8 * MiB  # streamed to disk, never past the signed length


class _Slow(http.server.SimpleHTTPRequestHandler):
    """``.engine`` files: a trickle of one byte per 50 ms, or headers then silence."""

    mode = "trickle"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.endswith(".engine"):
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for i in range(len(data)):
                if self.mode == "silent":
                    time.sleep(30)
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass
        return None


class _Silent(_Slow):
    mode = "silent"


@pytest.mark.parametrize(("handler", "limits", "bound"), [
    (_Slow, {"timeout_s": 30, "file_timeout_s": 1.0}, 4.0),     # per file
    (_Slow, {"timeout_s": 1.5, "file_timeout_s": 30}, 4.5),     # overall
    (_Silent, {"timeout_s": 30, "file_timeout_s": 1.0}, 4.0),   # nothing after the headers
], ids=["trickle-file", "trickle-overall", "silent"])
def test_slow_registry_times_out_and_releases_the_lock(built, fresh, handler, limits, bound):
    registry, site = fresh
    _pull(registry, site, built["public"], version="1.0.0")
    install = site / "digits"
    with serve(registry, handler) as url:
        started = time.monotonic()
        with pytest.raises(RegistryTimeout):
            deploy.pull(url, "digits", region="EU", into=site, trust=built["public"], **limits)
        elapsed = time.monotonic() - started
    assert elapsed < bound, f"took {elapsed:.1f} s"
    with (install / ".lock").open("a+b") as fh:  # the install lock is free again
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fh, fcntl.LOCK_UN)
    _untouched(install, "1.0.0", built["public"])


def test_waiting_for_a_held_install_lock_is_bounded_too(built, fresh):
    registry, site = fresh
    _pull(registry, site, built["public"], version="1.0.0")
    with (site / "digits" / ".lock").open("a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another pull, stuck
        started = time.monotonic()
        with pytest.raises(RegistryTimeout, match="lock"):
            _pull(registry, site, built["public"], timeout_s=0.5)
        assert time.monotonic() - started < 3


_DEEP = b"[" * 200_000 + b"]" * 200_000
_INDEX_CASES = {
    "entry-list": {"versions": {"1.0.0": []}}, "entry-string": {"versions": {"1.0.0": "EU"}},
    "entry-int": {"versions": {"1.0.0": 7}}, "entry-null": {"versions": {"1.0.0": None}},
    "regions-null": {"versions": {"1.0.0": {"regions": None}}},
    "versions-list": {"versions": ["1.0.0"]}, "null": None, "int": 3,
}


@pytest.mark.parametrize("case", [*_INDEX_CASES, "deep"])
def test_hostile_index_is_a_typed_error_and_decides_nothing(built, fresh, case):
    registry, site = fresh
    raw = _DEEP if case == "deep" else json.dumps(_INDEX_CASES[case]).encode()
    (registry / "digits" / "index.json").write_bytes(raw)
    with pytest.raises(RegistryError):
        deploy.read_index(str(registry), "digits")
    assert _pull(registry, site, built["public"]).version == "1.1.0"


@pytest.mark.parametrize("role", ["timestamp", "root"])
@pytest.mark.parametrize("body", [b"[]", b'"x"', b"7", b"null", b"{}", b'{"signed": []}', _DEEP],
                         ids=["list", "string", "int", "null", "empty", "signed-list", "deep"])
def test_hostile_tuf_metadata_is_a_typed_error(built, fresh, role, body):
    registry, site = fresh
    (registry / "digits" / "tuf" / f"{role}.json").write_bytes(body)
    with pytest.raises(RegionTRTError) as info:
        _pull(registry, site, built["public"])
    assert isinstance(info.value, (RegistryError, SignatureError))
    _untouched(site / "digits", None)


@pytest.mark.parametrize("edit", [
    {"onnx": []}, {"onnx": None}, {"onnx": {"file": "model.onnx", "sha256": "0", "size": "1"}},
    {"variants": [None]}, {"variants": [7]}, {"variants": "cpu"}, {"region": []},
    {"deferred": 5}, {"name": ["digits"]}, "deep",
], ids=["onnx-list", "onnx-null", "onnx-size-str", "variant-null", "variant-int",
        "variants-str", "region-list", "deferred-int", "name-list", "deep"])
def test_hostile_manifest_is_a_bundle_error(built, tmp_path, edit):
    bundle = tmp_path / "EU"
    shutil.copytree(built["root"] / "dist-1.0.0" / "digits" / "1.0.0" / "EU", bundle)
    if edit == "deep":
        (bundle / "manifest.json").write_bytes(_DEEP)
    else:
        manifest = json.loads((bundle / "manifest.json").read_text())
        (bundle / "manifest.json").write_text(json.dumps({**manifest, **edit}))
    with pytest.raises(BundleError):
        rt.load_bundle(bundle)


@pytest.mark.parametrize("doc", [None, [], {"versions": []}, {"versions": {"1.0": []}},
                                 {"versions": {"1.0": {"EU": "x"}}},
                                 {"versions": {"1.0": {"EU": [1]}}},
                                 {"versions": {"../x": {"EU": ["a"]}}}])
def test_hostile_signed_channels_are_typed(doc):
    with pytest.raises((RegistryError, BundleError)):
        parse_channels(doc, "test")


def test_refresh_and_expiry_arguments(built, fresh):
    registry, _ = fresh
    with pytest.raises(RegistryError, match="unknown role"):
        deploy.refresh(str(registry), "digits", key=built["private"], expiry={"channel": 1})
    with pytest.raises(RegistryError, match="no model"):
        deploy.refresh(str(registry), "nothing", key=built["private"])
    before = json.loads((registry / "digits" / "tuf" / "timestamp.json").read_text())
    version = deploy.refresh(str(registry), "digits", key=built["private"],
                             expiry={"timestamp": dt.timedelta(hours=2)}, snapshot=True)
    after = json.loads((registry / "digits" / "tuf" / "timestamp.json").read_text())
    assert version == after["signed"]["version"] == before["signed"]["version"] + 1
    assert after["signed"]["meta"]["snapshot.json"]["version"] == \
        before["signed"]["meta"]["snapshot.json"]["version"] + 1
