"""Every figure in docs/benchmarks.md traces to a result file a script wrote (issue 20).

(a) ``scripts/gen_benchmarks_md.py --check``: the generated tables and values are what the
result JSON gives today. (b) Every measured-looking number outside code (a decimal, or a number
with a unit: ×, %, ms, µs, s, GB/s, MB, ...) is a value of some ``docs/results/*.json`` at the
rounding the page shows it with (a percentage may be a fraction times 100), or a value the
generator derived from that JSON while rendering (a ratio, a sum).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "results"
GENERATOR = ROOT / "scripts" / "gen_benchmarks_md.py"

#: Numbers with a unit that are settings or machine facts, not measurements: what each is.
SETTINGS = {
    "1 MiB": "a transfer size the GPU benchmark sets", "16 MiB": "a transfer size",
    "256 MiB": "a transfer size, and the peak copy's size",
    "24 GB": "the development VM's memory", "8 GB": "the per-quantizer memory cap (--mem-cap-mb)",
    "16 GB": "the earlier per-quantizer memory cap", "6.5 GB": "ModelOpt's install size",
    "13 GB": "why ORT's histogram calibrators were capped (their 2026-11-25 peak, in a table)",
    "0.5 pt": "the mixed-precision budget (--mixed 0.5)",
    "10 ms": "the demo region's SLA", "250 ms": "the rec SLA the benchmark defines",
    "50 ms": "the GPU step-load SLA", "2 s": "the demo phase length (--phase-s)",
    "5 s": "the rec phase length (--rec-phase-s)", "1.5 s": "the GPU test's phase length",
    "10 s": "the per-request timeout", "1 s": "the adaptive policy's rate window",
    "5 %": "the drift monitor's sampling rate", "99 %": "the serving goal's threshold",
    "4×": "the search-time goal (≤ 4× whole-model INT8)", "100×": "the entropy-search goal",
    "50 %": "the calibration goal (ORT MinMax + 50 %)", "1.5×": "the calibration goal",
    "2 %": "the NA region's loss budget in the fleet file", "5×": "the surge's step (5× base)",
    "0.3": "the base load's fraction of capacity (--base-frac)",
    "1.5": "the surge is 5 × 0.3 of capacity",
    "20 s": "the fuzz deadline per file", "64 Ki": "the calibration fold's chunk size",
    "1.1 ns": "a profile figure of np.bincount, not a benchmark result",
    "0.5": "the mixed-precision budget (--mixed 0.5)",
    "0.0001": "the graph check's tolerance, quoted from its error",
    "80 GB": "part of the GPU's name (H100 80GB HBM3)", "1.6": "DB post-processing's unclip ratio",
    "99.99": "the entropy floor's percentile (a setting)",
}
#: Words after which a number is a version, not a figure.
VERSION_WORDS = ("Python", "CUDA", "driver", "Runtime", "numpy", "bindings", "ModelOpt",
                 "modelopt", "opset", "Linux", "cuda-bindings", "PP-OCRv", "sm")
NUMBER = re.compile(
    r"(?<![\w.\-/])(\d+(?:\.\d+)?)(?![\d.]*\d)(?:\s?(×(?!\d)|x\b|%|ms\b|µs\b|us\b|GB/s|GB\b|MB\b|MiB\b|"
    r"Ki\b|ns\b|s\b|min\b|pt\b|/s\b))?(?![×x]\d)")  # 48×192 is a shape, not a ratio


def _prose(text: str) -> str:
    """The page without fenced code, inline code, HTML comments, dates, times and hashes."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?(?: ?UTC)?)?", " ", text)
    text = re.sub(r"\b\d+\.\d+\.\d+\b", " ", text)  # versions
    text = re.sub(r"\b[0-9a-f]{7,40}\b", " ", text)  # commit hashes
    words = "|".join(re.escape(w) for w in VERSION_WORDS)
    return re.sub(rf"\b({words})\s?\d+(?:\.\d+)*", " ", text)


def figures(text: str) -> list[str]:
    """Measured-looking numbers of a markdown page, as written (with their unit)."""
    out = []
    for m in NUMBER.finditer(_prose(text)):
        number, unit = m.group(1), m.group(2)
        if "." not in number and not unit:
            continue  # a bare integer is a count (lines, cores, requests), not a figure
        written = f"{number} {unit}" if unit and unit not in ("×", "x") else number + (unit or "")
        if written.replace("x", "×") in SETTINGS or (number in SETTINGS and not unit):
            continue
        out.append(written)
    return out


def _numbers(data: Any) -> list[float]:
    """Every number in a JSON document, in strings too (a label such as '0.5 pt')."""
    if isinstance(data, bool):
        return []
    if isinstance(data, int | float):
        return [float(data)]
    if isinstance(data, str):
        return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", data)]
    items = data.values() if isinstance(data, dict) else data if isinstance(data, list) else []
    return [x for item in items for x in _numbers(item)]


def _emitted() -> set[str]:
    spec = importlib.util.spec_from_file_location("gen_benchmarks_md", GENERATOR)
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.render(DOC.read_text())
    return set(gen.EMITTED)


def untraceable(text: str, values: list[float], emitted: set[str]) -> list[str]:
    """Figures of ``text`` that no value rounds to (nor a generated one equals)."""
    missing = []
    for written in figures(text):
        number = re.match(r"\d+(?:\.\d+)?", written).group(0)  # type: ignore[union-attr]
        places = len(number.split(".")[1]) if "." in number else 0
        if number in emitted:
            continue
        if not any(format(v, f".{places}f") == number or format(v * 100, f".{places}f") == number
                   for v in values):
            missing.append(written)
    return missing


