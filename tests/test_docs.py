"""The docs: the tutorial's code runs, the CLI reference covers the parser, the site builds.

The tutorial's fenced ``python`` blocks run in order in one namespace, and every line of its
``bash`` blocks is a ``regiontrt`` command run through the CLI's ``main``, in an empty folder: a
page that drifts from the library fails here.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from regiontrt.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OWN_PAGES = ("index.md", "getting-started.md", "tutorial.md", "regions.md", "int8.md",
             "reports.md", "tensorrt.md", "cli.md", "fleet.md")
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def code_blocks(page: Path) -> list[tuple[str, int, str]]:
    """``(language, line number, code)`` of every fenced block of a Markdown page."""
    text = page.read_text(encoding="utf-8")
    return [(m.group(1), text.count("\n", 0, m.start()) + 2, m.group(2))
            for m in FENCE.finditer(text)]


def shell_commands(code: str) -> list[str]:
    """The commands of a ``bash`` block, continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_tutorial_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="the tutorial's plots need matplotlib "
                                             "(pip install 'regiontrt[plot]')")
    monkeypatch.chdir(tmp_path)
    blocks = code_blocks(DOCS / "tutorial.md")
    assert [lang for lang, _, _ in blocks] == ["python", "bash", "bash", "python", "python"]
    namespace: dict = {"__name__": "__tutorial__"}
    for lang, line, code in blocks:
        if lang == "python":
            exec(compile(code, f"docs/tutorial.md:{line}", "exec"), namespace)
            continue
        for command in shell_commands(code):
            argv = shlex.split(command)
            assert argv[0] == "regiontrt", f"docs/tutorial.md:{line}: not a regiontrt command"
            assert main(argv[1:]) == 0, f"docs/tutorial.md:{line}: {command} failed"
    out = capsys.readouterr().out
    for made in ("model.NA.engine", "model.EU.engine", "report.html", "accuracy.png",
                 "calibration.png", "latency.png"):
        assert (tmp_path / made).stat().st_size > 0, made
    assert "ValidationReport(chosen=" in out and "EU fp16 ['int8']" in out
    assert "<img" in (tmp_path / "report.html").read_text()


def test_tutorial_bash_blocks_are_only_regiontrt_commands():
    for lang, _, code in code_blocks(DOCS / "tutorial.md"):
        if lang == "bash":
            for command in shell_commands(code):
                build_parser().parse_args(shlex.split(command)[1:])  # exits on a bad flag


def _load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, list[str]]]:
    out = [(prefix, [o for a in parser._actions if not isinstance(a, argparse._HelpAction)
                     for o in a.option_strings])]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, f"{prefix} {name}")
    return out


def test_cli_reference_covers_every_command_and_option():
    reference = _load_hooks().cli_reference()
    commands = _commands(build_parser(), "regiontrt")
    assert len(commands) > 5
    for command, options in commands:
        assert f"`{command}`" in reference, command
        section = reference.split(f"`{command}`", 1)[1]
        for option in options:
            assert f"`{option}`" in section, (command, option)
    page = (DOCS / "cli.md").read_text()
    assert _load_hooks().MARKER in page


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml", reason="needs PyYAML (installed with mkdocs)")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from (pages(value) if isinstance(value, list) else [value])

    nav = set(pages(config["nav"]))
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md")}
    assert nav == on_disk


