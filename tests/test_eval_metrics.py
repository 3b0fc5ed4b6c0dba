"""Evaluation comparable with the field: each metric against values worked out by hand, the
bootstrap intervals (seeded, stable, resampling videos), per-method and cross-dataset tables,
the markdown report's protocol header, storage in PostgreSQL + Parquet, and the ablation table
(tiny model, synthetic in-memory clips)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from dagster_deepfake.config import DataConfig, TrainingConfig
from dagster_deepfake.models.checkpoint import CheckpointManifest, load_checkpoint
from dagster_deepfake.models.registry import get_model_config
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.postgres import evaluations
from dagster_deepfake.training.ablation import WithoutModality, ablation_variants, run_ablations
from dagster_deepfake.training.calibrate import ScoredVideos
from dagster_deepfake.training.eval_report import (
    cross_dataset_matrix,
    render_ablation,
    render_report,
    store_evaluation,
)
from dagster_deepfake.training.evaluate import evaluate_scores
from dagster_deepfake.training.features import InMemoryFeatureSource, VideoFeatures
from dagster_deepfake.training.metrics import (
    binary_metrics,
    bootstrap_auc_interval,
    expected_calibration_error,
)

# 20 reals: one scored 0.95, the rest 0.01 … 0.19; 10 fakes: three at the top, six between
# 0.6 and 0.22, one below every real. Sorted by score: F F F R F F F F F F R×19 F.
REALS = [0.95] + [k / 100 for k in range(1, 20)]
FAKES = [0.99, 0.98, 0.97, 0.6, 0.5, 0.4, 0.3, 0.25, 0.22, 0.005]
Y = np.array([0] * 20 + [1] * 10)
P = np.array(REALS + FAKES)


# -- each metric by hand -----------------------------------------------------------------------


def test_auc_and_ap_by_hand() -> None:
    m = binary_metrics(Y, P)
    # Pairs (fake, real) ranked correctly: 3 fakes beat all 20 reals, 6 beat 19, one beats none.
    assert m.auc == pytest.approx((3 * 20 + 6 * 19 + 0) / (10 * 20))
    # AP: precision at each fake's rank (ranks 1, 2, 3, 5…10, 30), averaged over the 10 fakes.
    precisions = [1, 1, 1, 4 / 5, 5 / 6, 6 / 7, 7 / 8, 8 / 9, 9 / 10, 10 / 30]
    assert m.ap == pytest.approx(sum(precisions) / 10)


def test_tpr_at_1_and_5_percent_fpr_and_eer_by_hand() -> None:
    m = binary_metrics(Y, P)
    # ROC: (0, 0.3) → the real at 0.95 → (0.05, 0.3) → six fakes → (0.05, 0.9) → reals → (1, 0.9).
    assert m.tpr_at_fpr_5 == pytest.approx(0.9)  # the top of the vertical segment at FPR 5 %
    assert m.tpr_at_fpr_1 == pytest.approx(0.3 + (0.01 / 0.05) * (0.9 - 0.3))  # linear in between
    # FNR stays 0.1 along the horizontal segment; FPR reaches 0.1 after the second real.
    assert m.eer == pytest.approx(0.1)


def test_fpr_tpr_and_accuracy_at_the_serving_threshold_by_hand() -> None:
    at_half = binary_metrics(Y, P, threshold=0.5)
    assert at_half.fpr_at_threshold == pytest.approx(1 / 20)  # only the real at 0.95
    assert at_half.tpr_at_threshold == pytest.approx(4 / 10)  # 0.99, 0.98, 0.97, 0.6 (0.5 is not > 0.5)
    assert at_half.accuracy == pytest.approx((19 + 4) / 30)
    low = binary_metrics(Y, P, threshold=0.15)
    assert low.fpr_at_threshold == pytest.approx(5 / 20)  # 0.95, 0.16, 0.17, 0.18, 0.19


def test_ece_by_hand() -> None:
    # Bin [0.067, 0.133): confidence 0.1, half fake → gap 0.4; bin [0.867, 0.933): 0.9 vs 1 → 0.1.
    assert expected_calibration_error([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(
        0.5 * 0.4 + 0.5 * 0.1
    )


# -- bootstrap ---------------------------------------------------------------------------------


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    return y, 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y)))


def test_bootstrap_is_seeded_stable_and_contains_the_estimate() -> None:
    y, p = _scores(200, seed=1)
    first = bootstrap_auc_interval(y, p, n_resamples=300, seed=7)
    again = bootstrap_auc_interval(y, p, n_resamples=300, seed=7)
    other = bootstrap_auc_interval(y, p, n_resamples=300, seed=8)
    assert first == again
    assert (other.low, other.high) != (first.low, first.high)
    auc = binary_metrics(y, p).auc
    assert first.low < auc < first.high
    assert first.low >= 0.0 and first.high <= 1.0


def test_bootstrap_interval_is_wider_with_fewer_videos() -> None:
    y, p = _scores(400, seed=2)
    wide = bootstrap_auc_interval(y[:40], p[:40], n_resamples=300, seed=0)
    narrow = bootstrap_auc_interval(y, p, n_resamples=300, seed=0)
    assert wide.high - wide.low > 1.5 * (narrow.high - narrow.low)


def test_frame_level_bootstrap_resamples_videos_not_frames() -> None:
    y, p = _scores(60, seed=3)
    video_ids = [f"v{i}" for i in range(60)]
    # Ten identical frames per video: as videos they are one piece of evidence each.
    frames_y, frames_p, frames_v = np.repeat(y, 10), np.repeat(p, 10), np.repeat(video_ids, 10)
    by_video = bootstrap_auc_interval(frames_y, frames_p, videos=frames_v, n_resamples=200, seed=0)
    naive = bootstrap_auc_interval(frames_y, frames_p, n_resamples=200, seed=0)
    videos_only = bootstrap_auc_interval(y, p, n_resamples=200, seed=0)
    assert by_video.low == pytest.approx(videos_only.low) and by_video.high == pytest.approx(videos_only.high)
    assert naive.high - naive.low < 0.6 * (by_video.high - by_video.low)


def test_paired_bootstrap_of_a_difference() -> None:
    y, p = _scores(100, seed=4)
    same = bootstrap_auc_interval(y, p, baseline=p, n_resamples=100)
    assert same.low == same.high == 0.0
    worse = np.where(y == 1, p * 0.5, p)  # the fakes' scores halved: a worse detector
    delta = bootstrap_auc_interval(y, worse, baseline=p, n_resamples=200)
    assert delta.high < 0


def test_bootstrap_refuses_a_video_with_two_labels_and_is_undefined_with_one_class() -> None:
    with pytest.raises(ValueError, match="that video's label"):
        bootstrap_auc_interval([0, 1], [0.2, 0.8], videos=["a", "a"])
    one_class = bootstrap_auc_interval([1, 1, 1], [0.2, 0.5, 0.8])
    assert one_class.low is None and one_class.high is None


# -- per method, cross-dataset, report ----------------------------------------------------------


def _logits(p: np.ndarray) -> np.ndarray:
    """[real, fake] logits whose softmax[1] is p (T = 1)."""
    return np.stack([np.zeros_like(p), np.log(p) - np.log1p(-p)], 1).astype(np.float32)


def _scored(prefix: str, p_video: list[float], labels: list[int], methods: list[str]) -> ScoredVideos:
    """Videos whose 7 faces fall in two windows (5 + 2); the second window scores a little lower."""
    p = np.array(p_video)
    faces = [_logits(np.array([q] * 5 + [q * 0.9] * 2)) for q in p]
    return ScoredVideos(
        video_ids=[f"{prefix}{i}" for i in range(len(p))],
        logits=_logits(p),
        labels=np.array(labels),
        methods=methods,
        audio_used=np.ones(len(p), bool),
        face_logits=faces,
    )


def _manifest(trained_on: str) -> CheckpointManifest:
    config = get_model_config("tiny")
    return CheckpointManifest(
        model_version=f"tiny-{trained_on}",
        registry_config="tiny",
        detector_config=config,
        config_hash=config.config_hash(),
        trained=True,
        training_data=trained_on,
        training_data_hash="0123456789ab",
    )


SET_A = (
    [0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.15, 0.05],
    [0, 0, 0, 0, 1, 1, 1, 1],
    ["original"] * 4 + ["face_swap", "face_swap", "lip_sync", "lip_sync"],
)


def test_per_method_and_frame_level_metrics() -> None:
    result = evaluate_scores(_scored("a", *SET_A), _manifest("ffpp"), test_set="A", n_resamples=100)
    per = result.per_method.set_index("method")
    # face_swap (0.9, 0.8) beats every real; lip_sync (0.15, 0.05): 0.15 beats one real of four.
    assert per.loc["face_swap", "video_auc"] == pytest.approx(1.0)
    assert per.loc["lip_sync", "video_auc"] == pytest.approx(1 / 8)
    assert per.loc["face_swap", "n_fake"] == 2
    assert result.per_method_auc == {"face_swap": 1.0, "lip_sync": pytest.approx(1 / 8)}
    frames = result.frame_predictions
    assert len(frames) == 8 * 7 and list(frames.loc[:6, "window"]) == [0] * 5 + [1] * 2
    assert frames.loc[5, "p_fake"] == pytest.approx(0.1 * 0.9, abs=1e-6)
    assert result.frame_metrics.auc == pytest.approx(binary_metrics(frames["label"], frames["p_fake"]).auc)
    assert result.protocol.faces_per_video_mean == 7.0
    assert result.targets["auc"]["pass"] is False and result.targets["fpr"]["pass"] is True


def test_cross_dataset_matrix_and_report_header() -> None:
    set_b = ([0.2, 0.7, 0.3, 0.9], [0, 1, 0, 1], ["original", "Deepfakes", "original", "Deepfakes"])
    results = [
        evaluate_scores(_scored("a", *SET_A), _manifest("ffpp"), test_set="A", n_resamples=50),
        evaluate_scores(_scored("b", *set_b), _manifest("ffpp"), test_set="B", n_resamples=50),
        evaluate_scores(_scored("a", *SET_A), _manifest("celebdf"), test_set="A", n_resamples=50),
    ]
    matrix = cross_dataset_matrix(results)
    assert matrix.shape == (2, 2)
    assert matrix.loc["ffpp (data 0123456789ab)", "B"] == pytest.approx(1.0)
    assert np.isnan(matrix.loc["celebdf (data 0123456789ab)", "B"])
    report = render_report(results[:2])
    header = report.split("| test set")[0]
    assert "5 FPS" in header and "224×224" in header and "confidence ≥ 0.95" in header
    assert "mean window logits" in header and "1-s window of 5 faces" in header
    assert "faces per video: A 7.0" in header and "stratified resamples of videos" in header
    assert "| A | 8 (4/4) |" in report and "FAIL (> 0.85)" in report
    assert "## Per manipulation method" in report and "| A | lip_sync | 2 | 0.125" in report
    assert "## Cross-dataset video AUC" in report
    assert "**Small test set A: 4 real / 4 fake videos.**" in report


def test_evaluation_lands_in_postgres_and_parquet(db, tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    result = evaluate_scores(_scored("a", *SET_A), _manifest("ffpp"), test_set="A", n_resamples=50)
    # A set of fakes only: AUCs and intervals are undefined (None in JSON, never NaN).
    only_fakes = evaluate_scores(
        _scored("c", [0.7, 0.2], [1, 1], ["face_swap", "lip_sync"]), _manifest("ffpp"), test_set="C"
    )
    for _ in range(2):  # idempotent: the same evaluation twice is one row
        reports = store_evaluation(
            [result, only_fakes], {"A": "abcdef012345", "C": "fedcba543210"}, store, db
        )
    with db.engine.connect() as conn:
        rows = conn.execute(select(evaluations).order_by(evaluations.c.dataset)).mappings().all()
    assert [(r["dataset"], r["model_version"]) for r in rows] == [("A", "tiny-ffpp"), ("C", "tiny-ffpp")]
    assert (
        rows[1]["metrics"]["video_auc"] is None and rows[1]["metrics"]["per_method"][0]["video_auc"] is None
    )
    stored = rows[0]["metrics"]
    assert stored["video_auc"] == pytest.approx(result.metrics.auc)
    assert stored["frame_auc_low"] == pytest.approx(result.frame_auc_ci.low)
    assert stored["protocol"]["frame_rate"] == 5.0
    metrics = pd.read_parquet(
        io.BytesIO(store.read_bytes(layout.evaluation_rel("abcdef012345", "metrics.parquet", "tiny-ffpp")))
    )
    assert metrics.loc[0, "ap"] == pytest.approx(result.metrics.ap)
    frames = pd.read_parquet(
        io.BytesIO(
            store.read_bytes(layout.evaluation_rel("abcdef012345", "frame_predictions.parquet", "tiny-ffpp"))
        )
    )
    assert len(frames) == 56
    assert store.read_bytes(reports["tiny-ffpp"]).decode().startswith("# Evaluation of tiny-ffpp")
    assert (
        store.read_bytes(layout.evaluation_rel("abcdef012345", "reliability.png", "tiny-ffpp"))[:4]
        == b"\x89PNG"
    )


# -- ablations -----------------------------------------------------------------------------------


def _clip(i: int, label: int) -> VideoFeatures:
    """10 faces of 32 px; fakes are brighter, move more and carry a louder tone (a learnable signal)."""
    rng = np.random.default_rng(i)
    base = 90 + 60 * label
    crops = np.clip(rng.normal(base, 20, size=(10, 32, 32, 3)), 0, 255).astype(np.uint8)
    flow = (rng.normal(size=(10, 2)) * 0.1 + label).astype(np.float32)
    t = np.arange(2 * 16000) / 16000
    wave = ((0.1 + 0.3 * label) * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return VideoFeatures(
        video_id=f"clip{i}",
        label_int=label,
        method="face_swap" if label else "original",
        crops=crops,
        flow=flow,
        timestamps=np.arange(10) / 5.0,
        waveform=wave,
        speech_mask=np.ones_like(wave, bool),
    )


def test_without_modality_drops_audio_or_flow() -> None:
    source = InMemoryFeatureSource([_clip(0, 1)])
    assert WithoutModality(source, "audio").load("clip0").waveform is None
    assert not WithoutModality(source, "flow").load("clip0").flow.any()
    assert source.load("clip0").flow.any(), "the wrapped source is untouched"
    names = [v.name for v in ablation_variants("tiny")]
    assert names == ["full (conv1d)", "no audio", "no flow", "temporal transformer"]


def test_ablation_table_runs_every_variant_on_the_same_split(tmp_path: Path) -> None:
    clips = [_clip(i, i % 2) for i in range(12)]
    ids = [c.video_id for c in clips]
    cfg = TrainingConfig(learning_rate=1e-3, warmup_steps=0, batch_size=4, epochs=1)  # one step each
    rows = run_ablations(
        "tiny",
        cfg,
        ids[:4],
        ids[4:8],
        ids[8:],
        InMemoryFeatureSource(clips),
        tmp_path,
        test_set="synthetic",
        image_size=32,
        data_cfg=DataConfig(),
        n_resamples=50,
        pretrained=False,
    )
    assert [r.variant for r in rows] == ["full (conv1d)", "no audio", "no flow", "temporal transformer"]
    for row in rows:
        assert list(row.result.predictions["video_id"]) == ids[8:]  # the same test videos
    assert (
        not rows[1].result.predictions["audio_used"].any() and rows[0].result.predictions["audio_used"].all()
    )
    _, manifest = load_checkpoint(rows[3].checkpoint)
    assert manifest.detector_config.temporal.encoder_type == "transformer"
    assert rows[0].delta_auc is None and rows[2].delta_ci is not None
    assert rows[2].delta_auc == pytest.approx(rows[2].result.metrics.auc - rows[0].result.metrics.auc)
    table = render_ablation(rows)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 4  # header + one row per variant
    assert "(reference)" in lines[1] and "Δ video AUC vs full" in lines[0]
    assert "Test set synthetic: 2 real / 2 fake" in table and "5 FPS" in table
    assert "**Small test set synthetic: 2 real / 2 fake videos.**" in table


def test_rank_auc_equals_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    from dagster_deepfake.training.metrics import rank_auc

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p = rng.integers(0, 10, 300) / 10  # many ties
    assert rank_auc(y, p) == pytest.approx(roc_auc_score(y, p))
