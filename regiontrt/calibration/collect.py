"""Streaming activation collection through ONNX Runtime.

The model is copied with the tensors to calibrate added as graph outputs and run on the CPU one
batch at a time; each batch's activations are folded into running :class:`TensorStats` and
dropped before the next batch is read. Peak memory is one batch's activations plus the fixed-size
statistics, whatever the number of batches. Graph inputs are folded from the feeds directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx

from regiontrt._progress import track
from regiontrt.calibration.stats import TensorStats
from regiontrt.data.sources import DataLike, DataSource
from regiontrt.errors import DataError, InvalidModelError
from regiontrt.graph.arithmetic import make_session, no_spinning, seal
from regiontrt.graph.io import ModelSource, free_unsized_dims, input_specs, load_model

#: ONNX element types whose tensors are calibrated (bfloat16 has no numpy type in ONNX Runtime).
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})

#: Run ONNX Runtime on the next batch while the current one is folded (see iter_activations).
OVERLAP = True

#: Threads folding one batch's tensors (each tensor's statistics stay on one thread at a time).
#: numpy's arithmetic releases the GIL, its bincount does not: a second thread gives 15-20 %.
FOLD_THREADS = min(2, os.cpu_count() or 1)

log = logging.getLogger("regiontrt.calibration")


def as_model(model: ModelSource) -> onnx.ModelProto:
    """``model`` as a ``ModelProto`` (the caller's object is never modified)."""
    if isinstance(model, onnx.ModelProto):
        return model
    return load_model(model, check=False)


def as_source(model: onnx.ModelProto, data: DataLike, batch_limit: int | None = None) -> DataSource:
    """``data`` as a :class:`DataSource` checked against ``model``'s inputs."""
    if batch_limit is not None and batch_limit < 1:
        raise DataError(f"batch_limit must be >= 1, got {batch_limit}")
    if isinstance(data, DataSource) and batch_limit is None:
        return data
    return DataSource(data, input_specs(model), max_batches=batch_limit)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every top-level tensor whose type is known or inferable."""
    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # custom domains or >2 GB models: use what the file declares
        inferred = graph
    types: dict[str, int] = {}
    for group in (inferred.value_info, graph.value_info, graph.input, graph.output):
        for vi in group:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _constants(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {init.name for init in graph.initializer}
    names.update(
        out
        for node in graph.node
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx")
        for out in node.output
    )
    return names


def activation_tensors(model: onnx.ModelProto, types: Mapping[str, int] | None = None) -> list[str]:
    """Every float tensor that feeds a node (graph inputs included, weights excluded).

    In order of first use; tensors inside subgraphs (``If``, ``Loop``) are not listed.
    """
    types = tensor_types(model) if types is None else types
    constants = _constants(model)
    seen: dict[str, None] = {}
    for node in model.graph.node:
        for name in node.input:
            if name and name not in constants and types.get(name) in FLOAT_TYPES:
                seen.setdefault(name, None)
    return list(seen)


def resolve_tensors(
    model: onnx.ModelProto, tensors: Sequence[str] | None
) -> tuple[list[str], dict[str, int]]:
    """The tensors to calibrate, checked, and their element types.

    Raises:
        DataError: a requested name is not a tensor of the model's main graph, is a weight, or is
            not a float tensor.
    """
    types = tensor_types(model)
    if tensors is None:
        return activation_tensors(model, types), types
    if isinstance(tensors, str):
        tensors = [tensors]
    produced = {out for node in model.graph.node for out in node.output if out}
    produced.update(vi.name for vi in model.graph.input)
    constants = _constants(model)
    names = list(dict.fromkeys(tensors))
    unknown = [n for n in names if n not in produced and n not in constants]
    if unknown:
        raise DataError(f"tensors not found in the model's main graph: {unknown}")
    weights = [n for n in names if n in constants]
    if weights:
        raise DataError(f"tensors are weights or constants, not activations: {weights}")
    not_float = [
        f"{n} ({onnx.TensorProto.DataType.Name(types[n])})"
        for n in names
        if n in types and types[n] not in FLOAT_TYPES
    ]
    if not_float:
        raise DataError(f"only float tensors can be calibrated: {not_float}")
    return names, types


def expose_tensors(
    model: onnx.ModelProto, tensors: Sequence[str], types: Mapping[str, int]
) -> onnx.ModelProto:
    """A copy of ``model`` with ``tensors`` added as graph outputs (graph inputs skipped).

    A tensor whose type shape inference could not determine is declared ``FLOAT``.
    """
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    free_unsized_dims(exposed)  # -1 or 0 read as "any size", as input_specs reads them
    graph = exposed.graph
    present = {o.name for o in graph.output} | {i.name for i in graph.input}
    for name in tensors:
        if name in present:
            continue
        elem = types.get(name, onnx.TensorProto.FLOAT)
        graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
        present.add(name)
    return exposed


def _session_options() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ONNX Runtime's idle worker threads spin by default, taking the cores the overlapped
    # folding needs (measured: 25-40 % longer calibration with spinning on 2 cores).
    return seal(no_spinning(options))


def _run_views(
    session: Any, fetch: Sequence[str], batch: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """``fetch`` for one batch as arrays viewing ONNX Runtime's own output buffers.

    ``InferenceSession.run`` copies every output into a fresh numpy array; with every float
    tensor exposed that is gigabytes per batch (12.8 GB over PP-OCRv4 rec's 32 calibration
    lines), more time than the inference itself. ``OrtValue.numpy()`` views the buffer instead
    (the view keeps it alive), and the statistics only read it.
    """
    import onnxruntime as ort

    try:
        feeds = {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr))
            for name, arr in batch.items()
        }
        outs = session.run_with_ort_values(list(fetch), feeds)
        return [o.numpy() for o in outs]
    except Exception as exc:
        raise DataError(f"ONNX Runtime failed on a calibration batch: {exc}") from None


def iter_activations(
    model: onnx.ModelProto,
    source: DataSource,
    tensors: Sequence[str],
    types: Mapping[str, int],
    *,
    overlap: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{tensor: array}`` for each batch of ``source``.

    With ``overlap``, ONNX Runtime computes batch ``k + 1`` on a worker thread (it releases the
    GIL) while the caller folds batch ``k``: at most two batches' activations are alive, however
    many batches there are.
    """

    inputs = {spec.name for spec in input_specs(model)}
    fetch = [name for name in tensors if name not in inputs]
    session: Any = None
    if fetch:
        try:
            session = make_session(expose_tensors(model, fetch, types), _session_options())
        except Exception as exc:
            raise InvalidModelError(f"ONNX Runtime cannot run the model: {exc}") from None

    def run(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = {n: batch[n] for n in tensors if n in inputs}
        if session is not None:
            values.update(zip(fetch, _run_views(session, fetch, batch)))
        return values

    if session is None or not overlap:
        for batch in source:
            yield run(batch)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="regiontrt-calib") as pool:
        batches = iter(source)
        first = next(batches, None)
        pending: Future[dict[str, np.ndarray]] | None = None
        if first is not None:
            pending = pool.submit(run, first)
        del first
        try:
            while pending is not None:
                values = pending.result()
                # Read the next batch here, not on the worker: DataSource hashes what it yields
                # and raises its own errors, which must surface in the caller's thread.
                following = next(batches, None)
                pending = None if following is None else pool.submit(run, following)
                del following
                yield values
                del values
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(Exception):
                    pending.result()


def fold_batches(
    model: onnx.ModelProto,
    source: DataSource,
    tensors: Sequence[str],
    types: Mapping[str, int],
    fold: Callable[[str, np.ndarray], None],
    description: str = "calibration",
) -> None:
    """Run every batch and call ``fold(tensor, array)`` on each activation.

    ``fold`` is called from :data:`FOLD_THREADS` threads: concurrently for different tensors,
    never for one tensor, and batches in order.
    """
    activations = iter_activations(model, source, tensors, types, overlap=OVERLAP)
    threads = FOLD_THREADS if len(tensors) > 1 else 1
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="regiontrt-fold") as pool:
        for i, values in enumerate(track(activations, description, total=source.size_hint())):
            if i == 0:
                _estimate_memory(values, description)

            def fold_one(name: str, values: dict[str, np.ndarray] = values) -> None:
                # Drop each activation once folded: ONNX Runtime can reuse its buffer.
                fold(name, values.pop(name))

            # Largest first, so that the threads finish together.
            order = [name for _, name in sorted((-a.size, n) for n, a in values.items())]
            if threads == 1:
                for name in order:
                    fold_one(name)
            else:
                list(pool.map(fold_one, order))
            del values


