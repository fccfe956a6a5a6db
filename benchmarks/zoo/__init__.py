"""The INT8 model zoo (issue 20): real ONNX models from PyPI wheels, see :mod:`.base`.

Each family lives in its own module and registers its models in :data:`MODULES`' order;
:func:`zoo` imports them on first use.
"""

from __future__ import annotations

import importlib

from benchmarks.zoo.base import ZooModel

#: The modules that define zoo models (each exposes ``MODELS: list[ZooModel]``).
MODULES: list[str] = ["ppocr", "layout", "classifiers", "vad", "text_encoder"]
#: The fast subset CI runs.
FAST: tuple[str, ...] = ("ppocr-rec", "magika")


def zoo() -> dict[str, ZooModel]:
    """Every zoo model by name."""
    out: dict[str, ZooModel] = {}
    for module in MODULES:
        for model in importlib.import_module(f"benchmarks.zoo.{module}").MODELS:
            out[model.name] = model
    return out
