"""Farneback optical flow between consecutive aligned faces, summarised to two numbers.

Crops are aligned to the same 5-point template, so rigid head motion is mostly removed
and what flow remains is non-rigid: expression, mouth and jaw movement, and the
frame-to-frame jitter of a generated face. Per kept crop k (with predecessor k-1):

    flow_mean  mean |flow| inside the face ellipse (`faces.align.face_ellipse_mask`)
    flow_std   standard deviation of |flow| inside the same ellipse

Both are in pixels of the aligned crop per sampled-frame step: when frames between
two kept crops were skipped (gap g = frame_id[k] - frame_id[k-1] > 1) the flow is
divided by g, i.e. motion is assumed linear across the gap, so values stay on one
scale. The first crop has no predecessor: its features are (0, 0) and
`has_predecessor` is False. Together with the 1536-d appearance vector these make
the contract's 1538-d per-frame feature.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from dagster_deepfake.faces.align import face_ellipse_mask

FEATURE_NAMES: tuple[str, str] = ("flow_mean", "flow_std")


@dataclass(frozen=True)
class FarnebackParams:
    """Arguments of `cv2.calcOpticalFlowFarneback` (OpenCV's reference values, winsize
    scaled down for the 112 px working size)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 11
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.1
    flags: int = 0


@dataclass
class FlowFeatures:
    """Per-crop motion summary.

    Attributes:
        frame_ids: (K,) int64, the crops' frame ids.
        features: (K, 2) float32, columns `FEATURE_NAMES`, crop pixels per sampled-frame step.
        has_predecessor: (K,) bool; False for the first crop (its features are 0).
        gaps: (K,) int32 frame-id distance to the previous crop (0 for the first).
        fields: (K, 2, F, F) float16 (dx, dy) flow fields, downsampled, same units as
            `features`; None unless requested.
    """

    frame_ids: np.ndarray
    features: np.ndarray
    has_predecessor: np.ndarray
    gaps: np.ndarray
    fields: np.ndarray | None = None

    def to_frame(self, timestamps: Sequence[float] | np.ndarray | None = None) -> pd.DataFrame:
        """Rows for the `flow` table: frame_id, timestamp, flow_mean, flow_std, has_predecessor."""
        count = len(self.frame_ids)
        ts = np.full(count, np.nan) if timestamps is None else np.asarray(timestamps, np.float64)
        if ts.shape != (count,):
            raise ValueError(f"expected {count} timestamps, got shape {ts.shape}")
        return pd.DataFrame(
            {
                "frame_id": self.frame_ids.astype(np.int64),
                "timestamp": ts,
                "flow_mean": self.features[:, 0],
                "flow_std": self.features[:, 1],
                "has_predecessor": self.has_predecessor,
            }
        )


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _to_gray(crop: np.ndarray, work_size: int) -> np.ndarray:
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    if gray.shape[0] != work_size:
        gray = cv2.resize(gray, (work_size, work_size), interpolation=cv2.INTER_AREA)
    return gray


def compute_flow_features(
    crops: np.ndarray,
    frame_ids: Sequence[int] | np.ndarray,
    *,
    work_size: int = 112,
    return_fields: bool = False,
    field_size: int = 28,
    params: FarnebackParams | None = None,
    num_threads: int | None = None,
) -> FlowFeatures:
    """Flow features for aligned crops `(K, S, S, 3)` uint8 with strictly increasing `frame_ids`.

    Flow is computed on grayscale copies resized to `work_size` and rescaled to crop
    pixels. 112 is the default: on 123 real FaceForensics++ pairs its `flow_mean` tracks
    full-size (224, winsize 15) flow with correlation 0.99 and a mean difference of
    0.2 px, it recovers known shifts more exactly (1.01 px for 1 px, 7.98 for 8, where
    full size reads 0.91 and 7.19), and it is about 4x faster (0.4 s against 1.9 s for
    149 pairs on 2 cores). Pairs run in parallel threads (OpenCV releases the GIL).
    """
    crops = np.asarray(crops)
    if crops.ndim not in (3, 4) or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"expected square crops (K, S, S[, 3]), got {crops.shape}")
    ids = np.asarray(frame_ids, dtype=np.int64)
    count, crop_size = crops.shape[0], crops.shape[1]
    if ids.shape != (count,):
        raise ValueError(f"got {count} crops but {ids.shape} frame ids")
    gaps = np.zeros(count, dtype=np.int32)
    gaps[1:] = np.diff(ids)
    if count > 1 and gaps[1:].min() < 1:
        raise ValueError("frame_ids must be strictly increasing")
    params = params or FarnebackParams()
    to_crop_pixels = crop_size / work_size
    mask = face_ellipse_mask(work_size)

    grays = [_to_gray(crop, work_size) for crop in crops]

    def pair(k: int) -> tuple[np.ndarray, np.ndarray | None]:
        flow = cv2.calcOpticalFlowFarneback(
            grays[k - 1],
            grays[k],
            None,
            params.pyr_scale,
            params.levels,
            params.winsize,
            params.iterations,
            params.poly_n,
            params.poly_sigma,
            params.flags,
        )
        flow *= to_crop_pixels / gaps[k]
        magnitude = np.hypot(flow[..., 0], flow[..., 1])[mask]
        summary = np.array([magnitude.mean(), magnitude.std()], dtype=np.float32)
        field = None
        if return_fields:
            small = cv2.resize(flow, (field_size, field_size), interpolation=cv2.INTER_AREA)
            field = small.transpose(2, 0, 1)
        return summary, field

    features = np.zeros((count, 2), dtype=np.float32)
    fields = np.zeros((count, 2, field_size, field_size), dtype=np.float16) if return_fields else None
    workers = max(1, min(num_threads or _available_cpus(), count - 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, (summary, field) in zip(range(1, count), pool.map(pair, range(1, count)), strict=True):
            features[k] = summary
            if fields is not None and field is not None:
                fields[k] = field.astype(np.float16)

    has_predecessor = np.arange(count) > 0
    return FlowFeatures(
        frame_ids=ids, features=features, has_predecessor=has_predecessor, gaps=gaps, fields=fields
    )
