"""The OCR benchmark's harness: character error rate, CTC decoding, rendering and preprocessing."""

from __future__ import annotations

import itertools
import unicodedata

import numpy as np
import pytest

ocr = pytest.importorskip("benchmarks.ocr", reason="run from the repository root")

CHARS = ["", "a", "b", "c", " ", "é"]


def _one_hot(ids: list[int], classes: int = len(CHARS)) -> np.ndarray:
    out = np.full((len(ids), classes), 0.01, dtype=np.float32)
    out[np.arange(len(ids)), ids] = 0.9
    return out


def _levenshtein_by_definition(a: str, b: str) -> int:
    """Full recursion table, written independently of the module's row-by-row version."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, j in itertools.product(range(len(a) + 1), range(len(b) + 1)):
        if i == 0 or j == 0:
            table[i][j] = i + j
        else:
            table[i][j] = min(
                table[i - 1][j] + 1,
                table[i][j - 1] + 1,
                table[i - 1][j - 1] + (a[i - 1] != b[j - 1]),
            )
    return table[len(a)][len(b)]


# --- CER -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["hello", "Zürich 2024", "镶抽藻估", "a b  c"])
def test_cer_of_identical_strings_is_zero(text: str) -> None:
    assert ocr.cer(text, text) == 0.0


def test_cer_strips_accents_on_both_sides() -> None:
    assert ocr.cer("café crème", "cafe creme") == 0.0
    assert ocr.cer("Sao Paulo", "São Paulo") == 0.0
    # Composed and decomposed forms are the same text.
    assert (
        ocr.cer(unicodedata.normalize("NFC", "Ålesund"), unicodedata.normalize("NFD", "Ålesund"))
        == 0.0
    )


def test_cer_does_not_strip_letters() -> None:
    # Only combining marks go: a different base letter is still an error.
    assert ocr.cer("straße", "strasse") > 0.0
    assert ocr.cer("Øresund", "Oresund") > 0.0


@pytest.mark.parametrize(
    ("ref", "hyp"),
    [
        ("kitten", "sitting"),
        ("abc", ""),
        ("abc", "abcd"),
        ("flaw", "lawn"),
        ("汉字识别", "汉识别字"),
    ],
)
def test_cer_is_edit_distance_over_reference_length(ref: str, hyp: str) -> None:
    assert ocr.cer(ref, hyp) == pytest.approx(_levenshtein_by_definition(ref, hyp) / len(ref))


def test_cer_known_values() -> None:
    assert ocr.cer("kitten", "sitting") == pytest.approx(3 / 6)
    assert ocr.cer("abcd", "") == 1.0
    assert ocr.cer("", "") == 0.0
    assert ocr.cer("", "x") == 1.0


def test_cer_collapses_whitespace_and_full_width_forms() -> None:
    assert ocr.cer("a b", " a  b ") == 0.0
    assert ocr.cer("12,5", "１２，５") == 0.0


# --- CTC decoding ------------------------------------------------------------------------------


def test_ctc_decode_collapses_repeats_and_drops_blanks() -> None:
    # a a _ a b b _ _ c  ->  "aabc"  (a blank separates the two a's)
    logits = _one_hot([1, 1, 0, 1, 2, 2, 0, 0, 3])
    assert ocr.ctc_decode(logits, CHARS) == "aabc"


def test_ctc_decode_accepts_a_batch_of_one_and_keeps_spaces() -> None:
    logits = _one_hot([1, 4, 4, 5])[None]
    assert ocr.ctc_decode(logits, CHARS) == "a é"


def test_ctc_decode_all_blank_is_empty() -> None:
    assert ocr.ctc_decode(_one_hot([0, 0, 0]), CHARS) == ""


def test_ctc_decode_rejects_a_batch() -> None:
    with pytest.raises(ValueError, match="one sequence"):
        ocr.ctc_decode(np.stack([_one_hot([1]), _one_hot([2])]), CHARS)


# --- preprocessing -----------------------------------------------------------------------------


def test_preprocess_shape_range_and_padding() -> None:
    pytest.importorskip("PIL", reason="preprocess resizes with PIL (pip install pillow)")
    image = np.full((24, 100, 3), 255, dtype=np.uint8)
    x = ocr.preprocess(image)
    # 100 x 24 at height 48 is 200 wide: padded to the 320 minimum bucket.
    assert x.shape == (1, 3, 48, 320) and x.dtype == np.float32
    assert np.allclose(x[..., :200], 1.0) and np.all(x[..., 200:] == 0.0)
    assert ocr.preprocess(np.zeros((48, 500, 3), np.uint8)).shape[-1] == 640
    squeezed = ocr.preprocess(np.zeros((48, 900, 3), np.uint8), width=640)
    assert squeezed.shape[-1] == 640 and np.allclose(squeezed, -1.0)


# --- rendering (needs PIL, fonts and the recogniser's charset) ---------------------------------


@pytest.fixture(scope="module")
def renderable() -> None:
    pytest.importorskip("PIL", reason="rendering needs PIL (pip install pillow)")
    try:
        ocr.rec_model_path()
        for name in (*ocr.LATIN_FONTS, *ocr.CJK_FONTS):
            ocr._font_path(name)
    except ocr.OCRAssetMissing as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("script", ["latin", "cjk"])
def test_render_lines_is_deterministic_per_seed(renderable: None, script: str) -> None:
    a = ocr.render_lines(script, 4, seed=3)
    b = ocr.render_lines(script, 4, seed=3)
    c = ocr.render_lines(script, 4, seed=4)
    assert [t for _, t in a] == [t for _, t in b]
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert [t for _, t in a] != [t for _, t in c]
    for image, text in a:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[0] == 48
        assert image.shape[2] == 3 and text.strip()


def test_rendered_text_is_in_the_model_charset(renderable: None) -> None:
    chars = set(ocr.charset(ocr.rec_model_path()))
    # The whole word list too: a letter the model cannot output would put a floor under CER.
    assert set(ocr.normalize_text(" ".join(ocr.LATIN_WORDS))) <= chars
    for script in ocr.SCRIPTS:
        for _, text in ocr.render_lines(script, 60, seed=0):
            stripped = ocr.normalize_text(text)
            assert set(stripped) <= chars, set(stripped) - chars


def test_charset_has_blank_first_and_space_last(renderable: None) -> None:
    chars = ocr.charset(ocr.rec_model_path())
    assert chars[0] == "" and chars[-1] == " "
    assert len(chars) == 6625  # the recogniser's output width


def test_make_ocr_sets_batches_share_one_width(renderable: None) -> None:
    sets = ocr.make_ocr_sets(0, n_calibration=6, n_held_out=6, batch_size=2, calibration_width=480)
    assert sets.num_calibration == 6
    assert {b["x"].shape[-1] for b in sets.calibration} == {480}
    assert sum(len(b.texts) for b in sets.held_out) == 6
    assert {b.script for b in sets.held_out} == {"latin", "cjk"}
    for b in sets.held_out:
        assert b.x.shape[0] == len(b.texts) and b.x.shape[-1] % ocr.WIDTH_STEP == 0


def test_db_post_processing_and_box_f1():
    pytest.importorskip("scipy", reason="the detector benchmark's DB post-processing needs scipy")
    dc = pytest.importorskip("benchmarks.ocr_det_cls", reason="run from the repository root")
    prob = np.zeros((64, 96), np.float32)
    prob[10:20, 10:60] = 0.9  # a text line: kept, unclipped by area * 1.6 / perimeter
    prob[40:42, 10:60] = 0.9  # 2 px high: dilated to 3 rows, kept
    prob[50:56, 70:90] = 0.35  # above the pixel threshold, under the box-score threshold
    boxes = dc.db_boxes(prob)
    assert len(boxes) == 2
    x0, y0, x1, y1 = boxes[0]
    # the 2x2 dilation grows the 50x10 region to 51x11, then each side moves out by d
    d = 51 * 11 * dc.DB_UNCLIP / (2 * (51 + 11))
    assert (x0, y0, x1, y1) == pytest.approx((10 - d, 10 - d, 61 + d, 21 + d))
    ref = [[(0, 0, 10, 10), (20, 0, 30, 10)], [(0, 0, 5, 5)]]
    assert dc.box_f1(ref, ref) == 1.0
    shifted = [[(1, 0, 11, 10), (40, 0, 50, 10)], []]  # IoU 0.82 match, a miss, a false box
    assert dc.box_f1(ref, shifted) == pytest.approx(2 * 1 / (3 + 2))
    assert dc.box_f1([[]], [[]]) == 1.0
