"""Faces as tracks (issue 18): the tracker on its own, then two faces through the whole pipeline.

The unit tests feed `faces.tracks` observations with synthetic face crops (a per-person colour and
shading, fresh noise every frame); the end-to-end test renders a two-face video, runs the real
detector, a tiny model trained here on synthetic clips, `analyze` and the Dagster job.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from dagster_deepfake import stages
from dagster_deepfake.analyze import analyze_file
from dagster_deepfake.config import ModelConfig, Settings, TrainingConfig
from dagster_deepfake.errors import NoFaceFoundError
from dagster_deepfake.faces.tracks import (
    FaceObservation,
    TrackerSettings,
    appearance_descriptor,
    build_tracks,
    link_tracks,
)
from dagster_deepfake.synthetic import generate_clip
from dagster_deepfake.training.features import InMemoryFeatureSource, VideoFeatures
from dagster_deepfake.training.loop import train_detector
from tests.conftest import serving_api
from tests.test_pipeline_e2e import _run as run_per_video_assets

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


# -- through the real detector -------------------------------------------------------------------

W, H = 512, 192  # two 256-px slots, one head each
IDENTITY = 40  # face 0 (left) is this identity, face 1 (right) another (synthetic/clip.py)


def _two_face_settings(**faces: object) -> Settings:
    # 64-px aligned crops keep the tiny model's training and scoring cheap on 2 cores.
    return Settings.model_validate({"data": {"min_height": H, "resolution": 64, "faces": faces}})


def _side(bbox) -> int:
    """0 for the left face, 1 for the right (the clip's face index)."""
    return int((bbox[0] + bbox[2]) / 2 > W / 2)


def test_default_one_face_rule_skips_two_face_frames(tmp_path) -> None:
    clip = generate_clip(
        tmp_path / "two.mp4", seed=3, duration=1.0, width=W, height=H, audio="none", num_faces=2
    )
    settings = _two_face_settings()
    probe = stages.probe_stage(clip.path, settings).probe
    with pytest.raises(NoFaceFoundError) as caught:
        stages.faces_stage(stages.frames_stage(clip.path, probe, settings), settings, str(clip.path))
    extraction = caught.value.extraction
    assert extraction.tracks is None and extraction.skip_counts["multiple_faces"] == extraction.num_frames


def test_a_face_seen_briefly_is_listed_as_too_short(tmp_path) -> None:
    # The left person is in the shot for the first 0.4 s only (two sampled frames at 5 FPS).
    clip = generate_clip(
        tmp_path / "brief.mp4", seed=4, duration=2.0, width=W, height=H, audio="none", num_faces=2,
        absent=(0, 0.4, 2.0),
    )  # fmt: skip
    settings = _two_face_settings(max_faces=2)
    probe = stages.probe_stage(clip.path, settings).probe
    extraction = stages.faces_stage(stages.frames_stage(clip.path, probe, settings), settings, str(clip.path))
    summaries = {_side(extraction.tracks.bbox(s.track_id)): s for s in extraction.tracks.summaries()}
    assert set(summaries) == {0, 1}
    brief, stays = summaries[0], summaries[1]
    assert (brief.n_frames, brief.scorable) == (2, False) and "too short to score" in brief.reason
    assert stays.scorable and stays.n_frames == 10
    assert extraction.tracks.scorable_ids == [stays.track_id]


def _track_features(path, settings: Settings, manipulated_face: int, name: str) -> list[VideoFeatures]:
    """Each face track of a two-face clip as one labelled training video (the same stage code)."""
    probe = stages.probe_stage(path, settings).probe
    extraction = stages.faces_stage(stages.frames_stage(path, probe, settings), settings, str(path))
    out = []
    for track_id in extraction.tracks.scorable_ids:
        crops, frame_ids, timestamps = extraction.tracks.crops_of(track_id)
        fake = _side(extraction.tracks.bbox(track_id)) == manipulated_face
        flow = stages.flow_stage(crops, frame_ids, settings).features.astype(np.float32)
        method = "face_swap" if fake else "original"
        out.append(VideoFeatures(f"{name}_t{track_id}", int(fake), method, crops, flow, timestamps))
    return out


@pytest.fixture(scope="module")
def two_face_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny detector trained on the tracks of four two-face clips: in each, one of the two people
    (left or right in turn) has a face swap and the other is real. Same identities as the test
    video, other seeds: other motion, background, swap donor and blending jitter."""
    root = tmp_path_factory.mktemp("two-face-train")
    settings = _two_face_settings(max_faces=2)
    features: list[VideoFeatures] = []
    for k, target in enumerate((0, 1, 0, 1)):
        clip = generate_clip(
            root / f"train{k}.mp4", seed=10 + k, identity=IDENTITY, duration=2.0, width=W, height=H,
            audio="none", num_faces=2, manipulation="face_swap", manipulated_face=target,
        )  # fmt: skip
        features += _track_features(clip.path, settings, target, f"train{k}")
    assert sorted(f.label_int for f in features) == [0, 0, 0, 0, 1, 1, 1, 1]
    ids = [f.video_id for f in features]
    result = train_detector(
        "tiny",
        ids,
        ids[:2],
        InMemoryFeatureSource(features),
        # lr 1e-3 as config/train-synthetic.yaml; 120 small steps (batch 2 of 5-frame clips).
        TrainingConfig(learning_rate=1e-3, warmup_steps=1000, batch_size=2, epochs=30),
        root / "run",
        seed=0,
        image_size=64,
        clip_frames=5,
        training_data="synthetic two-face tracks (tests/test_face_tracks.py)",
    )
    return Path(result.last_checkpoint)


@pytest.mark.slow
def test_two_face_video_flags_the_manipulated_face(two_face_checkpoint, settings, db, tmp_path, monkeypatch):
    """The right person's face is swapped, the left one is real and walks out of the shot for 0.8 s:
    two tracks, the swapped one is the verdict and flags, the real one stays low; the Dagster job
    gives the same faces, and the job page shows one row per face."""
    monkeypatch.setattr("dagster_deepfake.models.inference.cpu_supports_bf16", lambda *a: False)
    two = _two_face_settings(max_faces=2)
    settings.data = two.data
    settings.model = ModelConfig(registry_config="tiny")
    settings.platform.model_dir = str(tmp_path / "models")
    settings.platform.checkpoint = str(two_face_checkpoint)
    clip = generate_clip(
        tmp_path / "interview.mp4", seed=77, identity=IDENTITY, duration=3.0, width=W, height=H,
        audio="none", num_faces=2, manipulation="face_swap", manipulated_face=1, absent=(0, 1.0, 1.8),
    )  # fmt: skip

    doc = analyze_file(clip.path, settings, device="cpu", out_dir=tmp_path / "heat").document
    faces = {_side(f["bbox"]): f for f in doc["additions"]["faces"]}
    swapped, real = faces[1], faces[0]
    print(f"\nP(fake) per track: swapped (right) {swapped['p_fake']:.3f}, real (left) {real['p_fake']:.3f}")
    assert swapped["scored"] and real["scored"]
    assert swapped["primary"] and not real["primary"]
    assert swapped["p_fake"] > 0.5 > real["p_fake"]
    assert swapped["overall_class"] == "fake" and real["overall_class"] == "real"
    # The document's verdict, timeline and heat maps are the swapped face's.
    pred = doc["prediction"]
    assert pred["manipulation_confidence"] == pytest.approx(swapped["p_fake"])
    assert [w["p_fake"] for w in doc["additions"]["windows"]] == [w["p_fake"] for w in swapped["windows"]]
    assert [f["frame_id"] for f in pred["anomalous_frames"]] == [
        f["frame_id"] for f in swapped["anomalous_frames"]
    ]
    # The left person left for 0.8 s (4 sampled frames) and was re-identified: one track across the gap.
    assert (real["frames"], real["first_timestamp"], real["last_timestamp"]) == (11, 0.0, pytest.approx(2.8))
    assert swapped["frames"] == 15
    for face in (swapped, real):
        assert face["thumbnail"].startswith("data:image/jpeg;base64,")
        for frame in face["anomalous_frames"]:
            assert Path(frame["saliency_url"].removeprefix("file://")).read_bytes()[:4] == b"\x89PNG"

    video_id, result = run_per_video_assets(settings, db, clip.path)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    stored = db.get_job(video_id)["result"]
    dagster_faces = {_side(f["bbox"]): f for f in stored["additions"]["faces"]}
    for side in (0, 1):
        a, b = faces[side], dagster_faces[side]
        assert {
            k: a[k] for k in a if k not in ("anomalous_frames", "windows", "p_fake", "confidence_interval")
        } == {k: b[k] for k in b if k not in ("anomalous_frames", "windows", "p_fake", "confidence_interval")}
        assert b["p_fake"] == pytest.approx(a["p_fake"], abs=1e-5)
    assert stored["prediction"]["manipulation_confidence"] == pytest.approx(
        pred["manipulation_confidence"], abs=1e-5
    )

    with serving_api(settings) as base:
        page = httpx.get(f"{base}/jobs/{video_id}/view", timeout=30).text
    assert page.count('alt="face ') == 2 and "the verdict" in page
    assert f"{swapped['p_fake']:.3f}" in page and f"{real['p_fake']:.3f}" in page
