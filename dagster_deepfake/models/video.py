"""Video branch: per-face appearance (timm backbone) + flow → per-window temporal features."""

from __future__ import annotations

import math
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .configuration import TemporalModelConfig, VideoModelConfig


def backbone_output_dim(backbone: nn.Module) -> int:
    """Width of a timm model's pooled output with `num_classes=0`.

    Most timm models return `num_features`; a few (MobileNetV3, …) add a pre-logits
    layer whose width is `head_hidden_size`.
    """
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def _backbone_channels_last(module: FrameEncoder, _incompatible_keys: object) -> None:
    module.backbone.to(memory_format=torch.channels_last)


class FrameEncoder(nn.Module):
    """timm image backbone with its classifier removed.

    forward(faces (M, 3, H, W) normalised float) -> (M, feature_dim)   [1536 for EfficientNet-B3]

    `video.freeze_backbone`: its parameters get no gradient and it stays in eval mode (batch
    norm statistics and dropout frozen) even while the rest of the detector trains.
    """

    def __init__(self, config: VideoModelConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = (
            backbone
            if backbone is not None
            else timm.create_model(config.backbone, pretrained=False, num_classes=0)
        )
        width = backbone_output_dim(self.backbone)
        if width != config.feature_dim:
            raise ValueError(
                f"backbone {config.backbone!r} outputs {width} features but "
                f"video.feature_dim is {config.feature_dim}"
            )
        # channels_last is the fast layout for convolutions on CPU (docs/ARCHITECTURE.md §7: 12.7 s → 7.3 s).
        self.backbone.to(memory_format=torch.channels_last)
        # Loading with `assign=True` (checkpoint.load_checkpoint) puts the file's contiguous tensors
        # in place of these: lay them out again, so a loaded model computes what the saved one did.
        self.register_load_state_dict_post_hook(_backbone_channels_last)
        self.frozen = config.freeze_backbone
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> FrameEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def data_config(self) -> dict[str, object]:
        """timm's preprocessing for this backbone (mean, std, interpolation …)."""
        return timm.data.resolve_data_config({}, model=self.backbone)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_maps(faces))

    def feature_maps(self, faces: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) → the backbone's last feature map (M, C, h, w): timm's `forward_features`,
        EfficientNet's `conv_head` → `bn2` + activation (1536 × 7 × 7 for B3), Grad-CAM's layer."""
        return self.backbone.forward_features(faces.contiguous(memory_format=torch.channels_last))

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """(M, C, h, w) feature maps → (M, feature_dim): timm's `forward_head` (global pooling)."""
        return self.backbone.forward_head(maps)


def split_windows(
    frames: torch.Tensor, frame_mask: torch.Tensor, window_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a frame sequence into fixed windows, padding the last one.

    Args:
        frames: (B, N, D); frame_mask: (B, N) bool.
    Returns:
        windows (B, W, window_frames, D) with padded/missing frames zeroed,
        window_frame_mask (B, W, window_frames) bool, where W = ceil(N / window_frames).
    """
    batch, count, dim = frames.shape
    num_windows = max(1, math.ceil(count / window_frames))
    pad = num_windows * window_frames - count
    frames = F.pad(frames * frame_mask[..., None].to(frames.dtype), (0, 0, 0, pad))
    mask = F.pad(frame_mask, (0, pad), value=False)
    return (
        frames.view(batch, num_windows, window_frames, dim),
        mask.view(batch, num_windows, window_frames),
    )


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of `values` over `dim` where `mask` is True; 0 where nothing is valid (never NaN)."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    total = (values * weights).sum(dim=dim)
    return total / weights.sum(dim=dim).clamp(min=1.0)


class Conv1dTemporalEncoder(nn.Module):
    """Conv1d over the frames of each 1-second window, then a masked mean over the window.

    forward(windows (B, W, K, D_in), mask (B, W, K)) -> (B, W, output_dim)   [D_in 1538 → 2048]
    """

    def __init__(self, input_dim: int, config: TemporalModelConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            input_dim, config.output_dim, config.conv_kernel_size, padding=config.conv_kernel_size // 2
        )
        self.activation = nn.GELU()

    def forward(self, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, num_windows, frames, dim = windows.shape
        x = windows.reshape(batch * num_windows, frames, dim).transpose(1, 2)  # (B·W, D_in, K)
        x = self.activation(self.conv(x)).transpose(1, 2)  # (B·W, K, output_dim)
        pooled = masked_mean(x, mask.reshape(batch * num_windows, frames), dim=1)
        return pooled.view(batch, num_windows, -1)


class TransformerTemporalEncoder(nn.Module):
    """Phase-3 option: a small transformer encoder over the frames of each window, pooled.

    forward(windows (B, W, K, D_in), mask (B, W, K)) -> (B, W, output_dim)
    """

    def __init__(self, input_dim: int, config: TemporalModelConfig) -> None:
        super().__init__()
        self.input_projection = nn.Linear(input_dim, config.transformer_dim)
        self.position = nn.Parameter(torch.zeros(1, config.window_frames, config.transformer_dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.transformer_dim,
            config.transformer_heads,
            dim_feedforward=4 * config.transformer_dim,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.transformer_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.transformer_dim)
        self.output_projection = nn.Linear(config.transformer_dim, config.output_dim)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, num_windows, frames, dim = windows.shape
        flat_mask = mask.reshape(batch * num_windows, frames)
        x = self.input_projection(windows.reshape(batch * num_windows, frames, dim)) + self.position
        # A window with no valid frame would make every attention row -inf → NaN; let it
        # attend to its (zeroed) padding and drop its output in the pooling instead.
        padding = ~flat_mask & flat_mask.any(dim=1, keepdim=True)
        x = self.norm(self.encoder(x, src_key_padding_mask=padding))
        pooled = masked_mean(x, flat_mask, dim=1)
        return self.output_projection(pooled).view(batch, num_windows, -1)


TEMPORAL_ENCODERS: dict[str, Callable[[int, TemporalModelConfig], nn.Module]] = {
    "conv1d": Conv1dTemporalEncoder,
    "transformer": TransformerTemporalEncoder,
}


def create_temporal_encoder(input_dim: int, config: TemporalModelConfig) -> nn.Module:
    try:
        factory = TEMPORAL_ENCODERS[config.encoder_type]
    except KeyError:
        raise ValueError(
            f"unknown temporal encoder {config.encoder_type!r}; known: {', '.join(TEMPORAL_ENCODERS)}"
        ) from None
    return factory(input_dim, config)


class VideoEncoder(nn.Module):
    """Per-frame features → windows → temporal encoder.

    forward(frame_features (B, N, feature_dim), flow (B, N, flow_features), frame_mask (B, N))
        -> window_features (B, W, output_dim), window_mask (B, W) bool
    """

    def __init__(self, video: VideoModelConfig, temporal: TemporalModelConfig) -> None:
        super().__init__()
        self.window_frames = temporal.window_frames
        self.temporal = create_temporal_encoder(video.frame_dim, temporal)

    def forward(
        self, frame_features: torch.Tensor, flow: torch.Tensor, frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.cat([frame_features, flow.to(frame_features.dtype)], dim=-1)  # (B, N, 1538)
        windows, mask = split_windows(frames, frame_mask, self.window_frames)
        return self.temporal(windows, mask), mask.any(dim=-1)
