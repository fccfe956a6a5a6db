"""Distributed calibration: shards on worker processes, statistics merged exactly on the driver.

Real parts: an ONNX model built with onnx.helper, ONNX Runtime on every worker, a
``ProcessPoolExecutor`` and a real two-process ``dask.distributed.LocalCluster``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from regiontrt.build import RegionalEngineBuilder
from regiontrt.calibration import EntropyCalibrator, MinMaxCalibrator, collect_statistics
from regiontrt.calibration.collect import resolve_tensors
from regiontrt.calibration.distributed import distributed_statistics
from regiontrt.calibration.stats import TensorStats
from regiontrt.data.sources import DataSource
from regiontrt.errors import BuildError, DataError, InvalidArgumentError
from regiontrt.graph.io import input_specs

distributed = pytest.importorskip("distributed", reason="Dask is the fleet extra")


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, dynamic batch."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.FLOAT, shape,
                                  (rng.standard_normal(shape) * 0.3).astype(np.float32).ravel())

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [init("w1", 6, 3, 3, 3), init("b1", 6), init("w2", 6, 6, 3, 3), init("b2", 6),
         init("w3", 5, 6), init("b3", 5)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_batches(n: int, size: int, seed: int = 1, scale_growth: bool = True) -> list[np.ndarray]:
    """Batches whose scale grows, so histogram ranges grow several times over the set."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.3, 6.0, n) if scale_growth else np.ones(n)
    rng.shuffle(scales[1:])  # not monotone: shards see their maxima in different places
    return [(rng.standard_normal((size, 3, 8, 8)) * s).astype(np.float32) for s in scales]


def write_shards(folder: Path, batches: list[np.ndarray]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, b in enumerate(batches):
        path = folder / f"part-{i:04d}.npz"
        np.savez(path, x=b)
        paths.append(str(path))
    return paths


def assert_same_stats(got: dict[str, TensorStats], want: dict[str, TensorStats]) -> None:
    assert list(got) == list(want)
    for name in want:
        g, w = got[name], want[name]
        assert (g.min, g.max, g.count, g.nonfinite) == (w.min, w.max, w.count, w.nonfinite), name
        assert g.hist_max == w.hist_max, name
        assert np.array_equal(g.hist, w.hist), (name, int(np.abs(g.hist - w.hist).sum()))


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return conv_model()


@pytest.fixture(scope="module")
def shard_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_shards(tmp_path_factory.mktemp("shards"), make_batches(10, 8))


@pytest.fixture(scope="module")
def pool() -> Iterator[cf.ProcessPoolExecutor]:
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        yield ex


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, worker_dashboard_address=None) as cluster, \
            Client(cluster) as c:
        # The workers import this worktree's regiontrt, not another checkout's.
        files = c.run(lambda: __import__("regiontrt").__file__)
        import regiontrt
        assert set(files.values()) == {regiontrt.__file__}
        yield c


def test_process_pool_equals_single_process(model: onnx.ModelProto, shard_paths: list[str],
                                            pool: cf.ProcessPoolExecutor) -> None:
    want = collect_statistics(model, shard_paths)
    # Ranges grew over the set, so exactness is not the trivial one-range case.
    first_amax = float(np.abs(np.load(shard_paths[0])["x"]).max())
    assert want["x"].hist_max > first_amax
    local = EntropyCalibrator().calibrate(model, shard_paths)
    remote = EntropyCalibrator().distributed(pool).calibrate(model, shard_paths)
    assert_same_stats(remote.stats, want)
    assert remote.amax == local.amax
    assert (remote.num_batches, remote.num_samples) == (10, 80)


def test_in_memory_batches_and_folders(model: onnx.ModelProto, shard_paths: list[str],
                                       pool: cf.ProcessPoolExecutor) -> None:
    batches = [np.load(p)["x"] for p in shard_paths]
    want = collect_statistics(model, batches)
    source = DataSource(batches, input_specs(model))
    names, types = resolve_tensors(model, None)
    got = distributed_statistics(model, source, names, types, executor=pool)
    assert got.shards == 10 and got.reread == 0
    assert_same_stats(got.stats, want)
    folder = str(Path(shard_paths[0]).parent)  # a folder: one shard per file
    assert_same_stats(EntropyCalibrator().distributed(pool).calibrate(model, folder).stats, want)
    # fsspec URLs: a file:// folder read by the workers, a memory:// one read in this process.
    url = Path(folder).as_uri()
    assert_same_stats(EntropyCalibrator().distributed(pool).calibrate(model, url).stats, want)
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    for p in shard_paths:
        mem.pipe(f"/calib-shards/{Path(p).name}", Path(p).read_bytes())
    assert_same_stats(collect_statistics(model, "memory://calib-shards/"), want)


def test_tensor_zero_in_the_first_batch_is_read_again_and_stays_exact(
        model: onnx.ModelProto, tmp_path: Path, pool: cf.ProcessPoolExecutor) -> None:
    batches = make_batches(6, 4, seed=5)
    batches[0] = -np.abs(batches[0]) * 0  # all zeros: no tensor has a first range
    paths = write_shards(tmp_path / "zero-first", batches)
    want = collect_statistics(model, paths)
    names, types = resolve_tensors(model, None)
    got = distributed_statistics(model, DataSource(paths, input_specs(model)), names, types,
                                 executor=pool)
    assert got.reread > 0  # later shards started their own ranges and were re-read aligned
    assert_same_stats(got.stats, want)


