"""ONNX external data is no file-read primitive (issue 8, finding 3).

An engine whose ONNX payload names external data would make ONNX Runtime read that file at load
(``/etc/passwd`` through an absolute or ``../..`` location, any file under the working directory).
Such payloads are refused before ONNX Runtime sees them; models with external data are inlined at
load, so engines are self-contained and their hash covers the weights.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hostile import build_blob, external_payload, forge, relu_model

import regiontrt as rt
from regiontrt.backends.onnxruntime import OnnxRuntimeRunner
from regiontrt.cli import main
from regiontrt.graph.io import external_data_refs, load_model
from regiontrt.runtime import artifact


@pytest.fixture(scope="module")
def blob() -> bytes:
    return build_blob()


@pytest.mark.parametrize("location", [
    "/etc/passwd", "../../../../../../etc/passwd", "conf/app.env", "w.bin",
])
def test_engine_naming_external_data_is_refused_before_onnxruntime(
        tmp_path, blob, monkeypatch, capsys, location):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.env").write_bytes(b"SECRET=hunter2 padded to 16+ bytes")
    (tmp_path / "w.bin").write_bytes(np.ones(4, np.float32).tobytes())
    monkeypatch.chdir(tmp_path)  # what ONNX Runtime 1.32 would resolve relative locations from
    path = tmp_path / "evil.engine"
    path.write_bytes(forge(blob, payload=external_payload(location)))

    def no_session(*args, **kwargs):
        raise AssertionError("ONNX Runtime was handed an unchecked payload")

    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    with pytest.raises(rt.errors.ArtifactError, match="external data"):
        rt.load_engine(path)
    with pytest.raises(rt.errors.ArtifactError, match="external data"):
        rt.inspect(path)
    assert main(["inspect", str(path)]) == 2
    assert "external data" in capsys.readouterr().err
    # An Engine made in memory from such a payload is refused on construction, too.
    meta, payload = artifact.decode(path.read_bytes())
    with pytest.raises(rt.errors.ArtifactError, match="external data"):
        rt.Engine(meta, payload)
    # And the runner of the ONNX Runtime backend refuses it on its own.
    with pytest.raises(rt.errors.InvalidModelError, match="external data"):
        OnnxRuntimeRunner(payload)


def _save_with_external_data(folder, location="weights.bin"):
    model = relu_model()
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(
        np.arange(1, 1025, dtype=np.float32)[:4].copy(), "w"))
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def test_model_with_external_data_is_inlined_so_the_engine_is_self_contained(tmp_path,
                                                                             monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    path = _save_with_external_data(src)
    assert external_data_refs(onnx.load(str(path), load_external_data=False))
    engine = rt.RegionalEngineBuilder.from_onnx(path).for_region("CERTIFIED").build(
        tmp_path / "e.engine")
    assert not external_data_refs(onnx.load_from_string(engine.payload))
    (src / "weights.bin").unlink()  # the engine must not need it any more
    monkeypatch.chdir(tmp_path)
    out = rt.load_engine(tmp_path / "e.engine").infer(np.full((2, 4), 2.0, np.float32))["y"]
    np.testing.assert_allclose(out, np.tile(np.arange(1, 5, dtype=np.float32) * 2, (2, 1)))


def test_bytes_or_modelproto_naming_external_data_need_a_base_dir(tmp_path):
    path = _save_with_external_data(tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    for source in (proto, proto.SerializeToString()):
        with pytest.raises(rt.errors.InvalidModelError, match="base_dir"):
            rt.RegionalEngineBuilder.from_onnx(source)
    model = load_model(proto, base_dir=tmp_path)
    assert not external_data_refs(model)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "sub/../../outside.bin"])
def test_source_model_naming_data_outside_its_folder_is_refused(tmp_path, location):
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(external_payload(location))
    with pytest.raises(rt.errors.InvalidModelError, match="external data"):
        rt.RegionalEngineBuilder.from_onnx(path)
