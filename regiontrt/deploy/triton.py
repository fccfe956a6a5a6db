"""Export a bundle's region as a Triton Inference Server model repository.

Writes ``REPO/<name>_<region>/config.pbtxt`` and ``REPO/<name>_<region>/<N>/model.plan`` (a
TensorRT plan, ``platform: "tensorrt_plan"``) or ``<N>/model.onnx`` (``onnxruntime_onnx``). The
config has ``max_batch_size: 0`` with the batch dimension explicit in ``dims`` (-1 where dynamic),
and the region's metadata as ``parameters``. Triton's TensorRT backend loads full-TensorRT plans
only, so TensorRT-RTX variants are not exported.

Which payload, by default: a TensorRT plan if the bundle has one, else its ONNX Runtime (CPU)
variant, else the bundle's precision-compiled ONNX. A target that was deferred at build time (no
machine of that GPU built it) has no payload to export, and is refused saying so.

Versions: Triton model versions are positive integers, while bundle versions are strings such as
``1.2.0``. The export writes version folder ``1`` unless ``version=N`` (``--version N``) says
otherwise; the bundle's own version is kept in the ``regiontrt.version`` parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from regiontrt._fs import atomic_write_bytes, atomic_write_text
from regiontrt.deploy.bundle import Bundle, load_bundle
from regiontrt.deploy.signing import TrustLike
from regiontrt.deploy.variant import Variant
from regiontrt.errors import BundleError, InvalidArgumentError
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
    sla = region.get("latency_p99_ms")
    params = {
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
    }
    if sla:  # no SLA: no parameter (an empty string would read as a value to parse)
        params["regiontrt.latency_p99_ms"] = str(sla)
    return params


def config_text(name: str, platform: str, inputs: Sequence[TensorSpec],
                outputs: Sequence[TensorSpec], parameters: Mapping[str, str]) -> str:
    """The ``config.pbtxt`` text."""
    lines = [f"name: {_quote(name)}", f"platform: {_quote(platform)}", "max_batch_size: 0"]
    lines += _tensors("input", inputs) + _tensors("output", outputs)
    for key, value in parameters.items():
        lines += ["parameters {", f"  key: {_quote(key)}",
                  f"  value {{ string_value: {_quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def choose_variant(bundle: Bundle, target: str | None = None) -> Variant | None:
    """The variant :func:`export_triton` exports (None: the bundle's precision-compiled ONNX).

    Raises:
        BundleError: ``target`` is not in the bundle (saying so if it was deferred, and why),
            or is a payload Triton cannot load.
    """
    if target is not None:
        found = [v for v in bundle.variants if v.target == target]
        if not found:
            deferred = next((d for d in bundle.deferred if d.get("name") == target), None)
            has = ", ".join(v.target for v in bundle.variants) or "none"
            if deferred is not None:
                raise BundleError(
                    f"target {target!r} was deferred when {bundle.name} {bundle.version} "
                    f"{bundle.region} was built ({deferred.get('reason') or 'no reason given'}), "
                    f"so the bundle holds no plan for it; build it on a machine with that GPU "
                    f"(regiontrt fleet select rebuilds it on the node), or export one of: {has}")
            raise BundleError(f"no variant {target!r} in {bundle.path}; it has: {has}")
        if found[0].backend not in ("tensorrt", "onnxruntime"):
            raise BundleError(f"variant {target!r} is a {found[0].backend} payload; Triton's "
                              "backends load TensorRT plans and ONNX models")
        return found[0]
    for backend in ("tensorrt", "onnxruntime"):  # a plan first, else the built CPU variant
        found = [v for v in bundle.variants if v.backend == backend]
        if found:
            return found[0]
    return None


def export_triton(bundle: Bundle | str | Path, repo: str | Path, *, target: str | None = None,
                  trust: TrustLike | None = None, version: int = 1) -> Path:
    """Write the Triton model folder of a bundle's region into ``repo``.

    Args:
        bundle: a :class:`Bundle` or a bundle/install folder.
        repo: the model repository folder.
        target: the variant to export (a ``tensorrt`` or ``onnxruntime`` one); by default a
            TensorRT plan if the bundle has one, else the ONNX Runtime (CPU) variant, else the
            precision-compiled ONNX (see :func:`choose_variant`).
        trust: public key(s) to verify the bundle with, when given a folder.
        version: the Triton version folder (a positive integer; Triton cannot use ``1.2.0``).

    Returns:
        The model folder ``repo/<name>_<region>``.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgumentError(f"export_triton: version must be an integer >= 1 (Triton's "
                                   f"model versions are integers), not {version!r}")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, trust=trust)
    variant = choose_variant(b, target)
    if variant is not None and variant.backend == "tensorrt":
        engine = b.load_variant(variant)
        platform, file = "tensorrt_plan", "model.plan"
    else:
        engine = b.load_variant(variant) if variant is not None else b.onnx_engine()
        platform, file = "onnxruntime_onnx", "model.onnx"
    model_name = f"{b.name}_{b.region}"
    folder = Path(repo) / model_name
    atomic_write_bytes(folder / str(version) / file, engine.payload)
    text = config_text(model_name, platform, engine.inputs, engine.outputs,
                       _parameters(b, variant))
    atomic_write_text(folder / "config.pbtxt", text)
    return folder


def parse_parameters(config: Any) -> dict[str, Any]:
    """``{key: string_value}`` of a parsed ``ModelConfig``'s parameters (for tests and tools)."""
    return {k: v.string_value for k, v in config.parameters.items()}
