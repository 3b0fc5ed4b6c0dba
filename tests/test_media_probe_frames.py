"""probe_video / validate_probe / sample_frames on generated and shared media."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.frames import expected_frame_count, sample_frames
from dagster_deepfake.media.probe import probe_video, validate_probe
from tests.conftest import shared_clip

SCOPE = {"min_height": 240, "max_height": 1080, "max_duration_seconds": 900}


def test_probe_reads_stream_facts(ffmpeg_video):
    path = ffmpeg_video(size="320x240", duration=2.0, rate=25, audio=True)
    p = probe_video(path)
    assert (p.codec, p.width, p.height) == ("h264", 320, 240)
    assert p.fps == pytest.approx(25.0)
    assert p.duration == pytest.approx(2.0, abs=0.1)
    assert p.has_audio and p.audio_codec == "aac"
    assert p.rotation == 0


def test_probe_without_audio(ffmpeg_video):
    p = probe_video(ffmpeg_video(audio=False))
    assert not p.has_audio and p.audio_codec is None
    assert any("no audio" in w for w in validate_probe(p, **SCOPE))


def test_rotated_video_reports_display_size(ffmpeg_video, tmp_path):
    src = ffmpeg_video(size="320x240", audio=False)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(src),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            str(rotated),
        ],
        check=True,
    )
    p = probe_video(rotated)
    assert p.rotation in (90, 270)
    assert (p.width, p.height) == (240, 320)
    frames = list(sample_frames(rotated, p, 5))
    assert frames[0].image.shape == (320, 240, 3)  # decoded upright


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"\x00\x01garbage" * 100, "not a readable media file"),
    ],
)
def test_probe_rejects_non_video(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(InvalidVideoError, match=reason) as err:
        probe_video(path)
    assert str(path) in str(err.value)


def test_probe_rejects_image_and_audio_only(tmp_path):
    png = tmp_path / "image.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240",
            "-frames:v",
            "1",
            "-f",
            "image2",
            "-c:v",
            "png",
            str(png),
        ],
        check=True,
    )
    with pytest.raises(InvalidVideoError, match="still image"):
        probe_video(png)
    audio = tmp_path / "audio.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=300", "-t", "1", str(audio)],
        check=True,
    )
    with pytest.raises(InvalidVideoError, match="audio-only"):
        probe_video(audio)


def test_truncated_file_is_rejected(ffmpeg_video, tmp_path):
    src = ffmpeg_video(duration=2.0)
    data = src.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 3])  # moov atom at the end is lost
    with pytest.raises(InvalidVideoError):
        p = probe_video(cut)
        list(sample_frames(cut, p, 5))


def test_validate_scope(ffmpeg_video):
    small = probe_video(ffmpeg_video("small.mp4", size="320x180", audio=False))
    with pytest.raises(InvalidVideoError, match="below the supported minimum of 240p"):
        validate_probe(small, **SCOPE)
    long = probe_video(ffmpeg_video("long.mp4", duration=3.0, audio=False))
    with pytest.raises(InvalidVideoError, match="exceeds the configured maximum"):
        validate_probe(long, **{**SCOPE, "max_duration_seconds": 2})


def test_sampling_grid_is_exact_and_stable(ffmpeg_video):
    path = ffmpeg_video(duration=3.0, rate=30)
    p = probe_video(path)
    first = list(sample_frames(path, p, 5))
    second = list(sample_frames(path, p, 5))
    assert [f.frame_id for f in first] == list(range(len(first)))
    assert len(first) == expected_frame_count(p, 5) == 15
    assert [f.timestamp for f in first] == pytest.approx([k / 5 for k in range(15)])
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, second, strict=True))
    # consecutive samples differ (the pattern moves), so this is not one frame repeated
    assert not np.array_equal(first[0].image, first[1].image)


@pytest.mark.parametrize("rate", [5, 10])
def test_shared_clip_sampling(rate):
    path = shared_clip("ffpp_c23_real_004.mp4")
    p = probe_video(path)
    assert (p.width, p.height, p.has_audio) == (1280, 720, False)
    frames = list(sample_frames(path, p, rate))
    assert abs(len(frames) - p.duration * rate) <= 1
    assert frames[0].image.shape == (720, 1280, 3)


def test_shared_clip_with_audio():
    p = probe_video(shared_clip("svls_wav2lip_fake.mp4"))
    assert p.has_audio and p.audio_sample_rate == 24000
    assert isinstance(p.path, str) and Path(p.path).name == "svls_wav2lip_fake.mp4"
