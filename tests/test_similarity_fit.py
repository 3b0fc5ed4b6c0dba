"""The face alignment's similarity fit (numpy Umeyama, `faces/align.py`) equals scikit-image's
`SimilarityTransform.from_estimate`, which it replaced to keep SciPy out of the one-face path."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from dagster_deepfake.faces.align import align_face, canonical_landmarks, similarity_matrix


@pytest.mark.parametrize("seed", range(6))
def test_similarity_matrix_equals_scikit_image(seed):
    rng = np.random.default_rng(seed)
    template = canonical_landmarks().astype(np.float64)
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.5, 3.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # A face somewhere in a 720p frame: the template rotated, scaled, moved, with landmark noise.
    landmarks = (template @ rot.T) * scale + rng.uniform(0, 900, 2) + rng.normal(0, 2.0, (5, 2))
    if seed == 5:
        landmarks[:, 0] = -landmarks[:, 0]  # mirrored points: the reflection branch
    ours = similarity_matrix(landmarks)
    reference = SimilarityTransform.from_estimate(landmarks, template).params[:2]
    assert np.allclose(ours, reference, atol=1e-9, rtol=1e-9)


def test_degenerate_landmarks_are_refused_and_a_face_is_warped():
    with pytest.raises(ValueError, match="cannot fit"):
        similarity_matrix(np.full((5, 2), 7.0))
    with pytest.raises(ValueError, match="NaN"):
        similarity_matrix(np.full((5, 2), np.nan))
    image = np.zeros((360, 640, 3), np.uint8)
    image[100:260, 250:390] = 200
    crop = align_face(image, canonical_landmarks() * 0.7 + [240, 90])
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8 and crop.max() == 200
