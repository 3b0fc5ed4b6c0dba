"""Window augmentation: one random draw per window, reproducible by seed, identity in eval."""

from __future__ import annotations

import pytest
import torch

from dagster_deepfake.config import AugmentationConfig
from dagster_deepfake.training.augment import WindowAugment


@pytest.fixture
def window() -> torch.Tensor:
    """Five different uint8 frames of a textured 'face' (a gradient plus noise), 240x256."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 200, 256).expand(240, 256)
    base = torch.stack([ramp, ramp.flip(-1), ramp.T[:240, :240].repeat(1, 2)[:, :256]])
    frames = base[None] + torch.randint(0, 40, (5, 3, 240, 256), generator=g)
    return frames.clamp(0, 255).to(torch.uint8)


def test_identical_frames_stay_identical(window):
    frames = window[:1].repeat(5, 1, 1, 1)
    for seed in range(5):
        out, _ = WindowAugment(seed=seed)(frames)
        assert out.shape == (5, 3, 224, 224)
        assert all(torch.equal(out[0], out[i]) for i in range(1, 5))


def test_one_draw_per_window_applied_to_every_frame(window):
    out, _ = WindowAugment(seed=11)(window)
    twin = WindowAugment(seed=11)  # same stream: draw the same parameters, apply frame by frame
    params = twin.sample_params(240, 256)
    for i in range(window.shape[0]):
        assert torch.equal(out[i], twin.apply(window[i : i + 1], params)[0])


def test_seeds_reproduce_and_differ(window):
    a, _ = WindowAugment(seed=3)(window)
    b, _ = WindowAugment(seed=3)(window)
    c, _ = WindowAugment(seed=4)(window)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    augment = WindowAugment(seed=3)
    first, _ = augment(window)
    second, _ = augment(window)
    assert not torch.equal(first, second)  # each window gets a fresh draw


def test_eval_mode_is_identity_and_flow_passes_through(window):
    flow = torch.rand(5, 2)
    out, flow_out = WindowAugment(train=False, seed=0)(window, flow)
    assert out is window and flow_out is flow
    _, flow_train = WindowAugment(seed=0)(window, flow)
    assert torch.equal(flow_train, flow)
    with pytest.raises(ValueError):
        WindowAugment(seed=0)(window, torch.rand(4, 2))


def test_dtype_kept_and_float_range(window):
    augment = WindowAugment(seed=5)
    out_u8, _ = augment(window)
    assert out_u8.dtype == torch.uint8
    out_f, _ = augment(window.float() / 255)
    assert out_f.dtype == torch.float32
    assert out_f.min() >= 0 and out_f.max() <= 1


def test_flip_alone_mirrors_every_frame(window):
    frames = window[..., :224, :224].contiguous()
    augment = WindowAugment(color_jitter=False, random_crop=False, flip_probability=1.0, seed=0)
    out, _ = augment(frames)
    assert torch.equal(out, frames.flip(-1))


def test_switches_from_config(window):
    frames = window[..., :224, :224].contiguous()
    all_off = AugmentationConfig(color_jitter=False, random_crop=False, random_flip=False)
    for seed in range(3):
        out, _ = WindowAugment.from_config(all_off, seed=seed)(frames)
        assert torch.equal(out, frames)
    jitter_only = AugmentationConfig(color_jitter=True, random_crop=False, random_flip=False)
    means = {
        round(float(WindowAugment.from_config(jitter_only, seed=s)(frames)[0].float().mean()), 3)
        for s in range(4)
    }
    assert len(means) > 1  # brightness/contrast actually vary between draws


def test_crop_box_within_scale_range():
    augment = WindowAugment(seed=9)
    for _ in range(50):
        p = augment.sample_params(224, 224)
        area = p.crop_height * p.crop_width / 224**2
        assert 0.84 <= area <= 1.0
        assert 0 <= p.crop_top <= 224 - p.crop_height and 0 <= p.crop_left <= 224 - p.crop_width
