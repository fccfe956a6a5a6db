"""The OCR benchmark: PP-OCRv4's text recogniser on rendered, noisy text lines of two scripts.

The recogniser ships inside the ``rapidocr-onnxruntime`` wheel (only its model files are used, so
``pip install --no-deps rapidocr-onnxruntime`` is enough). Text lines are rendered with PIL from a
fixed Latin word list (accented words included) and from the common Chinese characters of the
model's own charset, then degraded (blur, noise, jitter, tilt) so the FP32 model is not perfect
and quantization damage shows up in the character error rate.
"""

from __future__ import annotations

import importlib.util
import math
import random
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from itertools import zip_longest
from pathlib import Path
from typing import Any, Literal

import numpy as np

from regiontrt.errors import RegionTRTError

Script = Literal["latin", "cjk"]
SCRIPTS: tuple[Script, ...] = ("latin", "cjk")
HEIGHT = 48
# PaddleOCR pads every line to at least 320 pixels (its rec_img_shape); wider lines go to the next
# multiple of this step so batches share a few widths and the padding does not depend on batching.
MIN_WIDTH = 320
WIDTH_STEP = 160
REC_MODEL_NAME = "ch_PP-OCRv4_rec_infer.onnx"

FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/truetype/wqy"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/share/fonts/wqy-microhei"),
    Path("/usr/local/share/fonts"),
)
LATIN_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSans-Bold.ttf",
)
CJK_FONTS = ("wqy-microhei.ttc",)

# Fixed so every run renders the same lines; the accented words exercise the accent stripping.
# Every letter is in the recogniser's charset once accents are stripped (no ß, no Ø).
_LATIN_TEXT = (
    "the quick brown fox jumps over lazy dog river mountain garden window market street "
    "coffee bread water light night morning station ticket number price total invoice "
    "order delivery address phone email office school library museum hospital airport "
    "harbour north south east west summer winter spring autumn green yellow purple silver "
    "golden machine engine signal network server region model layer budget report result "
    "value café naïve façade résumé crème brûlée déjà jalapeño señor niño año mañana über "
    "Straubing München Zürich Köln Málaga São Paulo Bogotá Montréal Québec Ålesund Århus "
    "garçon fiancée piñata Curaçao Gdańsk Kraków Reykjavík Málmö Córdoba Ibáñez Müller "
    "Schön élève hôtel forêt château Noël Chloé Zoë Renée André José María Jürgen Björn "
    "Söderström"
)
LATIN_WORDS: tuple[str, ...] = tuple(_LATIN_TEXT.split())

# Degradations: glyphs rendered small then upscaled to 48 px (low resolution), low contrast,
# Gaussian blur and noise, a slight tilt. Tuned so FP32 misreads a few percent of characters.
# Dense CJK glyphs need more pixels than Latin ones to stay legible.
FONT_SIZE = {"latin": (13, 24), "cjk": (19, 30)}
CONTRAST = (80, 200)
NOISE_SIGMA = (4.0, 18.0)
BLUR_RADIUS = (0.2, 1.1)
TILT_DEGREES = 2.0


class OCRAssetMissing(RegionTRTError, RuntimeError):
    """A package or font the OCR benchmark needs is not installed; the message says how."""


def rec_model_path() -> Path:
    """Path of PP-OCRv4's recogniser inside the installed ``rapidocr_onnxruntime`` package.

    The package is located without importing it (its ``__init__`` needs OpenCV, which the
    benchmark does not).

    Raises:
        OCRAssetMissing: the package or its model file is not installed.
    """
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise OCRAssetMissing(
            "the OCR benchmark needs the PP-OCRv4 models of the rapidocr-onnxruntime wheel: "
            "pip install --no-deps rapidocr-onnxruntime"
        )
    root = Path(spec.origin).parent
    found = sorted(root.rglob(REC_MODEL_NAME))
    if not found:
        raise OCRAssetMissing(f"{REC_MODEL_NAME} not found under {root}; reinstall the wheel")
    return found[0]


def charset(model: Any) -> list[str]:
    """The recogniser's output alphabet: CTC blank at index 0, the metadata chars, then a space.

    Args:
        model: an ``onnx.ModelProto`` or a path to one.

    Raises:
        OCRAssetMissing: the model carries no ``character`` metadata.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise OCRAssetMissing("the model has no 'character' metadata: not a PP-OCR recogniser?")
    # PaddleOCR's CTCLabelDecode: blank first, the dictionary, then " " (use_space_char=True).
    return ["", *meta["character"].splitlines(), " "]


@cache
def _font_path(name: str) -> Path:
    for d in FONT_DIRS:
        if (d / name).is_file():
            return d / name
    raise OCRAssetMissing(
        f"font {name} not found in {[str(d) for d in FONT_DIRS]}: "
        "apt-get install fonts-dejavu-core fonts-wqy-microhei"
    )


def _pil() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFilter, ImageFont
    except ImportError:
        raise OCRAssetMissing(
            "the OCR benchmark renders text with PIL: pip install pillow"
        ) from None
    return Image, ImageDraw, ImageFilter, ImageFont


@cache
def _font(name: str, size: int) -> Any:
    return _pil()[3].truetype(str(_font_path(name)), size)


def common_cjk(chars: Sequence[str]) -> list[str]:
    """The characters of ``chars`` in GB2312's level-1 set (the 3755 most common hanzi)."""
    out = []
    for c in chars:
        try:
            b = c.encode("gb2312")
        except UnicodeEncodeError:
            continue
        if len(b) == 2 and 0xB0 <= b[0] <= 0xD7:
            out.append(c)
    return out


