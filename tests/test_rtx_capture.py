"""TensorRT-RTX and CUDA graphs (issue 23, item 3), against the installed ``tensorrt_rtx``.

RTX 1.2+ needs ``BuilderFlag.REQUIRE_USER_ALLOCATION`` for an engine to be stream-capturable;
``TacticSelector(cuda_graph=True)`` sets it (the real builder runs on the CPU). The library's own
capture is ``IRuntimeConfig.cuda_graph_strategy``, set from ``TensorRTRTXBackend(
cuda_graph_strategy=...)`` on each context's runtime config. The runner's check of
``is_stream_capturable`` is in ``test_trt_runner_features.py``; the names are checked against the
compiled bindings in ``test_tensorrt_conformance_lean.py``.
"""

from __future__ import annotations

import pytest
from test_backend_tensorrt import _FakeEngine, _FakeRuntimeConfig, cnn, request

from regiontrt.backends.tactics import TacticSelector
from regiontrt.backends.tensorrt_rtx import TensorRTRTXBackend
from regiontrt.backends.timing_cache import RuntimeCacheContexts, RuntimeCacheFile
from regiontrt.errors import InvalidArgumentError
from regiontrt.testing import make_recording_trt

trt = pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package")


def test_a_cuda_graph_build_requires_user_allocation():
    plain = TensorRTRTXBackend().build(request(cnn(), compute_capabilities=("sm89",)))
    assert "require_user_allocation" not in plain.info["builder_config"]
    result = TensorRTRTXBackend().build(request(cnn(), compute_capabilities=("sm89",),
                                                cuda_graph=True))
    applied = result.info["builder_config"]
    assert applied["require_user_allocation"] is True and applied["cuda_graph"] is True
    again = TensorRTRTXBackend().build(request(cnn(), compute_capabilities=("sm89",)))
    assert again.payload == plain.payload  # builds are deterministic, so this difference is
    assert result.payload != plain.payload  # the flag reaching the real builder


def test_full_tensorrt_records_cuda_graph_without_an_rtx_flag(monkeypatch):
    from test_backend_tensorrt_config import _install, build

    fake = make_recording_trt("10.8.0.43")
    _install(monkeypatch, fake, sm="sm90")
    result = build(TacticSelector(cuda_graph=True))  # TensorRT captures without a flag
    assert result.info["builder_config"]["cuda_graph"] is True
    assert not [c for c in fake.calls if c[0] == "set_flag"]


def test_the_graph_strategy_comes_from_the_installed_module():
    backend = TensorRTRTXBackend(cuda_graph_strategy="whole_graph_capture")
    assert backend._graph_strategy(None) == trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    assert TensorRTRTXBackend()._graph_strategy(None) is None
    with pytest.raises(InvalidArgumentError, match="no CUDA-graph strategy 'sometimes'"):
        TensorRTRTXBackend(cuda_graph_strategy="sometimes")._graph_strategy(None)


def test_each_context_gets_the_strategy_on_its_runtime_config(tmp_path):
    strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    kind, config = RuntimeCacheContexts(None, strategy)(_FakeEngine())
    assert kind == "context" and isinstance(config, _FakeRuntimeConfig)
    assert config.cuda_graph_strategy == strategy and config.cache is None
    cache_file = RuntimeCacheFile(tmp_path / "rtx.cache")
    cache_file.write(b"ok-previous")
    _, config = RuntimeCacheContexts(cache_file, strategy)(_FakeEngine())
    assert config.cuda_graph_strategy == strategy and config.cache.blob == b"ok-previous"
    # the real runtime config has the property the code sets
    assert isinstance(trt.IRuntimeConfig.cuda_graph_strategy, property)
