"""Array-likes at the engine boundary: shape and dtype without copying device memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from regiontrt.errors import PinnedInputMismatch


def shape_dtype(value: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a numpy array, a CUDA array or any array-like (read, never copied
    from the device)."""
    cai = getattr(value, "__cuda_array_interface__", None)
    if cai is not None:
        return tuple(int(d) for d in cai["shape"]), np.dtype(cai["typestr"])
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            return tuple(int(d) for d in value.shape), np.dtype(str(value.dtype).split(".")[-1])
        except TypeError:
            pass
    arr = np.asarray(value)
    return arr.shape, arr.dtype


def has_data(value: Any) -> bool:
    """Whether ``value`` carries array data (not just ``shape``/``dtype`` attributes)."""
    if isinstance(value, (np.ndarray, np.generic, list, tuple, int, float, bool)):
        return True
    return any(hasattr(value, a) for a in (
        "__cuda_array_interface__", "__array__", "__array_interface__", "__dlpack__",
    )) or not (hasattr(value, "shape") and hasattr(value, "dtype"))


def without_pinned(feeds: Mapping[str, Any], pinned: Mapping[str, np.ndarray]
                   ) -> Mapping[str, Any]:
    """``feeds`` without the inputs pinned at build (folded into the payload), each checked to
    hold its pinned value; ``feeds`` itself when it holds none.

    Raises:
        PinnedInputMismatch: a pinned input holds another value (the payload has no branch
            for it).
    """
    if not any(name in pinned for name in feeds):
        return feeds
    for name, value in feeds.items():
        want = pinned.get(name)
        if want is None:
            continue
        try:
            got = np.asarray(value)  # a setting of a few values: a device array is read back
            same = got.shape == want.shape and bool(np.array_equal(got, want))
        except (TypeError, ValueError) as exc:
            raise PinnedInputMismatch(
                f"input {name!r} is pinned to {want.tolist()!r} but cannot be read as an "
                f"array: {exc}", input=name, pinned=want.tolist()) from exc
        if not same:
            shown = got.tolist() if got.size <= 8 else f"an array of shape {list(got.shape)}"
            raise PinnedInputMismatch(
                f"input {name!r} is pinned to {want.tolist()!r} in this engine (the If it "
                f"decides was folded at build; see the metadata's 'pinned_from'), got "
                f"{shown!r}: build an engine for that value, or one that does not pin it",
                input=name, pinned=want.tolist())
    return {k: v for k, v in feeds.items() if k not in pinned}
