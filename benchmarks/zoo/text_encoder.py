"""The character BERT of the ``g2p-id-py`` wheel (Indonesian grapheme-to-phoneme).

A small Keras-exported transformer encoder (embeddings, self-attention with Softmax and Einsum,
layer norms written out as ReduceMean/Sqrt/Reciprocal, feed-forward) that reads a word of at most
32 characters with every ``e`` replaced by ``[mask]`` and predicts, at each masked position, ``e``
or the schwa ``ə``: the wheel's ``BERT.predict``. Words come from the wheel's own lexicon
(``g2p_id/resources/lexicon_id.tsv``), split into calibration and evaluation halves by a hash of
the word, so the two sets never share a word.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import cached_property
from pathlib import Path

import numpy as np

from benchmarks.zoo.base import Outputs, Split, Wheel, ZooModel

_WHEEL = dict(requirement="g2p-id-py==0.4.2", filename="g2p_id_py-0.4.2-py3-none-any.whl",
              sha256="0b9ce7e76be2e8d1738c604751d05e0a8aa1b2ce2199fce27a115d350468e671")
WHEEL = Wheel(**_WHEEL, member="g2p_id/models/bert/bert_mlm.onnx")
TOKENS = Wheel(**_WHEEL, member="g2p_id/models/bert/token2id.json")
LEXICON = Wheel(**_WHEEL, member="g2p_id/resources/lexicon_id.tsv")
MAX_LEN, MASK = 32, "[mask]"


class G2PBert(ZooModel):
    """Per word the cosine similarity of all ``32 x 32`` logits to FP32's; mean over words."""

    name = "g2p-id-bert"
    family = "transformer encoder (character BERT, masked LM)"
    metric = "mean cosine similarity of the logits to FP32's"

    def model_path(self) -> Path:
        return WHEEL.fetch()

    @cached_property
    def token2id(self) -> dict[str, int]:
        """The wheel's character vocabulary."""
        return {str(k): int(v) for k, v in json.loads(TOKENS.fetch().read_text()).items()}

    def words(self, half: int) -> list[str]:
        """Lexicon words with an ``e`` that the vocabulary spells, in calibration (0) or
        evaluation (1) half."""
        out = []
        for line in LEXICON.fetch().read_text(encoding="utf-8").splitlines():
            word = line.split("\t")[0].strip().lower()
            if ("e" in word and len(word) <= MAX_LEN and all(c in self.token2id for c in word)
                    and hashlib.sha256(word.encode()).digest()[0] % 2 == half):
                out.append(word)
        return sorted(set(out))

    def encode(self, word: str) -> np.ndarray:
        """``[1, 32]`` int64 ids of ``word`` with every ``e`` masked, padded with 0."""
        ids = [self.token2id[MASK] if c == "e" else self.token2id[c] for c in word]
        return np.array([ids + [0] * (MAX_LEN - len(ids))], dtype=np.int64)

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        """Words sampled (by ``seed``) from the two disjoint halves of the lexicon."""
        rng = random.Random(f"g2p:{seed}")
        cal = rng.sample(self.words(0), n_calibration)
        ev = rng.sample(self.words(1), n_evaluation)
        return Split(calibration=[{"input_1": self.encode(w)} for w in cal],
                     evaluation=[{"input_1": self.encode(w)} for w in ev])

    def sample_stats(self, reference: Outputs, candidate: Outputs) -> np.ndarray:
        # the logits carry no input ids, so the masked rows are not known here: compare every
        # row's logits by cosine similarity (the wheel reads argmax at the masked rows only)
        ref = np.asarray(reference[0], dtype=np.float64).ravel()
        hyp = np.asarray(candidate[0], dtype=np.float64).ravel()
        denom = float(np.linalg.norm(ref) * np.linalg.norm(hyp))
        return np.array([min(1.0, float(ref @ hyp) / denom) if denom else 0.0])


MODELS: list[ZooModel] = [G2PBert()]
