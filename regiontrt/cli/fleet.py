"""The fleet commands: fleet build, keygen, sign, publish, pull, select, rollback, triton-export.

Thin over :mod:`regiontrt.deploy`: every failure is a one-line message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from regiontrt.cli._common import positive_int
from regiontrt.errors import RegionTRTError

if TYPE_CHECKING:
    from regiontrt.deploy.matrix import CellResult, FleetResult


class _CommandError(RegionTRTError):
    """An operating-system error met by a command (a missing file, no permission...)."""


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn stray OS errors into the CLI's one-line message (regiontrt errors already are)."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except RegionTRTError:
            raise
        except OSError as exc:
            raise _CommandError(str(exc)) from exc

    return run


@_guard
def _cmd_fleet_build(args: argparse.Namespace) -> int:
    from regiontrt._progress import live_table
    from regiontrt.deploy import build_fleet
    from regiontrt.deploy.matrix import CELL_HEADER

    def build(on_cell: Callable[[CellResult], None] | None = None) -> FleetResult:
        return build_fleet(args.fleet, args.out, workers=args.workers,
                           scheduler=args.scheduler, threads=args.threads, sign_key=args.sign,
                           on_cell=on_cell)

    if args.json:  # standard output is the JSON alone; progress still goes to standard error
        result = build()
        print(json.dumps({"ok": result.ok, "seconds": result.seconds,
                          "threads": result.threads, "decisions": result.decisions,
                          "cells": [c.to_dict() for c in result.cells],
                          "bundles": {k: str(v) for k, v in result.bundles.items()}}, indent=2))
        return 0 if result.ok else 1
    # Each cell as it finishes: a live table on a terminal, else a plain line on standard error
    # (none under -q); the whole table, in the fleet file's order, on standard output at the end.
    with live_table(CELL_HEADER, title="regiontrt fleet build") as table:
        result = build(lambda cell: table.add_row(*cell.row()))
        table.rows[:] = [c.row() for c in result.cells]
    for region, folder in result.bundles.items():
        print(f"bundle {region}: {folder}{' (signed)' if args.sign else ''}")
    failed = sum(c.status == "failed" for c in result.cells)
    print(f"{len(result.cells)} cells, {failed} failed, {result.seconds:.1f} s")
    return 0 if result.ok else 1


@_guard
def _cmd_keygen(args: argparse.Namespace) -> int:
    from regiontrt.runtime.trust import PRIVATE_KEY, keygen

    existing = Path(args.dir) / PRIVATE_KEY
    if existing.exists() and not args.force:
        # Checked here too so the message names the flag; keygen() itself refuses as well.
        raise _CommandError(
            f"{existing} exists; refusing to overwrite a private key. Pass --force to replace "
            "it (bundles and registries signed with the old key then need the new public key)")
    private, public = keygen(args.dir, overwrite=args.force)
    print(f"private key: {private} (keep it off bundles and registries)\npublic key: {public}")
    return 0


@_guard
def _cmd_sign(args: argparse.Namespace) -> int:
    from regiontrt.deploy.signing import sign_bundle
    from regiontrt.runtime.trust import sign_file

    target = Path(args.target)
    if target.is_file():
        print(f"signed {target}: {sign_file(target, args.key)}")
        return 0
    folders = sorted(p.parent for p in target.rglob("manifest.json"))
    if not folders:
        raise _CommandError(f"no bundle (manifest.json) under {target}")
    for folder in folders:
        print(f"signed {folder}: {sign_bundle(folder, args.key)}")
    return 0


@_guard
def _cmd_publish(args: argparse.Namespace) -> int:
    from regiontrt.deploy import publish

    for dest in publish(args.dist, args.registry, key=args.key, overwrite=args.overwrite,
                        expiry=_expiry(args), say=print):
        print(f"published {dest}")
    return 0


def _expiry(args: argparse.Namespace) -> dict[str, float]:
    return {role: days * 86400.0 for role, days in (("timestamp", args.timestamp_days),
                                                    ("snapshot", args.snapshot_days))
            if days is not None}


@_guard
def _cmd_refresh(args: argparse.Namespace) -> int:
    from regiontrt.deploy import refresh

    version = refresh(args.registry, args.name, key=args.key, expiry=_expiry(args),
                      snapshot=args.snapshot)
    print(f"re-signed {args.name}'s timestamp (version {version})"
          + (" and snapshot" if args.snapshot else ""))
    return 0


@_guard
def _cmd_pull(args: argparse.Namespace) -> int:
    from regiontrt.deploy import pull

    result = pull(args.registry, args.name, region=args.region, into=args.into, trust=args.trust,
                  version=args.version, allow_downgrade=args.allow_downgrade,
                  timeout_s=args.timeout, file_timeout_s=args.file_timeout,
                  group_readable=args.group_readable)
    if result.changed:
        before = f" (was {result.previous})" if result.previous else ""
        print(f"installed {result.name} {result.version} {result.region}{before}: {result.path}")
    else:
        print(f"{result.name} {result.version} {result.region} is already current (verified)")
    return 0


@_guard
def _cmd_select(args: argparse.Namespace) -> int:
    from regiontrt.deploy import load_bundle

    bundle = load_bundle(args.path, trust=args.trust)
    selection = bundle.select(role=args.role, rebuild=not args.no_rebuild)
    print(f"{bundle.name} {bundle.version} {bundle.region} ({bundle.precision}): "
          f"{selection.engine.backend_name}"
          f"{' variant ' + selection.variant.target if selection.variant else ''}"
          f"{' (rebuilt here)' if selection.rebuilt else ''}")
    print(selection.explain())
    return 0


@_guard
def _cmd_rollback(args: argparse.Namespace) -> int:
    from regiontrt.deploy import rollback
    from regiontrt.deploy._util import is_older
    from regiontrt.deploy.layout import installed_version

    before = installed_version(args.path)
    after = rollback(args.path)
    if before is None or before == after:
        print(f"switched {args.path} to {after}")
    elif is_older(after, before):
        print(f"rolled back {args.path} from {before} to {after}")
    else:  # a second rollback undoes the first: it moves to the newer version
        print(f"rolled forward {args.path} from {before} to {after} (undoing the rollback; "
              "run rollback again to go back)")
    return 0


@_guard
def _cmd_triton(args: argparse.Namespace) -> int:
    from regiontrt.deploy import export_triton, load_bundle
    from regiontrt.deploy.triton import choose_variant

    bundle = load_bundle(args.bundle, trust=args.trust)
    variant = choose_variant(bundle, args.target)
    what = (f"variant {variant.target} ({variant.backend})" if variant is not None
            else "the bundle's precision-compiled ONNX (it has no TensorRT or CPU variant)")
    folder = export_triton(bundle, args.into, target=args.target, version=args.version)
    print(f"exported {bundle.name} {bundle.version} {bundle.region}: {what}, as Triton model "
          f"{folder.name} version {args.version}\nwrote {folder / 'config.pbtxt'}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the fleet commands to the ``regiontrt`` parser.

    Every command but ``fleet build`` is reachable both at the top level (``regiontrt pull``)
    and under ``fleet`` (``regiontrt fleet pull``): the same parser definitions and functions,
    registered twice, so an operator who starts from ``regiontrt fleet`` finds them all.
    """
    f = sub.add_parser("fleet", help="the fleet workflow: build, keygen, sign, publish, refresh, "
                                     "pull, select, rollback, triton-export",
                       description="Build every region x target of a fleet file, then sign, "
                                   "publish, pull and serve the bundles. Each command is also "
                                   "available without 'fleet' (regiontrt pull = regiontrt "
                                   "fleet pull).")
    fsub = f.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    _register_fleet_build(fsub)
    for where in (sub, fsub):
        _register_publishing(where)
        _register_edge(where)


