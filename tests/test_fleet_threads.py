"""Fleet workers share the host's cores: each task's ONNX Runtime sessions get cores // workers
threads, unpinned, in real spawned worker processes (issue 24: fleet builds that scale)."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

import pytest
from fleet_support import session_threads, write_fleet

from regiontrt import deploy
from regiontrt.deploy._threads import cpu_share, usable_cpus
from regiontrt.errors import InvalidArgumentError
from regiontrt.runtime import artifact


def _payloads(result: deploy.FleetResult) -> list[tuple[str, str | None, bytes]]:
    return [(c.region, c.precision, artifact.decode(c.engine)[1]) for c in result.cells
            if c.engine is not None]


def _spawn_pool() -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 usable CPUs to see ONNX Runtime's pinning")
def test_default_sessions_pin_a_thread_per_core_and_a_share_does_not():
    """The cause (ONNX Runtime's default pins its pool threads) and the fix, in fresh processes."""
    with _spawn_pool() as pool:
        default = pool.submit(session_threads).result()
    assert default["share"] is None
    assert default["added"] >= 1
    assert any(len(a) == 1 for a in default["affinity"]), default  # pinned to one core
    with _spawn_pool() as pool:
        one = pool.submit(session_threads, 1).result()
        two = pool.submit(session_threads, 2).result()  # the same process, set again
    assert (one["added"], one["share"]) == (0, 1)  # the calling thread only
    assert (two["added"], two["share"]) == (1, 2)
    assert all(a == two["process"] for a in two["affinity"]), two  # not pinned


def test_cpu_share_divides_the_usable_cpus():
    n = usable_cpus()
    assert cpu_share(1) == n
    assert cpu_share(n) == 1
    assert cpu_share(4 * n) == 1  # never below one thread
    assert cpu_share(2) == max(1, n // 2)


def test_build_fleet_gives_each_worker_task_its_share(tmp_path):
    """The thread count travels in the jobs: a worker of a caller's executor is set to it."""
    fleet = write_fleet(tmp_path / "src", regions=("NA", "CERTIFIED"), targets=("cpu",))
    with _spawn_pool() as pool:
        result = deploy.build_fleet(fleet, tmp_path / "out", executor=pool, threads=1)
        after = pool.submit(session_threads).result()
    assert result.ok, result.table()
    assert result.threads == 1
    assert set(result.decisions) == {"NA", "CERTIFIED"}
    assert all(s > 0 for s in result.decisions.values())
    assert (after["share"], after["added"]) == (1, 0)


def test_local_pool_defaults_to_cores_over_workers_and_builds_the_same(tmp_path):
    fleet = write_fleet(tmp_path / "src", regions=("NA", "EU", "CERTIFIED"), targets=("cpu",))
    one = deploy.build_fleet(fleet, tmp_path / "w1", workers=1)
    two = deploy.build_fleet(fleet, tmp_path / "w2", workers=2)
    assert (one.threads, two.threads) == (cpu_share(1), cpu_share(2))
    assert one.ok and two.ok
    # Same precisions and the same compiled graphs (metadata differ only in timings).
    assert len(_payloads(one)) == 3
    assert _payloads(one) == _payloads(two)


def test_threads_below_one_is_refused_before_any_work(tmp_path):
    fleet = write_fleet(tmp_path / "src", regions=("CERTIFIED",), targets=("cpu",))
    with pytest.raises(InvalidArgumentError, match="threads"):
        deploy.build_fleet(fleet, tmp_path / "out", threads=0)
    assert not (tmp_path / "out").exists()


def test_cli_threads_reach_the_build_and_its_json(tmp_path, capsys):
    import json

    from regiontrt.cli import main

    fleet = write_fleet(tmp_path / "src", regions=("CERTIFIED",), targets=("cpu",))
    assert main(["fleet", "build", str(fleet), "--out", str(tmp_path / "out"), "--workers", "1",
                 "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["threads"], sorted(out["decisions"])) == (True, 1, ["CERTIFIED"])
    with pytest.raises(SystemExit):  # argparse refuses it before any work
        main(["fleet", "build", str(fleet), "--out", str(tmp_path / "bad"), "--threads", "0"])
    assert not (tmp_path / "bad").exists()


class _Recording(cf.ProcessPoolExecutor):
    """A real spawn pool of one worker that records which region each decision was for."""

    def __init__(self) -> None:
        super().__init__(1, mp_context=multiprocessing.get_context("spawn"))
        self.regions: list[str] = []

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        if fn.__name__ == "decide_region":
            self.regions.append(args[0]["region"]["name"])
        return super().submit(fn, *args, **kwargs)


def test_costliest_decision_is_submitted_first_and_cells_keep_the_fleet_order(tmp_path):
    fleet = write_fleet(tmp_path / "src", regions=("CERTIFIED", "EU", "NA"), targets=("cpu",))
    with _Recording() as pool:
        result = deploy.build_fleet(fleet, tmp_path / "out", executor=pool)
    assert pool.regions == ["NA", "EU", "CERTIFIED"]  # calibrated int8, then 2, then 1 precision
    assert [c.region for c in result.cells] == ["CERTIFIED", "EU", "NA"]
    assert result.ok
