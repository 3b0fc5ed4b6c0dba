"""The full audio-visual deepfake detector (docs/ARCHITECTURE.md §1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .audio import AudioEncoder
from .configuration import DetectorConfig
from .fusion import ClassificationHead, CrossModalFusion
from .video import FrameEncoder, VideoEncoder, masked_mean


@dataclass
class DetectorOutput:
    """What one forward pass returns. B videos, N frames, W windows."""

    window_logits: torch.Tensor  # (B, W, 2) [real, fake]
    window_mask: torch.Tensor  # (B, W) bool: windows holding at least one face
    video_logits: torch.Tensor  # (B, 2): mean of the valid window logits
    video_features: torch.Tensor  # (B, W, temporal.output_dim) – 2048 for the contract
    audio_context: torch.Tensor  # (B, W, fusion.hidden_dim) – attended speech or no-audio embedding
    audio_used: torch.Tensor  # (B,) bool: the sample's prediction used audio
    frame_features: torch.Tensor  # (B, N, video.feature_dim) backbone features per face

    @property
    def p_fake(self) -> torch.Tensor:
        """(B,) uncalibrated P(fake) = softmax(video_logits)[:, 1]."""
        return self.video_logits.float().softmax(dim=-1)[:, 1]


def pool_window_logits(window_logits: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
    """(B, W, C), (B, W) -> (B, C): mean over valid windows (0 logits if none)."""
    return masked_mean(window_logits, window_mask, dim=1)


class DeepfakeDetector(nn.Module):
    """faces + flow + (optional) speech → per-window and per-video logits [real, fake].

    forward(faces (B, N, 3, H, W) normalised float, flow (B, N, 2), frame_mask (B, N) bool,
            waveform (B, S) | None, speech_mask (B, S) | (B, T) | None) -> DetectorOutput

    Shapes for the contract: faces → 1536 (+2 flow = 1538) → windows of 5 frames → 2048;
    speech → wav2vec2 768 → 512; fusion → 2048 + 512 = 2560 → 2.
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.frame_encoder = FrameEncoder(config.video)
        self.video_encoder = VideoEncoder(config.video, config.temporal)
        self.audio_encoder = AudioEncoder(config.audio)
        self.fusion = CrossModalFusion(config.temporal.output_dim, config.fusion)
        self.head = ClassificationHead(config.fusion.output_dim, config.classification)

    # -- inputs ---------------------------------------------------------------------------
    def preprocess_faces(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB crops (N, H, W, 3) → float (N, 3, H, W) with the backbone's normalisation."""
        data = self.frame_encoder.data_config()
        tensor = torch.as_tensor(crops)
        if tensor.dim() != 4 or tensor.shape[-1] != 3:
            raise ValueError(f"face crops must be (N, H, W, 3) RGB, got {tuple(tensor.shape)}")
        mean = torch.tensor(data["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(data["std"], dtype=torch.float32).view(1, 3, 1, 1)
        faces = tensor.permute(0, 3, 1, 2).float().div_(255.0)
        return ((faces - mean) / std).contiguous(memory_format=torch.channels_last)

    # -- stages ---------------------------------------------------------------------------
    def encode_faces(
        self,
        faces: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
        feature_maps: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, N, 3, H, W) → (B, N, feature_dim); masked frames are not run and stay 0.

        `feature_maps`: what computes the backbone's maps in place of `frame_encoder.feature_maps`
        (ONNX Runtime's session, models/onnx_backbone.py); the pooling stays the encoder's."""
        batch, count = faces.shape[:2]
        if frame_mask is None:
            frame_mask = torch.ones(batch, count, dtype=torch.bool, device=faces.device)
        selected = faces[frame_mask]  # (M, 3, H, W)
        encoder = self.frame_encoder
        run = encoder if feature_maps is None else lambda chunk: encoder.pool(feature_maps(chunk))
        if chunk_size:
            parts = [run(chunk) for chunk in selected.split(chunk_size)]
            encoded = torch.cat(parts) if parts else selected.new_zeros(0, self.config.video.feature_dim)
        else:
            encoded = run(selected)
        features = encoded.new_zeros(batch, count, encoded.shape[-1])
        features[frame_mask] = encoded
        return features

    def encode_audio(
        self, waveform: torch.Tensor | None, speech_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(B, S) → features (B, T, 512), valid (B, T); (None, None) without audio."""
        if waveform is None:
            return None, None
        return self.audio_encoder(waveform, speech_mask)

    def classify(
        self,
        video_features: torch.Tensor,
        window_mask: torch.Tensor,
        audio: torch.Tensor | None,
        audio_valid: torch.Tensor | None,
        *,
        force_no_audio: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fusion + head → window_logits (B, W, 2), video_logits (B, 2), audio_context, audio_used."""
        fused, context, used = self.fusion(video_features, audio, audio_valid, force_no_audio=force_no_audio)
        window_logits = self.head(fused)
        return window_logits, pool_window_logits(window_logits, window_mask), context, used

    def forward_features(
        self,
        frame_features: torch.Tensor,
        flow: torch.Tensor,
        frame_mask: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_valid: torch.Tensor | None = None,
    ) -> DetectorOutput:
        """Everything after the backbone and wav2vec2 (used by batched inference and training)."""
        video_features, window_mask = self.video_encoder(frame_features, flow, frame_mask)
        window_logits, video_logits, context, used = self.classify(
            video_features, window_mask, audio, audio_valid
        )
        return DetectorOutput(
            window_logits=window_logits,
            window_mask=window_mask,
            video_logits=video_logits,
            video_features=video_features,
            audio_context=context,
            audio_used=used,
            frame_features=frame_features,
        )

    def forward(
        self,
        faces: torch.Tensor,
        flow: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        waveform: torch.Tensor | None = None,
        speech_mask: torch.Tensor | None = None,
    ) -> DetectorOutput:
        if faces.dim() != 5:
            raise ValueError(f"faces must be (B, N, 3, H, W), got {tuple(faces.shape)}")
        if frame_mask is None:
            frame_mask = torch.ones(faces.shape[:2], dtype=torch.bool, device=faces.device)
        frame_features = self.encode_faces(faces, frame_mask)
        audio, audio_valid = self.encode_audio(waveform, speech_mask)
        return self.forward_features(frame_features, flow, frame_mask, audio, audio_valid)

    def video_only_logits(self, output: DetectorOutput) -> torch.Tensor:
        """(B, 2) logits of the same video features fused with the no-audio embedding.

        Compared with `output.video_logits` this gives "modality agreement": does the
        verdict change when the model cannot hear the speech?
        """
        _, video_logits, _, _ = self.classify(
            output.video_features, output.window_mask, None, None, force_no_audio=True
        )
        return video_logits
