"""Plots from real engines: what each figure draws, checked on the matplotlib artists."""

from __future__ import annotations

import numpy as np
import pytest
from _engines import batches, build_engines

import regiontrt as rt
from regiontrt import demo

pytest.importorskip("matplotlib", reason="needs matplotlib (pip install 'regiontrt[plot]')")

from regiontrt.report import plots


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    na, eu, strict = build_engines(tmp_path_factory.mktemp("engines"))
    return {"NA": na, "EU": eu, "STRICT": strict}


def _png(fig) -> bytes:
    from regiontrt.report.text import figure_png

    data = figure_png(fig)
    assert data.startswith(b"\x89PNG")
    return data


def test_accuracy_figure_one_panel_per_region_every_trial(engines):
    fig = plots.accuracy_figure([engines["NA"], rt.load_engine(engines["EU"]),
                                 rt.inspect(engines["STRICT"])])
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["NA → int8", "EU → fp16", "STRICT → fp32"]
    strict = panels[2]
    bars = strict.patches
    assert [t.get_text() for t in strict.get_xticklabels()] == ["int8", "fp16", "fp32"]
    colors = [tuple(np.round(b.get_facecolor()[:3], 3)) for b in bars]
    red, green = (tuple(np.round(_rgb(c), 3)) for c in (plots.REJECTED, plots.ACCEPTED))
    assert colors == [red, red, green]
    trials = rt.inspect(engines["STRICT"])["validation"]["trials"]
    assert [b.get_height() for b in bars[:2]] == pytest.approx([t["loss"] for t in trials[:2]])
    assert strict.get_yscale() == "log"  # 1e-6 budget beside a 1e-2 loss
    budget_line = next(ln for ln in strict.get_lines() if ln.get_linestyle() == "--")
    assert budget_line.get_ydata()[0] == pytest.approx(1e-6)
    assert panels[0].get_yscale() == "linear"
    # the EU forbids int8: never tried, shown as such beside the fp16 it chose
    eu = panels[1]
    assert [t.get_text() for t in eu.get_xticklabels()] == ["fp16", "int8"]
    assert [t.get_text() for t in eu.texts] == ["0", "forbidden"]
    _png(fig)


def _rgb(hex_color):
    from matplotlib.colors import to_rgb

    return to_rgb(hex_color)


def test_latency_from_raw_samples_and_benchmark_reports(engines):
    engine = rt.load_engine(engines["NA"])
    raw = plots.latency_samples(engine, iterations=20, warmup=2, batch=4)
    assert raw.shape == (20,) and np.all(raw > 0)
    bench = engine.benchmark(iterations=20, warmup=2, batch=4)
    fig = plots.latency_figure({"NA / cpu raw": raw, "NA / cpu bench": bench,
                                "NA / dict": bench.to_dict()})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["NA / cpu raw", "NA / cpu bench",
                                                           "NA / dict"]
    # the box plot's median is the samples' median
    assert any(np.allclose(ln.get_xdata(), np.median(raw)) for ln in ax.get_lines())
    # NA's SLA (10 ms) is drawn for the summaries
    assert any(np.allclose(ln.get_xdata(), [10.0]) for ln in ax.get_lines())
    _png(fig)
    with pytest.raises(rt.errors.DataError):
        plots.latency_figure({})
    with pytest.raises(ValueError):
        plots.latency_samples(engine, iterations=0)


def test_calibration_histograms_recompute_the_built_ranges(engines):
    data = demo.region_data("NA")
    hists = plots.calibration_histograms(demo.model_path(), batches(data.calibration),
                                         engine=engines["NA"], limit=3)
    amax = rt.inspect(engines["NA"])["calibration"]["amax"]
    widest = sorted(amax, key=lambda t: -amax[t])[:3]
    assert [h.tensor for h in hists] == widest
    for h in hists:
        # same data, same method (entropy): the recomputed range is the one the engine holds
        assert h.amax == pytest.approx(h.chosen_amax) == pytest.approx(amax[h.tensor])
        assert h.counts.sum() > 0 and h.max_abs >= h.amax > 0
        assert len(h.edges) == len(h.counts) + 1
    # another calibrator gives another range for at least one tensor, drawn beside the built one
    minmax = plots.calibration_histograms(demo.model_path(), batches(data.calibration),
                                          widest, engine=engines["NA"], calibrator="minmax")
    assert [h.amax for h in minmax] == pytest.approx([h.max_abs for h in minmax])
    fig = plots.calibration_figure(minmax)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == widest
    _png(fig)
    with pytest.raises(rt.errors.DataError):
        plots.calibration_histograms(demo.model_path(), batches(data.calibration), ["nope:0"])


def test_sensitivity_reads_the_search_and_tolerates_other_shapes(engines):
    rows, kept, budget = plots.sensitivity(engines["STRICT"])
    search = rt.inspect(engines["STRICT"])["calibration"]["mixed_precision"]
    assert dict(rows) == pytest.approx(search["sensitivity"])
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    assert kept == set(search["kept"]) and budget == 1e-6
    fig = plots.sensitivity_figure(engines["STRICT"])
    assert len(fig.axes[0].patches) == len(rows)
    _png(fig)
    # no search recorded (NA met its budget in whole-model int8; EU is fp16)
    assert plots.sensitivity(engines["NA"])[0] == []
    with pytest.raises(rt.errors.DataError, match="no mixed-precision"):
        plots.sensitivity_figure(engines["EU"])
    # a rewritten search may record a list of records (under another key) instead of a mapping
    meta = {"calibration": {"mixed_precision": {"per_layer": [
        {"layer": "a", "loss": 0.1}, {"name": "b", "sensitivity": 0.3}, {"layer": "c"}, 7]}},
        "kept_high_precision": ["b"]}
    assert plots.sensitivity(meta) == ([("b", 0.3), ("a", 0.1)], {"b"}, None)


def test_plots_need_matplotlib_only_when_drawing():
    import subprocess
    import sys

    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import regiontrt.report.plots as p\n"
            "try:\n    p.accuracy_figure([{'validation': {}}])\n"
            "except p.PlotUnavailable as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "refused: plots need matplotlib: pip install 'regiontrt[plot]'" in out.stdout


def test_sensitivity_draws_the_budget_only_against_the_regions_metric():
    """The search's ranking proxy is not the region's metric: no budget line against it."""
    meta = {"validation": {"metric": "top1", "budget": 0.01},
            "calibration": {"mixed_precision": {"sensitivity": {"a": 0.3, "b": 0.001}}}}
    fig = plots.sensitivity_figure(meta)
    assert len(fig.axes[0].lines) == 0 and "proxy" in fig.axes[0].get_xlabel()
    meta["calibration"]["mixed_precision"]["sensitivity_metric"] = "top1"
    fig = plots.sensitivity_figure(meta)
    [line] = fig.axes[0].lines
    assert line.get_xdata()[0] == 0.01 and "top1" in fig.axes[0].get_xlabel()
