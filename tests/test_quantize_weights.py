"""INT8 weight numerics: symmetric per-channel/per-tensor quantization round trips."""

from __future__ import annotations

import numpy as np
import pytest

from regiontrt.errors import InvalidModelError
from regiontrt.graph.qdq_rewrite import ZERO_CHANNEL_SCALE, quantize_weight

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis for property tests")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

_floats = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def weights_and_axis(draw: st.DrawFn) -> tuple[np.ndarray, int | None]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    w = draw(hnp.arrays(np.float32, shape, elements=_floats))
    # random per-channel magnitudes, so channels really need different scales
    axis = draw(st.one_of(st.none(), st.integers(0, len(shape) - 1)))
    if axis is not None:
        mags = draw(
            hnp.arrays(
                np.float32, shape[axis], elements=st.sampled_from([0.0, 1e-6, 1e-3, 1.0, 10.0])
            )
        )
        bshape = [1] * len(shape)
        bshape[axis] = -1
        w = (w * mags.reshape(bshape)).astype(np.float32)
    return w, axis


@settings(max_examples=200, deadline=None)
@given(weights_and_axis())
def test_int8_weights_reconstruct_within_half_a_step(case: tuple[np.ndarray, int | None]) -> None:
    w, axis = case
    q, scale = quantize_weight(w, axis)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scale.dtype == np.float32 and np.all(scale > 0) and np.all(np.isfinite(scale))
    assert int(np.abs(q.astype(np.int32)).max(initial=0)) <= 127
    if axis is None:
        assert scale.shape == ()
        s = scale
    else:
        assert scale.shape == (w.shape[axis],)
        bshape = [1] * w.ndim
        bshape[axis] = -1
        s = scale.reshape(bshape)
    # what DequantizeLinear computes, in float32
    recon = q.astype(np.float32) * s
    err = np.abs(recon.astype(np.float64) - w.astype(np.float64))
    assert np.all(err <= np.broadcast_to(s, w.shape) * (0.5 + 1e-5))
    # the largest |w| of each channel maps to +-127: the whole int8 range is used
    others = tuple(d for d in range(w.ndim) if d != axis) if axis is not None else None
    amax = np.max(np.abs(w), axis=others)
    peak = np.max(np.abs(q.astype(np.int32)), axis=others)
    assert np.all(peak[amax / 127 >= np.finfo(np.float32).tiny] == 127)


def test_zero_channel_gets_a_positive_scale() -> None:
    w = np.ones((4, 3, 2, 2), np.float32)
    w[1] = 0.0
    q, scale = quantize_weight(w, 0)
    assert scale[1] == ZERO_CHANNEL_SCALE > 0
    assert not q[1].any()
    np.testing.assert_allclose(scale[[0, 2, 3]], 1 / 127, rtol=1e-6)
    q, scale = quantize_weight(np.zeros((3, 3), np.float32), None)
    assert scale == ZERO_CHANNEL_SCALE and not q.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_rejected(bad: float) -> None:
    w = np.ones((2, 2), np.float32)
    w[0, 1] = bad
    with pytest.raises(InvalidModelError):
        quantize_weight(w, 0)
