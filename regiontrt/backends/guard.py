"""The one input guard: feeds against a model's declared inputs, before any work.

:meth:`regiontrt.runtime.engine.Engine.check_inputs` and the TensorRT runner both call it (the
runner also when used on its own), so a feed is refused the same way, with the same words,
whichever door it came through, and before any CUDA call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from regiontrt.errors import InputError, ShapeOutOfProfile
from regiontrt.graph.io import TensorSpec


def check_names(given: Iterable[str], specs: Sequence[TensorSpec]) -> None:
    """Refuse feeds whose names are not exactly the inputs'.

    Raises:
        InputError: names missing or unknown (each listed).
    """
    given = given if isinstance(given, (dict, list, tuple)) else list(given)
    if len(given) == len(specs) and all(s.name in given for s in specs):
        return  # the common case, on every call: no sets built
    given = list(given)
    expected = [s.name for s in specs]
    missing, unknown = set(expected) - set(given), set(given) - set(expected)
    if missing or unknown or len(given) != len(expected):
        raise InputError(
            f"input names {sorted(given)} do not match the engine's {sorted(expected)}"
            + (f"; missing {sorted(missing)}" if missing else "")
            + (f"; unknown {sorted(unknown)}" if unknown else "")
        )


def static_axes(spec: TensorSpec) -> tuple[tuple[int, int], ...]:
    """``(axis, size)`` of each static dimension (a runner computes it once per input)."""
    return tuple((a, d) for a, d in enumerate(spec.shape) if isinstance(d, int))


def check_tensor(spec: TensorSpec, shape: Sequence[int], dtype: np.dtype | None, *,
                 device: bool = False,
                 static: Sequence[tuple[int, int]] | None = None) -> None:
    """Refuse one feed of the wrong dtype, rank or static dimensions.

    Args:
        spec: the declared input.
        shape: the feed's shape.
        dtype: the feed's dtype; ``None`` where the caller casts it to the declared one.
        device: whether the feed lives in device memory (used in place, so never cast).
        static: :func:`static_axes` of ``spec``, when the caller keeps it.

    Raises:
        InputError: the dtype or the rank differs.
        ShapeOutOfProfile: a static dimension differs.
    """
    name = spec.name
    if dtype is not None and dtype != spec.dtype:
        if device:
            raise InputError(f"device input {name!r} has dtype {dtype}, the engine wants "
                             f"{spec.dtype}; device inputs are used in place, uncast")
        raise InputError(f"input {name!r} has dtype {dtype}, the engine expects {spec.dtype} "
                         f"(convert with .astype(np.{spec.dtype.name}))")
    if len(shape) != spec.rank:
        raise InputError(f"input {name!r} has rank {len(shape)} (shape {tuple(shape)}), the "
                         f"engine expects rank {spec.rank} (shape {list(spec.shape)})")
    for axis, want in static if static is not None else static_axes(spec):
        if shape[axis] != want:
            fixed = tuple(d if isinstance(d, int) else -1 for d in spec.shape)
            raise ShapeOutOfProfile(
                f"input {name!r} shape {tuple(int(d) for d in shape)} contradicts the engine's "
                f"static shape {fixed} (axis {axis} is {shape[axis]}, fixed at {want})"
            )
