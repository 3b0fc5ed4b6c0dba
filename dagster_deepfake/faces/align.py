"""Similarity alignment of a face to a canonical 5-point template.

The same template and warp are used when training and at inference, so a model never
sees a face framed differently from the faces it was trained on.

Template: the ArcFace / InsightFace 112x112 reference points (`arcface_dst` in
insightface/utils/face_align.py, the template of Deng et al., "ArcFace", CVPR 2019).
That template crops tightly (chin and forehead fall outside 112 px), which suits
recognition but hides the jaw line and hair boundary where face swaps leave blending
seams. It is therefore scaled about the crop centre by `TEMPLATE_SCALE` = 0.75 and
then stretched to 224 px, which leaves the whole face, chin included, and a band of
background inside the crop (about 1.3x the tight crop, like the margins used by
FaceForensics++ and Celeb-DF baselines).
"""

from __future__ import annotations

import cv2
import numpy as np

#: ArcFace reference landmarks for a 112x112 crop, `LANDMARK_NAMES` order (x, y).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

#: Shrink of the ArcFace template about the crop centre: the margin around the face.
TEMPLATE_SCALE = 0.75

#: Output side of an aligned crop (the contract's 224).
ALIGNED_SIZE = 224


def canonical_landmarks(size: int = ALIGNED_SIZE) -> np.ndarray:
    """(5, 2) float32 landmark positions of the template in a `size` x `size` crop."""
    centre = 112 / 2
    points = (ARCFACE_TEMPLATE_112 - centre) * TEMPLATE_SCALE + centre
    return (points * (size / 112)).astype(np.float32)


def similarity_matrix(landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """(2, 3) float64 similarity (rotation, uniform scale, translation) from frame to crop.

    Least-squares fit (Umeyama) of the five detected landmarks onto the template, the
    same estimator InsightFace's `norm_crop` uses.
    """
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    if not np.isfinite(src).all():
        raise ValueError("landmarks contain NaN or inf")
    params = _umeyama(src, canonical_landmarks(size).astype(np.float64))
    if params is None:
        raise ValueError(f"cannot fit a similarity transform to landmarks {src.tolist()}")
    return params[:2]


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """(3, 3) least-squares similarity taking `src` (N, 2) onto `dst` (Umeyama 1991, with scale);
    None when the points are degenerate (all equal).

    The estimator of scikit-image's `SimilarityTransform.from_estimate` (its `_umeyama`), written
    out in numpy: importing scikit-image pulled in SciPy and cost the first aligned face of every
    process about a second (issue 20); tests/test_similarity_fit.py checks the two agree.
    """
    dim = src.shape[1]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    a = dst_demean.T @ src_demean / len(src)
    d = np.ones(dim)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1)
    u, s, v = np.linalg.svd(a)
    rank = np.linalg.matrix_rank(a)
    if rank == 0:
        return None
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(v) > 0:
            t[:dim, :dim] = u @ v
        else:
            last = d[dim - 1]
            d[dim - 1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ v
            d[dim - 1] = last
    else:
        t[:dim, :dim] = u @ np.diag(d) @ v
    variance = src_demean.var(axis=0).sum()
    if variance == 0:
        return None
    scale = (s @ d) / variance
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean)
    t[:dim, :dim] *= scale
    return t if np.isfinite(t).all() else None


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp `image` (H, W, C) so `landmarks` land on the template; returns (size, size, C) same dtype.

    Pixels outside the frame repeat the border (no black wedges for the model to learn from).
    """
    matrix = similarity_matrix(landmarks, size)
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def face_ellipse_mask(size: int = ALIGNED_SIZE) -> np.ndarray:
    """(size, size) bool mask of the face region of an aligned crop.

    An ellipse fitted to the template: centred horizontally between the eyes, vertically
    halfway between the eye line and the chin; its half-width reaches past the eye
    corners to the cheeks and its half-height from the brows to the chin. Defined in
    fractions of the eye distance and eye-mouth distance, so it scales with the template.
    """
    points = canonical_landmarks(size).astype(np.float64)
    eye_centre = points[:2].mean(axis=0)
    mouth_centre = points[3:].mean(axis=0)
    eye_distance = float(np.linalg.norm(points[1] - points[0]))
    eye_mouth = float(mouth_centre[1] - eye_centre[1])
    top = eye_centre[1] - 0.6 * eye_mouth  # brows
    bottom = mouth_centre[1] + 0.9 * eye_mouth  # chin
    centre_x, centre_y = float(eye_centre[0]), (top + bottom) / 2
    half_w, half_h = 0.9 * eye_distance, (bottom - top) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return ((xx - centre_x) / half_w) ** 2 + ((yy - centre_y) / half_h) ** 2 <= 1.0
