"""The layers of a compact numpy-only trainer for small residual CNNs, and their ONNX export.

The training loop is in ``_numpy_train.py``. The demo model and the benchmark ResNet are trained
with these two modules, so regenerating them needs
neither torch nor a GPU. It covers exactly what those models use: 3x3/1x1 convolutions (im2col),
BatchNorm with batch statistics in training and running statistics for inference, ReLU, basic
residual blocks with an optional strided 1x1 projection, global average pooling and a final
fully connected layer.

Activations are kept NHWC inside the trainer because the im2col matrices and the BatchNorm
reductions are contiguous that way; weights are stored in ONNX's layout (``[Cout, Cin, kH, kW]``)
so the export copies them as they are. The exported graph keeps BatchNormalization as separate
nodes on purpose: folding them is the library's job.

Everything is float32 and seeded: on one machine (one BLAS build and thread count) two runs give
bit-identical weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = np.float32


class Layer:
    """One trainable or stateless step. Sub-classes fill ``params`` and ``grads`` by name."""

    name: str = ""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, g: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def export(self, gb: GraphBuilder, x: str) -> str:
        """Append this layer's ONNX nodes reading tensor ``x``; return the output tensor name."""
        raise NotImplementedError

    def layers(self) -> Iterator[Layer]:
        yield self


class Conv(Layer):
    """A bias-free convolution (a BatchNorm always follows), square kernel, 'same'-style padding."""

    def __init__(
        self, name: str, cin: int, cout: int, k: int, stride: int, rng: np.random.Generator
    ):
        super().__init__()
        self.name, self.k, self.stride, self.pad = name, k, stride, k // 2
        fan_in = cin * k * k
        # He initialisation: keeps the activation scale through ReLU layers.
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / fan_in)
        self.params["weight"] = w.astype(F32)
        self._cache: tuple[np.ndarray, tuple[int, ...]] | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        n, h, w, c = x.shape
        k, s, p = self.k, self.stride, self.pad
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
        cols = np.empty((n, oh, ow, c, k, k), dtype=F32)
        for i in range(k):
            for j in range(k):
                cols[..., i, j] = xp[:, i : i + s * oh : s, j : j + s * ow : s, :]
        cols2 = cols.reshape(n * oh * ow, c * k * k)
        wm = self.params["weight"].reshape(self.params["weight"].shape[0], -1)
        if train:
            self._cache = (cols2, xp.shape)
        return (cols2 @ wm.T).reshape(n, oh, ow, -1)

    def backward(self, g: np.ndarray) -> np.ndarray:
        assert self._cache is not None, "backward before a training forward"
        cols2, xp_shape = self._cache
        n, oh, ow, cout = g.shape
        k, s, p = self.k, self.stride, self.pad
        w = self.params["weight"]
        gm = g.reshape(-1, cout)
        self.grads["weight"] = (gm.T @ cols2).reshape(w.shape)
        dcols = (gm @ w.reshape(cout, -1)).reshape(n, oh, ow, xp_shape[3], k, k)
        dxp = np.zeros(xp_shape, dtype=F32)
        for i in range(k):
            for j in range(k):
                dxp[:, i : i + s * oh : s, j : j + s * ow : s, :] += dcols[..., i, j]
        self._cache = None
        return dxp[:, p : xp_shape[1] - p, p : xp_shape[2] - p, :] if p else dxp

    def export(self, gb: GraphBuilder, x: str) -> str:
        w = gb.initializer(f"{self.name}.weight", self.params["weight"])
        p = self.pad
        return gb.node(
            "Conv",
            [x, w],
            self.name,
            kernel_shape=[self.k, self.k],
            strides=[self.stride] * 2,
            pads=[p, p, p, p],
        )