def _register_fleet_build(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = fsub.add_parser(
        "build", help="build every (region, target) cell into signed bundles",
        description="Decide each region's precision once, build every target from it, and "
                    "write one bundle per region under --out. Example: regiontrt fleet build "
                    "fleet.toml --out dist/ --workers 2 --sign keys/private.pem")
    b.add_argument("fleet", help="fleet TOML file or fsspec URL (see docs/fleet.md), "
                                 "e.g. fleet.toml")
    b.add_argument("--out", required=True, metavar="DIR",
                   help="output folder; bundles go to DIR/NAME/VERSION/REGION, e.g. dist/")
    where = b.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=1, metavar="N",
                       help="local worker processes (default: 1), e.g. 4")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="Dask scheduler address instead of local workers (needs the fleet "
                            "extra), e.g. tcp://host:8786")
    b.add_argument("--threads", type=positive_int, metavar="N",
                   help="ONNX Runtime threads of each build task (default: this host's CPUs "
                        "divided by --workers; ONNX Runtime's own with --scheduler), e.g. 4")
    b.add_argument("--sign", metavar="PRIVATE.pem",
                   help="sign each bundle with this key, e.g. keys/private.pem")
    b.add_argument("--json", action="store_true", help="print the cells as JSON")
    b.set_defaults(func=_cmd_fleet_build)


