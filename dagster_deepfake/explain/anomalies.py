"""Audio anomalies: time ranges where the audio evidence looks wrong.

Two signals, both defined per 1-second window (the temporal unit of the model):

* ``audio_shifts_verdict`` — the audio branch's contribution: |P_av(w) - P_v(w)|, how far the
  audio context moves the window's P(fake). Flagged when it exceeds `contribution_threshold`.
* ``speech_without_lip_motion`` — a lip-sync check that needs no model: the VAD hears speech
  for most of the window while the face barely moves (mean Farneback magnitude of the aligned
  face below `still_face_flow` px per sampled frame). Talking faces move; dubbed stills don't.

Adjacent flagged windows of the same kind merge into one range; its score is the mean signal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class AudioAnomaly:
    start: float
    end: float
    score: float
    kind: str

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def _merge(
    flags: np.ndarray, scores: np.ndarray, starts: np.ndarray, ends: np.ndarray, kind: str
) -> list[AudioAnomaly]:
    out: list[AudioAnomaly] = []
    w = 0
    while w < len(flags):
        if not flags[w]:
            w += 1
            continue
        first = w
        while w + 1 < len(flags) and flags[w + 1]:
            w += 1
        out.append(
            AudioAnomaly(
                start=float(starts[first]),
                end=float(ends[w]),
                score=round(float(np.mean(scores[first : w + 1])), 4),
                kind=kind,
            )
        )
        w += 1
    return out


def speech_fraction(starts: np.ndarray, ends: np.ndarray, segments: list[tuple[float, float]]) -> np.ndarray:
    """Fraction of each window [start, end) covered by speech segments."""
    frac = np.zeros(len(starts), dtype=np.float64)
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        span = max(e - s, 1e-9)
        covered = sum(max(0.0, min(e, b) - max(s, a)) for a, b in segments)
        frac[i] = min(1.0, covered / span)
    return frac


def find_audio_anomalies(
    *,
    window_starts: np.ndarray,
    window_ends: np.ndarray,
    p_audio_visual: np.ndarray,
    p_video_only: np.ndarray,
    window_flow: np.ndarray,
    speech_segments: list[tuple[float, float]],
    contribution_threshold: float = 0.15,
    still_face_flow: float = 0.15,
    min_speech_fraction: float = 0.6,
) -> list[AudioAnomaly]:
    """Anomalous time ranges, sorted by start. Empty when there is no speech at all."""
    if not speech_segments:
        return []
    starts = np.asarray(window_starts, dtype=np.float64)
    ends = np.asarray(window_ends, dtype=np.float64)
    contribution = np.abs(np.asarray(p_audio_visual) - np.asarray(p_video_only))
    speech = speech_fraction(starts, ends, speech_segments)
    anomalies = _merge(
        (contribution > contribution_threshold) & (speech > 0),
        contribution,
        starts,
        ends,
        "audio_shifts_verdict",
    )
    flow = np.asarray(window_flow, dtype=np.float64)
    stillness = np.clip(1.0 - flow / max(still_face_flow, 1e-9), 0.0, 1.0)
    anomalies += _merge(
        (speech >= min_speech_fraction) & (flow < still_face_flow),
        stillness * speech,
        starts,
        ends,
        "speech_without_lip_motion",
    )
    return sorted(anomalies, key=lambda a: (a.start, a.kind))
