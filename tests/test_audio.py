"""16 kHz PCM extraction and WebRTC VAD on espeak-ng speech, silence, odd containers and the shared clips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.audio import AudioTrack, extract_audio, write_wav
from dagster_deepfake.media.vad import SpeechActivity, detect_speech
from tests.conftest import shared_clip

LEAD_S = 1.0  # silence before the speech
TAIL_S = 1.0  # silence after it
_VIDEO = ["-f", "lavfi", "-i", "color=size=160x120:rate=25"]
_ENCODE = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"]


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _seconds(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


@pytest.fixture(scope="module")
def speech_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """An MP4 whose audio is LEAD_S of silence, espeak-ng speech (its length returned), TAIL_S of silence."""
    folder = tmp_path_factory.mktemp("speech")
    wav = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog."], check=True)
    out = folder / "speech.mp4"
    _ffmpeg(
        *_VIDEO,
        "-i",
        str(wav),
        "-filter_complex",
        f"[1:a]adelay={int(LEAD_S * 1000)},apad=pad_dur={TAIL_S}[a]",
        *("-map", "0:v", "-map", "[a]", "-shortest"),
        *_ENCODE,
        str(out),
    )
    return out, _seconds(wav)


def test_extract_is_16k_mono_int16_of_the_right_length(speech_video):
    path, speech_len = speech_video
    track = extract_audio(path)
    assert track is not None and track.sample_rate == 16000
    assert track.pcm.dtype == np.int16 and track.pcm.ndim == 1
    assert track.duration == pytest.approx(LEAD_S + speech_len + TAIL_S, abs=0.15)
    wave = track.as_float()
    assert wave.dtype == np.float32 and wave.min() >= -1.0 and wave.max() < 1.0
    assert np.abs(wave).max() > 0.05  # the speech survived decoding


def test_vad_finds_speech_only_where_espeak_spoke(speech_video):
    path, speech_len = speech_video
    track = extract_audio(path)
    speech = detect_speech(track, aggressiveness=2)
    assert speech.segments, "no speech found"
    start, end = speech.segments[0][0], speech.segments[-1][1]
    assert start == pytest.approx(LEAD_S, abs=0.2)
    assert end == pytest.approx(LEAD_S + speech_len, abs=0.25)
    # The merge rule keeps one sentence in few segments, not a flicker of syllables.
    assert len(speech.segments) <= 3
    assert all(e - s >= 0.09 for s, e in speech.segments)

    mask = speech.mask_20ms
    assert mask.shape == (int(np.ceil(track.duration / 0.02 - 1e-9)),) and mask.dtype == bool
    assert not mask[: int((LEAD_S - 0.2) / 0.02)].any()  # leading silence
    assert not mask[int((LEAD_S + speech_len + 0.25) / 0.02) :].any()  # trailing silence
    assert mask[int((LEAD_S + speech_len / 2) / 0.02)]
    samples = speech.sample_mask(len(track.pcm))
    assert samples.shape == track.pcm.shape
    assert samples.sum() / 16000 == pytest.approx(speech.speech_seconds, abs=0.01)

    table = speech.to_frame()
    assert list(table.columns) == ["segment_id", "start", "end", "duration"]
    assert speech.speech_seconds == pytest.approx(table["duration"].sum())
    assert (table["end"] > table["start"]).all()


def test_silence_and_missing_audio_are_not_errors(tmp_path, ffmpeg_video):
    silent = tmp_path / "silent.mp4"
    _ffmpeg(*_VIDEO, "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", "2", *_ENCODE, str(silent))
    track = extract_audio(silent)
    assert track is not None and track.duration == pytest.approx(2.0, abs=0.1)
    activity = detect_speech(track)
    assert activity.segments == [] and activity.speech_seconds == 0 and not activity.mask_20ms.any()
    assert extract_audio(ffmpeg_video(audio=False)) is None
    assert extract_audio(silent, has_audio=False) is None  # the caller's probe is trusted
    empty = SpeechActivity.empty(2.0)
    assert empty.speech_seconds == 0 and len(empty.mask_20ms) == 100 and not empty.mask_20ms.any()
    assert empty.to_frame().empty


def test_only_the_first_audio_stream_is_decoded(tmp_path):
    """Two audio tracks of different lengths: the 1 s first track is the one returned."""
    path = tmp_path / "two_tracks.mp4"
    _ffmpeg(
        *_VIDEO,
        *("-f", "lavfi", "-i", "sine=frequency=440:duration=1"),
        *("-f", "lavfi", "-i", "sine=frequency=880:duration=3"),
        *("-map", "0:v", "-map", "1:a", "-map", "2:a", "-t", "3"),
        *_ENCODE,
        str(path),
    )
    track = extract_audio(path)
    assert track is not None and track.duration == pytest.approx(1.0, abs=0.1)


def test_wav_round_trip_is_lossless(tmp_path):
    pcm = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 300) * 12000).astype(np.int16)
    wav = write_wav(AudioTrack(pcm, 16000), tmp_path / "tone.wav")
    back = extract_audio(wav)
    assert back is not None and np.array_equal(back.pcm, pcm)


def test_shared_clips():
    assert extract_audio(shared_clip("ffpp_c23_real_004.mp4")) is None
    track = extract_audio(shared_clip("retalking_face_2_real.mp4"))
    assert track is not None and track.duration == pytest.approx(5.0, abs=0.2)
    assert detect_speech(track).speech_seconds > 2.0


def test_garbage_is_a_clear_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(InvalidVideoError, match="bad.mp4") as probed:
        extract_audio(bad)  # found unreadable while probing for an audio stream
    assert probed.value.reason and probed.value.path == str(bad)
    with pytest.raises(InvalidVideoError, match="bad.mp4: audio could not be decoded"):
        extract_audio(bad, has_audio=True)  # the caller said there is audio; ffmpeg disagrees


def test_vad_rejects_what_webrtc_cannot_do():
    track = AudioTrack(np.zeros(22050, dtype=np.int16), 22050)
    with pytest.raises(ValueError, match="8/16/32/48 kHz"):
        detect_speech(track)
    with pytest.raises(ValueError, match="10, 20 or 30 ms"):
        detect_speech(AudioTrack(np.zeros(16000, dtype=np.int16), 16000), frame_ms=25)
