"""PyTorch modules to ONNX for :meth:`RegionalEngineBuilder.from_torch` (the ``torch`` extra).

The module is exported with ``torch.onnx.export(..., dynamo=True)``: the ``torch.export``-based
exporter, PyTorch's default since 2.9. The TorchScript exporter (deprecated by PyTorch) is used
only when asked for: ``exporter="torchscript"``, or ``exporter="auto"``, which tries the dynamo
exporter first and falls back to TorchScript when it fails (with a warning naming the failure).
Which one produced the model is recorded in the engine's provenance.

The module is exported in eval mode (dropout off, batch norm on its running statistics); each
submodule's own mode is put back afterwards. PyTorch is imported only here, and only when a
module is exported.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from regiontrt.errors import BackendUnavailable, InvalidArgumentError, InvalidModelError

EXPORTERS = ("dynamo", "torchscript", "auto")

#: How the exporters name an operator they cannot convert.
_OP_PATTERNS = (
    re.compile(r"OpOverload\(op='([^']+)'"),  # dynamo: No ONNX function found for <OpOverload..>
    re.compile(r"target=torch\.ops\.([\w.]+)"),  # dynamo: Error when translating node ...
    re.compile(r"[Oo]perator '?([\w:.]+)'? to ONNX"),  # TorchScript: Exporting the operator ...
    re.compile(r"Unsupported: ONNX export of (?:operator )?([\w:.]+)"),
)


@dataclass(frozen=True)
class TorchExport:
    """An exported module: the ONNX bytes and where they came from."""

    onnx_bytes: bytes
    torch_version: str
    exporter: str

    @property
    def sha256(self) -> str:
        """SHA-256 of the bytes the exporter produced."""
        return hashlib.sha256(self.onnx_bytes).hexdigest()

    def provenance(self) -> dict[str, str]:
        """The fields added to the engine metadata's ``model`` object."""
        return {"source": "torch", "torch_version": self.torch_version,
                "exporter": self.exporter, "export_sha256": self.sha256}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable(
            "from_torch needs PyTorch: pip install 'regiontrt[torch]'") from exc
    return torch


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    """``module`` in eval mode, every submodule's own mode restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def unsupported_op(exc: BaseException) -> str | None:
    """The operator an export failure names, searched through the exception's causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for pattern in _OP_PATTERNS:
            match = pattern.search(str(current))
            if match:
                return match.group(1)
        current = current.__cause__ or current.__context__
    return None


def _export(torch: Any, module: Any, args: tuple[Any, ...], dynamic_shapes: Any,
            exporter: str, kwargs: dict[str, Any]) -> bytes:
    if exporter == "dynamo":
        kwargs.setdefault("verbose", False)
        program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                    **kwargs)
        return bytes(program.model_proto.SerializeToString())
    if dynamic_shapes is not None:
        raise InvalidArgumentError(
            "the TorchScript exporter takes dynamic_axes={input: {axis: name}}, not "
            "dynamic_shapes")
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # PyTorch's deprecation notice: the choice was explicit
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, args, buffer, dynamo=False, **kwargs)
    return buffer.getvalue()


def _failure(exc: BaseException, exporter: str, version: str) -> InvalidModelError:
    op = unsupported_op(exc)
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    what = f"unsupported operator {op}" if op else first[:300]
    hint = " (exporter='torchscript' or 'auto' tries PyTorch's older exporter)" \
        if exporter == "dynamo" else ""
    return InvalidModelError(
        f"PyTorch {version} could not export the module to ONNX with the {exporter} "
        f"exporter: {what}{hint}")


def export_module(module: Any, example_inputs: Any, dynamic_shapes: Any = None, *,
                  exporter: str = "dynamo", **export_kwargs: Any) -> TorchExport:
    """Export ``module`` to ONNX bytes.

    Args:
        module: a ``torch.nn.Module`` (or a ``torch.export.ExportedProgram``).
        example_inputs: a tensor or a tuple of the forward's positional arguments.
        dynamic_shapes: ``torch.export`` dynamic shapes (``{"x": {0: Dim("batch")}}``).
        exporter: ``"dynamo"`` (default), ``"torchscript"``, or ``"auto"`` (dynamo, then
            TorchScript if it fails).
        export_kwargs: passed to ``torch.onnx.export`` (``opset_version``, ``input_names``...).

    Raises:
        BackendUnavailable: PyTorch is not installed.
        InvalidArgumentError: not a module, or an unknown exporter.
        InvalidModelError: the export failed (naming the unsupported operator where the
            exporter does).
    """
    if exporter not in EXPORTERS:
        raise InvalidArgumentError(f"exporter must be one of {EXPORTERS}, not {exporter!r:.40}")
    torch = _torch()
    exported_program = getattr(torch.export, "ExportedProgram", ())
    if not isinstance(module, (torch.nn.Module, exported_program)):
        raise InvalidArgumentError(
            f"from_torch takes a torch.nn.Module, not {type(module).__name__}")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    version = str(torch.__version__)
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors: list[BaseException] = []
    for name in order:
        try:
            with _eval_mode(module) if isinstance(module, torch.nn.Module) \
                    else contextlib.nullcontext():
                data = _export(torch, module, args, dynamic_shapes, name, dict(export_kwargs))
        except InvalidArgumentError:
            raise
        except Exception as exc:  # the exporters raise many types; each is reported below
            errors.append(exc)
            if name != order[-1]:
                warnings.warn(f"{_failure(exc, name, version)}; trying the TorchScript exporter",
                              stacklevel=3)
            continue
        return TorchExport(data, version, name)
    raise _failure(errors[0], order[0], version) from errors[-1]
