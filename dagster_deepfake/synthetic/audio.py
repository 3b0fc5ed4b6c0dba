"""Speech tracks for synthetic clips: espeak-ng phrases laid out with known silences.

A track is a sequence of short phrases, each synthesised separately by the `espeak-ng`
binary, separated by silent gaps; the start and end of every phrase's audible part are
therefore known exactly and returned as the clip's speech segments.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from dagster_deepfake.errors import MissingDependencyError

SAMPLE_RATE = 22050  # espeak-ng's native rate; the analysis pipeline resamples to 16 kHz itself

PHRASES = (
    "The weather report says rain again tomorrow.",
    "Please send me the quarterly numbers.",
    "We landed safely after a long flight.",
    "I think the meeting starts at nine.",
    "Nobody expected the results to look like this.",
    "Let me show you how the system works.",
    "The river was quiet in the morning.",
    "Thank you all for coming today.",
    "This is a short statement for the record.",
    "Our team finished the project on time.",
    "Can you hear me clearly now?",
    "The new policy takes effect next week.",
    "I have never seen anything like it.",
    "We should talk about the budget later.",
    "Science is a way of asking good questions.",
    "The train leaves from platform four.",
    "Everything you see here was made by hand.",
    "Remember to save your work often.",
    "Tonight the sky will be clear and cold.",
    "I am happy to answer your questions.",
)
VOICES = ("en-us", "en-us+m3", "en-us+f2", "en+m1", "en+f3", "en-gb", "en-gb+f4", "en+m4")


@dataclass(frozen=True)
class SpeechTrack:
    """Mono float32 samples in [-1, 1] at `sample_rate` and the speech segments (seconds)."""

    samples: np.ndarray
    sample_rate: int
    segments: list[tuple[float, float]]

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def _espeak() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise MissingDependencyError(
            "espeak-ng not found on PATH; synthetic speech needs it (Debian: apt-get install espeak-ng)"
        )
    return binary


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate) of a 16-bit PCM WAV file."""
    with wave.open(str(path), "rb") as handle:
        rate, channels = handle.getframerate(), handle.getnchannels()
        raw = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
    samples = raw.reshape(-1, channels).mean(axis=1) / 32768.0
    return samples.astype(np.float32), rate


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM WAV."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())


@lru_cache(maxsize=256)
def synthesize_phrase(text: str, voice: str, words_per_minute: int, pitch: int) -> np.ndarray:
    """The audible part of one espeak-ng utterance (leading/trailing silence trimmed)."""
    with tempfile.TemporaryDirectory(prefix="espeak_") as tmp:
        out = Path(tmp) / "phrase.wav"
        cmd = [_espeak(), "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "-w", str(out), text]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip()}")
        samples, rate = read_wav(out)
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {SAMPLE_RATE} Hz")
    loud = np.flatnonzero(np.abs(samples) > 0.02 * max(float(np.abs(samples).max()), 1e-6))
    if loud.size == 0:
        return np.zeros(0, np.float32)
    samples = samples[loud[0] : loud[-1] + 1]
    return (0.8 * samples / max(float(np.abs(samples).max()), 1e-6)).astype(np.float32)


def speech_track(seed: int, duration: float, *, min_segment: float = 0.25) -> SpeechTrack:
    """`duration` seconds of speech by a seed-chosen voice: phrases separated by 0.35–0.9 s of
    silence, starting after 0.15–0.5 s. The last phrase is cut at the end of the clip; a cut
    remainder shorter than `min_segment` is dropped (silenced) rather than reported."""
    rng = np.random.default_rng([seed, 0x5EEC])
    voice = VOICES[rng.integers(len(VOICES))]
    words_per_minute = int(rng.integers(150, 190))
    pitch = int(rng.integers(30, 70))
    n_samples = round(duration * SAMPLE_RATE)
    samples = np.zeros(n_samples, np.float32)
    segments: list[tuple[float, float]] = []
    start = rng.uniform(0.15, 0.5)
    order = rng.permutation(len(PHRASES))
    for k in range(10_000):
        if start > duration - min_segment:
            break
        phrase = synthesize_phrase(PHRASES[order[k % len(order)]], voice, words_per_minute, pitch)
        first = round(start * SAMPLE_RATE)
        last = min(first + len(phrase), n_samples)
        if (last - first) / SAMPLE_RATE >= min_segment:
            samples[first:last] = phrase[: last - first]
            segments.append((first / SAMPLE_RATE, last / SAMPLE_RATE))
        start = last / SAMPLE_RATE + rng.uniform(0.35, 0.9)
    return SpeechTrack(samples=samples, sample_rate=SAMPLE_RATE, segments=segments)


def silent_track(duration: float) -> SpeechTrack:
    return SpeechTrack(np.zeros(round(duration * SAMPLE_RATE), np.float32), SAMPLE_RATE, [])


def mouth_envelope(track: SpeechTrack, n_frames: int, fps: float) -> np.ndarray:
    """Mouth opening per video frame in [0, 1]: the RMS of the audio around each frame, scaled
    to the track's loud speech, with a fast attack and a slower release (jaws close gently)."""
    hop = track.sample_rate / fps
    rms = np.zeros(n_frames, np.float32)
    for i in range(n_frames):
        a, b = int(i * hop), int((i + 1) * hop)
        window = track.samples[a:b]
        rms[i] = float(np.sqrt(np.mean(window**2))) if window.size else 0.0
    loud = rms[rms > 1e-4]
    reference = float(np.percentile(loud, 90)) if loud.size else 1.0
    target = np.clip(rms / max(reference, 1e-4), 0.0, 1.0) ** 1.5
    envelope = np.zeros(n_frames, np.float32)
    level = 0.0
    for i, value in enumerate(target):
        rate = 0.7 if value > level else 0.35
        level += rate * (value - level)
        envelope[i] = level
    return envelope
