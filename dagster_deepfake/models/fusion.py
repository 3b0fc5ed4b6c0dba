"""Cross-modal fusion (video windows query speech frames) and the classification head."""

from __future__ import annotations

import torch
from torch import nn

from .configuration import ClassificationConfig, FusionModelConfig


class CrossModalFusion(nn.Module):
    """Video queries audio with multi-head attention; a learned embedding stands in for no audio.

    forward(video (B, W, video_dim), audio (B, T, hidden) | None, audio_valid (B, T) bool | None,
            force_no_audio=False)
        -> fused (B, W, video_dim + hidden), audio_context (B, W, hidden), audio_used (B,) bool

    A sample uses the `no_audio` embedding instead of attention when it has no audio, no
    valid (speech) frame, when `force_no_audio` is set (the video-only path for modality
    agreement), or — in training mode only — with probability `modality_dropout` (`training.modality_dropout_prob`).
    """

    def __init__(self, video_dim: int, config: FusionModelConfig, modality_dropout: float = 0.0) -> None:
        super().__init__()
        # Set by the trainer from `training.modality_dropout_prob` (0 outside training).
        self.modality_dropout = modality_dropout
        self.query_projection = nn.Linear(video_dim, config.hidden_dim)
        self.attention = nn.MultiheadAttention(
            config.hidden_dim, config.attention_heads, dropout=config.attention_dropout, batch_first=True
        )
        self.no_audio = nn.Parameter(torch.zeros(config.hidden_dim))
        nn.init.normal_(self.no_audio, std=0.02)

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor | None,
        audio_valid: torch.Tensor | None,
        *,
        force_no_audio: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, num_windows, _ = video.shape
        no_audio = self.no_audio.to(video.dtype).expand(batch, num_windows, -1)
        if audio is None or force_no_audio:
            used = torch.zeros(batch, dtype=torch.bool, device=video.device)
            return torch.cat([video, no_audio], dim=-1), no_audio, used
        if audio_valid is None:
            audio_valid = torch.ones(audio.shape[:2], dtype=torch.bool, device=audio.device)
        used = audio_valid.any(dim=1)
        if self.training and self.modality_dropout > 0:
            keep = torch.rand(batch, device=video.device) >= self.modality_dropout
            used = used & keep
        queries = self.query_projection(video)  # (B, W, hidden)
        # Samples without speech would have every key masked (softmax of all -inf = NaN):
        # let them attend to everything, then overwrite their result with `no_audio`.
        key_padding_mask = ~audio_valid & used[:, None]
        attended, _ = self.attention(
            queries,
            audio.to(queries.dtype),
            audio.to(queries.dtype),
            key_padding_mask=key_padding_mask,
            need_weights=False,
        )  # (B, W, hidden)
        context = torch.where(used[:, None, None], attended, no_audio)
        return torch.cat([video, context], dim=-1), context, used


class ClassificationHead(nn.Module):
    """Dropout + linear. forward((..., in_dim)) -> (..., num_classes) logits [real, fake]."""

    def __init__(self, in_dim: int, config: ClassificationConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(in_dim, config.num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))
