"""Developer sessions: ``nox -s tests lint typecheck demo docs``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, as CI runs it."""
    session.install("-e", ".[test,rtx]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, benchmarks and scripts."""
    session.install("ruff")
    session.run("ruff", "check", "regiontrt", "tests", "benchmarks", "scripts", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy, with TensorRT's type stubs (their pinned tensorrt cannot be fetched: --no-deps)."""
    session.install("-e", ".", "mypy", "cuda-python")
    session.install("--no-deps", "tensorrt-stubs")
    session.run("mypy", "regiontrt")


@nox.session
def fuzz(session: nox.Session) -> None:
    """The full hostile-file fuzz of every reader (CI runs a small count of the same test).

    ``nox -s fuzz -- 50000`` sets another count; the summary lands in docs/results/fuzz.json.
    """
    session.install("-e", ".[test]")
    count = session.posargs[0] if session.posargs else "20000"
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_hostile_fuzz.py",
        env={"REGIONTRT_FUZZ_EXAMPLES": count, "REGIONTRT_FUZZ_REPORT": "docs/results/fuzz.json"},
    )


@nox.session
def demo(session: nox.Session) -> None:
    """The main job on the embedded default: every preset region from the demo model."""
    session.install(".")
    session.run("regiontrt", "demo", "--out", str(session.create_tmp()))


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, built with ``--strict`` (any warning fails) into ``site/``."""
    session.install("-e", ".[docs,plot]")
    session.run("mkdocs", "build", "--strict", "-d", "site", *session.posargs)


@nox.session
def zoo(session: nox.Session) -> None:
    """The zoo benchmark over every zoo model (docs/zoo-bench.md), into docs/results/bench_zoo.json.

    ModelOpt runs from its own environment when ``REGIONTRT_MODELOPT_PYTHON`` (or
    ``/work/venvs/modelopt``) has it, and is recorded as skipped otherwise. Extra arguments go to
    the runner: ``nox -s zoo -- --models ppocr-rec,magika``.
    """
    session.install("-e", ".[test]")
    session.run("python", "-m", "benchmarks.bench_zoo", *session.posargs)


@nox.session(name="zoo-fast")
def zoo_fast(session: nox.Session) -> None:
    """The zoo's fast subset with few samples and no search frontier (a smoke run for CI)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "benchmarks.bench_zoo", "--models", "fast", "--quick",
                "--no-frontier", "--out", "docs/results/bench_zoo_fast.json", *session.posargs)