def test_generator_check_passes() -> None:
    run = subprocess.run([sys.executable, str(GENERATOR), "--check"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr


def test_every_figure_traces_to_a_result_file() -> None:
    values = [x for f in sorted(RESULTS.glob("*.json")) for x in _numbers(json.loads(
        f.read_text()))]
    missing = untraceable(DOC.read_text(), values, _emitted())
    assert not missing, f"{len(missing)} figures in no docs/results/*.json: {missing}"


def test_the_check_finds_a_typed_figure() -> None:
    # The extraction itself: a figure no result holds is reported, a held one and settings are not.
    text = "Bandwidth 31.33 GB/s and 12.5 % at `--phase-s 2` on 2026-11-25, SLA 50 ms, 3 cores."
    assert untraceable(text, [32.645, 0.125], set()) == ["31.33 GB/s"]
    assert untraceable(text, [31.331, 0.125], set()) == []


def test_the_check_fails_on_an_edited_figure(tmp_path: Path) -> None:
    # A generated figure typed over by hand is caught: the page no longer equals the render.
    text = DOC.read_text()
    generated = re.search(r"<!-- table:fleet .*?\n\| fleet, 1 worker \(ours\) \| ([\d.]+) \|", text,
                          re.S)
    assert generated, "the fleet table is generated on the page"
    doc = tmp_path / "benchmarks.md"
    doc.write_text(text.replace(generated.group(0), generated.group(0).replace(
        f"| {generated.group(1)} |", "| 1.0 |")))
    run = subprocess.run([sys.executable, str(GENERATOR), "--check", "--doc", str(doc)],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "differs from docs/results" in run.stderr


def test_serving_peer_tables_render_what_the_step_load_records() -> None:
    """The serving-peers and serving-verdict tables read the result bench_serving writes: built
    here by its own reporting code from outcomes, every server's row and the bar per phase."""
    loadgen = pytest.importorskip("benchmarks.loadgen", reason="run from the repository root")
    report = pytest.importorskip("benchmarks.serving_report", reason="run from the repository root")
    spec = importlib.util.spec_from_file_location("gen_benchmarks_md", GENERATOR)
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    phases = [("base", 10.0, 1.0), ("surge", 50.0, 1.0), ("recover", 10.0, 1.0)]
    bounds = loadgen.phase_bounds(phases)
    sched = loadgen.fixed_schedule(phases)

    def outcomes(ms: float) -> list:  # every request answered in ``ms``, the surge's twice over
        return [loadgen.Outcome(a.phase, a.at, 0.0, ms * (2 if a.phase == "surge" else 1) / 1e3)
                for a in sched]

    cpu = [{"base": 0.5, "surge": 1.5, "recover": 0.5, "all": 0.8}]
    run = {"capacity_rps": 100.0, "capacity_batched_rps": 40.0, "base_rps": 10.0,
           "phase_rates": {n: r for n, r, _ in phases},
           "modes": {"adaptive": {"phases": report.figures(outcomes(4.0), bounds, 10.0, cpu)}}}
    swept = {"litserve": {"batch 8, wait 1 ms": {"outcomes": outcomes(8.0), "cpu": cpu},
                          "batch 8, wait 5 ms": {"outcomes": outcomes(12.0), "cpu": cpu},
                          "capacity_rps": 30.0}}
    run["peers"] = report.peer_report(swept, bounds, 10.0, [(8, 1.0), (8, 5.0)], 2, False)
    run["adaptive_vs_peers"] = report.verdict(run)
    data = [{"reports": [{"model": "m", "runs": {"http": run}}], "_file": "r.json"}]

    peers = gen.serving_peers(data)
    assert any("| regiontrt adaptive | surge | default |" in row and "| 100.0 | 1.50 |" in row
               for row in peers), peers
    best = [r for r in peers if "litserve (best of 2)" in r]
    assert len(best) == 4 and all("batch 8, wait 1 ms" in r for r in best), best
    verdict = {r.split(" | ")[2]: r for r in gen.serving_verdict(data)[2:]}
    # base: 10/s under the best batched capacity (40/s), adaptive all in the 10 ms SLA
    assert verdict["base"].endswith("| 100.0 | 100.0 | litserve | yes | yes |"), verdict
    # surge: 50/s over every capacity: no 99 % bar; litserve's 16 ms misses, adaptive's 8 ms not
    assert verdict["surge"].endswith("| 100.0 | 0.0 | litserve | yes | - |"), verdict


def test_the_zoo_frontier_plot_is_drawn_from_the_zoo_results(tmp_path: Path) -> None:
    """``scripts/plot_zoo.py`` draws one panel per model of the result files it is given, and the
    page shows a plot that exists."""
    pytest.importorskip("matplotlib", reason="needs matplotlib (the plot extra)")
    spec = importlib.util.spec_from_file_location("plot_zoo", ROOT / "scripts" / "plot_zoo.py")
    assert spec and spec.loader
    plot_zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_zoo)
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("bench_zoo*.json"))]
    models = {name for r in results for name in r["models"]}
    out = tmp_path / "frontier.png"
    assert plot_zoo.plot(results, out) == len(models) >= 8
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = re.findall(r"!\[[^\]]*\]\((img/zoo_frontier[^)]*\.png)\)", DOC.read_text())
    assert shown and all((DOC.parent / p).is_file() for p in shown)
