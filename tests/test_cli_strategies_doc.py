"""docs/strategies.md (where the README sends readers for subclass examples) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import regiontrt as rt

DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


def test_the_strategies_page_runs_and_its_subclasses_take_effect(capsys) -> None:
    [block] = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    scope: dict = {}
    exec(compile(block, str(DOC), "exec"), scope)
    fp16, int8 = scope["fp16"], scope["int8"]
    assert fp16.precision == "fp16"  # Fp16First put fp16 before NA's int8
    assert fp16.metadata["policy"]["class"].endswith("Fp16First")
    assert fp16.metadata["shape_profiles"] == [{"input": [[1, 1, 8, 8], [16, 1, 8, 8],
                                                          [16, 1, 8, 8]]}]
    assert int8.precision == "int8"
    assert int8.metadata["calibration"]["calibrator"].endswith("NinetyPercentOfMax")
    assert scope["logits"].shape == (16, 10)
    assert capsys.readouterr().out.startswith("fp16 int8 ")
    bad = np.zeros((32, 1, 8, 8), np.float32)  # outside the site's batch sizes
    with pytest.raises(rt.errors.ShapeOutOfProfile):
        int8.infer(bad)
