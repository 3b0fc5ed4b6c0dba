"""Audio branch: raw 16 kHz waveform → wav2vec2 (or HuBERT) hidden states → 512-d speech frames.

HuBERT-base (`model.audio.encoder: hubert-base`, the contract FAQ's secondary encoder) has
wav2vec2-base's architecture (same CNN feature encoder, 12 × 768 transformer, group-norm
conv) with other pre-training, so it is built from the same sizes and takes the same freeze
policy; only the transformers class differs (`HubertModel`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertConfig, HubertModel, Wav2Vec2Model

from .configuration import AudioModelConfig

SpeechEncoder = Wav2Vec2Model | HubertModel
EncoderFamily = Literal["wav2vec2", "hubert"]


def encoder_family(config: AudioModelConfig) -> EncoderFamily:
    """`hubert` for `model.audio.encoder` names holding "hubert" (hubert-base, tiny-hubert,
    facebook/hubert-base-ls960) or a local folder whose config.json says `model_type: hubert`;
    else `wav2vec2`."""
    folder = Path(config.encoder).expanduser()
    if (folder / "config.json").is_file():
        try:
            model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        except (OSError, ValueError):
            model_type = None
        if model_type in ("wav2vec2", "hubert"):
            return model_type
    return "hubert" if "hubert" in config.encoder.lower() else "wav2vec2"


def encoder_class(config: AudioModelConfig) -> type[Wav2Vec2Model] | type[HubertModel]:
    return HubertModel if encoder_family(config) == "hubert" else Wav2Vec2Model


def build_speech_encoder(config: AudioModelConfig) -> SpeechEncoder:
    """A randomly initialised wav2vec2 / HuBERT of the configured sizes."""
    w2v = config.to_wav2vec2_config()
    if encoder_family(config) == "wav2vec2":
        return Wav2Vec2Model(w2v)
    keys = set(HubertConfig().to_dict())
    return HubertModel(HubertConfig(**{k: v for k, v in w2v.to_dict().items() if k in keys}))


def apply_freeze_policy(wav2vec2: SpeechEncoder, config: AudioModelConfig) -> None:
    """Set `requires_grad` on a wav2vec2 model according to the contract's freeze policy.

    Frozen: the CNN feature encoder (if `freeze_feature_encoder`) and transformer layers
    `[0, freeze_encoder_blocks)`, plus everything between them (feature projection, positional
    conv embedding, the pre-layer LayerNorm, the SpecAugment mask embedding): a module that
    only feeds frozen layers gains nothing from training. Trainable: the last
    `fine_tune_blocks` layers (and the final LayerNorm of stable-layer-norm variants, which
    sits after them).
    """
    layers = wav2vec2.encoder.layers
    if len(layers) != config.freeze_encoder_blocks + config.fine_tune_blocks:
        raise ValueError(
            f"wav2vec2 has {len(layers)} transformer layers but the freeze policy covers "
            f"{config.freeze_encoder_blocks} frozen + {config.fine_tune_blocks} fine-tuned"
        )
    for param in wav2vec2.parameters():
        param.requires_grad_(True)
    if config.freeze_feature_encoder:
        wav2vec2.feature_extractor._freeze_parameters()  # what freeze_feature_encoder() does (HuBERT lacks it)
    if config.freeze_encoder_blocks > 0:
        frozen: list[nn.Module | nn.Parameter] = [
            wav2vec2.feature_projection,
            wav2vec2.encoder.pos_conv_embed,
            *layers[: config.freeze_encoder_blocks],
        ]
        if not wav2vec2.config.do_stable_layer_norm:
            frozen.append(wav2vec2.encoder.layer_norm)  # applied before layer 0
        for item in frozen:
            params = [item] if isinstance(item, nn.Parameter) else item.parameters()
            for param in params:
                param.requires_grad_(False)
        if getattr(wav2vec2, "masked_spec_embed", None) is not None:
            wav2vec2.masked_spec_embed.requires_grad_(False)


def speech_mask_to_frames(speech_mask: torch.Tensor, num_frames: int, frame_stride: int) -> torch.Tensor:
    """Map a speech mask onto encoder frames.

    Args:
        speech_mask: (B, S) per waveform sample, or (B, T') per frame (any bool/0-1 dtype).
            A per-frame mask with T' == `num_frames` is used as is; another T' (e.g. VAD
            decisions at 30 ms) is resampled to the 20 ms grid by nearest neighbour.
        num_frames: T, the number of encoder frames.
        frame_stride: samples per encoder frame (320).
    Returns:
        (B, T) bool: a frame counts as speech when more than half of its samples are speech.
    """
    mask = speech_mask.float()
    batch, length = mask.shape
    if length == num_frames:
        return mask > 0.5
    if length < num_frames * frame_stride // 2:
        # Per-frame decisions on a different grid.
        return F.interpolate(mask[:, None], size=num_frames, mode="nearest")[:, 0] > 0.5
    needed = num_frames * frame_stride
    mask = F.pad(mask, (0, max(0, needed - length)))[:, :needed]
    return mask.view(batch, num_frames, frame_stride).mean(dim=-1) > 0.5


class AudioEncoder(nn.Module):
    """wav2vec2 (or HuBERT, attribute still `wav2vec2`) + linear projection, with the contract's freeze policy.

    forward(waveform (B, S) float at 16 kHz, speech_mask (B, S) | (B, T') | None)
        -> features (B, T, projection_dim), valid (B, T) bool

    T = the wav2vec2 output length (≈ S / 320, one frame per 20 ms). `valid` is False for
    frames that are not speech (per the VAD mask) so fusion never attends to silence.
    """

    def __init__(self, config: AudioModelConfig, wav2vec2: SpeechEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.wav2vec2 = wav2vec2 if wav2vec2 is not None else build_speech_encoder(config)
        if self.wav2vec2.config.hidden_size != config.hidden_size:
            raise ValueError(
                f"wav2vec2 hidden size {self.wav2vec2.config.hidden_size} != "
                f"audio.hidden_size {config.hidden_size}"
            )
        self.projection = nn.Linear(config.hidden_size, config.projection_dim)
        apply_freeze_policy(self.wav2vec2, config)

    def num_frames(self, num_samples: int) -> int:
        return int(self.wav2vec2._get_feat_extract_output_lengths(torch.tensor(num_samples)).item())

    def forward(
        self, waveform: torch.Tensor, speech_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if waveform.dim() != 2:
            raise ValueError(f"waveform must be (B, S), got {tuple(waveform.shape)}")
        waveform = waveform.float()
        if self.config.normalize_waveform:
            mean = waveform.mean(dim=-1, keepdim=True)
            std = waveform.std(dim=-1, keepdim=True)
            waveform = (waveform - mean) / (std + 1e-7)
        hidden = self.wav2vec2(waveform).last_hidden_state  # (B, T, hidden)
        features = self.projection(hidden)  # (B, T, projection_dim)
        batch, frames = features.shape[:2]
        if speech_mask is None:
            valid = torch.ones(batch, frames, dtype=torch.bool, device=features.device)
        else:
            valid = speech_mask_to_frames(speech_mask.to(features.device), frames, self.config.frame_stride)
        return features, valid
