"""Shape profiles: which input shapes an engine accepts.

A :class:`ShapeProfile` resolves, against the model's declared inputs, into one or more
:class:`Profile` objects (min/opt/max per input), which become TensorRT optimization profiles and,
at run time, the guard that refuses shapes no profile covers.

Extension point: override :meth:`ShapeProfile.resolve` to derive profiles from something else
(a site's camera resolutions, a language's line widths...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from regiontrt.errors import ShapeOutOfProfile, ShapeProfileError
from regiontrt.graph.io import TensorSpec
from regiontrt.shapes.buckets import Bucketing

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """min/opt/max shapes of one input in one profile."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        shapes = (tuple(int(d) for d in self.min), tuple(int(d) for d in self.opt),
                  tuple(int(d) for d in self.max))
        if not len({len(s) for s in shapes}) == 1:
            raise ShapeProfileError(f"min/opt/max have different ranks: {shapes}")
        lo, opt, hi = shapes
        if any(d < 0 for d in lo) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise ShapeProfileError(f"need 0 <= min <= opt <= max per dimension, got {shapes}")
        object.__setattr__(self, "min", lo)
        object.__setattr__(self, "opt", opt)
        object.__setattr__(self, "max", hi)

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            a <= d <= b for a, d, b in zip(self.min, shape, self.max)
        )

    def to_list(self) -> list[list[int]]:
        return [list(self.min), list(self.opt), list(self.max)]


@dataclass(frozen=True)
class Profile:
    """One optimization profile: a :class:`Range` per input name.

    An input left out of a profile is unconstrained (only allowed on runtimes without profiles).
    """

    ranges: Mapping[str, Range]

    def find_violation(self, shapes: Mapping[str, Sequence[int]]) -> str | None:
        """Why ``shapes`` do not fit this profile, or ``None`` when they do."""
        for name, rng in self.ranges.items():
            if name not in shapes:
                continue
            shape = tuple(shapes[name])
            if not rng.contains(shape):
                return f"{name} {shape} not within min {rng.min} .. max {rng.max}"
        return None

    def to_dict(self) -> dict[str, list[list[int]]]:
        return {name: rng.to_list() for name, rng in self.ranges.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[Sequence[int]]]) -> Profile:
        return cls({name: Range(*(tuple(s) for s in v)) for name, v in d.items()})


def select_profile(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the first profile covering ``shapes``.

    Raises:
        ShapeOutOfProfile: no profile covers them; the message lists why for each profile.
    """
    if not profiles:
        return 0
    reasons = []
    for i, profile in enumerate(profiles):
        why = profile.find_violation(shapes)
        if why is None:
            return i
        reasons.append(f"profile {i}: {why}")
    raise ShapeOutOfProfile(
        "input shapes outside every optimization profile of this engine; "
        "rebuild with wider ranges ({setting}):\n  " + "\n  ".join(reasons),
        setting="shape_profile",
    )


def _as_range(name: str, value: Any) -> Range:
    if isinstance(value, Range):
        return value
    shapes = [tuple(int(d) for d in s) for s in value]
    if len(shapes) == 1:
        shapes = shapes * 3
    if len(shapes) != 3:
        raise ShapeProfileError(f"{name}: give one shape or (min, opt, max), got {value!r}")
    return Range(*shapes)


class ShapeProfile:
    """Shapes an engine must accept, as one or more min/opt/max profiles.

    Args:
        shapes: one profile, ``{input: (min, opt, max)}`` or ``{input: shape}`` for a static one.
        profiles: several profiles, each like ``shapes``; an engine picks the first that fits.
        buckets: optional padding buckets per input and axis, ``{input: {axis: [32, 64, 128]}}``;
            see :class:`Bucketing` (used for variable-length inputs). The engine pads inputs up
            to the next bucket before the profile check, so profiles need cover only buckets.
        bucket_outputs: ``{output: axis}``: outputs cut back after a padded run, along the axis
            that scales with the padded input axis (e.g. the time axis of a text recogniser).
        pad_value: the value written into the padding.

    Example:
        >>> ShapeProfile({"x": [(1, 3, 32, 320), (8, 3, 48, 320), (32, 3, 48, 1280)]})
    """

    def __init__(
        self,
        shapes: Mapping[str, Any] | None = None,
        *,
        profiles: Iterable[Mapping[str, Any]] | None = None,
        buckets: Mapping[str, Mapping[int, Sequence[int]]] | None = None,
        bucket_outputs: Mapping[str, int] | None = None,
        pad_value: float = 0.0,
    ) -> None:
        specs: list[Mapping[str, Any]] = []
        if shapes:
            specs.append(shapes)
        specs.extend(profiles or ())
        self._profiles = tuple(
            Profile({name: _as_range(name, v) for name, v in spec.items()}) for spec in specs
        )
        self.buckets = Bucketing(buckets, pad_value, bucket_outputs) if buckets else None

    @property
    def profiles(self) -> tuple[Profile, ...]:
        return self._profiles

    def resolve(
        self,
        inputs: Sequence[TensorSpec],
        *,
        require_all: bool = True,
    ) -> list[Profile]:
        """Check the profiles against the model's inputs and complete static dimensions.

        Without profiles, the result is one profile that fixes every static input and leaves
        dynamic ones to :mod:`regiontrt.shapes.defaults` (which derives ranges from the data).

        Args:
            inputs: the model's declared inputs.
            require_all: raise when a dynamic dimension has no profile (TensorRT needs one);
                runtimes without profiles pass ``False`` and leave it unconstrained.

        Raises:
            ShapeProfileError: a profile names an unknown input, has the wrong rank, contradicts a
                static dimension, or (``require_all``) a dynamic dimension is left without one.
        """
        by_name = {s.name: s for s in inputs}
        profiles = list(self._profiles) or [Profile({})]
        out = []
        for i, profile in enumerate(profiles):
            unknown = set(profile.ranges) - set(by_name)
            if unknown:
                raise ShapeProfileError(
                    f"profile {i} names unknown inputs {sorted(unknown)}; model inputs: "
                    f"{sorted(by_name)}"
                )
            ranges = dict(profile.ranges)
            for spec in inputs:
                rng = ranges.get(spec.name)
                if rng is None:
                    if spec.is_dynamic:
                        if require_all:
                            dyn = [str(d) for d in spec.shape if not isinstance(d, int)]
                            raise ShapeProfileError(
                                f"input {spec.name!r} has dynamic dimensions {dyn} "
                                f"(shape {list(spec.shape)}) but profile {i} gives no range; "
                                "add its range ({setting})", setting="shape_profile"
                            )
                        continue
                    static = tuple(int(d) for d in spec.shape)  # type: ignore[arg-type]
                    ranges[spec.name] = Range(static, static, static)
                    continue
                if len(rng.min) != spec.rank:
                    raise ShapeProfileError(
                        f"profile {i}: input {spec.name!r} has rank {spec.rank} "
                        f"(shape {list(spec.shape)}), the profile gives rank {len(rng.min)}"
                    )
                for axis, dim in enumerate(spec.shape):
                    if isinstance(dim, int) and not (rng.min[axis] == rng.max[axis] == dim):
                        raise ShapeProfileError(
                            f"profile {i}: input {spec.name!r} axis {axis} is static ({dim}) "
                            f"in the model but the profile asks {rng.min[axis]}..{rng.max[axis]}"
                        )
            out.append(Profile(ranges))
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"profiles": [p.to_dict() for p in self._profiles]}
        if self.buckets:
            d["buckets"] = self.buckets.to_dict()
        return d

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"
