"""The training loop of the numpy CNN trainer: augmentation, softmax cross-entropy, AdamW.

See ``_numpy_cnn.py`` for the layers and the ONNX export. Seeded throughout: the same data,
configuration and machine give bit-identical weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from _numpy_cnn import F32, Network


@dataclass
class TrainConfig:
    epochs: int = 30
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    log: Callable[[str], None] | None = print
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
    history: list[float] = field(default_factory=list)


def jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training-time augmentation of NCHW images in [0, 1]: a random translation of up to one pixel
    (zero fill) and a mild random camera per image (gain, contrast, offset, read noise), so the
    model does not learn one camera's exposure."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dy: list[int] = np.asarray(rng.integers(0, 3, n)).tolist()
    dx: list[int] = np.asarray(rng.integers(0, 3, n)).tolist()
    out = np.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    shape = (n, 1, 1, 1)
    gain = rng.uniform(0.8, 1.25, shape).astype(F32)
    contrast = rng.uniform(0.8, 1.2, shape).astype(F32)
    offset = rng.uniform(-0.05, 0.05, shape).astype(F32)
    noise = rng.uniform(0.0, 0.05, shape).astype(F32)
    out = gain * (F32(0.5) + contrast * (out - F32(0.5))) + offset
    out += rng.standard_normal(out.shape, dtype=F32) * noise
    return out.astype(F32)


def softmax_xent(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = float(-np.log(p[np.arange(n), labels] + 1e-12).mean())
    p[np.arange(n), labels] -= 1.0
    return loss, (p / n).astype(F32)


def train(net: Network, x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> float:
    """Train ``net`` in place with AdamW and a cosine decay; return the wall time in seconds."""
    rng = np.random.default_rng(cfg.seed)
    state = {
        name: (np.zeros_like(layer.params[k]), np.zeros_like(layer.params[k]))
        for name, layer, k in net.trainables()
    }
    steps_per_epoch = int(np.ceil(len(x) / cfg.batch))
    total, step = cfg.epochs * steps_per_epoch, 0
    b1, b2, eps = 0.9, 0.999, 1e-8
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(x))
        losses = []
        for i in range(0, len(x), cfg.batch):
            idx = order[i : i + cfg.batch]
            xb = x[idx] if cfg.augment is None else cfg.augment(x[idx], rng)
            loss, g = softmax_xent(net.forward(xb, train=True), y[idx])
            net.body.backward(g)
            losses.append(loss)
            step += 1
            lr = 0.5 * cfg.lr * (1.0 + np.cos(np.pi * step / total))
            for name, layer, key in net.trainables():
                m, v = state[name]
                grad = layer.grads[key]
                m *= b1
                m += (1 - b1) * grad
                v *= b2
                v += (1 - b2) * grad * grad
                mhat, vhat = m / (1 - b1**step), v / (1 - b2**step)
                p = layer.params[key]
                if key == "weight":  # decoupled weight decay, not on BN affine or biases
                    p -= F32(lr * cfg.weight_decay) * p
                p -= (lr * mhat / (np.sqrt(vhat) + eps)).astype(F32)
        cfg.history.append(float(np.mean(losses)))
        if cfg.log is not None:
            cfg.log(f"  epoch {epoch + 1:3d}/{cfg.epochs}  loss {cfg.history[-1]:.4f}")
    return time.perf_counter() - start
