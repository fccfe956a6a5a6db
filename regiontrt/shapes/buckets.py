"""Width buckets: pad variable-length axes up to the next bucket, cut outputs back after the run.

Split from :mod:`regiontrt.shapes` (which re-exports :class:`Bucketing`); the output lengths come
from :mod:`regiontrt.shapes.rules` (symbolic inference) or :mod:`regiontrt.shapes.length_measure`
(measured from the model where the inference cannot name them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from regiontrt.errors import ShapeOutOfProfile, ShapeProfileError
from regiontrt.shapes.length_measure import derive_length_rules
from regiontrt.shapes.rules import LengthRules

# Key of :meth:`Bucketing.pad`'s info holding the unpadded shapes (no "name:axis" key equals it).
_SHAPES = "shapes"


class Bucketing:
    """Pad variable-length axes up to the next bucket so few shapes reach the engine.

    Text lines of very different widths (one language writes long lines, another short ones)
    would otherwise each be a new shape. Padding repeats the ``pad_value`` (default 0) at the end
    of the axis; :meth:`unpad` cuts outputs back along axes that scale with the padded input axis.

    How long an output is for the real input is read from the model itself: at build time
    :meth:`for_model` derives each bucketed output's length as a formula of the input shape, by
    symbolic shape inference or, where that cannot name it, by measuring the model (stored in
    the engine either way), and :meth:`unpad` evaluates it at the request's real width (cached
    per width). Only an engine of an older version, which carries no formulas, is cut back with
    ``floor(len * original / padded)``.

    Args:
        buckets: ``{input: {axis: sorted bucket sizes}}``.
        pad_value: value written into the padding.
        outputs: ``{output: axis}`` cut back by :meth:`unpad` after a padded run.
        lengths: output length formulas (see :meth:`for_model`); usually left to the builder.
    """

    def __init__(
        self,
        buckets: Mapping[str, Mapping[int, Sequence[int]]],
        pad_value: float = 0.0,
        outputs: Mapping[str, int] | None = None,
        lengths: LengthRules | None = None,
    ) -> None:
        self.lengths = lengths
        self.outputs = {str(k): int(v) for k, v in (outputs or {}).items()}
        self.buckets = {
            name: {int(axis): sorted(int(b) for b in sizes) for axis, sizes in axes.items()}
            for name, axes in buckets.items()
        }
        for name, axes in self.buckets.items():
            for axis, sizes in axes.items():
                if not sizes or sizes[0] <= 0:
                    raise ShapeProfileError(f"bucketing {name} axis {axis}: sizes must be > 0")
        self.pad_value = pad_value
        # (model, profiles key, rules) of the last for_model: the model is held, not copied
        self._derived: tuple[Any, str, LengthRules] | None = None

    def bucket_for(self, name: str, axis: int, length: int) -> int:
        """The smallest bucket >= ``length``.

        Raises:
            ShapeOutOfProfile: ``length`` exceeds the largest bucket.
        """
        sizes = self.buckets[name][axis]
        for b in sizes:
            if length <= b:
                return b
        raise ShapeOutOfProfile(
            f"input {name!r} axis {axis} length {length} exceeds the largest bucket {sizes[-1]}"
        )

    def pad(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Pad ``feeds``; returns the padded feeds and what :meth:`unpad` needs."""
        out = dict(feeds)
        info: dict[str, Any] = {}
        if self.lengths is not None:  # the real shapes, for the output length formulas
            info[_SHAPES] = {k: tuple(np.shape(v)) for k, v in feeds.items()}
        for name, axes in self.buckets.items():
            if name not in feeds:
                continue
            arr = np.asarray(feeds[name])
            widths = [(0, 0)] * arr.ndim
            for axis in axes:
                length = arr.shape[axis]
                target = self.bucket_for(name, axis, length)
                widths[axis] = (0, target - length)
                info[f"{name}:{axis}"] = (length, target)
            if any(w != (0, 0) for w in widths):
                out[name] = np.pad(arr, widths, constant_values=self.pad_value)
        return out, info

    def unpad(
        self,
        outputs: Mapping[str, np.ndarray],
        info: Mapping[str, Any],
        axes: Mapping[str, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Cut ``outputs`` back after a padded run.

        Args:
            outputs: the engine's outputs for the padded inputs.
            info: what :meth:`pad` returned beside the padded feeds.
            axes: ``{output: axis}`` that scales with the padded input axis (default: the
                ``outputs`` given at construction).

        The kept length is what the model gives for the unpadded input, from the formulas of
        :meth:`for_model`; without them (engines of older versions only),
        ``floor(out_len * original / padded)`` with the first padded input axis setting the ratio.
        """
        axes = self.outputs if axes is None else axes
        ratios = [v for k, v in info.items() if k != _SHAPES]
        if not ratios or not axes:
            return dict(outputs)
        original, padded = ratios[0]
        known: dict[str, int] = {}
        if self.lengths is not None and _SHAPES in info:
            known = self.lengths.lengths(info[_SHAPES])
        out = dict(outputs)
        for name, axis in axes.items():
            arr = out[name]
            keep = known.get(name, arr.shape[axis] * original // padded)
            out[name] = np.take(arr, np.arange(min(keep, arr.shape[axis])), axis=axis)
        return out

    def for_model(self, model: Any, *, profiles: Sequence[Any] | None = None) -> Bucketing:
        """A copy whose output lengths are derived from ``model`` (an ONNX ``ModelProto``).

        Symbolic shape inference names each length (about a second for PP-OCRv4's recogniser);
        an output it cannot name is measured by a few dozen shape-only runs of the model (see
        :mod:`regiontrt.shapes.length_measure`).
        The result is kept for the next call with the same model
        object and profiles (one build per region asks for it again).

        Args:
            model: the FP32 ONNX model.
            profiles: the engine's shape profiles; they set the other input dimensions of the
                measuring runs (default: dynamic dimensions other than the bucketed one are 1).

        Raises:
            ShapeProfileError: a bucketed output's length can be neither inferred nor measured
                as a formula the measurements confirm; the message names the output and a
                measured counter-example.
        """
        if not self.outputs:
            return Bucketing(self.buckets, self.pad_value, self.outputs)
        key = repr([p.ranges for p in profiles or ()])
        done = self._derived  # one read: another thread may replace it meanwhile, harmlessly
        if done is not None and done[0] is model and done[1] == key:
            rules = done[2]
        else:
            rules = derive_length_rules(model, self.outputs, self.buckets, profiles=profiles)
            self._derived = (model, key, rules)
        return Bucketing(self.buckets, self.pad_value, self.outputs, rules)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_derived": None}  # a pickle carries no model

    def to_dict(self) -> dict[str, Any]:
        d = {
            "buckets": {n: {str(a): s for a, s in ax.items()} for n, ax in self.buckets.items()},
            "pad_value": self.pad_value,
            "outputs": dict(self.outputs),
        }
        if self.lengths is not None:
            d["lengths"] = self.lengths.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Bucketing:
        lengths = LengthRules.from_dict(d["lengths"]) if d.get("lengths") else None
        return cls(d["buckets"], d.get("pad_value", 0.0), d.get("outputs"), lengths)
