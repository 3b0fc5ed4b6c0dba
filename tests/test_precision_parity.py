"""Every reduced-precision path against fp32 torch on the same inputs: |ΔP(fake)| ≤ 0.01
(`models.inference.BF16_MAX_P_FAKE_SHIFT`, issue 20).

The reduced paths are bf16 autocast for the face backbone and wav2vec2 (the default on CPUs
with native bf16, `default_bf16`), both through `predict_video` encoding the audio itself and
through the Dagster path's precomputed `audio_embeddings` stage. Emulated bf16 computes the same
numbers as native bf16 (only slower), so the check holds on any CPU. The bench repeats it on the
full-size contract model (`make bench`: |ΔP(fake)| on the 30 s 720p clip).
"""

from __future__ import annotations

import numpy as np
import pytest

from dagster_deepfake import stages
from dagster_deepfake.models import build_detector, get_model_config
from dagster_deepfake.models.inference import BF16_MAX_P_FAKE_SHIFT, default_bf16, predict_video

SAMPLE_RATE = 16000


@pytest.fixture(scope="module")
def tiny():
    model, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=0)
    return model.eval()


def _video(seed: int, faces: int = 12, seconds: float = 3.0):
    """Face-like crops (smooth blobs, not noise), flow, speech-like audio and a partial VAD mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    base = np.exp(-(((yy - 32) / 18.0) ** 2 + ((xx - 32) / 14.0) ** 2))
    crops = np.stack(
        [
            np.clip(
                255 * (base[..., None] * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 0.05, (64, 64, 3))), 0, 255
            )
            for _ in range(faces)
        ]
    ).astype(np.uint8)
    flow = rng.gamma(2.0, 0.5, size=(faces, 2)).astype(np.float32)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    waveform = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    waveform += rng.normal(0, 0.01, waveform.shape).astype(np.float32)
    mask = np.zeros(len(t), bool)
    mask[SAMPLE_RATE // 2 : int(2.5 * SAMPLE_RATE)] = True
    return crops, flow, waveform, mask, np.arange(faces) / 5.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_predict_video_matches_fp32(tiny, seed):
    crops, flow, waveform, mask, timestamps = _video(seed)
    kwargs = {"timestamps": timestamps, "frame_rate": 5.0, "batch_size": 5}
    fp32 = predict_video(tiny, crops, flow, waveform, mask, bf16=False, **kwargs)
    bf16 = predict_video(tiny, crops, flow, waveform, mask, bf16=True, **kwargs)
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    assert not np.array_equal(bf16.window_logits, fp32.window_logits)  # the reduced path really ran
    assert abs(bf16.p_fake - fp32.p_fake) <= BF16_MAX_P_FAKE_SHIFT
    assert abs(bf16.p_fake_video_only - fp32.p_fake_video_only) <= BF16_MAX_P_FAKE_SHIFT
    assert np.abs(bf16.window_probs - fp32.window_probs).max() <= BF16_MAX_P_FAKE_SHIFT
    assert bf16.audio_used and fp32.audio_used


def test_bf16_audio_embeddings_stage_matches_fp32(tiny):
    """The Dagster path: audio encoded once by the audio_embeddings stage, then the predictions."""
    crops, flow, waveform, mask, timestamps = _video(3)
    audio_in = stages.AudioInput(waveform, mask, [(0.5, 2.5)])
    reference = stages.audio_embeddings_stage(tiny, audio_in, "cpu", bf16=False)
    reduced = stages.audio_embeddings_stage(tiny, audio_in, "cpu", bf16=True)
    assert reference.features.dtype == reduced.features.dtype == np.float32
    assert (reference.valid == reduced.valid).all() and reference.used

    def p(emb, bf16):
        return predict_video(
            tiny,
            crops,
            flow,
            timestamps=timestamps,
            bf16=bf16,
            audio_features=emb.features,
            audio_valid=emb.valid,
        )

    fp32, bf16 = p(reference, False), p(reduced, True)
    assert abs(bf16.p_fake - fp32.p_fake) <= BF16_MAX_P_FAKE_SHIFT
    assert np.abs(bf16.window_probs - fp32.window_probs).max() <= BF16_MAX_P_FAKE_SHIFT


def test_the_default_precision_is_within_tolerance_of_fp32(tiny):
    """Whatever this machine picks by default (bf16 on native-bf16 CPUs, else fp32) agrees with fp32."""
    crops, flow, waveform, mask, timestamps = _video(4)
    default = predict_video(tiny, crops, flow, waveform, mask, timestamps=timestamps)
    fp32 = predict_video(tiny, crops, flow, waveform, mask, timestamps=timestamps, bf16=False)
    assert default.precision == ("bf16" if default_bf16("cpu") else "fp32")
    assert abs(default.p_fake - fp32.p_fake) <= BF16_MAX_P_FAKE_SHIFT
