"""`data.vad_enabled` and `data.optical_flow_enabled` act in the per-video stages and the report
says so (the other contract keys: tests/test_config_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest

from dagster_deepfake import stages
from dagster_deepfake.analyze import analyze_file
from dagster_deepfake.config import ModelConfig
from dagster_deepfake.synthetic import generate_clip


@pytest.fixture
def talking(tmp_path):
    return generate_clip(tmp_path / "t.mp4", seed=4, duration=3.0, width=320, height=240, audio="speech")


def test_vad_off_encodes_the_whole_track(settings, talking):
    probe = stages.probe_stage(talking.path, settings).probe
    with_vad = stages.audio_stage(talking.path, probe, settings)
    settings.data.vad_enabled = False
    without = stages.audio_stage(talking.path, probe, settings)
    track_seconds = len(without.pcm) / without.sample_rate
    assert without.speech.segments == [(0.0, pytest.approx(track_seconds, abs=1e-3))]
    # The clip has pauses, which VAD drops and which are kept with VAD off.
    assert with_vad.speech.speech_seconds < track_seconds - 0.3
    np.testing.assert_array_equal(with_vad.pcm, without.pcm)


def test_flow_off_gives_zero_flow_inputs(settings, talking):
    probe = stages.probe_stage(talking.path, settings).probe
    extraction = stages.faces_stage(stages.frames_stage(talking.path, probe, settings), settings, "t")
    on = stages.flow_stage(extraction.crops, extraction.kept_frame_ids, settings)
    settings.data.optical_flow_enabled = False
    off = stages.flow_stage(extraction.crops, extraction.kept_frame_ids, settings)
    assert on.features[1:, 0].max() > 0  # a talking face moves
    assert off.features.shape == on.features.shape and not off.features.any()
    np.testing.assert_array_equal(off.frame_ids, on.frame_ids)
    np.testing.assert_array_equal(off.has_predecessor, on.has_predecessor)


@pytest.mark.slow
def test_report_says_which_switches_were_off(settings, talking, tmp_path):
    settings.model = ModelConfig(registry_config="tiny")
    settings.platform.model_dir = str(tmp_path / "models")
    settings.data.vad_enabled = False
    settings.data.optical_flow_enabled = False
    doc = analyze_file(talking.path, settings, device="cpu", out_dir=tmp_path / "heat").document
    add = doc["additions"]
    assert add["vad_enabled"] is False and add["optical_flow_enabled"] is False
    assert add["speech_seconds"] == pytest.approx(doc["metadata"]["video_duration_sec"], abs=0.1)
    assert any("data.vad_enabled: false" in w for w in add["warnings"])
    assert any("data.optical_flow_enabled: false" in w for w in add["warnings"])
