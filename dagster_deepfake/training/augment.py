"""Training-time augmentation of aligned face windows: colour jitter, random resized crop, flip.

One set of random parameters is drawn per call, i.e. per window (or clip), and applied to
every frame of it. Per-frame randomness would add a flicker between consecutive frames that
real videos do not have; the temporal model would learn it, and the temporal-consistency
loss would fight it. The contract's augmentations are kept mild because the faces are
already similarity-aligned: crop area 85-100 %, aspect ratio within ±10 %.

Optical-flow features (N, 2) pass through unchanged. They summarise the flow *magnitude*
between consecutive faces, which a horizontal flip does not change (it only negates the x
component); colour jitter does not move pixels; and the crop's zoom (at most ~8 %) is left
out on purpose: the flow describes the motion of the original clip, computed before any
augmentation.

The operations are torchvision's (``transforms.v2.functional``), with the parameters drawn
from our own ``torch.Generator`` so a seed reproduces a run exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from dagster_deepfake.config import AugmentationConfig


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the random parameters; applied identically to every frame of a window."""

    flip: bool
    crop_top: int
    crop_left: int
    crop_height: int
    crop_width: int
    brightness: float
    contrast: float
    saturation: float
    hue: float
    jitter_order: tuple[int, ...]
    """Order of (brightness, contrast, saturation, hue), as torchvision's ColorJitter permutes."""


class WindowAugment:
    """Augment a window of aligned faces, frames (N, 3, H, W) uint8 or float in [0, 1].

    Output: (N, 3, size, size), same dtype. ``train=False`` returns the input untouched
    (evaluation sees the faces as aligned). ``seed=None`` draws from torch's global RNG,
    which DataLoader seeds differently in each worker; an int seed gives this object its
    own generator and exactly reproducible draws (re-seed per worker with `reseed`).
    """

    def __init__(
        self,
        *,
        size: int = 224,
        train: bool = True,
        color_jitter: bool = True,
        random_crop: bool = True,
        random_flip: bool = True,
        crop_scale: tuple[float, float] = (0.85, 1.0),
        crop_ratio: tuple[float, float] = (0.9, 1.1),
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.02,
        flip_probability: float = 0.5,
        seed: int | None = None,
    ) -> None:
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {crop_ratio}")
        if not 0 <= hue <= 0.5:
            raise ValueError("hue must be in [0, 0.5]")
        self.size = size
        self.train = train
        self.color_jitter = color_jitter
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.flip_probability = flip_probability
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.reseed(seed)

    @classmethod
    def from_config(
        cls, config: AugmentationConfig, *, size: int = 224, train: bool = True, seed: int | None = None
    ) -> WindowAugment:
        """Build from ``data.augmentation``: each switch turns one augmentation on or off, and
        ``enable: false`` turns all of them off."""
        return cls(
            size=size,
            train=train,
            color_jitter=config.enable and config.color_jitter,
            random_crop=config.enable and config.random_crop,
            random_flip=config.enable and config.random_flip,
            seed=seed,
        )

    def reseed(self, seed: int) -> None:
        """Give this augmenter its own generator seeded with `seed`."""
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def sample_params(self, height: int, width: int) -> AugmentParams:
        """Draw one set of parameters for a window of frames of size (height, width)."""
        # Always draw every value, even for disabled augmentations, so switching one off
        # does not change the random stream of the others.
        flip = float(torch.rand((), generator=self.generator)) < self.flip_probability
        top, left, crop_h, crop_w = self._crop_box(height, width)
        brightness = self._uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        contrast = self._uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
        saturation = self._uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        hue = self._uniform(-self.hue, self.hue)
        order = tuple(int(i) for i in torch.randperm(4, generator=self.generator))
        if not self.random_crop:
            top, left, crop_h, crop_w = 0, 0, height, width
        if not self.color_jitter:
            brightness, contrast, saturation, hue = 1.0, 1.0, 1.0, 0.0
        return AugmentParams(
            flip=flip and self.random_flip,
            crop_top=top,
            crop_left=left,
            crop_height=crop_h,
            crop_width=crop_w,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            hue=hue,
            jitter_order=order,
        )

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box: area fraction in crop_scale, aspect ratio log-uniform in crop_ratio."""
        area = height * width
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        for _ in range(10):
            target_area = area * self._uniform(*self.crop_scale)
            ratio = math.exp(self._uniform(log_lo, log_hi))
            crop_w = round(math.sqrt(target_area * ratio))
            crop_h = round(math.sqrt(target_area / ratio))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = int(torch.randint(0, height - crop_h + 1, (), generator=self.generator))
                left = int(torch.randint(0, width - crop_w + 1, (), generator=self.generator))
                return top, left, crop_h, crop_w
        return 0, 0, height, width  # the ratio cannot fit (very narrow input): whole frame

    def apply(self, frames: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply `params` to every frame: (N, 3, H, W) → (N, 3, size, size), dtype kept."""
        out = TF.resized_crop(
            frames,
            top=params.crop_top,
            left=params.crop_left,
            height=params.crop_height,
            width=params.crop_width,
            size=[self.size, self.size],
            interpolation=InterpolationMode.BILINEAR,
            antialias=True,
        )
        if params.flip:
            out = TF.horizontal_flip(out)
        for step in params.jitter_order:
            if step == 0 and params.brightness != 1.0:
                out = TF.adjust_brightness(out, params.brightness)
            elif step == 1 and params.contrast != 1.0:
                out = TF.adjust_contrast(out, params.contrast)
            elif step == 2 and params.saturation != 1.0:
                out = TF.adjust_saturation(out, params.saturation)
            elif step == 3 and params.hue != 0.0:
                out = TF.adjust_hue(out, params.hue)
        return out

    def __call__(
        self, frames: torch.Tensor, flow: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment one window: returns (frames (N, 3, size, size), flow unchanged).

        In eval mode (``train=False``) both are returned as given.
        """
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (N, 3, H, W), got {tuple(frames.shape)}")
        if flow is not None and flow.shape[0] != frames.shape[0]:
            raise ValueError(f"flow has {flow.shape[0]} rows for {frames.shape[0]} frames")
        if not self.train:
            return frames, flow
        params = self.sample_params(frames.shape[-2], frames.shape[-1])
        return self.apply(frames, params), flow
