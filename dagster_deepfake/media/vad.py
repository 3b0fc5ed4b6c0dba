"""WebRTC VAD: which parts of the audio are speech.

Rule: 30 ms frames (configurable 10/20/30) are classified by `webrtcvad` at the configured
aggressiveness; speech runs separated by less than `merge_gap` (300 ms) are merged and runs
shorter than `min_segment` (90 ms) are dropped, so one sentence is one segment rather than a
flicker of syllables. The result is also given as a mask on wav2vec2's 20 ms frame grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import webrtcvad

from dagster_deepfake.media.audio import AudioTrack

WAV2VEC2_FRAME_S = 0.02


@dataclass
class SpeechActivity:
    """Speech segments ``[(start_s, end_s), ...]`` (sorted, disjoint) within `duration` seconds."""

    duration: float
    segments: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def empty(cls, duration: float) -> SpeechActivity:
        return cls(duration=float(duration), segments=[])

    @property
    def speech_seconds(self) -> float:
        return float(sum(e - s for s, e in self.segments))

    @property
    def mask_20ms(self) -> np.ndarray:
        """bool (ceil(duration / 20 ms),): True where a 20 ms frame's centre lies in speech."""
        n = int(np.ceil(self.duration / WAV2VEC2_FRAME_S - 1e-9))
        centres = (np.arange(n) + 0.5) * WAV2VEC2_FRAME_S
        mask = np.zeros(n, dtype=bool)
        for start, end in self.segments:
            mask |= (centres >= start) & (centres < end)
        return mask

    def sample_mask(self, n_samples: int, sample_rate: int = 16000) -> np.ndarray:
        """bool (n_samples,): True where a PCM sample lies in speech."""
        t = np.arange(n_samples) / sample_rate
        mask = np.zeros(n_samples, dtype=bool)
        for start, end in self.segments:
            mask |= (t >= start) & (t < end)
        return mask

    def to_frame(self) -> pd.DataFrame:
        """One row per segment: segment_id, start, end, duration (seconds)."""
        return pd.DataFrame(
            {
                "segment_id": np.arange(len(self.segments), dtype=np.int32),
                "start": [float(s) for s, _ in self.segments],
                "end": [float(e) for _, e in self.segments],
                "duration": [float(e - s) for s, e in self.segments],
            }
        )


def detect_speech(
    track: AudioTrack,
    aggressiveness: int = 2,
    frame_ms: int = 30,
    *,
    merge_gap: float = 0.3,
    min_segment: float = 0.09,
) -> SpeechActivity:
    """Speech segments of a 16-bit mono track (8/16/32/48 kHz, as WebRTC VAD requires).

    A trailing partial frame (< `frame_ms`) is not classified. Silence gives no segments.
    """
    if track.sample_rate not in (8000, 16000, 32000, 48000):
        raise ValueError(f"WebRTC VAD needs 8/16/32/48 kHz audio, got {track.sample_rate} Hz")
    if frame_ms not in (10, 20, 30):
        raise ValueError(f"WebRTC VAD frames are 10, 20 or 30 ms, got {frame_ms}")
    if aggressiveness not in (0, 1, 2, 3):
        raise ValueError(f"WebRTC VAD aggressiveness is 0..3, got {aggressiveness}")
    vad = webrtcvad.Vad(aggressiveness)
    hop = track.sample_rate * frame_ms // 1000
    pcm = track.pcm.astype("<i2")
    n_frames = len(pcm) // hop
    voiced = np.array(
        [vad.is_speech(pcm[i * hop : (i + 1) * hop].tobytes(), track.sample_rate) for i in range(n_frames)],
        dtype=bool,
    )
    step = frame_ms / 1000
    runs: list[list[float]] = []
    for i in np.flatnonzero(voiced):
        start, end = i * step, (i + 1) * step
        if runs and start - runs[-1][1] < merge_gap:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    segments = [(round(float(s), 3), round(float(e), 3)) for s, e in runs if e - s >= min_segment]
    return SpeechActivity(duration=track.duration, segments=segments)
