"""Per-video model inputs for training: what the perception stages produced, never the video.

Training must not decode video: decoding, face detection and flow cost orders of magnitude
more than a training step and are already done (and cached) by the per-video assets. A
`FeatureSource` hands out those cached results as `VideoFeatures`; the Dagster side provides
one backed by the artifact store, tests use `InMemoryFeatureSource`, and
`extract_features_from_file` runs the same perception code on a local file for experiments.
`LRUFeatureSource` keeps recently used videos in memory up to a byte budget: a synthetic set
of 60 short clips fits whole, FaceForensics++ (~22 MB of crops per 30 s video) does not.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from dagster_deepfake.config import Settings

if TYPE_CHECKING:
    from dagster_deepfake.storage.artifacts import ArtifactStore

SAMPLE_RATE = 16000


@dataclass
class VideoFeatures:
    """Everything the detector needs from one labelled video.

    Attributes:
        video_id: the partition key (or any unique id).
        label_int: 0 = real, 1 = fake.
        method: manipulation method ("original" for reals; "Deepfakes", "face_swap", …).
        crops: (K, S, S, 3) uint8 RGB aligned faces of the kept frames (S = 224 in the contract).
        flow: (K, 2) float32 per-face flow summary (flow_mean, flow_std).
        timestamps: (K,) float64 seconds of each kept face's frame.
        waveform: (S_audio,) float32 in [-1, 1] at `sample_rate`, or None (no audio / no speech).
        speech_mask: (S_audio,) bool per sample, or None (= every sample counts as speech).
    """

    video_id: str
    label_int: int
    method: str
    crops: np.ndarray
    flow: np.ndarray
    timestamps: np.ndarray
    waveform: np.ndarray | None = None
    speech_mask: np.ndarray | None = None
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.label_int not in (0, 1):
            raise ValueError(f"{self.video_id}: label_int must be 0 (real) or 1 (fake), got {self.label_int}")
        if self.crops.ndim != 4 or self.crops.shape[-1] != 3 or self.crops.dtype != np.uint8:
            raise ValueError(
                f"{self.video_id}: crops must be (K, S, S, 3) uint8, got {self.crops.shape} {self.crops.dtype}"
            )
        count = len(self.crops)
        if count == 0:
            raise ValueError(f"{self.video_id}: no face crops")
        if self.flow.shape != (count, 2):
            raise ValueError(f"{self.video_id}: flow must be ({count}, 2), got {self.flow.shape}")
        if self.timestamps.shape != (count,):
            raise ValueError(f"{self.video_id}: timestamps must be ({count},), got {self.timestamps.shape}")
        if self.waveform is not None and self.waveform.ndim != 1:
            raise ValueError(f"{self.video_id}: waveform must be 1-D, got {self.waveform.shape}")
        if self.speech_mask is not None:
            if self.waveform is None:
                raise ValueError(f"{self.video_id}: speech_mask given without a waveform")
            if self.speech_mask.shape != self.waveform.shape:
                raise ValueError(
                    f"{self.video_id}: speech_mask {self.speech_mask.shape} does not match "
                    f"waveform {self.waveform.shape}"
                )

    @property
    def num_faces(self) -> int:
        return len(self.crops)

    @property
    def has_speech(self) -> bool:
        if self.waveform is None or len(self.waveform) == 0:
            return False
        return self.speech_mask is None or bool(self.speech_mask.any())

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (what the LRU cache budgets)."""
        arrays = [self.crops, self.flow, self.timestamps, self.waveform, self.speech_mask]
        return int(sum(a.nbytes for a in arrays if a is not None))


@runtime_checkable
class FeatureSource(Protocol):
    """Where training reads per-video features from (artifact store, memory, …)."""

    def load(self, video_id: str) -> VideoFeatures: ...


