"""Where Q/DQ pairs go: the options every quantization step reads (placement, rewrite, plan)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantizeOptions:
    """Where Q/DQ pairs go.

    Attributes:
        quantize_first_layer: also quantize the first weighted ops (no weighted op upstream).
        quantize_last_layer: also quantize the last weighted ops (no weighted op downstream).
        quantize_weighted_outputs: also put Q/DQ on quantized layers' outputs (after their
            BatchNormalization/activation epilogue, never inside it).
        quantize_residual_add: put Q/DQ on the skip branch of residual Adds.
        exclude_nodes: names of weighted nodes kept in high precision.
        weighted_ops: op types treated as weighted layers.
        per_channel: per-output-channel weight scales (else one scale per weight tensor).
    """

    quantize_first_layer: bool = False
    quantize_last_layer: bool = False
    quantize_weighted_outputs: bool = False
    quantize_residual_add: bool = True
    exclude_nodes: frozenset[str] = frozenset()
    weighted_ops: tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm")
    per_channel: bool = True

    def __post_init__(self) -> None:
        # Accept any iterable of names (a list from a TOML file) and keep the dataclass hashable.
        object.__setattr__(self, "exclude_nodes", frozenset(self.exclude_nodes))
        object.__setattr__(self, "weighted_ops", tuple(self.weighted_ops))
