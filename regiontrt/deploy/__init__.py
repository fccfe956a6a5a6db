"""The fleet layer: build every region x target, ship signed bundles, verify, pick and run.

Stages, one module each: :mod:`.fleet` (the fleet file), :mod:`.tasks` and :mod:`.matrix` (the
build matrix on any ``concurrent.futures.Executor``), :mod:`.bundle` (bundles and their
manifest), :mod:`.signing` (OpenSSF model-signing keys), :mod:`.registry` (publish over
fsspec), :mod:`.tuf_repo` and :mod:`.tuf_client` (the registry's TUF metadata), :mod:`.install`
(pull, atomic switch, rollback), :mod:`.select` (which variant runs here) and :mod:`.triton` (a
Triton model repository). Dask, fsspec, python-tuf and model-signing come with the ``fleet``
extra and are imported only by the functions that need them.
"""

from __future__ import annotations

from regiontrt.deploy.bundle import Bundle, load_bundle, write_bundle
from regiontrt.deploy.fleet import FleetSpec, RegionSpec, TargetSpec
from regiontrt.deploy.install import PullResult, pull, rollback
from regiontrt.deploy.layout import installed_version
from regiontrt.deploy.matrix import CellResult, FleetResult, build_fleet, open_executor
from regiontrt.deploy.registry import publish, read_index, refresh
from regiontrt.deploy.select import Candidate, Selection, select
from regiontrt.deploy.signing import keygen, sign_bundle, sign_file, verify_bundle, verify_file
from regiontrt.deploy.triton import export_triton
from regiontrt.deploy.variant import Variant

__all__ = [
    "Bundle", "Candidate", "CellResult", "FleetResult", "FleetSpec", "PullResult", "RegionSpec",
    "Selection", "TargetSpec", "Variant", "build_fleet", "export_triton", "installed_version",
    "keygen", "load_bundle", "open_executor", "publish", "pull", "read_index", "refresh",
    "rollback", "select", "sign_bundle", "sign_file", "verify_bundle", "verify_file",
    "write_bundle",
]
