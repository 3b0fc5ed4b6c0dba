"""Modality agreement: do the video-only and the audio-visual evidence tell the same story?

Per window w the detector gives P_av(w) (with audio context) and P_v(w) (the same video
features fused with the learned no-audio embedding). Agreement is

    1 - mean_w |P_av(w) - P_v(w)|          in [0, 1]

1 means audio changed nothing; values near 0 mean audio flipped the evidence. It is `None`
when the video has no usable audio (no track, or no speech found by the VAD): there is then
nothing to agree with, and inventing a number would mislead.
"""

from __future__ import annotations

import numpy as np


def modality_agreement(
    p_audio_visual: np.ndarray, p_video_only: np.ndarray, has_speech: bool
) -> float | None:
    """Agreement in [0, 1] between per-window P(fake) with and without audio; None without speech."""
    if not has_speech:
        return None
    av = np.asarray(p_audio_visual, dtype=np.float64)
    vo = np.asarray(p_video_only, dtype=np.float64)
    if av.shape != vo.shape or av.size == 0:
        raise ValueError(f"need two equal, non-empty per-window arrays, got {av.shape} and {vo.shape}")
    return float(np.clip(1.0 - np.mean(np.abs(av - vo)), 0.0, 1.0))
