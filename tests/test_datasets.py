"""Region data sources: every accepted form, fingerprints, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import regiontrt as rt
from regiontrt.datasets import DataSource, split_batches
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
    with pytest.raises(rt.DataError, match="one-shot iterator"):
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
    with pytest.raises(rt.DataError, match=match):
        list(DataSource(source, SPECS))


def test_bad_npz_and_empty_folder(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(rt.DataError, match="not a readable"):
        list(DataSource(tmp_path / "bad.npz", SPECS))
    (tmp_path / "empty").mkdir()
    with pytest.raises(rt.DataError, match=r"no \.npz or \.npy files"):
        list(DataSource(tmp_path / "empty", SPECS))
