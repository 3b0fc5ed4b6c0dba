"""16 kHz PCM extraction and WebRTC VAD on generated speech, silence and the shared clips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.audio import extract_audio
from dagster_deepfake.media.vad import SpeechActivity, detect_speech
from tests.conftest import shared_clip


def _speech_video(tmp_path: Path, lead: float = 1.0, tail: float = 1.0) -> tuple[Path, float]:
    """A video whose audio is `lead` s of silence, espeak-ng speech, then `tail` s of silence."""
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog."], check=True)
    out = tmp_path / "speech.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=size=160x120:rate=25",
            "-i",
            str(wav),
            "-filter_complex",
            f"[1:a]adelay={int(lead * 1000)},apad=pad_dur={tail}[a]",
            "-map",
            "0:v",
            "-map",
            "[a]",
            "-shortest",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            str(out),
        ],
        check=True,
    )
    speech_len = float(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(wav)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return out, speech_len


def test_extract_is_16k_mono_int16(tmp_path):
    path, speech_len = _speech_video(tmp_path)
    track = extract_audio(path)
    assert track is not None and track.sample_rate == 16000
    assert track.pcm.dtype == np.int16 and track.pcm.ndim == 1
    assert track.duration == pytest.approx(1.0 + speech_len + 1.0, abs=0.15)
    assert track.as_float().min() >= -1.0 and track.as_float().max() < 1.0


def test_vad_finds_speech_where_espeak_spoke(tmp_path):
    path, speech_len = _speech_video(tmp_path, lead=1.0, tail=1.0)
    speech = detect_speech(extract_audio(path), aggressiveness=2)
    assert speech.segments, "no speech found"
    start, end = speech.segments[0][0], speech.segments[-1][1]
    assert start == pytest.approx(1.0, abs=0.25)
    assert end == pytest.approx(1.0 + speech_len, abs=0.3)
    mask = speech.mask_20ms
    assert not mask[: int(0.8 / 0.02)].any()  # the leading silence is not speech
    assert mask[int((1.0 + speech_len / 2) / 0.02)]
    table = speech.to_frame()
    assert list(table.columns) == ["segment_id", "start", "end", "duration"]
    assert speech.speech_seconds == pytest.approx(table["duration"].sum())


def test_silence_and_missing_audio_are_not_errors(tmp_path, ffmpeg_video):
    silent = tmp_path / "silent.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=size=160x120:rate=25",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=44100:cl=stereo",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            str(silent),
        ],
        check=True,
    )
    track = extract_audio(silent)
    assert track is not None and detect_speech(track).segments == []
    assert extract_audio(ffmpeg_video(audio=False)) is None
    empty = SpeechActivity.empty(2.0)
    assert empty.speech_seconds == 0 and len(empty.mask_20ms) == 100 and not empty.mask_20ms.any()


def test_shared_clips():
    assert extract_audio(shared_clip("ffpp_c23_real_004.mp4")) is None
    speech = detect_speech(extract_audio(shared_clip("retalking_face_2_real.mp4")))
    assert speech.speech_seconds > 2.0


def test_garbage_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(InvalidVideoError, match="bad.mp4"):
        extract_audio(bad, has_audio=True)
