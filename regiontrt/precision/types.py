"""Precision names shared by every stage."""

from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """A numeric precision that a region may allow or forbid.

    The value is the lower-case name used in TOML files, metadata and the CLI.
    """

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        """Return the precision named by ``value`` (case-insensitive).

        Raises:
            ValueError: the name is not a known precision.
        """
        if isinstance(value, Precision):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown precision {value!r}; known: {known}") from None

    def __str__(self) -> str:
        return self.value