class InMemoryFeatureSource:
    """A dict of `VideoFeatures` by video id (tests, small experiments)."""

    def __init__(self, features: Mapping[str, VideoFeatures] | Iterable[VideoFeatures]) -> None:
        items = features.values() if isinstance(features, Mapping) else features
        self._features: dict[str, VideoFeatures] = {f.video_id: f for f in items}

    def load(self, video_id: str) -> VideoFeatures:
        try:
            return self._features[video_id]
        except KeyError:
            raise KeyError(f"no features for video {video_id!r}") from None

    def __len__(self) -> int:
        return len(self._features)

    def __iter__(self) -> Iterator[str]:
        return iter(self._features)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._features


class LRUFeatureSource:
    """Wrap a slow source (files) and keep the most recently used videos up to `max_bytes`.

    Thread-safe. A single video larger than the budget is returned but not kept.
    """

    def __init__(self, source: FeatureSource, max_bytes: int = 2 * 1024**3) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self._cache: OrderedDict[str, VideoFeatures] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def load(self, video_id: str) -> VideoFeatures:
        with self._lock:
            cached = self._cache.get(video_id)
            if cached is not None:
                self._cache.move_to_end(video_id)
                self.hits += 1
                return cached
        features = self.source.load(video_id)  # outside the lock: loading is the slow part
        with self._lock:
            self.misses += 1
            size = features.nbytes
            if size <= self.max_bytes and video_id not in self._cache:
                self._cache[video_id] = features
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, evicted = self._cache.popitem(last=False)
                    self._bytes -= evicted.nbytes
        return features

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)


class StoreFeatureSource:
    """Training features read from what the per-video assets cached (never decodes video).

    `labels` maps video_id → (label_int, method), from the dataset manifest.
    """

    def __init__(self, store: ArtifactStore, labels: dict[str, tuple[int, str]]) -> None:
        self.store = store
        self.labels = labels

    def load(self, video_id: str) -> VideoFeatures:
        from dagster_deepfake.storage import stage_io

        label_int, method = self.labels[video_id]
        faces = stage_io.load_face_crops(self.store, video_id)
        audio_in = stage_io.load_audio(self.store, video_id)
        return VideoFeatures(
            video_id=video_id,
            label_int=int(label_int),
            method=method,
            crops=faces.crops,
            flow=stage_io.load_flow_features(self.store, video_id),
            timestamps=faces.timestamps,
            waveform=audio_in.waveform if audio_in.has_speech else None,
            speech_mask=audio_in.speech_mask if audio_in.has_speech else None,
        )


def extract_features_from_file(
    path: str | os.PathLike[str],
    settings: Settings,
    video_id: str,
    label_int: int,
    method: str,
) -> VideoFeatures:
    """Run probe → frames → faces → flow → audio + VAD on a local file, in memory.

    The same stage functions as the per-video assets (`dagster_deepfake.stages`), for tests and
    small experiments; training on a real dataset reads the assets' cached outputs instead.
    No audio stream or no detected speech gives `waveform=None`.

    Raises:
        InvalidVideoError: the file cannot be read. NoFaceFoundError: no frame kept a face.
    """
    from dagster_deepfake import stages

    path = Path(path)
    probe = stages.probe_stage(path, settings).probe
    extraction = stages.faces_stage(stages.frames_stage(path, probe, settings), settings, str(path))
    flow = stages.flow_stage(extraction.crops, extraction.kept_frame_ids, settings)
    audio = stages.audio_stage(path, probe, settings)
    audio_in = stages.AudioInput.from_pcm(audio.pcm, audio.speech.mask_20ms, audio.speech.segments)
    return VideoFeatures(
        video_id=video_id,
        label_int=int(label_int),
        method=method,
        crops=extraction.crops,
        flow=flow.features.astype(np.float32),
        timestamps=extraction.kept_timestamps,
        waveform=audio_in.waveform if audio_in.has_speech else None,
        speech_mask=audio_in.speech_mask if audio_in.has_speech else None,
        sample_rate=settings.data.audio.sample_rate,
    )
