"""Array-likes at the engine boundary: shape and dtype without copying device memory."""

from __future__ import annotations

from typing import Any

import numpy as np


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
