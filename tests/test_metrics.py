"""Binary metrics against scikit-learn and against cases whose answer is known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, confusion_matrix, roc_auc_score

from dagster_deepfake.training.metrics import (
    binary_metrics,
    equal_error_rate,
    expected_calibration_error,
    per_group_auc,
    plot_reliability,
    plot_roc,
    reliability_bins,
    tpr_at_fpr,
)


@pytest.fixture
def random_scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=300)
    p_fake = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0)
    return labels, p_fake


def test_matches_sklearn_and_confusion_matrix(random_scores):
    labels, p_fake = random_scores
    m = binary_metrics(labels, p_fake)
    predicted = (p_fake > 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    assert m.auc == pytest.approx(roc_auc_score(labels, p_fake))
    assert m.accuracy == pytest.approx(accuracy_score(labels, predicted))
    assert m.fpr_at_threshold == pytest.approx(fp / (fp + tn))
    assert m.tpr_at_threshold == pytest.approx(tp / (tp + fn))
    assert m.brier == pytest.approx(brier_score_loss(labels, p_fake))
    assert (m.n_real, m.n_fake) == (int((labels == 0).sum()), int((labels == 1).sum()))
    # JSON-able without NaN.
    assert json.loads(m.model_dump_json())["auc"] == pytest.approx(m.auc)


def test_threshold_is_strict_and_configurable():
    labels = np.array([0, 0, 1, 1])
    p = np.array([0.5, 0.2, 0.5, 0.9])
    m = binary_metrics(labels, p)  # 0.5 is not > 0.5: both 0.5s are called real
    assert m.fpr_at_threshold == 0.0
    assert m.tpr_at_threshold == 0.5
    low = binary_metrics(labels, p, threshold=0.4)
    assert low.fpr_at_threshold == 0.5
    assert low.tpr_at_threshold == 1.0


def test_tpr_at_5pct_fpr_and_eer_by_construction():
    # 80 reals at 0.2 and 20 at 0.8; 80 fakes at 0.8 and 20 at 0.2. The ROC goes
    # (0, 0) -> (0.2, 0.8) -> (1, 1): at FPR 5 % the straight segment gives TPR 0.2,
    # and at the vertex FPR = FNR = 0.2.
    labels = np.r_[np.zeros(100), np.ones(100)].astype(int)
    p = np.r_[np.full(80, 0.2), np.full(20, 0.8), np.full(80, 0.8), np.full(20, 0.2)]
    assert tpr_at_fpr(labels, p, 0.05) == pytest.approx(0.2)
    assert tpr_at_fpr(labels, p, 0.2) == pytest.approx(0.8)
    assert equal_error_rate(labels, p) == pytest.approx(0.2)
    m = binary_metrics(labels, p)
    assert m.tpr_at_fpr_5 == pytest.approx(0.2)
    assert m.eer == pytest.approx(0.2)


def test_tpr_at_fpr_takes_top_of_vertical_segment_and_eer_extremes():
    # 30 fakes above every real: a vertical ROC segment at FPR 0, then reals and fakes mixed.
    labels = np.r_[np.zeros(100), np.ones(100)].astype(int)
    p = np.r_[np.linspace(0.0, 0.5, 100), np.full(30, 0.99), np.full(70, 0.25)]
    assert tpr_at_fpr(labels, p, 0.0) == pytest.approx(0.3)
    separable = np.r_[np.full(100, 0.1), np.full(100, 0.9)]
    assert equal_error_rate(labels, separable) == pytest.approx(0.0)
    assert tpr_at_fpr(labels, separable, 0.05) == pytest.approx(1.0)
    assert equal_error_rate(labels, 1 - separable) == pytest.approx(1.0)


def test_ece_zero_when_calibrated_by_construction_and_positive_otherwise():
    # Bin k holds 30 scores at its centre (2k+1)/30, and exactly 2k+1 of them are fake.
    n_bins = 15
    p_parts, y_parts = [], []
    for k in range(n_bins):
        p_parts.append(np.full(30, (2 * k + 1) / 30))
        y_parts.append(np.r_[np.ones(2 * k + 1), np.zeros(30 - (2 * k + 1))])
    p, y = np.concatenate(p_parts), np.concatenate(y_parts).astype(int)
    assert expected_calibration_error(y, p, n_bins) == pytest.approx(0.0, abs=1e-12)
    assert binary_metrics(y, p).ece == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(1 - y, p, n_bins) > 0.1
    # Every score 0.9 while half the videos are fake: one bin, gap 0.4.
    assert expected_calibration_error(np.r_[np.zeros(50), np.ones(50)].astype(int), np.full(100, 0.9)) == (
        pytest.approx(0.4)
    )


def test_reliability_bins_table():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.0, 1.0, 0.95, 0.5, 0.52])
    bins = reliability_bins(y, p, n_bins=10)
    assert list(bins.columns) == ["bin_lower", "bin_upper", "count", "mean_confidence", "accuracy"]
    assert len(bins) == 10 and bins["count"].sum() == 5
    assert bins.loc[9, "count"] == 2  # p = 1.0 falls in the last bin, with 0.95
    assert bins.loc[9, "mean_confidence"] == pytest.approx(0.975)
    assert bins.loc[5, "accuracy"] == pytest.approx(0.5)  # 0.5 (real) and 0.52 (fake)
    assert np.isnan(bins.loc[3, "accuracy"])  # empty bins stay, as NaN


def test_per_group_auc_scores_each_method_against_all_reals():
    reals = np.linspace(0.1, 0.6, 20)
    easy = np.full(10, 0.95)  # above every real
    hard = np.linspace(0.2, 0.5, 10)  # mixed into the reals
    p = np.r_[reals, easy, hard]
    y = np.r_[np.zeros(20), np.ones(20)].astype(int)
    groups = ["youtube"] * 20 + ["Deepfakes"] * 10 + ["NeuralTextures"] * 10
    result = per_group_auc(y, p, groups)
    assert set(result) == {"Deepfakes", "NeuralTextures"}
    assert result["Deepfakes"] == pytest.approx(1.0)
    assert result["NeuralTextures"] == pytest.approx(
        roc_auc_score(np.r_[np.zeros(20), np.ones(10)], np.r_[reals, hard])
    )
    assert result["NeuralTextures"] < 0.8
    assert per_group_auc(np.ones(3, dtype=int), [0.2, 0.5, 0.9], ["a", "a", "b"]) == {"a": None, "b": None}


def test_single_class_gives_none_not_nan():
    m = binary_metrics(np.zeros(5, dtype=int), np.array([0.1, 0.2, 0.7, 0.3, 0.4]))
    assert m.auc is None and m.tpr_at_fpr_5 is None and m.eer is None and m.tpr_at_threshold is None
    assert m.fpr_at_threshold == pytest.approx(0.2)
    assert "NaN" not in m.model_dump_json()


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError):
        binary_metrics([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        per_group_auc([0, 1], [0.1, 0.9], ["a"])


def test_plots_write_png_files(tmp_path, random_scores):
    labels, p_fake = random_scores
    roc = plot_roc(labels, p_fake, tmp_path / "plots" / "roc.png", title="validation")
    calibrated = np.clip(p_fake * 0.8 + 0.1, 0, 1)
    rel = plot_reliability(
        reliability_bins(labels, p_fake), reliability_bins(labels, calibrated), tmp_path / "rel.png"
    )
    for path in (roc, rel):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(rel).shape[1] > matplotlib.image.imread(roc).shape[1]  # two panels
    with pytest.raises(ValueError):
        plot_roc(np.zeros(3, dtype=int), [0.1, 0.2, 0.3], tmp_path / "x.png")