def test_dask_cluster_equals_single_process(model: onnx.ModelProto, shard_paths: list[str],
                                            client: Any) -> None:
    import dask.array as da
    import dask.bag as db

    want = collect_statistics(model, shard_paths)
    calibrator = EntropyCalibrator().distributed(client)
    assert_same_stats(calibrator.calibrate(model, shard_paths).stats, want)
    batches = [np.load(p)["x"] for p in shard_paths]
    bag = db.from_sequence(batches, npartitions=3)
    assert_same_stats(calibrator.calibrate(model, bag).stats, want)
    array = da.from_array(np.concatenate(batches), chunks=(8, 3, 8, 8))  # a block per batch
    assert_same_stats(calibrator.calibrate(model, array).stats, want)
    # The executor interface of the same cluster (what fleet builds take) works too.
    minmax = MinMaxCalibrator().distributed(client.get_executor())
    assert minmax.calibrate(model, shard_paths).amax == MinMaxCalibrator().calibrate(
        model, shard_paths).amax


def test_dask_worker_killed_midway_gives_the_same_result(model: onnx.ModelProto, tmp_path: Path,
                                                         client: Any) -> None:
    paths = write_shards(tmp_path / "many", make_batches(96, 48, seed=7))
    want = collect_statistics(model, paths)
    pids = client.run(os.getpid)
    outcome: dict[str, Any] = {}

    def calibrate() -> None:
        try:
            outcome["result"] = EntropyCalibrator().distributed(client).calibrate(model, paths)
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=calibrate)
    thread.start()
    deadline = time.monotonic() + 30
    while not any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # let the worker get into a shard
    victim = next(iter(pids.values()))
    assert thread.is_alive(), "the calibration ended before a worker could be killed"
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert victim not in client.run(os.getpid).values()  # the worker really died
    assert_same_stats(outcome["result"].stats, want)


def test_process_pool_worker_killed_is_a_build_error_naming_the_shard(
        model: onnx.ModelProto, tmp_path: Path) -> None:
    # A ProcessPoolExecutor cannot recover a dead process (unlike Dask): a typed error, no hang.
    paths = write_shards(tmp_path / "pool", make_batches(96, 48, seed=9))
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as one:
        victim = one.submit(os.getpid).result(timeout=120)  # a hung spawn fails, not hangs
        outcome: dict[str, Any] = {}

        def calibrate() -> None:
            try:
                EntropyCalibrator().distributed(one).calibrate(model, paths)
            except BaseException as exc:  # checked below
                outcome["error"] = exc

        thread = threading.Thread(target=calibrate)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "the calibration ended before its worker could be killed"
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=60)
    assert isinstance(outcome.get("error"), BuildError), outcome
    assert "part-" in str(outcome["error"]) and "BrokenProcessPool" in str(outcome["error"])


def test_builder_int8_with_an_executor_matches_a_local_build(
        model: onnx.ModelProto, shard_paths: list[str], pool: cf.ProcessPoolExecutor) -> None:
    val = make_batches(2, 8, seed=11, scale_growth=False)
    base = RegionalEngineBuilder.from_onnx(model).for_region("NA").with_precision("int8") \
        .with_validation(val).with_calibration_check(strict=False)
    local = base.with_calibrator("entropy", data=shard_paths).build()
    remote = base.with_calibrator("entropy", data=shard_paths, executor=pool).build()
    assert local.precision == remote.precision == "int8"
    got, want = remote.metadata["calibration"], local.metadata["calibration"]
    assert got["amax"] == want["amax"]
    assert got["num_samples"] == want["num_samples"] == 80


def test_refusals(model: onnx.ModelProto, pool: cf.ProcessPoolExecutor) -> None:
    with pytest.raises(InvalidArgumentError, match="executor"):
        RegionalEngineBuilder.from_onnx(model).with_calibrator(executor=object())
    one_shot = (b for b in make_batches(2, 2))
    with pytest.raises(DataError, match="cannot be cut into shards"):
        EntropyCalibrator().distributed(pool).calibrate(model, one_shot)
    with pytest.raises(DataError, match="not found"):
        EntropyCalibrator().distributed(pool).calibrate(model, ["/nonexistent/part.npz"])


def test_worker_peak_memory_is_flat_as_samples_grow(tmp_path: Path) -> None:
    # The same measurement benchmarks/bench_dist_calibration.py records in docs/results/.
    from benchmarks.bench_dist_calibration import measure

    small = measure(1000, 100, tmp_path, check=False)
    large = measure(10000, 100, tmp_path, check=False)
    print(f"\nworker peak MiB: 1k samples {small['worker_peak_mib']}, "
          f"10k samples {large['worker_peak_mib']} (resident at start "
          f"{large['worker_resident_at_start_mib']}); driver peak {small['driver_peak_mib']} / "
          f"{large['driver_peak_mib']}")
    assert (small["num_samples_read"], large["num_samples_read"]) == (1000, 10000)
    # Ten times the data, the same worker peak: one batch (100 x 3x32x32) is alive at a time.
    assert max(large["worker_peak_mib"]) <= max(small["worker_peak_mib"]) * 1.1 + 8
