"""The synthetic talking-face generator: determinism, container facts, audio, faces, dataset."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dagster_deepfake.media.ffmpeg_bin import ffmpeg
from dagster_deepfake.media.probe import probe_video
from dagster_deepfake.synthetic import (
    MANIPULATIONS,
    SyntheticClip,
    generate_clip,
    generate_dataset,
    make_identity,
)

W, H, FPS, DURATION = 320, 240, 25.0, 2.0


def decode_frames(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def decode_audio(path: Path, rate: int = 16000) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg(), "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(rate), "-f", "s16le", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def detect(frame: np.ndarray) -> list[np.ndarray]:
    """5-point landmarks of every face RetinaFace finds at the contract's confidence (0.95)."""
    from retinaface import detect_faces

    return [
        np.array([[p.x, p.y] for p in face.landmarks], np.float32)
        for face in detect_faces(frame, score_threshold=0.95)
    ]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticClip]:
    out = tmp_path_factory.mktemp("synthetic")
    common = {"duration": DURATION, "width": W, "height": H, "fps": FPS}
    return {
        "real": generate_clip(out / "real.mp4", seed=3, **common),
        "real_again": generate_clip(out / "real_again.mp4", seed=3, **common),
        "other_seed": generate_clip(out / "other_seed.mp4", seed=4, **common),
        "two": generate_clip(out / "two.mp4", seed=5, num_faces=2, **common),
        "empty": generate_clip(out / "empty.mp4", seed=6, num_faces=0, audio="none", **common),
        "silence": generate_clip(
            out / "silence.mp4", seed=7, audio="silence", duration=1.2, width=256, height=192, fps=15.0
        ),
        **{m: generate_clip(out / f"{m}.mp4", seed=3, manipulation=m, **common) for m in MANIPULATIONS},
    }


def test_same_seed_same_video_different_seed_different(clips: dict[str, SyntheticClip]) -> None:
    a = decode_frames(clips["real"].path, W, H)
    b = decode_frames(clips["real_again"].path, W, H)
    c = decode_frames(clips["other_seed"].path, W, H)
    assert np.array_equal(a, b)
    assert np.array_equal(clips["real"].landmarks, clips["real_again"].landmarks)
    assert clips["real"].speech_segments == clips["real_again"].speech_segments
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10
    # The head moves: landmarks are not the same from frame to frame.
    assert np.ptp(clips["real"].landmarks[:, 0, 2, 0]) > 1.0


@pytest.mark.parametrize("name", ["real", "silence"])
def test_container_matches_request(clips: dict[str, SyntheticClip], name: str) -> None:
    clip = clips[name]
    probe = probe_video(clip.path)
    assert probe.codec == "h264" and probe.pix_fmt == "yuv420p"
    assert (probe.width, probe.height) == (clip.width, clip.height)
    assert probe.fps == pytest.approx(clip.fps, rel=1e-3)
    assert probe.duration == pytest.approx(clip.duration, abs=0.1)
    assert len(decode_frames(clip.path, clip.width, clip.height)) == clip.n_frames == len(clip.landmarks)


def test_audio_modes(clips: dict[str, SyntheticClip]) -> None:
    speech, silence, none = (probe_video(clips[k].path) for k in ("real", "silence", "empty"))
    assert speech.has_audio and speech.audio_codec == "aac"
    assert silence.has_audio and silence.audio_codec == "aac"
    assert not none.has_audio and not clips["empty"].has_audio
    assert np.abs(decode_audio(clips["silence"].path)).max() < 1e-3
    assert np.sqrt(np.mean(decode_audio(clips["real"].path) ** 2)) > 0.01
    assert clips["silence"].speech_segments == [] and clips["empty"].speech_segments == []


def test_speech_segments_are_where_the_sound_is(clips: dict[str, SyntheticClip]) -> None:
    clip = clips["real"]
    segments = clip.speech_segments
    assert segments
    assert all(0.0 <= a < b <= clip.duration for a, b in segments)
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(segments, segments[1:], strict=False))
    audio = decode_audio(clip.path)
    t = np.arange(len(audio)) / 16000
    inside = np.zeros(len(audio), bool)
    for a, b in segments:
        inside |= (t >= a + 0.05) & (t <= b - 0.05)
    outside = np.ones(len(audio), bool)
    for a, b in segments:
        outside &= (t < a - 0.1) | (t > b + 0.1)
    assert outside.any()
    rms_in = np.sqrt(np.mean(audio[inside] ** 2))
    rms_out = np.sqrt(np.mean(audio[outside] ** 2))
    assert rms_in > 20 * max(rms_out, 1e-5)


