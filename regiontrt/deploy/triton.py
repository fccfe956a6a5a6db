"""Export a bundle's region as a Triton Inference Server model repository.

Writes ``REPO/<name>_<region>/config.pbtxt`` and ``REPO/<name>_<region>/1/model.plan`` (a
TensorRT plan, ``platform: "tensorrt_plan"``) or ``1/model.onnx`` (``onnxruntime_onnx``). The
config has ``max_batch_size: 0`` with the batch dimension explicit in ``dims`` (-1 where dynamic),
and the region's metadata as ``parameters``. Triton's TensorRT backend loads full-TensorRT plans
only, so TensorRT-RTX variants are not exported (the ONNX is, unless a TensorRT plan exists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from regiontrt._fs import atomic_write_bytes, atomic_write_text
from regiontrt.deploy.bundle import Bundle, load_bundle
from regiontrt.deploy.signing import TrustLike
from regiontrt.deploy.variant import Variant
from regiontrt.errors import BundleError
from regiontrt.graph.io import TensorSpec

#: numpy dtype name -> Triton data type.
TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
    "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL",
}


def _quote(value: str) -> str:
    """A protobuf text-format string literal (protobuf comes with onnx)."""
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(value, as_utf8=True) + '"'



def _tensors(kind: str, specs: Sequence[TensorSpec]) -> list[str]:
    lines = []
    for spec in specs:
        dtype = TRITON_DTYPES.get(spec.dtype.name)
        if dtype is None:
            raise BundleError(f"{kind} {spec.name!r}: dtype {spec.dtype} has no Triton type")
        dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec.shape)
        lines += [f"{kind} [", "  {", f"    name: {_quote(spec.name)}",
                  f"    data_type: {dtype}", f"    dims: [ {dims} ]", "  }", "]"]
    return lines


def _parameters(bundle: Bundle, variant: Variant | None) -> dict[str, str]:
    region = bundle.manifest["region"]
    report = bundle.manifest.get("validation") or {}
    chosen: dict[str, Any] = next((t for t in report.get("trials", []) if t.get("accepted")), {})
    return {
        "regiontrt.model": bundle.name,
        "regiontrt.version": bundle.version,
        "regiontrt.region": bundle.region,
        "regiontrt.precision": bundle.precision,
        "regiontrt.forbidden": ",".join(region.get("forbidden", [])),
        "regiontrt.metric": str(report.get("metric", "")),
        "regiontrt.budget": str(report.get("budget", "")),
        "regiontrt.loss": str(chosen.get("loss", "")),
        "regiontrt.onnx_sha256": bundle.onnx_sha256,
        "regiontrt.variant": variant.target if variant else "onnx",
        "regiontrt.latency_p99_ms": str(region.get("latency_p99_ms") or ""),
    }


def config_text(name: str, platform: str, inputs: Sequence[TensorSpec],
                outputs: Sequence[TensorSpec], parameters: Mapping[str, str]) -> str:
    """The ``config.pbtxt`` text."""
    lines = [f"name: {_quote(name)}", f"platform: {_quote(platform)}", "max_batch_size: 0"]
    lines += _tensors("input", inputs) + _tensors("output", outputs)
    for key, value in parameters.items():
        lines += ["parameters {", f"  key: {_quote(key)}",
                  f"  value {{ string_value: {_quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def _pick(bundle: Bundle, target: str | None) -> Variant | None:
    if target is not None:
        found = [v for v in bundle.variants if v.target == target]
        if not found:
            raise BundleError(f"no variant {target!r} in {bundle.path}; it has "
                              f"{[v.target for v in bundle.variants]}")
        if found[0].backend not in ("tensorrt", "onnxruntime"):
            raise BundleError(f"variant {target!r} is a {found[0].backend} payload; Triton's "
                              "backends load TensorRT plans and ONNX models")
        return found[0]
    return next((v for v in bundle.variants if v.backend == "tensorrt"), None)


def export_triton(bundle: Bundle | str | Path, repo: str | Path, *, target: str | None = None,
                  trust: TrustLike | None = None) -> Path:
    """Write the Triton model folder of a bundle's region into ``repo``.

    Args:
        bundle: a :class:`Bundle` or a bundle/install folder.
        repo: the model repository folder.
        target: the variant to export (a ``tensorrt`` or ``onnxruntime`` one); by default a
            TensorRT plan if the bundle has one, else the precision-compiled ONNX.
        trust: public key(s) to verify the bundle with, when given a folder.

    Returns:
        The model folder ``repo/<name>_<region>``.
    """
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, trust=trust)
    variant = _pick(b, target)
    if variant is not None and variant.backend == "tensorrt":
        engine = b.load_variant(variant)
        platform, file = "tensorrt_plan", "model.plan"
    else:
        engine = b.load_variant(variant) if variant is not None else b.onnx_engine()
        platform, file = "onnxruntime_onnx", "model.onnx"
    model_name = f"{b.name}_{b.region}"
    folder = Path(repo) / model_name
    atomic_write_bytes(folder / "1" / file, engine.payload)
    text = config_text(model_name, platform, engine.inputs, engine.outputs,
                       _parameters(b, variant))
    atomic_write_text(folder / "config.pbtxt", text)
    return folder


def parse_parameters(config: Any) -> dict[str, Any]:
    """``{key: string_value}`` of a parsed ``ModelConfig``'s parameters (for tests and tools)."""
    return {k: v.string_value for k, v in config.parameters.items()}
