"""Modality agreement and audio anomalies on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from dagster_deepfake.explain.agreement import modality_agreement
from dagster_deepfake.explain.anomalies import find_audio_anomalies, speech_fraction


def test_agreement_bounds_and_null_without_speech():
    p = np.array([0.2, 0.8, 0.5])
    assert modality_agreement(p, p, has_speech=True) == pytest.approx(1.0)
    assert modality_agreement(np.zeros(4), np.ones(4), has_speech=True) == pytest.approx(0.0)
    assert modality_agreement(np.array([0.1, 0.9]), np.array([0.3, 0.5]), has_speech=True) == pytest.approx(
        0.7
    )
    assert modality_agreement(p, p, has_speech=False) is None
    with pytest.raises(ValueError):
        modality_agreement(np.zeros(2), np.zeros(3), has_speech=True)


def test_speech_fraction_per_window():
    starts, ends = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    frac = speech_fraction(starts, ends, [(0.5, 1.5), (2.9, 4.0)])
    assert frac == pytest.approx([0.5, 0.5, 0.1])


def _windows(n):
    return np.arange(n, dtype=float), np.arange(n, dtype=float) + 1.0


def test_audio_contribution_ranges_merge():
    starts, ends = _windows(6)
    p_av = np.array([0.5, 0.9, 0.9, 0.5, 0.5, 0.8])
    p_vo = np.array([0.5, 0.5, 0.6, 0.5, 0.5, 0.5])
    found = find_audio_anomalies(
        window_starts=starts,
        window_ends=ends,
        p_audio_visual=p_av,
        p_video_only=p_vo,
        window_flow=np.ones(6),  # the face moves: no stillness anomaly
        speech_segments=[(0.0, 6.0)],
    )
    kinds = [(a.kind, a.start, a.end) for a in found]
    assert kinds == [("audio_shifts_verdict", 1.0, 3.0), ("audio_shifts_verdict", 5.0, 6.0)]
    assert found[0].score == pytest.approx(0.35)


def test_speech_over_still_face_is_flagged_and_silence_is_not():
    starts, ends = _windows(4)
    flat = np.full(4, 0.5)
    flow = np.array([1.0, 0.01, 0.02, 0.01])
    found = find_audio_anomalies(
        window_starts=starts,
        window_ends=ends,
        p_audio_visual=flat,
        p_video_only=flat,
        window_flow=flow,
        speech_segments=[(0.0, 2.0)],  # speech only in the first two windows
    )
    assert [(a.kind, a.start, a.end) for a in found] == [("speech_without_lip_motion", 1.0, 2.0)]
    assert 0.9 < found[0].score <= 1.0
    assert (
        find_audio_anomalies(
            window_starts=starts,
            window_ends=ends,
            p_audio_visual=flat,
            p_video_only=flat,
            window_flow=flow,
            speech_segments=[],
        )
        == []
    )
