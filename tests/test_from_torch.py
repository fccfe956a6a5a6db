"""RegionalEngineBuilder.from_torch: PyTorch modules exported to ONNX, then built per region.

Real parts: modules built here with torch.nn, torch.onnx.export's dynamo exporter, the real
build pipeline on ONNX Runtime; engine outputs are compared with the module's own outputs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="from_torch needs PyTorch (the torch extra)")
pytest.importorskip("onnxscript", reason="torch.onnx's dynamo exporter needs onnxscript")

from regiontrt.build import RegionalEngineBuilder  # noqa: E402
from regiontrt.build.torch_export import export_module, unsupported_op  # noqa: E402
from regiontrt.errors import InvalidArgumentError, InvalidModelError  # noqa: E402

nn = torch.nn
Dim = torch.export.Dim


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 4)

    def forward(self, x: Any) -> Any:
        return self.head(self.body(x))


class SmallEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)

    def forward(self, x: Any) -> Any:
        return self.layer(x)


def module_and_data(kind: str, n: int, seed: int) -> tuple[Any, np.ndarray]:
    torch.manual_seed(0)
    module: Any = SmallCNN() if kind == "cnn" else SmallEncoder()
    rng = np.random.default_rng(seed)
    shape = (n, 3, 12, 12) if kind == "cnn" else (n, 6, 16)
    return module, rng.standard_normal(shape).astype(np.float32)


def reference(module: Any, x: np.ndarray) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def batches(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


@pytest.mark.parametrize("kind", ["cnn", "encoder"])
def test_int8_in_na_and_fp16_in_eu_match_the_module(kind: str) -> None:
    module, example = module_and_data(kind, 2, seed=0)
    module.train()  # exported in eval mode whatever the caller left it in, and left as it was
    base = RegionalEngineBuilder.from_torch(module, (torch.from_numpy(example),),
                                            dynamic_shapes=({0: Dim("batch")},))
    assert module.training and all(m.training for m in module.modules())
    _, calib = module_and_data(kind, 64, seed=1)
    _, val = module_and_data(kind, 32, seed=2)
    _, probe = module_and_data(kind, 5, seed=3)  # a batch size seen neither in export nor data
    want = reference(module, probe)

    na = (base.for_region("NA").with_precision("int8")
          .with_calibrator("entropy", data=batches(calib, 16))
          .with_validation(batches(val, 16), metric="relative_l2").build())
    assert na.precision == "int8"
    got = np.asarray(next(iter(na.infer({na.metadata["inputs"][0]["name"]: probe}).values())))
    assert got.shape == want.shape
    assert rel_l2(got, want) < 0.05  # int8 error, but the module's function

    eu = base.for_region("EU").with_validation(batches(val, 16), metric="relative_l2").build()
    assert eu.precision == "fp16"
    got = np.asarray(next(iter(eu.infer({eu.metadata["inputs"][0]["name"]: probe}).values())))
    assert rel_l2(got, want) < 5e-3

    model_meta = eu.metadata["model"]
    exported = export_module(module, (torch.from_numpy(example),),
                             ({0: Dim("batch")},))
    assert model_meta["source"] == "torch"
    assert model_meta["torch_version"] == torch.__version__
    assert model_meta["exporter"] == "dynamo"
    assert model_meta["export_sha256"] == hashlib.sha256(exported.onnx_bytes).hexdigest()
    assert len(model_meta["sha256"]) == 64


def test_dynamic_batch_only_where_asked() -> None:
    module, example = module_and_data("cnn", 2, seed=0)
    dynamic = RegionalEngineBuilder.from_torch(module, torch.from_numpy(example),
                                               {"x": {0: Dim("batch")}})
    static = RegionalEngineBuilder.from_torch(module, torch.from_numpy(example))
    dims = [d.dim_param or d.dim_value
            for d in dynamic.model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 12, 12]
    assert static.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    engine = dynamic.for_region("CERTIFIED").with_validation(
        batches(example, 2), metric="relative_l2").build()
    name = engine.metadata["inputs"][0]["name"]
    for n in (1, 7):
        _, x = module_and_data("cnn", n, seed=n)
        out = np.asarray(next(iter(engine.infer({name: x}).values())))
        assert rel_l2(out, reference(module, x)) < 1e-5  # fp32 in the default region


class Eig(nn.Module):
    def forward(self, x: Any) -> Any:
        return torch.linalg.eigvals(x).real + x.sum()


def test_unsupported_op_is_named() -> None:
    with pytest.raises(InvalidModelError, match=r"unsupported operator aten\.linalg_eig") as info:
        RegionalEngineBuilder.from_torch(Eig(), torch.randn(3, 3))
    assert "dynamo" in str(info.value) and torch.__version__ in str(info.value)
    assert unsupported_op(info.value) == "aten.linalg_eig"


def test_refusals_and_the_explicit_torchscript_exporter() -> None:
    with pytest.raises(InvalidArgumentError, match=r"torch\.nn\.Module"):
        RegionalEngineBuilder.from_torch(lambda x: x, torch.randn(2))
    with pytest.raises(InvalidArgumentError, match="exporter"):
        RegionalEngineBuilder.from_torch(SmallCNN(), torch.randn(1, 3, 8, 8), exporter="onnx9")
    module, example = module_and_data("cnn", 2, seed=0)
    legacy = RegionalEngineBuilder.from_torch(
        module, torch.from_numpy(example), exporter="torchscript", input_names=["x"],
        dynamic_axes={"x": {0: "batch"}})
    engine = legacy.for_region("CERTIFIED").with_validation(
        batches(example, 2), metric="relative_l2").build()
    assert engine.metadata["model"]["exporter"] == "torchscript"
    out = np.asarray(next(iter(engine.infer({"x": example}).values())))
    assert rel_l2(out, reference(module, example)) < 1e-5