#: Above this estimate of activation memory, calibration warns before going on.
MEMORY_WARNING_BYTES = 2 << 30


def _estimate_memory(values: Mapping[str, np.ndarray], description: str) -> None:
    """Say how much memory the activations take (issue 22: an INT8 build of 32 images of
    3x256x256 peaked at 5.5 GB without a word)."""
    per_batch = sum(int(a.nbytes) for a in values.values())
    alive = per_batch * (2 if OVERLAP else 1)  # the next batch runs while this one folds
    text = (f"{description}: the first batch's {len(values)} tensors hold "
            f"{per_batch / 2**30:.2f} GiB; about {alive / 2**30:.2f} GiB stay alive while "
            "calibrating")
    if alive > MEMORY_WARNING_BYTES:
        warnings.warn(text + ": pass smaller calibration batches to use less", stacklevel=4)
    else:
        log.info(text)


def collect_statistics(
    model: ModelSource,
    data: DataLike,
    tensors: Sequence[str] | None = None,
    *,
    num_bins: int = 2048,
    histogram: bool = True,
    batch_limit: int | None = None,
) -> dict[str, TensorStats]:
    """Running statistics of activation tensors over calibration data, in a single pass.

    Args:
        model: the FP32 model (a path, bytes or ``ModelProto``; not modified).
        data: calibration batches (anything :class:`~regiontrt.data.sources.DataSource` accepts;
            a one-shot generator works, it is read once).
        tensors: tensor names; ``None`` for every float tensor that feeds a node.
        num_bins: histogram bins per tensor.
        histogram: also build the ``|x|`` histograms (MinMax calibration needs none).
        batch_limit: read at most this many batches.

    Returns:
        ``{tensor: TensorStats}`` in the order of ``tensors``.

    Raises:
        DataError: empty or mis-shaped data, unknown or non-float tensors.
        InvalidModelError: ONNX Runtime cannot load the model.
    """
    proto = as_model(model)
    source = as_source(proto, data, batch_limit)
    names, types = resolve_tensors(proto, tensors)
    stats = {n: TensorStats(num_bins=num_bins, histogram=histogram) for n in names}
    fold_batches(proto, source, names, types, lambda name, arr: stats[name].update(arr))
    return stats
