"""Audio per contract: ffmpeg → 16 kHz, mono, signed 16-bit PCM, raw waveform (no mel)."""

from __future__ import annotations

import os
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.ffmpeg_bin import ffmpeg as ffmpeg_binary
from dagster_deepfake.media.ffmpeg_bin import ffprobe


@dataclass(frozen=True)
class AudioTrack:
    """Mono 16-bit PCM: `pcm` int16 (S,) at `sample_rate` Hz."""

    pcm: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.pcm) / self.sample_rate

    def as_float(self) -> np.ndarray:
        """float32 in [-1, 1), what wav2vec2 takes."""
        return self.pcm.astype(np.float32) / 32768.0


def has_audio_stream(path: str | os.PathLike[str]) -> bool:
    out = subprocess.run(
        [
            ffprobe(),
            "-v",
            "error",
            "-select_streams",
            "a",
            "-show_entries",
            "stream=index",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode == 0 and bool(out.stdout.strip())


def extract_audio(
    path: str | os.PathLike[str], sample_rate: int = 16000, *, has_audio: bool | None = None
) -> AudioTrack | None:
    """Decode the first audio stream to mono s16le at `sample_rate`; None when there is no audio stream."""
    path = Path(path)
    if has_audio is None:
        has_audio = has_audio_stream(path)
    if not has_audio:
        return None
    stream = ffmpeg.input(str(path)).audio
    out = ffmpeg.output(stream, "pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate)
    args = ffmpeg.compile(out, cmd=ffmpeg_binary())
    proc = subprocess.run([args[0], "-nostdin", "-v", "error", *args[1:]], capture_output=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["ffmpeg failed"])[-1]
        raise InvalidVideoError(path, f"audio could not be decoded ({last})")
    return AudioTrack(np.frombuffer(proc.stdout, dtype="<i2").copy(), sample_rate)


def write_wav(track: AudioTrack, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(track.sample_rate)
        out.writeframes(track.pcm.astype("<i2").tobytes())
    return path
