"""Typed configuration of the detector: the contract's keys plus the internal sizes a variant needs.

`DetectorConfig` is to this package what `Wav2Vec2Config` is to transformers: one object that
fully determines the architecture, is serialised into every checkpoint manifest, and hashes to
the `config_hash` that prediction rows carry. Named variants live in `registry.py`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import Wav2Vec2Config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class AudioEncoderConfig(_Section):
    """wav2vec2 encoder + projection. Defaults are `facebook/wav2vec2-base`."""

    encoder: str = "facebook/wav2vec2-base"
    sample_rate: int = 16000
    hidden_size: int = 768
    num_encoder_blocks: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    # CNN feature encoder: 7 conv layers, total stride 320 samples = 20 ms at 16 kHz.
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    freeze_feature_encoder: bool = True
    freeze_encoder_blocks: int = 8
    fine_tune_blocks: int = 4
    projection_dim: int = 512
    # wav2vec2-base was pre-trained on zero-mean, unit-variance waveforms (its feature
    # extractor has do_normalize=True), so the encoder normalises each clip itself.
    normalize_waveform: bool = True

    @model_validator(mode="after")
    def _check_blocks(self) -> AudioEncoderConfig:
        if self.freeze_encoder_blocks < 0 or self.fine_tune_blocks < 0:
            raise ValueError("freeze_encoder_blocks and fine_tune_blocks must be >= 0")
        if self.freeze_encoder_blocks + self.fine_tune_blocks != self.num_encoder_blocks:
            raise ValueError(
                "audio freeze policy does not add up: freeze_encoder_blocks "
                f"({self.freeze_encoder_blocks}) + fine_tune_blocks ({self.fine_tune_blocks}) "
                f"must equal num_encoder_blocks ({self.num_encoder_blocks})"
            )
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
        return self

    @property
    def frame_stride(self) -> int:
        """Waveform samples per encoder frame (320 = 20 ms at 16 kHz for wav2vec2)."""
        stride = 1
        for s in self.conv_stride:
            stride *= s
        return stride

    def to_wav2vec2_config(self) -> Wav2Vec2Config:
        return Wav2Vec2Config(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_encoder_blocks,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            conv_dim=self.conv_dim,
            conv_kernel=self.conv_kernel,
            conv_stride=self.conv_stride,
            num_conv_pos_embeddings=self.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=self.num_conv_pos_embedding_groups,
        )


class FrameEncoderConfig(_Section):
    """timm image backbone over aligned faces, concatenated with the per-frame flow summary."""

    backbone: str = "efficientnet_b3"
    backbone_weights: str | None = None
    feature_dim: int = 1536
    flow_features: int = 2
    input_size: int = 224

    @property
    def frame_dim(self) -> int:
        """Per-frame feature size fed to the temporal encoder (1536 + 2 = 1538)."""
        return self.feature_dim + self.flow_features


class TemporalEncoderConfig(_Section):
    encoder_type: Literal["conv1d", "transformer"] = "conv1d"
    window_frames: int = 5
    output_dim: int = 2048
    conv_kernel_size: int = 3
    transformer_dim: int = 512
    transformer_layers: int = 2
    transformer_heads: int = 8
    dropout: float = 0.1


class FusionConfig(_Section):
    type: Literal["cross_modal_attention"] = "cross_modal_attention"
    hidden_dim: int = 512
    num_heads: int = 4
    output_dim: int = 2560
    attention_dropout: float = 0.0
    # Probability (training mode only) of replacing a sample's audio context by the
    # learned no-audio embedding, so the model also learns to decide from video alone.
    modality_dropout: float = 0.2


class HeadConfig(_Section):
    dropout: float = 0.2
    num_classes: int = 2
    threshold: float = 0.5


class DetectorConfig(_Section):
    """Everything that determines the detector's architecture (and nothing operational)."""

    name: str = "contract"
    audio: AudioEncoderConfig = Field(default_factory=AudioEncoderConfig)
    video: FrameEncoderConfig = Field(default_factory=FrameEncoderConfig)
    temporal: TemporalEncoderConfig = Field(default_factory=TemporalEncoderConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    # Whether loaders may look for pretrained weights at all (False for toy variants,
    # whose sizes match no published checkpoint).
    allow_pretrained: bool = True

    @model_validator(mode="after")
    def _check_dims(self) -> DetectorConfig:
        expected = self.temporal.output_dim + self.fusion.hidden_dim
        if self.fusion.output_dim != expected:
            raise ValueError(
                f"fusion.output_dim ({self.fusion.output_dim}) must equal temporal.output_dim "
                f"+ fusion.hidden_dim ({self.temporal.output_dim} + {self.fusion.hidden_dim} = {expected})"
            )
        if self.fusion.hidden_dim % self.fusion.num_heads:
            raise ValueError("fusion.hidden_dim must be divisible by fusion.num_heads")
        if self.audio.projection_dim != self.fusion.hidden_dim:
            raise ValueError(
                f"audio.projection_dim ({self.audio.projection_dim}) must equal "
                f"fusion.hidden_dim ({self.fusion.hidden_dim}): audio frames are the attention keys"
            )
        if self.temporal.window_frames < 1:
            raise ValueError("temporal.window_frames must be >= 1")
        return self

    def config_hash(self) -> str:
        """Short, stable hash of the architecture (the checkpoint's and prediction rows' `config_hash`)."""
        payload = self.model_dump(mode="json", exclude={"name"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
