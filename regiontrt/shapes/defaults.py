"""The shape profiles of a build that was given none, and where a build's profiles came from.

A build without a :class:`~regiontrt.shapes.ShapeProfile`:

* **ONNX Runtime** needs no profile, so the engine gets none: it accepts every shape the model
  declares (static dimensions stay checked). The profile a TensorRT rebuild would use is still
  derived from the data as below and recorded (``shape_profile_origin.derived``), so a site that
  retargets the engine to a GPU has one.
* **TensorRT and TensorRT-RTX** need one per dynamic input; it is derived from the validation
  data's shapes with headroom, so an engine validated on batches of 8 still takes a batch of 1
  or 4 and inputs somewhat larger than any it was checked on:

  - axis 0 (the batch, by convention) spans ``1 .. HEADROOM x`` the largest batch seen;
  - every other dynamic axis spans ``smallest seen // HEADROOM .. HEADROOM x largest seen``
    (at least 1, unless the data itself fed an empty dimension);
  - ``opt`` is the largest shape seen (what the data says the engine mostly runs).

  A static model gets the one profile its shapes fix and no message.

The choice and its reason are recorded in the engine's metadata and shown by ``inspect``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from regiontrt.errors import ShapeProfileError
from regiontrt.graph.io import TensorSpec
from regiontrt.shapes.profiles import Profile, Range, ShapeProfile

log = logging.getLogger("regiontrt.build.pipeline")

#: How far a derived profile reaches beyond the shapes seen in the data.
HEADROOM = 2

GIVEN = "given"
STATIC = "static model"
ANY_SHAPE = "none: onnxruntime accepts every shape the model declares"
DERIVED = "derived from the validation data with headroom"


@dataclass(frozen=True)
class ProfileChoice:
    """The profiles a build uses, where they came from, and what a TensorRT rebuild would use."""

    profiles: tuple[Profile, ...]
    source: str
    derived: tuple[Profile, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source}
        if self.source in (ANY_SHAPE, DERIVED):
            d["headroom"] = HEADROOM
        if self.derived:
            d["derived"] = [p.to_dict() for p in self.derived]
        return d


def headroom_profile(inputs: Sequence[TensorSpec],
                     observed: Sequence[Mapping[str, Sequence[int]]]) -> Profile:
    """One profile around the ``observed`` shapes of each dynamic input (module docstring).

    Raises:
        ShapeProfileError: the data gives an input of another rank than the model declares, or
            a dynamic input the data never feeds.
    """
    ranges: dict[str, Range] = {}
    for spec in inputs:
        if not spec.is_dynamic:
            continue
        shapes = [tuple(int(d) for d in batch[spec.name]) for batch in observed
                  if spec.name in batch]
        if not shapes:
            raise ShapeProfileError(
                f"input {spec.name!r} has dynamic dimensions {list(spec.shape)} and the data "
                "never feeds it: give its range with a ShapeProfile"
            )
        if any(len(s) != spec.rank for s in shapes):
            raise ShapeProfileError(
                f"input {spec.name!r}: the data gives shapes {sorted(set(shapes))} of another "
                f"rank than the declared shape {list(spec.shape)}"
            )
        lo, hi, opt = [], [], []
        for axis, dim in enumerate(spec.shape):
            seen = [s[axis] for s in shapes]
            if isinstance(dim, int):
                low, best, high = dim, dim, dim
            else:
                # never above the smallest seen: an empty (0) dimension stays allowed
                low = min(min(seen), 1 if axis == 0 else max(1, min(seen) // HEADROOM))
                best, high = max(seen), max(seen) * HEADROOM
            lo.append(low)
            opt.append(best)
            hi.append(high)
        ranges[spec.name] = Range(tuple(lo), tuple(opt), tuple(hi))
    return Profile(ranges)


def choose_profiles(given: Sequence[Profile] | None, inputs: Sequence[TensorSpec],
                    backend: str, observed: Sequence[Mapping[str, Sequence[int]]] | None,
                    ) -> ProfileChoice:
    """The profiles of a build (module docstring).

    Args:
        given: the caller's profiles, resolved against the model
            (:meth:`ShapeProfile.resolve`), if any.
        inputs: the model's inputs.
        backend: the backend's name (``onnxruntime`` needs no profile).
        observed: input shapes of each validation batch (``None`` without validation data).

    Raises:
        ShapeProfileError: a TensorRT target has a dynamic input and neither a profile nor data
            to derive one from.
    """
    needs_all = backend != "onnxruntime"
    if given is not None:
        return ProfileChoice(tuple(given), GIVEN)
    if not any(s.is_dynamic for s in inputs):
        return ProfileChoice(tuple(ShapeProfile().resolve(inputs, require_all=needs_all)), STATIC)
    derived: tuple[Profile, ...] = ()
    if observed:
        try:
            complete = ShapeProfile(headroom_profile(inputs, observed).to_dict())
            derived = tuple(complete.resolve(inputs, require_all=needs_all))
        except ShapeProfileError:
            if needs_all:
                raise
    if not needs_all:  # the derived profile is only a record here: no reason to refuse
        return ProfileChoice((), ANY_SHAPE, derived)
    if not derived:
        dynamic = [s.name for s in inputs if s.is_dynamic]
        raise ShapeProfileError(
            f"inputs {dynamic} have dynamic dimensions and the {backend} backend needs a range "
            "for each: give {setting}, or validation data to derive one from",
            setting="shape_profile",
        )
    log.info("no shape profile given: derived from the validation data with headroom x%d: %s "
             "(a ShapeProfile sets your own)", HEADROOM, [p.to_dict() for p in derived])
    return ProfileChoice(derived, DERIVED)