@pytest.mark.parametrize(("name", "n_faces"), [("real", 1), ("two", 2), ("empty", 0), ("face_swap", 1)])
def test_detector_finds_the_faces_where_the_ground_truth_says(
    clips: dict[str, SyntheticClip], name: str, n_faces: int
) -> None:
    clip = clips[name]
    frames = decode_frames(clip.path, W, H)
    sampled = range(0, len(frames), 5)
    counts, errors = [], []
    for i in sampled:
        found = detect(frames[i])
        counts.append(len(found))
        for landmarks in found:
            truth = clip.landmarks[i]  # (faces, 5, 2)
            distance = np.linalg.norm(truth - landmarks[None], axis=-1).mean(-1)
            j = int(distance.argmin())
            interocular = np.linalg.norm(truth[j, 1] - truth[j, 0])
            errors.append(distance[j] / interocular)
    assert np.mean(np.array(counts) == n_faces) >= 0.8, counts
    if n_faces:
        # Normalised mean error, as face-alignment papers report it; RetinaFace itself is ~0.05–0.1.
        assert np.median(errors) < 0.12 and np.max(errors) < 0.25, errors
        interocular = np.linalg.norm(clip.landmarks[:, :, 1] - clip.landmarks[:, :, 0], axis=-1)
        assert interocular.min() > 15  # large enough for the detector and a 224x224 crop


def test_identities_differ_and_are_stable() -> None:
    a, b, a_again = make_identity(0), make_identity(1), make_identity(0)
    assert np.array_equal(a.rgb, a_again.rgb) and np.array_equal(a.landmarks, a_again.landmarks)

    def layout(landmarks: np.ndarray) -> np.ndarray:
        centred = landmarks - landmarks.mean(0)
        return centred / np.linalg.norm(landmarks[1] - landmarks[0])

    assert np.abs(layout(a.landmarks) - layout(b.landmarks)).max() > 0.03  # face geometry
    inner_a = a.rgb[a.inner_face_mask > 0.5].astype(float).mean(0)
    inner_b = b.rgb[b.inner_face_mask > 0.5].astype(float).mean(0)
    assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() > 8 or np.abs(inner_a - inner_b).max() > 8


def test_manipulations_change_the_face_and_leave_the_scene(clips: dict[str, SyntheticClip]) -> None:
    real = decode_frames(clips["real"].path, W, H).astype(np.int16)
    for name in MANIPULATIONS:
        clip = clips[name]
        assert clip.label == "fake" and clip.manipulation == name
        fake = decode_frames(clip.path, W, H).astype(np.int16)
        if name == "reenactment":
            # Pose comes from another performance.
            assert np.abs(clip.landmarks - clips["real"].landmarks).mean() > 2
            continue
        assert np.allclose(clip.landmarks, clips["real"].landmarks)
        face = np.zeros(fake.shape[:3], bool)  # per frame: the landmarks' box plus a margin
        for i, landmarks in enumerate(clip.landmarks[:, 0]):
            x0, y0 = np.maximum(landmarks.min(0) - 20, 0).astype(int)
            x1, y1 = (landmarks.max(0) + 20).astype(int)
            face[i, y0:y1, x0:x1] = True
        diff = np.abs(fake - real).mean(-1)
        assert diff[face].mean() > 5 * diff[~face].mean() + 0.5, name
    assert clips["face_swap"].donor_identity not in (None, clips["face_swap"].identity)
    assert clips["lip_sync"].driver_seed not in (None, clips["lip_sync"].seed)
    assert clips["real"].label == "real" and clips["real"].manipulation is None


def test_metadata_is_json(clips: dict[str, SyntheticClip]) -> None:
    meta = json.loads(json.dumps(clips["two"].to_dict()))
    assert "landmarks" not in meta
    assert meta["num_faces"] == 2 and meta["label"] == "real"
    assert clips["two"].landmarks.shape == (clips["two"].n_frames, 2, 5, 2)
    assert clips["empty"].landmarks.shape == (clips["empty"].n_frames, 0, 5, 2)


def test_rejects_bad_requests(tmp_path: Path) -> None:
    for kwargs in ({"width": 321}, {"audio": "music"}, {"num_faces": 3}, {"manipulation": "morph"}):
        with pytest.raises(ValueError):
            generate_clip(tmp_path / "bad.mp4", duration=0.2, **kwargs)
    with pytest.raises(ValueError):
        generate_clip(tmp_path / "bad.mp4", duration=0.2, num_faces=0, manipulation="face_swap")


def test_dataset_is_split_by_identity_and_balanced(tmp_path: Path) -> None:
    frame = generate_dataset(tmp_path, 12, seed=1, duration=0.4, width=128, height=96, n_identities=5)
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert list(manifest.columns) == [
        "path",
        "label",
        "split",
        "method",
        "identity",
        "seed",
        "has_audio",
        "duration",
    ]
    assert len(manifest) == len(frame) == 12
    assert manifest.groupby("identity")["split"].nunique().max() == 1
    assert set(manifest["split"]) == {"train", "val", "test"}
    counts = manifest["label"].value_counts()
    assert abs(counts["real"] - counts["fake"]) <= 1
    assert set(manifest.loc[manifest.label == "fake", "method"]) == set(MANIPULATIONS)
    assert set(manifest.loc[manifest.label == "real", "method"]) == {"original"}
    assert all((tmp_path / p).is_file() for p in manifest["path"])
    assert manifest["seed"].nunique() == 12
