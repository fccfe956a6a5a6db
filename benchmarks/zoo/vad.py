"""Silero VAD v6 from the ``silero-vad`` wheel: an STFT front end, a conv encoder and an LSTM
cell whose state is carried from chunk to chunk, behind an ``If`` on the sample rate.

Speech is synthesised here with espeak-ng (``apt-get install espeak-ng``) from a built-in list of
sentences, several voices and speeds, resampled to 16 kHz, separated by silences and mixed with
white or brown noise at 0-20 dB SNR. A clip is cut into the wheel's 512-sample chunks with the
64-sample context the wheel's ``OnnxWrapper`` prepends. The LSTM state before each chunk is the
FP32 model's own (teacher forcing), so one clip is one feed of every chunk as a batch, and a
candidate is judged chunk by chunk on the same states.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from benchmarks.zoo._common import ratio, run
from benchmarks.zoo.base import Feeds, Outputs, Split, Wheel, ZooAssetError, ZooModel

WHEEL = Wheel(requirement="silero-vad==6.2.3", filename="silero_vad-6.2.3-py3-none-any.whl",
              sha256="7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
              member="silero_vad/data/silero_vad.onnx")
SR, CHUNK, CONTEXT = 16000, 512, 64
THRESHOLD = 0.5  # the wheel's get_speech_timestamps default
SENTENCES = (
    "The train to the airport leaves from platform four in ten minutes.",
    "Please remember to send the invoice before the end of the month.",
    "We measured the latency of every region before and after quantization.",
    "Could you turn the music down a little, I am on a call.",
    "The weather will be cloudy in the morning with rain in the evening.",
    "Seven hundred and twenty three people attended the meeting on Friday.",
    "Open the window, the room is getting far too warm.",
    "Our library closes at nine, but the reading room stays open until ten.",
    "He said that the delivery would arrive on Tuesday afternoon.",
    "Turn left at the second traffic light and park behind the museum.",
)
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+f2", "en+m7")


def _espeak(text: str, voice: str, speed: int) -> np.ndarray:
    """One utterance as float32 samples at 16 kHz."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ZooAssetError("the VAD zoo model needs espeak-ng: apt-get install -y espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "u.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(out), text],
                       check=True, capture_output=True)
        with wave.open(str(out)) as wf:
            rate = wf.getframerate()
            pcm = np.frombuffer(wf.readframes(wf.getnframes()), dtype=np.int16)
    return resample_poly(pcm.astype(np.float32) / 32768.0, SR, rate).astype(np.float32)


def synth_clip(seed: int, seconds: float = 4.0) -> np.ndarray:
    """A ``seconds`` long 16 kHz clip: silences, 1-2 utterances, noise; deterministic by seed."""
    rng = random.Random(f"vad:{seed}")
    total = int(seconds * SR)
    clip = np.zeros(total, np.float32)
    pos = int(rng.uniform(0.2, 1.0) * SR)
    while pos < total - SR // 2:
        speech = _espeak(rng.choice(SENTENCES), rng.choice(VOICES), rng.randint(130, 200))
        speech = speech[: total - pos] * rng.uniform(0.3, 1.0)
        clip[pos:pos + len(speech)] += speech
        pos += len(speech) + int(rng.uniform(0.3, 1.2) * SR)
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    noise = noise_rng.normal(0, 1, total).astype(np.float32)
    if rng.random() < 0.5:  # brown noise: integrated white noise, mean removed
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(801) / 801, mode="same")
    power = float(np.mean(clip[clip != 0] ** 2)) if np.any(clip) else 1e-4
    snr_db = rng.uniform(0, 20)
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / max(float(np.mean(noise**2)), 1e-12))
    return np.clip(clip + noise, -1, 1).astype(np.float32)


def clip_feeds(path: Path, clip: np.ndarray) -> Feeds:
    """Every chunk of ``clip`` as a batch, each with its context and FP32's state before it."""
    n = len(clip) // CHUNK
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), clip[: n * CHUNK]])
    x = np.stack([padded[i * CHUNK: i * CHUNK + CONTEXT + CHUNK] for i in range(n)])
    sr = np.array(SR, dtype=np.int64)
    states = np.zeros((2, n, 128), np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    for i in range(n):  # the FP32 model's own state sequence (streaming, batch 1)
        states[:, i] = state[:, 0]
        _, state = run(path, {"input": x[i:i + 1], "state": state, "sr": sr})
    return {"input": x, "state": states, "sr": sr}


class SileroVAD(ZooModel):
    """Per clip ``[chunks where the speech decision (p > 0.5) equals FP32's, chunks]``."""

    name = "silero-vad"
    family = "speech (VAD: STFT + conv + LSTM state, If on sample rate)"
    metric = "speech-decision agreement with FP32"

    def model_path(self) -> Path:
        return WHEEL.fetch()

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        """4-second noisy clips of synthesised speech, one feed (a batch of chunks) per clip."""
        path = self.model_path()
        return Split(
            calibration=[clip_feeds(path, synth_clip(2 * seed * 100_003 + i))
                         for i in range(n_calibration)],
            evaluation=[clip_feeds(path, synth_clip((2 * seed + 1) * 100_003 + i))
                        for i in range(n_evaluation)])

    def sample_stats(self, reference: Outputs, candidate: Outputs) -> np.ndarray:
        ref = np.asarray(reference[0]).ravel() > THRESHOLD
        hyp = np.asarray(candidate[0]).ravel() > THRESHOLD
        return np.array([float(np.sum(ref == hyp)), float(ref.size)])

    def aggregate(self, stats: np.ndarray) -> float:
        return ratio(stats)


MODELS: list[ZooModel] = [SileroVAD()]
