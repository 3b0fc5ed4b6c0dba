"""Clips for training and evaluation, and the collate function that batches them for the detector.

Training (`train=True`): each item is a random contiguous run of `clip_frames` kept faces
(default 10 = two 1-second windows at 5 FPS), the audio between the first face's timestamp
and one frame interval after the last face's, its speech mask, and one `WindowAugment` draw
applied to every face of the clip. Videos with fewer kept faces are used whole, padded and
masked. The start and the augmentation are drawn from a generator seeded by
(seed, epoch, index), so a run is reproducible and a resumed run sees the same clips.

Evaluation (`train=False`): each item is the whole video — every kept face and all its
audio — so the logits are exactly those `predict_video` produces at serving time (windows of
5 faces, mean of the window logits). Padding videos to a common length in a batch does not
change them: padded frames are masked and fully padded windows are dropped from the mean.
Optionally `max_eval_frames` caps very long videos to `segments` evenly spaced contiguous
runs whose faces are concatenated (windows stay inside one run as long as the run length
is a multiple of the window size, which `eval_segments` guarantees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from dagster_deepfake.models.detector import DeepfakeDetector
from dagster_deepfake.training.augment import WindowAugment
from dagster_deepfake.training.features import FeatureSource, VideoFeatures

#: Shortest waveform a batch is padded to: wav2vec2's CNN needs 400 samples (25 ms) for one frame.
MIN_AUDIO_SAMPLES = 400


@dataclass
class ClipSample:
    """One item of `ClipDataset`: faces are uint8 (n, 3, S, S), not yet normalised."""

    video_id: str
    label: int
    method: str
    faces: torch.Tensor  # (n, 3, S, S) uint8
    flow: torch.Tensor  # (n, 2) float32
    frame_mask: torch.Tensor  # (n,) bool
    waveform: torch.Tensor | None  # (s,) float32
    speech_mask: torch.Tensor | None  # (s,) bool


@dataclass
class ClipBatch:
    """What `DeepfakeDetector.forward` takes, plus labels and ids. B clips, N frames, S samples."""

    faces: torch.Tensor  # (B, N, 3, S, S) float, normalised like `model.preprocess_faces`
    flow: torch.Tensor  # (B, N, 2)
    frame_mask: torch.Tensor  # (B, N) bool
    waveform: torch.Tensor | None  # (B, S) float32, zero-padded; None when no clip has audio
    speech_mask: torch.Tensor | None  # (B, S) bool, False on padding and for clips without audio
    labels: torch.Tensor  # (B,) long, 0 real / 1 fake
    video_ids: list[str]
    methods: list[str]

    def to(self, device: str | torch.device) -> ClipBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return ClipBatch(
            faces=self.faces.to(device, non_blocking=True),
            flow=self.flow.to(device, non_blocking=True),
            frame_mask=self.frame_mask.to(device, non_blocking=True),
            waveform=move(self.waveform),
            speech_mask=move(self.speech_mask),
            labels=self.labels.to(device, non_blocking=True),
            video_ids=self.video_ids,
            methods=self.methods,
        )

    def __len__(self) -> int:
        return len(self.video_ids)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item in one epoch (numpy's SeedSequence mixes the parts)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def eval_segments(count: int, max_frames: int, window_frames: int) -> list[tuple[int, int]]:
    """Evenly spaced [start, end) runs of whole windows covering at most `max_frames` of `count` faces."""
    if count <= max_frames:
        return [(0, count)]
    run = max(window_frames, (max_frames // 2) // window_frames * window_frames)
    n_runs = max(1, max_frames // run)
    starts = np.linspace(0, count - run, n_runs).round().astype(int)
    return [(int(s), int(s) + run) for s in starts]


class ClipDataset(Dataset[ClipSample]):
    """Clips of the videos `video_ids`, read lazily from `source` (see module docstring).

    Args:
        video_ids: the videos, in a fixed order (index i is video_ids[i]).
        source: per-video features; wrap a file-backed source in `LRUFeatureSource`.
        train: random segment + augmentation (True) or the whole video (False).
        clip_frames: faces per training clip (a multiple of `window_frames` keeps windows whole).
        frame_rate: sampling rate of the faces (`data.frame_rate`), for the audio span's end.
        augment: applied in training only; None disables augmentation.
        max_eval_frames: evaluation cap per video (None = every face).
    """

    def __init__(
        self,
        video_ids: Sequence[str],
        source: FeatureSource,
        *,
        train: bool,
        clip_frames: int = 10,
        window_frames: int = 5,
        frame_rate: float = 5.0,
        augment: WindowAugment | None = None,
        max_eval_frames: int | None = None,
        seed: int = 0,
    ) -> None:
        if clip_frames < 1:
            raise ValueError("clip_frames must be >= 1")
        self.video_ids = list(video_ids)
        self.source = source
        self.train = train
        self.clip_frames = clip_frames
        self.window_frames = window_frames
        self.frame_rate = frame_rate
        self.augment = augment if train else None
        self.max_eval_frames = max_eval_frames
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the random stream of this epoch (clip starts, augmentation)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.video_ids)

    def labels(self) -> np.ndarray:
        """(n,) labels of every video (loads each video's features once)."""
        return np.array([self.source.load(v).label_int for v in self.video_ids], dtype=np.int64)

    def __getitem__(self, index: int) -> ClipSample:
        features = self.source.load(self.video_ids[index])
        if self.train:
            rng = np.random.default_rng(item_seed(self.seed, self.epoch, index))
            return self._train_clip(features, rng)
        return self._eval_clip(features)

    # -- training ---------------------------------------------------------------------------
    def _train_clip(self, features: VideoFeatures, rng: np.random.Generator) -> ClipSample:
        count = features.num_faces
        length = min(count, self.clip_frames)
        start = int(rng.integers(0, count - length + 1))
        faces = torch.from_numpy(np.ascontiguousarray(features.crops[start : start + length])).permute(
            0, 3, 1, 2
        )
        flow = torch.from_numpy(features.flow[start : start + length].astype(np.float32))
        if self.augment is not None:
            self.augment.reseed(int(rng.integers(0, 2**62)))
            faces, _ = self.augment(faces)
        waveform, speech = self._audio_span(features, start, start + length)
        pad = self.clip_frames - length
        mask = torch.ones(self.clip_frames, dtype=torch.bool)
        if pad:
            faces = torch.cat([faces, faces.new_zeros(pad, *faces.shape[1:])])
            flow = torch.cat([flow, flow.new_zeros(pad, 2)])
            mask[length:] = False
        return ClipSample(
            features.video_id, features.label_int, features.method, faces, flow, mask, waveform, speech
        )

    def _audio_span(
        self, features: VideoFeatures, start: int, end: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Audio from the first face's timestamp to one frame interval after the last face's."""
        if features.waveform is None:
            return None, None
        rate = features.sample_rate
        t0 = float(features.timestamps[start])
        t1 = float(features.timestamps[end - 1]) + 1.0 / self.frame_rate
        s0, s1 = int(round(t0 * rate)), int(round(t1 * rate))
        wave = features.waveform[s0:s1]
        if len(wave) == 0:
            return None, None
        speech = (
            features.speech_mask[s0:s1]
            if features.speech_mask is not None
            else np.ones(len(wave), dtype=bool)
        )
        return torch.from_numpy(wave.astype(np.float32)), torch.from_numpy(speech.astype(bool))

    @staticmethod
    def _whole_audio(features: VideoFeatures) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if features.waveform is None or len(features.waveform) == 0:
            return None, None
        wave = features.waveform
        speech = features.speech_mask if features.speech_mask is not None else np.ones(len(wave), dtype=bool)
        return torch.from_numpy(wave.astype(np.float32)), torch.from_numpy(speech.astype(bool))

    # -- evaluation -------------------------------------------------------------------------
    def _eval_clip(self, features: VideoFeatures) -> ClipSample:
        count = features.num_faces
        if self.max_eval_frames is None:
            spans = [(0, count)]
        else:
            spans = eval_segments(count, self.max_eval_frames, self.window_frames)
        index = np.concatenate([np.arange(a, b) for a, b in spans])
        faces = torch.from_numpy(np.ascontiguousarray(features.crops[index])).permute(0, 3, 1, 2)
        flow = torch.from_numpy(features.flow[index].astype(np.float32))
        if len(spans) == 1:
            # The whole waveform, as `predict_video` gets it at serving time.
            waveform, speech = self._whole_audio(features)
        else:
            parts = [self._audio_span(features, a, b) for a, b in spans]
            waves = [w for w, _ in parts if w is not None]
            masks = [m for _, m in parts if m is not None]
            waveform = torch.cat(waves) if waves else None
            speech = torch.cat(masks) if masks else None
        mask = torch.ones(len(index), dtype=torch.bool)
        return ClipSample(
            features.video_id, features.label_int, features.method, faces, flow, mask, waveform, speech
        )


class ClipCollator:
    """Pad and stack `ClipSample`s into a `ClipBatch`, normalising faces for the backbone.

    Build it with `ClipCollator.for_model(model)` so the normalisation is exactly
    `model.preprocess_faces`' (timm's mean/std for the backbone).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 1, 3, 1, 1)

    @classmethod
    def for_model(cls, model: DeepfakeDetector) -> ClipCollator:
        data = model.frame_encoder.data_config()
        return cls(data["mean"], data["std"])

    def __call__(self, samples: Sequence[ClipSample]) -> ClipBatch:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        frames = max(len(s.frame_mask) for s in samples)
        batch = len(samples)
        size = samples[0].faces.shape[1:]
        faces = torch.zeros(batch, frames, *size, dtype=torch.uint8)
        flow = torch.zeros(batch, frames, 2)
        frame_mask = torch.zeros(batch, frames, dtype=torch.bool)
        for i, s in enumerate(samples):
            n = len(s.frame_mask)
            faces[i, :n] = s.faces
            flow[i, :n] = s.flow
            frame_mask[i, :n] = s.frame_mask
        normalised = (faces.float().div_(255.0) - self.mean) / self.std

        waveform = speech_mask = None
        lengths = [0 if s.waveform is None else len(s.waveform) for s in samples]
        if max(lengths) > 0:
            length = max(max(lengths), MIN_AUDIO_SAMPLES)
            waveform = torch.zeros(batch, length)
            # Clips without audio keep an all-False mask: fusion then uses the no-audio embedding.
            speech_mask = torch.zeros(batch, length, dtype=torch.bool)
            for i, s in enumerate(samples):
                if s.waveform is not None and s.speech_mask is not None:
                    waveform[i, : lengths[i]] = s.waveform
                    speech_mask[i, : lengths[i]] = s.speech_mask
        return ClipBatch(
            faces=normalised,
            flow=flow,
            frame_mask=frame_mask,
            waveform=waveform,
            speech_mask=speech_mask,
            labels=torch.tensor([s.label for s in samples], dtype=torch.long),
            video_ids=[s.video_id for s in samples],
            methods=[s.method for s in samples],
        )