class BatchNorm(Layer):
    """BatchNorm over channels: batch statistics when training, running statistics otherwise."""

    def __init__(self, name: str, c: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.name, self.momentum, self.eps = name, momentum, eps
        self.params["scale"] = np.ones(c, F32)
        self.params["bias"] = np.zeros(c, F32)
        self.running_mean = np.zeros(c, F32)
        self.running_var = np.ones(c, F32)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        gamma, beta = self.params["scale"], self.params["bias"]
        if not train:
            inv = 1.0 / np.sqrt(self.running_var + self.eps)
            return ((x - self.running_mean) * (gamma * inv) + beta).astype(F32)
        m = x.size // x.shape[-1]
        mean = x.mean(axis=(0, 1, 2))
        var = x.var(axis=(0, 1, 2))
        mom = self.momentum
        self.running_mean = ((1 - mom) * self.running_mean + mom * mean).astype(F32)
        # Unbiased variance for the running estimate, as the usual frameworks do.
        self.running_var = ((1 - mom) * self.running_var + mom * var * m / max(m - 1, 1)).astype(
            F32
        )
        inv = (1.0 / np.sqrt(var + self.eps)).astype(F32)
        xhat = (x - mean) * inv
        self._cache = (xhat, inv)
        return (xhat * gamma + beta).astype(F32)

    def backward(self, g: np.ndarray) -> np.ndarray:
        assert self._cache is not None, "backward before a training forward"
        xhat, inv = self._cache
        self.grads["scale"] = (g * xhat).sum(axis=(0, 1, 2))
        self.grads["bias"] = g.sum(axis=(0, 1, 2))
        dxhat = g * self.params["scale"]
        m = g.size // g.shape[-1]
        dx = (
            inv
            / m
            * (m * dxhat - dxhat.sum(axis=(0, 1, 2)) - xhat * (dxhat * xhat).sum(axis=(0, 1, 2)))
        )
        self._cache = None
        return dx.astype(F32)

    def export(self, gb: GraphBuilder, x: str) -> str:
        names = [
            gb.initializer(f"{self.name}.scale", self.params["scale"]),
            gb.initializer(f"{self.name}.bias", self.params["bias"]),
            gb.initializer(f"{self.name}.running_mean", self.running_mean),
            gb.initializer(f"{self.name}.running_var", self.running_var),
        ]
        return gb.node("BatchNormalization", [x, *names], self.name, epsilon=self.eps)


class ReLU(Layer):
    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        mask = x > 0
        if train:
            self._mask = mask
        return x * mask

    def backward(self, g: np.ndarray) -> np.ndarray:
        assert self._mask is not None
        out, self._mask = g * self._mask, None
        return out

    def export(self, gb: GraphBuilder, x: str) -> str:
        return gb.node("Relu", [x], self.name)


class Sequential(Layer):
    def __init__(self, name: str, layers: list[Layer]):
        super().__init__()
        self.name, self.children = name, layers

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        for layer in self.children:
            x = layer.forward(x, train)
        return x

    def backward(self, g: np.ndarray) -> np.ndarray:
        for layer in reversed(self.children):
            g = layer.backward(g)
        return g

    def export(self, gb: GraphBuilder, x: str) -> str:
        for layer in self.children:
            x = layer.export(gb, x)
        return x

    def layers(self) -> Iterator[Layer]:
        for child in self.children:
            yield from child.layers()


def conv_bn(
    name: str, cin: int, cout: int, k: int, stride: int, rng: np.random.Generator
) -> list[Layer]:
    return [Conv(f"{name}/conv", cin, cout, k, stride, rng), BatchNorm(f"{name}/bn", cout)]


class Residual(Layer):
    """The seed's basic block: Conv-BN-ReLU, Conv-BN, Add(skip), ReLU.

    The skip is the identity, or a strided 1x1 Conv-BN projection when the shape changes.
    """

    def __init__(self, name: str, cin: int, cout: int, stride: int, rng: np.random.Generator):
        super().__init__()
        self.name = name
        self.body = Sequential(
            name,
            [
                *conv_bn(f"{name}/conv1", cin, cout, 3, stride, rng),
                ReLU(f"{name}/relu1"),
                *conv_bn(f"{name}/conv2", cout, cout, 3, 1, rng),
            ],
        )
        needs_proj = stride != 1 or cin != cout
        self.skip = Sequential(
            f"{name}/proj", conv_bn(f"{name}/proj", cin, cout, 1, stride, rng) if needs_proj else []
        )
        self.relu = ReLU(f"{name}/relu2")

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        return self.relu.forward(self.body.forward(x, train) + self.skip.forward(x, train), train)

    def backward(self, g: np.ndarray) -> np.ndarray:
        g = self.relu.backward(g)
        return self.body.backward(g) + self.skip.backward(g)

    def export(self, gb: GraphBuilder, x: str) -> str:
        added = gb.node(
            "Add", [self.body.export(gb, x), self.skip.export(gb, x)], f"{self.name}/add"
        )
        return self.relu.export(gb, added)

    def layers(self) -> Iterator[Layer]:
        yield from self.body.layers()
        yield from self.skip.layers()
        yield self.relu


class Head(Layer):
    """GlobalAveragePool, Flatten, then a fully connected layer (ONNX Gemm, transB=1)."""

    def __init__(self, name: str, c: int, classes: int, rng: np.random.Generator):
        super().__init__()
        self.name = name
        bound = 1.0 / np.sqrt(c)
        self.params["weight"] = rng.uniform(-bound, bound, (classes, c)).astype(F32)
        self.params["bias"] = np.zeros(classes, F32)
        self._cache: tuple[np.ndarray, tuple[int, ...]] | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        pooled = x.mean(axis=(1, 2))
        if train:
            self._cache = (pooled, x.shape)
        return pooled @ self.params["weight"].T + self.params["bias"]

    def backward(self, g: np.ndarray) -> np.ndarray:
        assert self._cache is not None
        pooled, shape = self._cache
        self.grads["weight"] = g.T @ pooled
        self.grads["bias"] = g.sum(axis=0)
        dp = g @ self.params["weight"]
        self._cache = None
        return np.broadcast_to(dp[:, None, None, :] / (shape[1] * shape[2]), shape).astype(F32)

    def export(self, gb: GraphBuilder, x: str) -> str:
        pooled = gb.node("GlobalAveragePool", [x], f"{self.name}/gap")
        flat = gb.node("Flatten", [pooled], f"{self.name}/flatten", axis=1)
        w = gb.initializer(f"{self.name}/fc.weight", self.params["weight"])
        b = gb.initializer(f"{self.name}/fc.bias", self.params["bias"])
        return gb.node("Gemm", [flat, w, b], f"{self.name}/fc", transB=1)


@dataclass
class Network:
    """A classifier: NCHW float32 images in, logits out."""

    body: Sequential
    in_channels: int
    classes: int

    def forward(self, x_nchw: np.ndarray, train: bool = False) -> np.ndarray:
        return self.body.forward(
            np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1), dtype=F32), train
        )

    def predict(self, x_nchw: np.ndarray, batch: int = 512) -> np.ndarray:
        return np.concatenate(
            [self.forward(x_nchw[i : i + batch]) for i in range(0, len(x_nchw), batch)]
        )

    def trainables(self) -> Iterator[tuple[str, Layer, str]]:
        for layer in self.body.layers():
            for key in layer.params:
                yield f"{layer.name}.{key}", layer, key


