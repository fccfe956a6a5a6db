"""Region data sources: every accepted form, fingerprints, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import regiontrt as rt
from regiontrt.data.sources import DataSource, split_batches
from regiontrt.graph.io import TensorSpec

SPECS = [TensorSpec("input", np.dtype("float32"), ("N", 1, 8, 8))]
RNG = np.random.default_rng(0)
X = RNG.standard_normal((10, 1, 8, 8)).astype(np.float32)


def test_forms_yield_the_same_batches_and_fingerprint(tmp_path):
    batches = split_batches({"input": X}, 4)
    np.savez(tmp_path / "one.npz", input=X[:4])
    folder = tmp_path / "many"
    folder.mkdir()
    for i, b in enumerate(batches):
        np.savez(folder / f"{i:03d}.npz", **b)
    forms = [
        batches,
        [b["input"] for b in batches],
        lambda: iter(batches),
        str(folder),
        folder,
    ]
    prints = set()
    for form in forms:
        src = DataSource(form, SPECS)
        got = list(src)
        assert len(got) == 3 and src.num_samples == 10
        np.testing.assert_array_equal(np.concatenate([g["input"] for g in got]), X)
        prints.add(src.fingerprint)
    assert len(prints) == 1
    single = DataSource(tmp_path / "one.npz", SPECS)
    assert single.num_batches == 0 and len(list(single)) == 1 and single.num_samples == 4
    assert single.fingerprint not in prints


def test_fingerprint_changes_with_one_value():
    a = DataSource([X], SPECS).fingerprint
    y = X.copy()
    y[3, 0, 4, 4] += 1e-3
    assert DataSource([y], SPECS).fingerprint != a
    assert DataSource([X.copy()], SPECS).fingerprint == a


def test_polygraphy_data_loader():
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import DataLoader

    loader = DataLoader(iterations=2, val_range=(0, 1))
    loader.input_metadata = TensorMetadata().add("input", np.float32, (4, 1, 8, 8))
    src = DataSource(loader, SPECS)
    assert [b["input"].shape for b in src] == [(4, 1, 8, 8)] * 2
    assert src.fingerprint == DataSource(loader, SPECS).fingerprint  # re-iterable


def test_generators_are_read_once_and_say_so():
    src = DataSource((b for b in [X]), SPECS)
    assert len(list(src)) == 1
    with pytest.raises(rt.errors.DataError, match="one-shot iterator"):
        list(src)


def test_max_batches_and_integer_inputs_are_cast():
    src = DataSource([X.astype(np.float64)] * 5, SPECS, max_batches=2)
    got = list(src)
    assert len(got) == 2 and got[0]["input"].dtype == np.float32


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("/nonexistent/data.npz", "not found"),
        ([np.array(["a"] * 64).reshape(1, 1, 8, 8)], "cannot feed"),
        ([{"input": X, "extra": X}], "unknown"),
        (42, "unsupported"),
    ],
)
def test_bad_sources(source, match):
    with pytest.raises(rt.errors.DataError, match=match):
        list(DataSource(source, SPECS))


def test_bad_npz_and_empty_folder(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(rt.errors.DataError, match="not a readable"):
        list(DataSource(tmp_path / "bad.npz", SPECS))
    (tmp_path / "empty").mkdir()
    with pytest.raises(rt.errors.DataError, match=r"no \.npz or \.npy files"):
        list(DataSource(tmp_path / "empty", SPECS))


TWO_INPUTS = [TensorSpec("image", np.dtype("float32"), ("N", 1, 8, 8)),
              TensorSpec("scale", np.dtype("float32"), ("N", 1))]


def test_a_file_larger_than_the_profile_is_split_into_opt_batches(tmp_path):
    np.savez(tmp_path / "all.npz", input=X)  # 10 samples, profile max 4, opt 3
    src = DataSource(tmp_path / "all.npz", SPECS, split=(4, 3))
    got = list(src)
    assert [g["input"].shape[0] for g in got] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([g["input"] for g in got]), X)
    assert src.num_batches == 4 and src.num_samples == 10
    assert len(list(DataSource(tmp_path / "all.npz", SPECS, split=(10, 3)))) == 1  # fits: kept
    assert len(list(DataSource(tmp_path / "all.npz", SPECS, split=(4, 3), max_batches=2))) == 2
    # several inputs are cut together, along axis 0
    two = {"image": X, "scale": np.arange(10, dtype=np.float32).reshape(10, 1)}
    parts = list(DataSource([two], TWO_INPUTS, split=(4, 4)))
    assert [p["scale"][:, 0].tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # wrapping keeps the split
    assert DataSource(DataSource(tmp_path / "all.npz", SPECS, split=(4, 3)), SPECS).split == (4, 3)


def test_profile_split_reads_the_first_profile():
    from regiontrt.data.sources import profile_split
    from regiontrt.shapes.profiles import ShapeProfile

    profiles = ShapeProfile({"input": [(1, 1, 8, 8), (32, 1, 8, 8), (64, 1, 8, 8)]}).resolve(SPECS)
    assert profile_split(profiles, SPECS) == (64, 32)
    assert profile_split(ShapeProfile().resolve(SPECS, require_all=False), SPECS) is None


def test_npy_files_and_folders_for_a_single_input_model(tmp_path):
    np.save(tmp_path / "one.npy", X)
    got = list(DataSource(tmp_path / "one.npy", SPECS))
    np.testing.assert_array_equal(got[0]["input"], X)
    folder = tmp_path / "mixed"
    folder.mkdir()
    np.save(folder / "000.npy", X[:4])
    np.savez(folder / "001.npz", input=X[4:])
    (folder / "notes.txt").write_text("ignored")
    src = DataSource(folder, SPECS)
    assert [b["input"].shape[0] for b in src] == [4, 6] and src.size_hint() == 2
    with pytest.raises(rt.errors.DataError, match="single-input model"):
        list(DataSource(tmp_path / "one.npy", TWO_INPUTS))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(rt.errors.DataError, match="not a readable"):
        list(DataSource(tmp_path / "objects.npy", SPECS))  # pickles are never loaded


def test_size_hint():
    assert DataSource([X, X, X], SPECS).size_hint() == 3
    assert DataSource([X, X, X], SPECS, max_batches=2).size_hint() == 2
    assert DataSource(X, SPECS).size_hint() == 1
    assert DataSource(lambda: iter([X]), SPECS).size_hint() is None
    assert DataSource([X], SPECS, split=(4, 2)).size_hint() is None


def test_the_docs_example_makes_files_the_cli_reads(tmp_path, monkeypatch):
    """The numpy snippet of docs/data.md, run as written, feeds `regiontrt build`."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "data.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks, "docs/data.md lost its python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {})
    from regiontrt import demo
    from regiontrt.cli import main

    assert main(["build", str(demo.model_path()), "--region",
                 "APAC", "--validation", "val.npz", "--calibration", "calib",
                 "--shape", "input:1x1x8x8,32x1x8x8,64x1x8x8", "-q"]) == 0
    meta = rt.inspect(tmp_path / "digits_cnn.APAC.engine")
    assert meta["validation"]["num_samples"] == 360
    assert meta["calibration"]["num_batches"] == 4 and meta["calibration"]["num_samples"] == 256
