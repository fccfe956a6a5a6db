"""JSON infer bodies without a Python object per number, and without holding the GIL for long.

``json.loads`` of a 60 MB tensor builds millions of Python floats (~32 bytes each) in one C call
that holds the GIL for seconds, so no other thread (the event loop included) runs meanwhile.
:func:`load_infer_json` instead:

1. finds each long flat ``"data": [ ... ]`` array (no ``[`` inside) with byte searches run in
   windows of :data:`WINDOW` bytes (each a short C call, so the GIL changes hands in between),
   counts its values by its commas, and replaces it with a placeholder number (a per-call
   random token) in a small *skeleton* of the request;
2. parses the skeleton with ``json.loads`` and Python hooks for numbers: each number is a Python
   call (the GIL can change hands) and is charged :data:`PY_VALUE_BYTES` against the budget, so
   a request whose numbers sit elsewhere (nested data, other fields) is refused past it;
3. checks that every placeholder was parsed once, as the ``data`` of an input; anything else
   (a placeholder inside a string, a skeleton that does not parse) falls back to parsing the
   whole body with the same hooks and budget, so the result is always what ``json.loads`` gives.

The arrays themselves are only built by :meth:`NumberRun.materialize`, after the caller compared
:attr:`NumberRun.count` with the declared shape and the memory cap; it parses
:data:`CHUNK`-byte slices (cut at commas) with ``json.loads`` into a preallocated array.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from regiontrt.errors import InputError

#: Bodies below this are parsed by ``json.loads`` as they are (well under a millisecond).
SMALL = 64 * 1024
#: Shortest ``data`` array (bytes) worth a placeholder.
SPAN_MIN = 4096
#: Bytes of numbers parsed per ``json.loads`` call when building an array (a few ms each).
CHUNK = 128 * 1024
#: Bytes scanned per ``bytes.find``/``count`` call (about 1 ms each).
WINDOW = 2 * 1024 * 1024
#: Most placeholder arrays per request.
MAX_SPANS = 256
#: What one number parsed as a Python object costs (the float and its list slot), charged
#: against the memory budget.
PY_VALUE_BYTES = 32
#: Most lists, objects and strings (each counted by its opening byte) parsed as Python objects:
#: ``json.loads`` builds them without calling back, so this bounds how long it holds the GIL.
MAX_STRUCTURE = 1 << 17

_AFTER_KEY = re.compile(rb"\s*:\s*\[")
_NON_SPACE = re.compile(rb"\S")


class ProtocolError(InputError):
    """A request that breaks the protocol or does not fit the model (HTTP ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _find(body: bytes, sub: bytes, start: int, end: int) -> int:
    """``body.find(sub, start, end)`` in windows, so no single call holds the GIL for long."""
    pos = start
    while pos < end:
        stop = min(end, pos + WINDOW + len(sub) - 1)
        hit = body.find(sub, pos, stop)
        if hit >= 0 or stop == end:
            return hit
        pos = stop - len(sub) + 1
    return -1


def _count(body: bytes, byte: bytes, start: int, end: int) -> int:
    """``body.count(byte, start, end)`` of one byte, in windows."""
    return sum(body.count(byte, p, min(end, p + WINDOW)) for p in range(start, end, WINDOW))


@dataclass(eq=False)
class NumberRun:
    """A flat JSON array of ``count`` values at ``body[start:end]`` (between its brackets)."""

    body: bytes
    start: int
    end: int
    count: int

    def materialize(self, dtype: np.dtype, label: str) -> np.ndarray:
        """The values as a 1-D array of ``dtype``; each slice converts as ``np.asarray`` does.

        Raises:
            ProtocolError: a slice is not JSON or not ``dtype`` values.
        """
        out = np.empty(self.count, dtype=dtype)
        filled, pos = 0, self.start
        while self.count:
            cut = self.body.find(b",", min(pos + CHUNK, self.end), self.end)
            cut = self.end if cut < 0 else cut
            try:
                values = json.loads(b"[" + self.body[pos:cut] + b"]")
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # not ours: json's
                raise ProtocolError(f"{label}: malformed data: {exc}") from None
            n = len(values)
            if n == 0 or filled + n > self.count:
                raise ProtocolError(f"{label}: malformed data (an empty value or a stray comma)")
            try:
                out[filled:filled + n] = np.asarray(values, dtype=dtype)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ProtocolError(f"{label}: data is not {dtype}: {exc}") from None
            filled += n
            if cut == self.end:
                break
            pos = cut + 1
        if filled != self.count:
            raise ProtocolError(f"{label}: malformed data")
        return out


def _spans(body: bytes) -> list[tuple[int, int]]:
    """``(index of '[', index of ']')`` of the long flat arrays following a ``"data"`` key."""
    spans: list[tuple[int, int]] = []
    pos, n = 0, len(body)
    for _ in range(4 * MAX_SPANS):  # each look may scan far: a bounded number of them
        if len(spans) == MAX_SPANS:
            break
        key = _find(body, b'"data"', pos, n)
        if key < 0:
            break
        after = _AFTER_KEY.match(body, key + 6)
        pos = key + 6
        if after is None:
            continue
        open_ = after.end() - 1
        close = _find(body, b"]", open_ + 1, n)
        if close < 0:
            break
        if close - open_ >= SPAN_MIN and _find(body, b"[", open_ + 1, close) < 0:
            spans.append((open_, close))
            pos = close + 1
    return spans


class _Parser:
    """``json.loads`` with a Python call per number: budgeted, and the GIL changes hands."""

    def __init__(self, budget_values: int, token: str, runs: list[NumberRun]) -> None:
        self.left, self.token, self.runs = budget_values, token, runs
        self.hits: list[int] = []

    def _charge(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ProtocolError("the request's JSON numbers outside flat data arrays are over "
                                "the memory cap (send flat data or binary tensors)", 413)

    def _int(self, text: str) -> Any:
        if self.token and len(text) == len(self.token) + 4 and text.startswith(self.token):
            k = int(text[len(self.token):])
            self.hits.append(k)
            return self.runs[k]
        self._charge()
        return int(text)

    def _float(self, text: str) -> float:
        self._charge()
        return float(text)

    def _constant(self, text: str) -> float:
        self._charge()
        return float(text)  # NaN, Infinity, -Infinity: as json.loads gives them

    def loads(self, data: bytes) -> Any:
        structure = sum(_count(data, b, 0, len(data)) for b in (b"[", b"{")) + \
            _count(data, b'"', 0, len(data)) // 2
        if structure > MAX_STRUCTURE:
            raise ProtocolError(f"the request holds over {MAX_STRUCTURE} JSON lists, objects "
                                "and strings (send flat data or binary tensors)", 413)
        try:
            return json.loads(data, parse_int=self._int, parse_float=self._float,
                              parse_constant=self._constant)
        except ProtocolError:  # over the budget (an InputError is a ValueError too)
            raise
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ProtocolError(f"malformed JSON: {exc}") from None
        except ValueError as exc:  # e.g. an int past sys.get_int_max_str_digits()
            raise ProtocolError(f"malformed JSON: {exc}") from None


def _placed(header: Any, runs: list[NumberRun]) -> bool:
    """Whether every run is the ``data`` of one entry of ``header["inputs"]``."""
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        return False
    found = [e["data"] for e in header["inputs"]
             if isinstance(e, dict) and isinstance(e.get("data"), NumberRun)]
    return len(found) == len(runs) and {id(r) for r in found} == {id(r) for r in runs}


def load_infer_json(body: bytes, max_bytes: int) -> Any:
    """Parse an infer request's JSON; long flat ``data`` arrays come back as :class:`NumberRun`.

    Args:
        body: the JSON bytes (hostile).
        max_bytes: the request's memory cap; numbers parsed as Python objects are charged
            :data:`PY_VALUE_BYTES` each against it.

    Raises:
        ProtocolError: malformed JSON (400), or over the cap or the structure limit (413).
    """
    if len(body) < SMALL:
        try:
            return json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"malformed JSON: {exc}") from None
    budget = max(0, max_bytes // PY_VALUE_BYTES)
    spans = _spans(body)
    if spans:
        token = "9" + "".join(str(secrets.randbelow(10)) for _ in range(23))
        runs, pieces, pos = [], [], 0
        for k, (open_, close) in enumerate(spans):
            empty = _NON_SPACE.search(body, open_ + 1, close) is None
            count = 0 if empty else _count(body, b",", open_ + 1, close) + 1
            runs.append(NumberRun(body, open_ + 1, close, count))
            pieces += [body[pos:open_], f" {token}{k:04d} ".encode()]
            pos = close + 1
        pieces.append(body[pos:])
        parser = _Parser(budget, token, runs)
        try:
            header = parser.loads(b"".join(pieces))
        except ProtocolError as exc:
            if exc.status != 400:
                raise
            header = None  # a skeleton that does not parse: parse the body itself
        if header is not None and sorted(parser.hits) == list(range(len(runs))) \
                and _placed(header, runs):
            return header
    return _Parser(budget, "", []).loads(body)