def _register_publishing(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("keygen", help="write DIR/private.pem and DIR/public.pem (ECDSA P-256)")
    k.add_argument("dir", metavar="DIR", help="folder for the key pair, e.g. keys/")
    k.add_argument("--force", action="store_true", help="overwrite an existing private key")
    k.set_defaults(func=_cmd_keygen)

    s = sub.add_parser("sign", help="sign every bundle under DIST (or one .engine file)")
    s.add_argument("target", metavar="DIST",
                   help="a fleet output, a bundle folder or an .engine file, e.g. dist/")
    s.add_argument("--key", required=True, metavar="PRIVATE.pem",
                   help="the private key (from regiontrt keygen), e.g. keys/private.pem")
    s.set_defaults(func=_cmd_sign)

    p = sub.add_parser("publish", help="upload signed bundles to a registry (folder/fsspec URL)")
    p.add_argument("dist", metavar="DIST",
                   help="a fleet output of signed bundles, e.g. dist/")
    p.add_argument("registry", metavar="REGISTRY",
                   help="registry folder or fsspec URL, e.g. s3://models/registry")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an already published version whose content changed (refused by "
                        "default; identical ones are skipped)")
    _key_options(p)
    p.set_defaults(func=_cmd_publish)

    rf = sub.add_parser("refresh", help="re-sign a registry's timestamp (sites refuse expired "
                                        "metadata as a frozen registry)")
    rf.add_argument("registry", metavar="REGISTRY",
                    help="registry folder or fsspec URL, e.g. /srv/registry")
    rf.add_argument("name", metavar="NAME", help="the model's name, e.g. ocr")
    rf.add_argument("--snapshot", action="store_true", help="re-sign the snapshot too")
    _key_options(rf)
    rf.set_defaults(func=_cmd_refresh)


def _key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, metavar="PRIVATE.pem",
                   help="the private key that signs the registry's TUF metadata (the bundles' "
                        "key), e.g. keys/private.pem")
    p.add_argument("--timestamp-days", type=_positive_float, metavar="DAYS",
                   help="timestamp expiry (default: 1 day; refresh before it), e.g. 0.5")
    p.add_argument("--snapshot-days", type=_positive_float, metavar="DAYS",
                   help="snapshot expiry (default: 7 days), e.g. 7")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _register_edge(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pl = sub.add_parser("pull", help="verify and install a region's bundle from a registry")
    pl.add_argument("registry", metavar="REGISTRY",
                    help="registry folder or fsspec URL, e.g. https://models.example/registry")
    pl.add_argument("name", metavar="NAME", help="the model's name in the fleet file, e.g. ocr")
    pl.add_argument("--region", required=True, help="which region's bundle, e.g. EU")
    pl.add_argument("--version", help="version to install (default: the registry's latest), "
                                      "e.g. 1.2.0")
    pl.add_argument("--trust", required=True, metavar="PUBLIC.pem",
                    help="trusted public key (file or folder of .pem), e.g. keys/public.pem")
    pl.add_argument("--into", required=True, metavar="DIR",
                    help="folder of installs (the install is DIR/NAME), e.g. /opt/models")
    pl.add_argument("--allow-downgrade", action="store_true",
                    help="install a version older than the installed one")
    pl.add_argument("--timeout", type=_positive_float, default=900.0, metavar="SECONDS",
                    help="time limit of the whole pull (default: 900), e.g. 120")
    pl.add_argument("--file-timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                    help="time limit of each file (default: 300), e.g. 30")
    pl.add_argument("--group-readable", action="store_true",
                    help="make the install group-readable whatever the umask (for a service "
                         "user of this group)")
    pl.set_defaults(func=_cmd_pull)

    se = sub.add_parser("select", help="pick the variant this machine runs, and say why")
    se.add_argument("path", metavar="DIR/NAME",
                    help="an install folder or a bundle folder, e.g. /opt/models/ocr")
    se.add_argument("--trust", metavar="PUBLIC.pem",
                    help="verify the signature with this public key too, e.g. keys/public.pem")
    se.add_argument("--role", choices=("latency", "throughput"),
                    help="prefer variants built for this role, e.g. throughput")
    se.add_argument("--no-rebuild", action="store_true", help="never rebuild a plan here")
    se.set_defaults(func=_cmd_select)

    r = sub.add_parser("rollback", help="switch an install back to its previous version")
    r.add_argument("path", metavar="DIR/NAME", help="the install folder, e.g. /opt/models/ocr")
    r.set_defaults(func=_cmd_rollback)

    t = sub.add_parser("triton-export", help="write a Triton model repository for a bundle")
    t.add_argument("bundle", metavar="BUNDLE",
                   help="a bundle or install folder, e.g. dist/ocr/1.0.0/EU")
    t.add_argument("--into", required=True, metavar="REPO",
                   help="the Triton model repository folder, e.g. triton-models/")
    t.add_argument("--target", help="variant to export (default: a TensorRT plan, else the CPU "
                                    "variant, else the bundle's ONNX), e.g. cpu")
    t.add_argument("--version", type=positive_int, default=1, metavar="N",
                   help="Triton version folder (Triton needs integers, so bundle 1.2.0 maps "
                        "to 1 by default), e.g. 2")
    t.add_argument("--trust", metavar="PUBLIC.pem",
                   help="verify the bundle's signature with this key, e.g. keys/public.pem")
    t.set_defaults(func=_cmd_triton)