def test_docs_point_only_inside_the_repository():
    # a pointer like ../shared/... or /work/... cannot be followed from a clone
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        text = page.read_text()
        assert not re.search(r"(?<![\w.])\.\./[\w-]|/work/", text), page.name
        if page.name not in (*OWN_PAGES, "benchmarks.md", "README.md"):
            continue  # other pages may name files that a command writes
        for path in re.findall(r"`((?:scripts|benchmarks|tests|docs)/[\w./-]+\.\w+)`", text):
            assert (ROOT / path).exists(), f"{page.name} points to missing {path}"


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    for module, what in (("mkdocs", "mkdocs"), ("material", "mkdocs-material"),
                         ("mkdocstrings", "mkdocstrings[python]")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {what} (pip install 'regiontrt[docs]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)], capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    cli = (site / "cli" / "index.html").read_text()
    for name in build_parser()._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
        assert f"regiontrt {name}" in cli
    api = (site / "api" / "index.html").read_text()
    assert "RegionalEngineBuilder" in api and "with_calibrator" in api and "region_name" in api
    assert "_Shared" not in api and "_State" not in api  # the private constructor stays hidden
    assert "from_onnx" in api and "export_triton" in api and "ThroughputPolicy" in api
    assert (site / "tutorial" / "index.html").exists()



def test_every_documented_command_parses():
    # Commands shown in these pages and the README use only flags the parser knows.
    pages = [DOCS / name for name in OWN_PAGES] + [ROOT / "README.md"]
    seen = 0
    for page in pages:
        for lang, line, code in code_blocks(page):
            if lang != "bash":
                continue
            for command in shell_commands(code):
                for part in command.split("&&"):
                    argv = shlex.split(part.split("#")[0])
                    if argv and argv[0] == "regiontrt":
                        try:
                            build_parser().parse_args(argv[1:])
                        except SystemExit:
                            pytest.fail(f"{page.name}:{line}: {part.strip()} does not parse")
                        seen += 1
    assert seen >= 10


def test_regions_page_toml_loads(tmp_path):
    from regiontrt.precision.regions import RegionRegistry, load_regions

    toml = next(code for lang, _, code in code_blocks(DOCS / "regions.md") if lang == "toml")
    (tmp_path / "mine.toml").write_text(toml)
    registry = load_regions(tmp_path / "mine.toml", into=RegionRegistry())
    region = registry["JP-FACTORY"]
    assert [p.value for p in region.precisions] == ["int8", "fp16", "fp32"]
    assert region.budget == 0.001 and region.metric == "relative_l2"
    assert region.latency_p99_ms == 5.0 and region.tags == {"site": "osaka"}


def test_hook_renders_sphinx_roles_as_code():
    hooks = _load_hooks()
    html = ("Inverse of :meth:<code>to_dict</code>; a "
            ":class:<code>~regiontrt.runtime.engine.Engine</code>"
            " and :func:<code>regiontrt.inspect</code>.")
    assert hooks.on_page_content(html, None, None, None) == (
        "Inverse of <code>to_dict</code>; a <code>Engine</code> and "
        "<code>regiontrt.inspect</code>.")


def test_fleet_page_toml_loads(tmp_path):
    pytest.importorskip("fsspec", reason="needs the fleet extra (pip install 'regiontrt[fleet]')")
    from regiontrt.deploy import FleetSpec

    toml = next(code for lang, _, code in code_blocks(DOCS / "fleet.md") if lang == "toml")
    (tmp_path / "fleet.toml").write_text(toml)
    (tmp_path / "regions.toml").write_text(  # the page's optional regions_file
        '[regions.OCR]\nprecisions = ["fp16", "fp32"]\nbudget = 0.01\nmetric = "top1"\n')
    spec = FleetSpec.load(tmp_path / "fleet.toml")
    assert spec.name == "ocr-rec" and [r.name for r in spec.regions] == ["NA", "EU"]


def test_api_page_documents_every_public_name():
    """Every name of the root's, regiontrt.deploy's and regiontrt.serve's __all__."""
    import regiontrt

    deploy, serve = (importlib.import_module(f"regiontrt.{m}") for m in ("deploy", "serve"))
    page = (DOCS / "api.md").read_text()
    directives = {line.split()[1] for line in page.splitlines() if line.startswith("::: ")}
    missing = [f"regiontrt.{name}" for name in regiontrt.__all__
               if f"`regiontrt.{name}`" not in page]
    for module in (deploy, serve):
        missing += [f"{module.__name__}.{name}" for name in module.__all__
                    if f"{module.__name__}.{name}" not in directives]
    assert missing == []
