"""Timing-cache files: load, merge under a lock, atomic save; runtime-cache files."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from regiontrt.backends.timing_cache import (
    RuntimeCacheFile,
    TimingCacheFile,
    file_lock,
    timing_cache_path,
)


class DictCache:
    """A stand-in for ``ITimingCache``: tactic timings for one device."""

    def __init__(self, device: str, entries: dict[str, float] | None = None) -> None:
        self.device = device
        self.entries = dict(entries or {})


class DictCodec:
    def __init__(self, device: str = "sm90", fail_serialize: bool = False) -> None:
        self.device = device
        self.fail_serialize = fail_serialize

    def load(self, data: bytes) -> DictCache:
        if not data:
            return DictCache(self.device)
        blob = json.loads(data)  # raises on a corrupt file
        return DictCache(blob["device"], blob["entries"])

    def combine(self, into: DictCache, other: DictCache) -> bool:
        if into.device != other.device:
            return False
        for key, value in other.entries.items():
            into.entries.setdefault(key, value)
        return True

    def serialize(self, cache: DictCache) -> bytes:
        if self.fail_serialize:
            raise RuntimeError("serialize failed")
        return json.dumps({"device": cache.device, "entries": cache.entries}).encode()


def on_disk(path: Path) -> dict[str, float]:
    return json.loads(path.read_bytes())["entries"]


def test_load_without_a_file_gives_an_empty_cache(tmp_path):
    cache = TimingCacheFile(tmp_path / "c.cache", DictCodec()).load()
    assert cache.entries == {}


def test_save_merges_entries_written_since_load(tmp_path):
    path = tmp_path / "c.cache"
    first, second = TimingCacheFile(path, DictCodec()), TimingCacheFile(path, DictCodec())
    a, b = first.load(), second.load()  # both builds start from the same (empty) file
    a.entries["conv1"] = 1.0
    b.entries["conv2"] = 2.0
    assert first.save(a).merged is False
    result = second.save(b)
    assert result.merged is True and result.discarded_disk is False
    assert on_disk(path) == {"conv1": 1.0, "conv2": 2.0}
    assert result.size == path.stat().st_size


def _concurrent_build(path: str, key: str, barrier) -> None:
    cache_file = TimingCacheFile(path, DictCodec())
    cache = cache_file.load()
    barrier.wait()  # every process has loaded before any saves: a lost update would show
    cache.entries[key] = float(len(key))
    cache_file.save(cache)


def test_concurrent_saves_from_several_processes_keep_every_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded test process
    path = str(tmp_path / "c.cache")
    keys = [f"layer{i}" for i in range(4)]
    barrier = ctx.Barrier(len(keys))
    procs = [ctx.Process(target=_concurrent_build, args=(path, k, barrier)) for k in keys]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(on_disk(Path(path))) == keys
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_cache_is_ignored_and_replaced(tmp_path):
    path = tmp_path / "c.cache"
    path.write_bytes(b"\x00garbage")
    cache_file = TimingCacheFile(path, DictCodec())
    cache = cache_file.load()
    assert cache.entries == {}
    cache.entries["x"] = 1.0
    result = cache_file.save(cache)
    assert result.discarded_disk is True and result.merged is False
    assert on_disk(path) == {"x": 1.0}


def test_incompatible_cache_on_disk_is_replaced_not_mixed(tmp_path):
    path = tmp_path / "c.cache"
    TimingCacheFile(path, DictCodec("sm80")).save(DictCache("sm80", {"old": 1.0}))
    result = TimingCacheFile(path, DictCodec("sm90")).save(DictCache("sm90", {"new": 2.0}))
    assert result.discarded_disk is True
    assert on_disk(path) == {"new": 2.0}


def test_failed_save_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "c.cache"
    TimingCacheFile(path, DictCodec()).save(DictCache("sm90", {"kept": 1.0}))
    with pytest.raises(RuntimeError, match="serialize failed"):
        TimingCacheFile(path, DictCodec(fail_serialize=True)).save(DictCache("sm90", {"n": 2.0}))
    assert on_disk(path) == {"kept": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.cache", "c.cache.lock"]


def test_lock_excludes_a_second_holder(tmp_path):
    target = tmp_path / "c.cache"
    with (file_lock(target), pytest.raises(TimeoutError, match="could not lock"),
          file_lock(target, timeout=0.05)):
        pass
    with file_lock(target, timeout=0.05):  # released after the block
        pass


@pytest.mark.parametrize(("base", "expected"), [
    ("caches/", "caches/tensorrt-10.8.0.43-sm90.cache"),
    ("caches", "caches/tensorrt-10.8.0.43-sm90.cache"),
    ("caches/timing.bin", "caches/timing.tensorrt-10.8.0.43-sm90.bin"),
])
def test_cache_path_is_keyed_by_version_and_gpu(base, expected):
    assert timing_cache_path(base, "10.8.0.43", "sm90") == Path(expected)


def test_existing_directory_with_a_dot_is_treated_as_a_directory(tmp_path):
    folder = tmp_path / "v1.0"
    folder.mkdir()
    expected = folder / "tensorrt-10.8.0.43-sm89.cache"
    assert timing_cache_path(folder, "10.8.0.43", "sm89") == expected


def test_runtime_cache_file_round_trip(tmp_path):
    cache_file = RuntimeCacheFile(tmp_path / "sub" / "rtx.cache")
    assert cache_file.read() is None
    cache_file.write(b"kernels")
    assert cache_file.read() == b"kernels"
    cache_file.path.write_bytes(b"")
    assert cache_file.read() is None


def test_save_without_merge_replaces_a_cache_tensorrt_refused(tmp_path):
    path = tmp_path / "c.cache"
    cache_file = TimingCacheFile(path, DictCodec())
    cache_file.save(DictCache("sm90", {"timed-on-another-h100": 3.0}))
    fresh = DictCache("sm90", {"conv1": 1.0})  # same compute capability: combine would merge
    result = cache_file.save(fresh, merge=False)
    assert result.merged is False and result.discarded_disk is True
    assert on_disk(path) == {"conv1": 1.0}


def test_cache_path_carries_the_gpu_name_when_known(tmp_path):
    assert timing_cache_path(tmp_path, "10.16.1.11", "sm90", "nvidia-h200").name == \
        "tensorrt-10.16.1.11-sm90-nvidia-h200.cache"
    assert timing_cache_path(tmp_path / "t.bin", "11.4.0.106", "sm90", "nvidia-h100").name == \
        "t.tensorrt-11.4.0.106-sm90-nvidia-h100.bin"
