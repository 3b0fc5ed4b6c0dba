"""The face-detector interface every backend implements.

A backend turns RGB uint8 frames into `FaceDetection`s in the frame's own pixel
coordinates. Everything downstream (alignment, skip rules, the faces table) only sees
this interface, so a second backend is a new module plus one registry entry.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Order of the five landmarks. "left"/"right" are the *image's* left and right (the
#: subject's right eye is `left_eye`), the convention of RetinaFace and of ArcFace's template.
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


@dataclass(frozen=True)
class FaceDetection:
    """One detected face.

    Attributes:
        bbox: (x1, y1, x2, y2) in pixels of the original frame (floats, may reach past the border).
        score: detector confidence in [0, 1].
        landmarks: (5, 2) float32 (x, y) pixels, in `LANDMARK_NAMES` order.
    """

    bbox: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        landmarks = np.asarray(self.landmarks, dtype=np.float32)
        if landmarks.shape != (5, 2):
            raise ValueError(f"landmarks must have shape (5, 2), got {landmarks.shape}")
        object.__setattr__(self, "landmarks", landmarks)
        object.__setattr__(self, "bbox", tuple(float(v) for v in self.bbox))
        object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> float:
        return self.bbox[3] - self.bbox[1]

    def scaled(self, factor: float) -> FaceDetection:
        """The same face in a frame resized by `factor` (coordinates multiplied by it)."""
        return FaceDetection(
            bbox=tuple(v * factor for v in self.bbox),  # type: ignore[arg-type]
            score=self.score,
            landmarks=self.landmarks * np.float32(factor),
        )


class FaceDetector(abc.ABC):
    """A face detector backend.

    Implementations return, for every input image, the faces whose confidence reaches
    the backend's `min_score`, highest score first.
    """

    #: Registry name of the backend (the value of `data.faces.detector`).
    name: str = ""

    @abc.abstractmethod
    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        """Detect faces in a batch of RGB uint8 (H, W, 3) images (sizes may differ).

        Returns one list per image, in input order, each sorted by score descending.
        """

    def detect_one(self, image: np.ndarray) -> list[FaceDetection]:
        """Convenience: `detect` on a single image."""
        return self.detect([image])[0]
