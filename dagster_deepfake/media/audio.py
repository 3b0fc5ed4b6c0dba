"""Audio per contract: ffmpeg → 16 kHz, mono, signed 16-bit PCM, raw waveform (no mel).

Only the first audio stream is decoded (a container may carry several, e.g. commentary
tracks); channels are down-mixed to mono by ffmpeg. A file without any audio stream gives
``None``: missing audio is normal (FaceForensics++ has none), not an error.

Input is opened through the probe gate (`media.gate`: real containers, plus WAV here, local file
only) and decoding stops after `max_seconds`, so the PCM held in memory is bounded
(16 kHz mono s16: 32 KB per second, 29 MB for 15 minutes).
"""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media import gate
from dagster_deepfake.media.ffmpeg_bin import ffmpeg as ffmpeg_binary
from dagster_deepfake.media.ffmpeg_bin import ffprobe

# Decoding 15 minutes of audio (the platform's longest accepted clip) takes a few seconds;
# a process still running after this is stuck on a broken file, not slow.
_TIMEOUT_S = 600
# Default cap on decoded audio: the default `platform.max_duration_seconds` (900 s) plus slack.
DEFAULT_MAX_AUDIO_SECONDS = 960.0


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


def has_audio_stream(path: str | os.PathLike[str], *, timeout_s: float = 60.0) -> bool:
    """True when ffprobe finds at least one audio stream; a file ffprobe cannot read is an InvalidVideoError."""
    cmd = [
        ffprobe(),
        *("-v", "error", "-hide_banner"),
        *gate.input_args(path, allow=gate.AUDIO_DEMUXERS),
        *("-select_streams", "a", "-show_entries", "stream=index", "-of", "csv=p=0"),
    ]
    out = gate.run_tool(cmd, path, timeout_s=timeout_s, what="ffprobe")
    if out.returncode != 0:
        raise InvalidVideoError(
            path, f"not a readable media file ({gate.last_line(out.stderr, 'ffprobe failed', path)})"
        )
    return bool(out.stdout.strip())


def extract_audio(
    path: str | os.PathLike[str],
    sample_rate: int = 16000,
    *,
    has_audio: bool | None = None,
    max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
    timeout_s: float = _TIMEOUT_S,
) -> AudioTrack | None:
    """Decode the first audio stream to mono s16le at `sample_rate`.

    `has_audio` is the caller's probe result (saves one ffprobe run); when None the file is
    probed here. Returns None when there is no audio stream; raises InvalidVideoError naming
    the file, with ffmpeg's last stderr line, when the audio cannot be decoded. At most
    `max_seconds` of audio are decoded (`platform.max_duration_seconds` plus slack); `timeout_s`
    bounds the ffmpeg run.
    """
    path = Path(path)
    if has_audio is None:
        has_audio = has_audio_stream(path)
    if not has_audio:
        return None
    try:
        opened = gate.input_args(path, allow=gate.AUDIO_DEMUXERS, max_pixels=None, duration=max_seconds)
    except InvalidVideoError as exc:
        raise InvalidVideoError(path, f"audio could not be decoded ({exc.reason})") from None
    cmd = [
        ffmpeg_binary(),
        *("-nostdin", "-hide_banner", "-v", "error", *opened),
        *(
            "-map",
            "0:a:0",
            "-f",
            "s16le",
            "-acodec",
            "pcm_s16le",
            "-ac",
            "1",
            "-ar",
            str(sample_rate),
            "pipe:",
        ),
    ]
    proc = gate.run_tool(cmd, path, timeout_s=timeout_s, what="audio decoding")
    if proc.returncode != 0:
        raise InvalidVideoError(
            path, f"audio could not be decoded ({gate.last_line(proc.stderr, 'ffmpeg failed', path)})"
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
