"""Faces as tracks (issue 18): the tracker on its own, then two faces through the whole pipeline.

The unit tests feed `faces.tracks` observations with synthetic face crops (a per-person colour and
shading, fresh noise every frame); the end-to-end test renders a two-face video, runs the real
detector, a tiny model trained here on synthetic clips, `analyze` and the Dagster job.
"""

from __future__ import annotations

import numpy as np
import pytest

from dagster_deepfake.faces.tracks import (
    FaceObservation,
    TrackerSettings,
    appearance_descriptor,
    build_tracks,
    link_tracks,
)

STEP = 0.2  # 5 FPS


def _person_crop(person: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A face-like crop: the person's own skin colour, hair band and light direction, plus noise."""
    palette = [(200, 150, 120), (90, 60, 45), (170, 190, 230), (120, 200, 110)]
    base = np.array(palette[person], np.float32)
    y, x = np.mgrid[0:size, 0:size] / size
    light = (0.7 + 0.3 * (x if person % 2 else 1 - x))[..., None]
    crop = base * light
    crop[: size // 4] = np.array(palette[(person + 1) % 4], np.float32) * 0.5  # hair
    crop += rng.normal(0, 6, crop.shape)
    return np.clip(crop, 0, 255).astype(np.uint8)


def _obs(frame: int, person: int, cx: float, rng: np.random.Generator, w: float = 80.0) -> tuple:
    crop = _person_crop(person, rng)
    bbox = (cx - w / 2, 100.0, cx + w / 2, 100.0 + w * 1.2)
    landmarks = np.tile([cx, 150.0], (5, 1)).astype(np.float32)
    return FaceObservation(frame, frame * STEP, bbox, landmarks, 0.99, appearance_descriptor(crop)), crop


def _run(events: list[tuple[int, int, float]], settings: TrackerSettings | None = None):
    """events: (frame, person, centre x); returns the FaceTracks and each event's track id."""
    rng = np.random.default_rng(0)
    made = [_obs(f, p, cx, rng) for f, p, cx in sorted(events)]
    observations, crops = [m[0] for m in made], np.stack([m[1] for m in made])
    settings = settings or TrackerSettings()
    ids = link_tracks(observations, settings, STEP)
    return build_tracks(observations, crops, settings, STEP), dict(zip(sorted(events), ids, strict=True))


def _ids_by_person(events, ids) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for event, track in ids.items():
        out.setdefault(event[1], set()).add(track)
    return out


def test_appearance_separates_people_and_matches_the_same_person() -> None:
    rng = np.random.default_rng(1)
    a1, a2, b = (appearance_descriptor(_person_crop(p, rng)) for p in (0, 0, 1))
    assert float(a1 @ a2) > TrackerSettings().reid_similarity
    assert float(a1 @ b) < TrackerSettings().min_similarity


def test_two_faces_that_cross_keep_their_tracks() -> None:
    # Person 0 walks left to right, person 1 right to left; at frames 9-11 their boxes overlap.
    events = [(f, 0, 100 + 20 * f) for f in range(20)] + [(f, 1, 500 - 20 * f) for f in range(20)]
    tracks, ids = _run(events)
    by_person = _ids_by_person(events, ids)
    assert by_person[0] != by_person[1]
    assert all(len(v) == 1 for v in by_person.values()), by_person
    assert [s.n_frames for s in tracks.summaries()] == [20, 20]


def test_a_person_who_leaves_and_returns_is_re_identified() -> None:
    # Person 0 is on the left for 2 s, gone for 2 s, then comes back on the right; person 1 stays.
    events = [(f, 0, 120.0) for f in range(10)] + [(f, 0, 520.0) for f in range(20, 30)]
    events += [(f, 1, 320.0) for f in range(30)]
    tracks, ids = _run(events)
    by_person = _ids_by_person(events, ids)
    assert by_person == {0: {0}, 1: {1}}
    first = tracks.summaries()[0]
    assert (first.n_frames, first.first_frame, first.last_frame) == (20, 0, 29)
    # Beyond max_gap_seconds the returning person is a new track.
    _, later = _run(events, TrackerSettings(max_gap_seconds=1.0))
    assert len(_ids_by_person(events, later)[0]) == 2


def test_someone_else_in_the_same_place_starts_a_new_track() -> None:
    events = [(f, 0, 200.0) for f in range(8)] + [(f, 2, 200.0) for f in range(8, 16)]
    _, ids = _run(events)
    by_person = _ids_by_person(events, ids)
    assert len(by_person[0] | by_person[2]) == 2


def test_a_too_short_track_is_listed_with_its_reason() -> None:
    events = [(f, 0, 150.0) for f in range(12)] + [(f, 3, 450.0) for f in range(4, 7)]
    tracks, _ = _run(events)
    long, short = tracks.summaries()
    assert long.scorable and long.reason is None
    assert not short.scorable and short.n_frames == 3
    assert "too short" in short.reason and "needs 5" in short.reason
    assert tracks.scorable_ids == [long.track_id]
    crops, frame_ids, timestamps = tracks.crops_of(short.track_id)
    assert crops.shape == (3, 64, 64, 3) and frame_ids.tolist() == [4, 5, 6]
    assert timestamps.tolist() == pytest.approx([0.8, 1.0, 1.2])
