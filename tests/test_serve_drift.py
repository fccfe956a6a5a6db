"""Drift monitoring: shifted data fires, the region's own data does not; sampling never blocks."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from conftest import demo_engine as _build

import regiontrt as rt
from regiontrt import demo
from regiontrt.serve.drift import DriftWarning

# Alerts raised on the monitor's worker thread would otherwise clutter the summary.
pytestmark = pytest.mark.filterwarnings("ignore::regiontrt.serve.drift.DriftWarning")


@pytest.fixture(scope="module")
def eu_engine():
    return _build("EU")


def _feed(engine: rt.Engine, images: np.ndarray, rows: int = 8) -> dict:
    with rt.serve(engine, max_batch=16, max_delay_ms=1) as server:
        monitor = server.monitor(sample_rate=1.0, window=64, seed=0)
        futures = [server.submit(images[i:i + rows]) for i in range(0, len(images), rows)]
        for f in futures:
            f.result(10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DriftWarning)
            monitor.flush()
        return monitor.report()


def test_metadata_records_validation_input_statistics(na_engine):
    stats = na_engine.metadata["input_stats"]["input"]
    val = demo.region_data("NA").validation
    assert stats["count"] == val.size
    assert stats["mean"] == pytest.approx(float(val.mean()), rel=1e-6)
    assert sum(stats["proportions"]) == pytest.approx(1.0)
    assert len(stats["proportions"]) == len(stats["edges"]) + 1


def test_int8_engine_fed_apac_shifted_data_fires_and_na_data_does_not(na_engine):
    calm = _feed(na_engine, demo.region_data("NA").validation)
    assert calm["alerts"] == [] and calm["checks"] >= 5 and calm["dropped"] == 0
    assert calm["thresholds"]["digits_cnn_NA"]["range_check"] is True
    worst_calm = max(calm["latest"]["digits_cnn_NA"]["range"].values())
    assert worst_calm < 0.01

    shifted = _feed(na_engine, demo.region_data("APAC").validation)
    kinds = {a["kind"] for a in shifted["alerts"]}
    assert "range" in kinds, shifted["alerts"]
    alert = next(a for a in shifted["alerts"] if a["kind"] == "range")
    assert alert["region"] == "NA" and alert["score"] > alert["threshold"] == 0.01
    assert max(shifted["latest"]["digits_cnn_NA"]["range"].values()) > 10 * worst_calm


def test_fp16_engine_uses_input_statistics(eu_engine):
    assert eu_engine.precision == "fp16"
    calm = _feed(eu_engine, demo.region_data("EU").validation)
    assert calm["alerts"] == []
    assert calm["thresholds"]["digits_cnn_EU"]["range_check"] is False
    shifted = _feed(eu_engine, demo.region_data("APAC").validation)
    assert [a["kind"] for a in shifted["alerts"]] and \
        {a["kind"] for a in shifted["alerts"]} == {"input_psi"}
    assert shifted["alerts"][0]["score"] > 0.25


def test_alerts_warn_and_reach_the_prometheus_metrics(na_engine):
    pytest.importorskip("prometheus_client", reason="needs prometheus-client (serve extra)")
    x = demo.region_data("APAC").validation[:64]
    with rt.serve(na_engine) as server:
        monitor = server.monitor(sample_rate=1.0, window=1000)
        server.infer(x)
        with pytest.warns(DriftWarning, match="region=NA"):
            monitor.flush()  # a partial window is scored here, in this thread
        text = server.metrics.prometheus_text().decode()
    assert 'regiontrt_serve_drift_alerts_total{kind="range",model="digits_cnn_NA"' in text
    assert "regiontrt_serve_drift_score" in text


def test_sampling_never_blocks_and_counts_what_it_drops(na_engine):
    x = np.zeros((1, 1, 8, 8), np.float32)
    with rt.serve(na_engine) as server:
        monitor = server.monitor(sample_rate=1.0, queue_size=1, window=1)
        with monitor._work:  # hold the worker: the queue cannot empty
            started = time.perf_counter()
            for _ in range(6):
                monitor.offer("digits_cnn_NA", {"input": x})
            elapsed = time.perf_counter() - started
        monitor.flush()
        report = monitor.report()
    assert elapsed < 0.5
    assert report["sampled"] + report["dropped"] == 6 and report["dropped"] >= 4


def test_psi_is_near_zero_on_the_reference_and_large_on_a_shift():
    from regiontrt.data.stats import mean_shift, psi, summarize

    rng = np.random.default_rng(0)
    ref = summarize(rng.standard_normal(50_000))
    same = rng.standard_normal(5_000)
    assert psi(ref, same) < 0.02 and mean_shift(ref, same) < 0.05
    moved = rng.standard_normal(5_000) * 1.5 + 0.5
    assert psi(ref, moved) > 0.25 and mean_shift(ref, moved) == pytest.approx(0.5, abs=0.06)
    constant = summarize(np.zeros(100))
    assert psi(constant, np.zeros(50)) < 1e-9 and psi(constant, moved) > 0.25  # a blank input
    assert mean_shift(constant, moved) == 0.0  # no spread to measure the shift in
    assert psi({"count": 0}, moved) == 0.0     # no reference recorded: nothing to compare
