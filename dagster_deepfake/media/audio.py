"""Audio per contract: ffmpeg → 16 kHz, mono, signed 16-bit PCM, raw waveform (no mel).

Only the first audio stream is decoded (a container may carry several, e.g. commentary
tracks); channels are down-mixed to mono by ffmpeg. A file without any audio stream gives
``None``: missing audio is normal (FaceForensics++ has none), not an error.
"""

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

# Decoding 15 minutes of audio (the platform's longest accepted clip) takes a few seconds;
# a process still running after this is stuck on a broken file, not slow.
_TIMEOUT_S = 600


@dataclass(frozen=True)
class AudioTrack:
    """Mono 16-bit PCM: `pcm` int16 (S,) at `sample_rate` Hz."""

    pcm: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        """Seconds of audio: S / sample_rate."""
        return len(self.pcm) / self.sample_rate

    def as_float(self) -> np.ndarray:
        """float32 (S,) in [-1, 1), what wav2vec2 takes."""
        return self.pcm.astype(np.float32) / 32768.0


def _last_line(stderr: str | bytes, default: str) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    return (text.strip().splitlines() or [default])[-1].strip()


def has_audio_stream(path: str | os.PathLike[str]) -> bool:
    """True when ffprobe finds at least one audio stream; a file ffprobe cannot read is an InvalidVideoError."""
    cmd = [
        ffprobe(),
        *("-v", "error", "-select_streams", "a", "-show_entries", "stream=index", "-of", "csv=p=0"),
        str(path),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise InvalidVideoError(path, "ffprobe did not finish within 60 s") from exc
    if out.returncode != 0:
        raise InvalidVideoError(
            path, f"not a readable media file ({_last_line(out.stderr, 'ffprobe failed')})"
        )
    return bool(out.stdout.strip())


def extract_audio(
    path: str | os.PathLike[str], sample_rate: int = 16000, *, has_audio: bool | None = None
) -> AudioTrack | None:
    """Decode the first audio stream to mono s16le at `sample_rate`.

    `has_audio` is the caller's probe result (saves one ffprobe run); when None the file is
    probed here. Returns None when there is no audio stream; raises InvalidVideoError naming
    the file, with ffmpeg's last stderr line, when the audio cannot be decoded.
    """
    path = Path(path)
    if has_audio is None:
        has_audio = has_audio_stream(path)
    if not has_audio:
        return None
    stream = ffmpeg.input(str(path))["a:0"]
    out = ffmpeg.output(stream, "pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate)
    args = ffmpeg.compile(out, cmd=ffmpeg_binary())
    try:
        proc = subprocess.run(
            [args[0], "-nostdin", "-v", "error", *args[1:]], capture_output=True, timeout=_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidVideoError(path, f"audio decoding did not finish within {_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise InvalidVideoError(
            path, f"audio could not be decoded ({_last_line(proc.stderr, 'ffmpeg failed')})"
        )
    return AudioTrack(np.frombuffer(proc.stdout, dtype="<i2").astype(np.int16), sample_rate)


def write_wav(track: AudioTrack, path: str | os.PathLike[str]) -> Path:
    """Write the track as a 16-bit mono WAV file (for listening to what the model heard)."""
    path = Path(path)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(track.sample_rate)
        out.writeframes(track.pcm.astype("<i2").tobytes())
    return path
