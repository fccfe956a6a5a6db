"""Validation inputs keep their meaning: no string, bool or integer input is cast through float."""

from __future__ import annotations

import numpy as np
import pytest

import regiontrt as rt
from regiontrt.data.sources import DataSource
from regiontrt.graph.io import TensorSpec

SPECS = [
    TensorSpec("text", np.dtype(object), ("N",)),
    TensorSpec("flag", np.dtype(bool), ()),
    TensorSpec("ids", np.dtype(np.int32), ("N",)),
    TensorSpec("x", np.dtype(np.float32), ("N",)),
]


def _batch(**overrides: object) -> dict[str, object]:
    batch: dict[str, object] = {"text": np.array(["a", "bc"]), "flag": np.array(True),
                                "ids": np.array([1, 2], np.int64), "x": np.array([1, 2], np.uint8)}
    batch.update(overrides)
    return batch


def test_each_kind_keeps_its_values() -> None:
    (got,) = list(DataSource([_batch()], SPECS))
    assert got["text"].dtype == object and got["text"].tolist() == ["a", "bc"]
    assert got["flag"].shape == () and got["flag"].dtype == bool and bool(got["flag"])
    assert got["ids"].dtype == np.int32 and got["ids"].tolist() == [1, 2]
    assert got["x"].dtype == np.float32 and got["x"].tolist() == [1.0, 2.0]  # images into floats
    (raw,) = list(DataSource([_batch(text=np.array([b"a", b"bc"]))], SPECS))
    assert raw["text"].tolist() == ["a", "bc"]


@pytest.mark.parametrize(("name", "value"), [
    ("ids", np.array([1.5, 2.0])),  # a float never becomes an integer
    ("ids", np.array([2**40, 1])),  # nor an integer that does not fit
    ("flag", np.array(1)),  # nor an integer a bool
    ("x", np.array(["1", "2"])),  # nor text a number
    ("text", np.array([1, 2])),  # nor a number text
])
def test_conversions_that_would_change_meaning_are_refused(name: str, value: object) -> None:
    with pytest.raises(rt.errors.DataError, match=f"input {name!r}: dtype"):
        list(DataSource([_batch(**{name: value})], SPECS))


def test_string_fingerprint_follows_the_text() -> None:
    a = DataSource([_batch()], SPECS).fingerprint
    assert a == DataSource([_batch(text=np.array(["a", "bc"], object))], SPECS).fingerprint
    assert a != DataSource([_batch(text=np.array(["a", "bd"]))], SPECS).fingerprint


def test_model_without_inputs_has_one_empty_batch() -> None:
    src = DataSource([{}], [])
    assert list(src) == [{}] and src.num_samples == 1
