"""Random inputs for benchmarks, at shapes an engine really runs (never a guessed 1)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from regiontrt.errors import InputError, InvalidArgumentError
from regiontrt.graph.io import TensorSpec
from regiontrt.shapes.profiles import Profile, select_profile


def _shape(spec: TensorSpec, ranges: Mapping[str, object], shapes: Mapping[str, Sequence[int]],
           batch: int | None) -> list[int]:
    if spec.name in shapes:
        shape = [int(d) for d in shapes[spec.name]]
    elif spec.name in ranges:
        shape = list(ranges[spec.name].opt)  # type: ignore[attr-defined]
    else:
        # A free batch axis runs at batch 1 (a real, if small, workload); any other free axis
        # (an image's height and width) has no meaningful default.
        free = [a for a, d in enumerate(spec.shape) if not isinstance(d, int) and a != 0]
        if free:
            raise InputError(
                f"input {spec.name!r} has dynamic dimensions at axes {free} (shape "
                f"{list(spec.shape)}) and the engine has no shape profile for it: "
                "give its shape: {setting}", setting="sample_shapes"
            )
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    if batch is not None and shape:
        shape[0] = batch
    return shape


def sample_inputs(
    inputs: Sequence[TensorSpec],
    profiles: Sequence[Profile],
    *,
    batch: int | None = None,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    max_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs at the first profile's ``opt`` shape (see :meth:`Engine.sample_inputs`).

    Without a profile for an input, a dynamic axis 0 runs at ``batch`` (default 1).

    Raises:
        InvalidArgumentError: ``batch`` is not a positive integer.
        InputError: ``shapes`` names an unknown input; an input has a dynamic dimension other
            than axis 0 that neither a profile nor ``shapes`` fixes (timing a guessed 1x1 image
            would report a latency nobody will see); or the inputs exceed ``max_bytes``.
        ShapeOutOfProfile: the shapes lie outside every profile (checked before allocating).
    """
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool)
                              or batch < 1):
        raise InvalidArgumentError(f"batch must be a positive integer, got {batch!r}")
    given = dict(shapes or {})
    unknown = set(given) - {s.name for s in inputs}
    if unknown:
        raise InputError(f"shapes given for unknown inputs {sorted(unknown)}; inputs: "
                         f"{[s.name for s in inputs]}")
    ranges = profiles[0].ranges if profiles else {}
    chosen = {spec.name: _shape(spec, ranges, given, batch) for spec in inputs}
    select_profile(profiles, chosen)
    total = sum(math.prod(chosen[spec.name]) * spec.dtype.itemsize for spec in inputs)
    if max_bytes is not None and total > max_bytes:
        raise InputError(
            f"sample inputs of shapes {chosen} need {total} bytes, more than {max_bytes}; "
            "pass feeds= of your own or a smaller batch"
        )
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = chosen[spec.name]
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
    return feeds