def resnet(
    widths: tuple[int, ...],
    blocks_per_stage: int,
    *,
    in_channels: int = 1,
    classes: int = 10,
    seed: int = 0,
) -> Network:
    """Stem Conv-BN-ReLU, then ``blocks_per_stage`` residual blocks per width (the first block of
    every stage after the first has stride 2 and a 1x1 projection), then the Head."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = [*conv_bn("stem", in_channels, widths[0], 3, 1, rng), ReLU("stem/relu")]
    cin = widths[0]
    for si, width in enumerate(widths):
        for bi in range(blocks_per_stage):
            stride = 2 if si > 0 and bi == 0 else 1
            name = f"block{len([x for x in layers if isinstance(x, Residual)]) + 1}"
            layers.append(Residual(name, cin, width, stride, rng))
            cin = width
    layers.append(Head("head", cin, classes, rng))
    return Network(Sequential("net", layers), in_channels, classes)


class GraphBuilder:
    """Collects ONNX nodes and initializers with unique, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def initializer(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=F32), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = f"{name}:0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def to_onnx(
    net: Network,
    *,
    height: int,
    width: int,
    graph_name: str,
    producer: str,
    metadata: dict[str, str],
    doc: str = "",
) -> onnx.ModelProto:
    """Export ``net``: input ``input`` float32 [N, C, H, W] (dim_param ``N``), output ``logits``."""
    gb = GraphBuilder()
    last = net.body.export(gb, "input")
    # Rename the final tensor to the public output name.
    gb.nodes[-1].output[0] = "logits"
    assert last.endswith(":0")
    graph = helper.make_graph(
        gb.nodes,
        graph_name,
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["N", net.in_channels, height, width]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", net.classes])],
        initializer=gb.initializers,
        doc_string=doc,
    )
    # Opset 13 / IR 8 so every ONNX Runtime the package accepts (>= 1.17) can load it.
    model = helper.make_model(
        graph,
        producer_name=producer,
        producer_version="1",
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=8,
        doc_string=doc,
    )
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model
