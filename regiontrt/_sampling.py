"""Random inputs for benchmarks, at shapes an engine really runs (never a guessed 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import InputError
from .graph.io import TensorSpec
from .shapes import Profile


def sample_inputs(
    inputs: Sequence[TensorSpec],
    profiles: Sequence[Profile],
    *,
    batch: int | None = None,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs at the first profile's ``opt`` shape (see :meth:`Engine.sample_inputs`).

    Raises:
        InputError: ``shapes`` names an unknown input, or an input has a dynamic dimension that
            neither a profile, ``shapes`` nor (for axis 0) ``batch`` fixes: timing a guessed
            1x1 image would report a latency nobody will see.
    """
    rng = np.random.default_rng(seed)
    ranges = profiles[0].ranges if profiles else {}
    shapes = dict(shapes or {})
    unknown = set(shapes) - {s.name for s in inputs}
    if unknown:
        raise InputError(f"shapes given for unknown inputs {sorted(unknown)}; inputs: "
                         f"{[s.name for s in inputs]}")
    feeds = {}
    for spec in inputs:
        if spec.name in shapes:
            shape = [int(d) for d in shapes[spec.name]]
        elif spec.name in ranges:
            shape = list(ranges[spec.name].opt)
        else:
            free = [a for a, d in enumerate(spec.shape)
                    if not isinstance(d, int) and not (a == 0 and batch is not None)]
            if free:
                raise InputError(
                    f"input {spec.name!r} has dynamic dimensions at axes {free} (shape "
                    f"{list(spec.shape)}) and the engine has no shape profile for it: "
                    f"give its shape, sample_inputs(shapes={{{spec.name!r}: (...)}})"
                )
            shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        if batch is not None and shape:
            shape[0] = batch
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
    return feeds