@lru_cache(maxsize=1)
def _cjk_pool() -> tuple[str, ...]:
    return tuple(common_cjk(charset(rec_model_path())))


def _latin_text(rng: random.Random) -> str:
    words = [rng.choice(LATIN_WORDS) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 9999)))
    if rng.random() < 0.25:
        words[0] = words[0].capitalize()
    return " ".join(words)


def _cjk_text(rng: random.Random) -> str:
    pool = _cjk_pool()
    text = "".join(rng.choice(pool) for _ in range(rng.randint(3, 10)))
    if rng.random() < 0.2:
        pos = rng.randrange(len(text) + 1)
        text = text[:pos] + str(rng.randint(0, 999)) + text[pos:]
    return text


def _render(
    text: str, script: Script, font_name: str, rng: random.Random, height: int
) -> np.ndarray:
    image_mod, draw_mod, filter_mod, _ = _pil()
    size = rng.randint(*FONT_SIZE[script])
    font = _font(font_name, size)
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = rng.randint(1, size // 3), rng.randint(1, size // 4)
    w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    contrast = rng.randint(*CONTRAST)
    base = rng.randint(contrast, 255)
    bg = tuple(min(255, base + rng.randint(-15, 15)) for _ in range(3))
    fg = tuple(max(0, base - contrast + rng.randint(-15, 15)) for _ in range(3))
    img = image_mod.new("RGB", (w, h), bg)
    jitter = rng.randint(-1, 1), rng.randint(-1, 1)
    draw_mod.Draw(img).text(
        (pad_x - left + jitter[0], pad_y - top + jitter[1]), text, font=font, fill=fg
    )
    img = img.rotate(
        rng.uniform(-TILT_DEGREES, TILT_DEGREES),
        resample=image_mod.BILINEAR,
        expand=False,
        fillcolor=bg,
    )
    img = img.filter(filter_mod.GaussianBlur(rng.uniform(*BLUR_RADIUS)))
    width = max(1, round(img.width * height / img.height))
    img = img.resize((width, height), image_mod.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(
        0.0, rng.uniform(*NOISE_SIGMA), arr.shape
    )
    return np.clip(arr + noise, 0, 255).astype(np.uint8)


def render_lines(
    script: Script, n: int, seed: int, height: int = HEIGHT
) -> list[tuple[np.ndarray, str]]:
    """Render ``n`` noisy text lines; deterministic for a given ``seed``.

    Args:
        script: "latin" (words from :data:`LATIN_WORDS`, some with digits) or "cjk" (common
            Chinese characters of the model's charset).
        n: number of lines.
        seed: random seed.
        height: image height in pixels (the width keeps the text's aspect).

    Returns:
        ``(image, text)`` pairs; ``image`` is ``height x W x 3`` uint8 RGB.

    Raises:
        ValueError: unknown ``script`` or ``n < 0``.
        OCRAssetMissing: PIL, a font, or (for "cjk") the recogniser's charset is missing.
    """
    if script not in SCRIPTS:
        raise ValueError(f"script must be one of {SCRIPTS}, got {script!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{script}:{seed}")
    fonts = LATIN_FONTS if script == "latin" else CJK_FONTS
    lines = []
    for _ in range(n):
        text = _latin_text(rng) if script == "latin" else _cjk_text(rng)
        lines.append((_render(text, script, rng.choice(fonts), rng, height), text))
    return lines


def bucket_width(width: int) -> int:
    """Padded width for a line ``width`` pixels wide at height 48 (>= 320, step 160)."""
    return max(MIN_WIDTH, math.ceil(width / WIDTH_STEP) * WIDTH_STEP)


def preprocess(image: np.ndarray, width: int | None = None) -> np.ndarray:
    """PaddleOCR's recogniser preprocessing: ``[1, 3, 48, W]`` float32.

    Resizes to height 48 keeping the aspect ratio (squeezed to ``width`` if wider), converts RGB
    to BGR (PaddleOCR reads images with OpenCV), scales to [-1, 1] and zero-pads on the right.

    Args:
        image: ``H x W x 3`` uint8 RGB.
        width: padded width; default :func:`bucket_width` of the resized width.
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3, got shape {image.shape}")
    h, w = image.shape[:2]
    resized_w = math.ceil(HEIGHT * w / h)
    target = bucket_width(resized_w) if width is None else int(width)
    resized_w = min(resized_w, target)
    img = Image.fromarray(image).resize((resized_w, HEIGHT), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)[:, :, ::-1].transpose(2, 0, 1)
    out = np.zeros((1, 3, HEIGHT, target), dtype=np.float32)
    out[0, :, :, :resized_w] = (arr / 255.0 - 0.5) / 0.5
    return out


def ctc_decode(logits: np.ndarray, chars: Sequence[str]) -> str:
    """Greedy CTC decoding: per-timestep argmax, repeats collapsed, blanks (index 0) dropped.

    Args:
        logits: ``[T, C]`` or ``[1, T, C]`` scores (probabilities or logits).
        chars: the alphabet from :func:`charset`.
    """
    arr = np.asarray(logits)
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise ValueError(f"ctc_decode takes one sequence, got batch {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"logits must be [T, C] or [1, T, C], got shape {arr.shape}")
    ids = arr.argmax(axis=-1)
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    keep &= ids != 0
    return "".join(chars[i] for i in ids[keep])


def normalize_text(text: str) -> str:
    """NFKD, combining marks dropped, whitespace collapsed (full-width forms become ASCII)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.split())


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insertions, deletions, substitutions of cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(ref: str, hyp: str) -> float:
    """Character error rate with accents stripped: edit distance / reference length.

    An empty reference gives 0 for an empty hypothesis and 1 otherwise.
    """
    r, h = normalize_text(ref), normalize_text(hyp)
    if not r:
        return 0.0 if not h else 1.0
    return levenshtein(r, h) / len(r)


@dataclass
class EvalBatch:
    """Held-out lines of one script padded to one width."""

    script: Script
    x: np.ndarray
    texts: list[str]


@dataclass
class OCRSets:
    """Calibration batches and held-out batches, both width-bucketed."""

    calibration: list[dict[str, np.ndarray]]
    held_out: list[EvalBatch]
    input_name: str = "x"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_calibration(self) -> int:
        return sum(int(b[self.input_name].shape[0]) for b in self.calibration)


def _bucketed(
    lines: list[tuple[np.ndarray, str]], batch_size: int, width: int | None = None
) -> list[tuple[np.ndarray, list[str]]]:
    by_width: dict[int, list[tuple[np.ndarray, str]]] = {}
    for image, text in lines:
        x = preprocess(image, width)
        by_width.setdefault(x.shape[-1], []).append((x, text))
    out = []
    for w in sorted(by_width):
        items = by_width[w]
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            out.append((np.concatenate([x for x, _ in chunk]), [t for _, t in chunk]))
    return out


def make_ocr_sets(
    seed: int = 0,
    n_calibration: int = 128,
    n_held_out: int = 200,
    batch_size: int = 8,
    input_name: str = "x",
    calibration_width: int | None = None,
) -> OCRSets:
    """Calibration batches and held-out lines, half Latin and half CJK, from disjoint seeds.

    Lines of the same padded width are batched together, so a line's padding, and hence the FP32
    output, does not depend on the batch it lands in. A calibration set of ``n`` lines is the
    first ``n`` lines of a fixed stream, so smaller sets are prefixes of larger ones.

    Args:
        seed: data seed (calibration and held-out lines never coincide).
        n_calibration: calibration lines (half per script).
        n_held_out: held-out lines (half per script).
        batch_size: lines per batch.
        input_name: the model's input name.
        calibration_width: pad (or squeeze) every calibration line to this one width, for
            calibrators that need a single input shape (ONNX Runtime's histogram methods stack
            all batches); ``None`` buckets the widths like the held-out lines.
    """
    per_script: list[list[dict[str, np.ndarray]]] = []
    held_out: list[EvalBatch] = []
    for k, script in enumerate(SCRIPTS):
        n_cal = n_calibration // 2 + (n_calibration % 2 if k == 0 else 0)
        n_eval = n_held_out // 2 + (n_held_out % 2 if k == 0 else 0)
        cal_lines = render_lines(script, n_cal, seed=2 * seed)
        eval_lines = render_lines(script, n_eval, seed=2 * seed + 1)
        cal = _bucketed(cal_lines, batch_size, calibration_width)
        per_script.append([{input_name: x} for x, _ in cal])
        held_out += [EvalBatch(script, x, t) for x, t in _bucketed(eval_lines, batch_size)]
    # Alternate scripts so a calibrator that reads only the first batches still sees both.
    calibration = [b for pair in zip_longest(*per_script) for b in pair if b is not None]
    return OCRSets(
        calibration=calibration,
        held_out=held_out,
        input_name=input_name,
        info={
            "seed": seed,
            "n_calibration": n_calibration,
            "n_held_out": n_held_out,
            "batch_size": batch_size,
            "calibration_width": calibration_width,
        },
    )
