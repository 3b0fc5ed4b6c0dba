"""Face detection backends behind one interface, 5-point alignment and per-frame extraction.

    detector = create_detector(settings.data.faces)
    extraction = extract_faces(frames, detector, settings.data.faces)

Backends register a factory under a name (`data.faces.detector`); factories import their
heavy dependencies lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from dagster_deepfake.config import FacesConfig
from dagster_deepfake.faces.align import (
    align_face,
    canonical_landmarks,
    face_ellipse_mask,
    similarity_matrix,
)
from dagster_deepfake.faces.base import LANDMARK_NAMES, FaceDetection, FaceDetector
from dagster_deepfake.faces.extract import FaceExtraction, extract_faces, face_strip_png, save_face_strip

DetectorFactory = Callable[[FacesConfig], FaceDetector]

_DETECTORS: dict[str, DetectorFactory] = {}


def register_detector(name: str) -> Callable[[DetectorFactory], DetectorFactory]:
    """Decorator: make `factory(cfg) -> FaceDetector` available as `data.faces.detector: name`."""

    def decorate(factory: DetectorFactory) -> DetectorFactory:
        if name in _DETECTORS:
            raise ValueError(f"face detector {name!r} is already registered")
        _DETECTORS[name] = factory
        return factory

    return decorate


def list_detectors() -> list[str]:
    """Names `create_detector` accepts."""
    return sorted(_DETECTORS)


def create_detector(cfg: FacesConfig) -> FaceDetector:
    """Build the backend named by `cfg.detector`, configured from `cfg`."""
    try:
        factory = _DETECTORS[cfg.detector]
    except KeyError:
        known = ", ".join(list_detectors())
        raise ValueError(
            f"unknown face detector {cfg.detector!r} (data.faces.detector); known: {known}"
        ) from None
    return factory(cfg)


@register_detector("retinaface")
def _retinaface(cfg: FacesConfig) -> FaceDetector:
    from dagster_deepfake.faces.retinaface import RetinaFaceDetector

    return RetinaFaceDetector.from_config(cfg)


__all__ = [
    "LANDMARK_NAMES",
    "DetectorFactory",
    "FaceDetection",
    "FaceDetector",
    "FaceExtraction",
    "align_face",
    "canonical_landmarks",
    "create_detector",
    "extract_faces",
    "face_strip_png",
    "face_ellipse_mask",
    "list_detectors",
    "register_detector",
    "save_face_strip",
    "similarity_matrix",
]
