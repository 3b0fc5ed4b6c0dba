"""Heat maps that tell a story: the top-k frames are distinct moments (docs/CONFIG.md
"Heat maps: distinct moments"), one per suspicious window, at least `explain.min_gap_seconds` apart."""

from __future__ import annotations

import numpy as np
import pytest

from dagster_deepfake.config import Settings
from dagster_deepfake.explain.gradcam import top_frames
from dagster_deepfake.models.checkpoint import build_untrained
from dagster_deepfake.stages import AudioEmbeddings, WindowScores, saliency_stage

FPS = 5


def _windows(n_windows: int, per_window: int = 5, skip_after: int | None = None):
    """Face indices and timestamps of n windows of `per_window` faces at 5 FPS; faces after index
    `skip_after` come 2 s later (frames without a face in between), so time is not index / FPS."""
    count = n_windows * per_window
    times = np.arange(count) / FPS
    if skip_after is not None:
        times[skip_after:] += 2.0
    frames = [(w * per_window, (w + 1) * per_window) for w in range(n_windows)]
    spans = [(float(times[a]), float(times[b - 1] + 1 / FPS)) for a, b in frames]
    return times, frames, spans


def test_one_frame_per_suspicious_window_in_order_of_p_fake():
    times, frames, _ = _windows(8)
    probs = np.array([0.1, 0.92, 0.2, 0.88, 0.95, 0.3, 0.9, 0.15])
    picked = top_frames(probs, frames, 5, times, min_gap_seconds=1.0)
    windows = [w for w, _ in picked]
    assert windows == [4, 1, 6, 3, 5]  # the five highest P(fake), most suspicious first
    assert len(set(windows)) == 5
    for w, i in picked:
        assert frames[w][0] <= i < frames[w][1]  # the frame belongs to its window
    gaps = [abs(times[i] - times[j]) for _, i in picked for _, j in picked if i != j]
    assert min(gaps) >= 1.0 - 1e-6


def test_the_gap_passes_over_adjacent_windows_and_moves_within_a_window():
    times, frames, _ = _windows(6)
    # Windows 2 and 3 are both very suspicious and adjacent; 0 is less so.
    probs = np.array([0.7, 0.1, 0.99, 0.98, 0.1, 0.1])
    picked = top_frames(probs, frames, 3, times, min_gap_seconds=1.4)
    chosen_times = [times[i] for _, i in picked]
    assert picked[0] == (2, 12)  # the middle frame of the most suspicious window (2.4 s)
    # Window 3's middle (3.4 s) is 1.0 s away: its last frame (3.8 s = 2.4 + 1.4) is taken instead.
    assert picked[1] == (3, 19)
    assert picked[2][0] == 0 and times[picked[2][1]] <= 2.4 - 1.4 + 1e-6
    for a in chosen_times:
        for b in chosen_times:
            assert a == b or abs(a - b) >= 1.4 - 1e-6
    # A gap no frame of window 3 can keep: the window is passed over, not shown twice.
    far = top_frames(probs, frames, 3, times, min_gap_seconds=2.5)
    assert 3 not in [w for w, _ in far] and [w for w, _ in far][0] == 2


def test_time_not_index_decides_the_gap():
    # Faces 0-4 and 5-9 form two windows but 2 s of faceless frames lie between them.
    times, frames, _ = _windows(2, skip_after=5)
    picked = top_frames(np.array([0.9, 0.8]), frames, 2, times, min_gap_seconds=2.5)
    assert [w for w, _ in picked] == [0, 1]  # 0.4 s and 3.4 s: far enough apart despite adjacent indices


def test_a_short_clip_gives_fewer_maps_rather_than_one_moment_twice():
    times, frames, _ = _windows(3)
    picked = top_frames(np.array([0.9, 0.9, 0.9]), frames, 5, times, min_gap_seconds=1.0)
    assert len(picked) == 3 and len({w for w, _ in picked}) == 3


# P(fake) per window below: 5 > 2 > 1 > 7 > 4 > 6 > 0 > 3. With a 1.5 s gap window 1 (next to 2)
# and window 4 (next to 5) have no frame far enough from the earlier picks, and 6 sits between 5 and 7.
@pytest.mark.parametrize(("gap", "expected"), [(1.0, [5, 2, 1, 7, 4]), (1.5, [5, 2, 7, 0])])
def test_saliency_stage_heat_maps_come_from_distinct_windows(settings: Settings, gap: float, expected):
    """The real stage with a tiny model: rows carry their window, its P(fake) and the frame's time."""
    model, _ = build_untrained("tiny", seed=0)
    times, frames, spans = _windows(8)
    count = len(times)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (count, 224, 224, 3), dtype=np.uint8)
    probs = np.array([0.2, 0.91, 0.93, 0.1, 0.89, 0.95, 0.3, 0.9])
    windows = WindowScores(probs, probs.copy(), spans, frames)
    dim = model.config.audio.projection_dim
    no_audio = AudioEmbeddings(np.zeros((0, dim), np.float32), np.zeros(0, bool))
    frame_ids = np.arange(count) * 3  # frame ids are not face indices
    settings.explain.min_gap_seconds = gap
    explanation = saliency_stage(
        model,
        crops,
        frame_ids,
        times,
        np.zeros((count, 2), np.float32),
        windows,
        no_audio,
        [],
        frame_image=lambda fid: np.zeros((240, 320, 3), np.uint8),
        frame_landmarks=lambda fid: np.array([[140, 100], [180, 100], [160, 120], [145, 140], [175, 140]]),
        settings=settings,
        device="cpu",
    )
    rows = explanation.anomalous_frames
    assert settings.explain.top_k_frames == 5
    assert [r["window_id"] for r in rows] == expected  # distinct windows, most suspicious first
    for r in rows:
        w = r["window_id"]
        assert r["confidence"] == pytest.approx(probs[w])  # its window's P(fake)
        index = int(np.flatnonzero(frame_ids == r["frame_id"])[0])
        assert frames[w][0] <= index < frames[w][1] and r["timestamp"] == pytest.approx(times[index])
        assert spans[w][0] <= r["timestamp"] < spans[w][1]
        assert r["face_png"] in explanation.heat_maps and r["frame_png"] in explanation.heat_maps
    stamps = sorted(r["timestamp"] for r in rows)
    assert min(np.diff(stamps)) >= gap - 1e-6
