"""Files a write leaves behind (issue 8, finding 7).

Killed writers' temporary files are swept, new files follow the umask, overwrites keep the mode,
export_payload writes both files or neither.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from hostile import relu_model

import regiontrt as rt
from regiontrt import _fs
from regiontrt.runtime import artifact

KILLED_WRITER = """
import os, signal, sys
from regiontrt import _fs
with _fs.atomic_writer(sys.argv[1]) as fh:
    fh.write(b"x" * 1_000_000)
    fh.flush()
    print("writing", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if _fs.TMP_MARK in p.name)


def test_killed_writer_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "m.engine"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)],
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and b"writing" in proc.stdout
    assert len(_temps(tmp_path)) == 1 and not target.exists()
    artifact.write(tmp_path / "other.engine", {"a": 1}, b"payload")
    assert _temps(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.engine"]


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    live = """
import sys, time
from regiontrt import _fs
with _fs.atomic_writer(sys.argv[1]) as fh:
    fh.write(b"x")
    fh.flush()
    print("writing", flush=True)
    time.sleep(30)
"""
    proc = subprocess.Popen([sys.executable, "-c", live, str(tmp_path / "slow.engine")],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"writing"
        before = _temps(tmp_path)
        assert len(before) == 1
        artifact.write(tmp_path / "other.engine", {"a": 1}, b"payload")
        assert _temps(tmp_path) == before  # its writer holds the lock: not ours to remove
    finally:
        proc.kill()
        proc.wait(timeout=30)
    artifact.write(tmp_path / "third.engine", {"a": 1}, b"payload")
    assert _temps(tmp_path) == []


def test_files_that_are_not_provably_ours_are_never_swept(tmp_path):
    lookalike = tmp_path / ".notes.txt.tmp"  # the old naming, or anyone else's file
    lookalike.write_text("keep me")
    folder_like = tmp_path / f".x{_fs.TMP_MARK}abc"
    folder_like.mkdir()
    artifact.write(tmp_path / "e.engine", {"a": 1}, b"p")
    assert lookalike.exists() and folder_like.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = artifact.write(tmp_path / "e.engine", {"a": 1}, b"p")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_overwriting_keeps_the_existing_mode(tmp_path):
    path = tmp_path / "e.engine"
    path.write_bytes(b"old")
    path.chmod(0o644)
    old = os.umask(0o077)
    try:
        artifact.write(path, {"a": 1}, b"new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert artifact.read(path)[1] == b"new"


@pytest.fixture(scope="module")
def engine():
    return rt.RegionalEngineBuilder.from_onnx(relu_model()).for_region("CERTIFIED").build()


def test_export_payload_writes_both_files(tmp_path, engine):
    payload, sidecar = engine.export_payload(tmp_path / "m")
    assert payload.read_bytes() == engine.payload and sidecar.name == "m.onnx.json"


def test_export_payload_writes_neither_when_the_sidecar_fails(tmp_path, engine):
    (tmp_path / "m.onnx.json").mkdir()  # the sidecar cannot be written over a folder
    with pytest.raises(rt.errors.ArtifactError, match="cannot write"):
        engine.export_payload(tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.json"]
    assert _temps(tmp_path) == []


def test_export_payload_keeps_old_files_when_a_write_fails(tmp_path, engine, monkeypatch):
    (tmp_path / "m.onnx").write_bytes(b"old payload")
    (tmp_path / "m.onnx.json").write_text("{}")
    calls = {"n": 0}
    real = _fs.os.fsync

    def fail_second(fd):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(_fs.os, "fsync", fail_second)
    with pytest.raises(rt.errors.ArtifactError, match="No space"):
        engine.export_payload(tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"old payload"
    assert (tmp_path / "m.onnx.json").read_text() == "{}"
    assert _temps(tmp_path) == []


def test_saved_engine_round_trips_after_a_sweep(tmp_path, engine):
    stale = tmp_path / f".e.engine{_fs.TMP_MARK}dead"
    stale.write_bytes(b"half")  # no writer holds it
    time.sleep(0.01)
    engine.save(tmp_path / "e.engine")
    assert not stale.exists()
    out = rt.load_engine(tmp_path / "e.engine").infer(np.ones((1, 4), np.float32))["y"]
    np.testing.assert_allclose(out, [[1, 2, 3, 4]])
