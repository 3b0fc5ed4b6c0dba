"""An evaluation as a person reads it: the markdown report, the cross-dataset matrix, and where
the numbers are kept (PostgreSQL `evaluations`, Parquet under `evaluations/`).

The metrics themselves are computed in `training.metrics` / `training.evaluate`; this module
only arranges them. The report's header states the protocol (frame rate, faces, face crop,
aggregation, calibration, bootstrap) so the table can sit next to a paper's (docs/EVALUATION.md).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping, Sequence

import pandas as pd

from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.postgres import ResultsDB
from dagster_deepfake.training.evaluate import EvaluationResult
from dagster_deepfake.training.metrics import Interval

#: Below this many videos of either class the report warns that the intervals are unreliable.
SMALL_SET = 30


def _num(value: object, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and value != value) else f"{value:.{digits}f}"


def _with_ci(value: float | None, interval: Interval | None) -> str:
    if value is None:
        return "–"
    if interval is None or interval.low is None or interval.high is None:
        return _num(value)
    return f"{value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _pass(flag: object) -> str:
    return "pass" if flag else "FAIL"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: Sequence[EvaluationResult]) -> str:
    """One row per (model, test set): the numbers papers report, intervals on both AUCs."""
    several_models = len({r.model_version for r in results}) > 1
    header = ["model"] if several_models else []
    header += [
        "test set",
        "videos (real/fake)",
        "faces/video",
        "video AUC [95 % CI]",
        "frame AUC [95 % CI]",
        "AP",
        "EER",
        "TPR@1%FPR",
        "TPR@5%FPR",
        f"FPR@{results[0].metrics.threshold:g}" if results else "FPR@thr",
        "accuracy",
        "ECE raw → calibrated",
        "AUC target",
        "FPR target",
    ]
    rows = []
    for r in results:
        m, f = r.metrics, r.frame_metrics
        row = [r.model_version] if several_models else []
        row += [
            r.test_set,
            f"{m.n_real + m.n_fake} ({m.n_real}/{m.n_fake})",
            _num(r.protocol.faces_per_video_mean, 1) if r.protocol else "–",
            _with_ci(m.auc, r.video_auc_ci),
            _with_ci(f.auc if f else None, r.frame_auc_ci),
            _num(m.ap),
            _num(m.eer),
            _num(m.tpr_at_fpr_1),
            _num(m.tpr_at_fpr_5),
            _num(m.fpr_at_threshold),
            _num(m.accuracy),
            f"{_num(r.ece_uncalibrated)} → {_num(m.ece)}",
            f"{_pass(r.targets.get('auc', {}).get('pass'))} (> {r.targets.get('auc', {}).get('target', 0.85):g})",
            f"{_pass(r.targets.get('fpr', {}).get('pass'))} (< {r.targets.get('fpr', {}).get('target', 0.05):g})",
        ]
        rows.append(row)
    return _md_table(header, rows)


def per_method_table(results: Sequence[EvaluationResult]) -> str:
    """Each manipulation method's fakes against all reals of its test set."""
    rows = []
    for r in results:
        for m in r.per_method.itertuples():
            interval = Interval(low=m.video_auc_low, high=m.video_auc_high)
            rows.append(
                [
                    r.test_set,
                    str(m.method),
                    str(m.n_fake),
                    _with_ci(m.video_auc, interval),
                    _num(m.frame_auc),
                    _num(m.ap),
                    _num(m.eer),
                ]
            )
    header = ["test set", "method", "fakes", "video AUC [95 % CI]", "frame AUC", "AP", "EER"]
    return _md_table(header, rows)


def cross_dataset_matrix(results: Sequence[EvaluationResult], level: str = "video") -> pd.DataFrame:
    """AUC with rows = model (what it was trained on) and columns = test set."""
    key = {"video": "video_auc", "frame": "frame_auc"}[level]
    frame = pd.DataFrame(
        [
            {"model": r.trained_on or r.model_version, "test_set": r.test_set, key: r.summary()[key]}
            for r in results
        ]
    )
    return frame.pivot_table(
        index="model", columns="test_set", values=key, aggfunc="first", sort=False, dropna=False
    )


def _matrix_md(matrix: pd.DataFrame) -> str:
    rows = [[str(i), *(_num(v) for v in matrix.loc[i])] for i in matrix.index]
    return _md_table(["trained on ↓ / tested on →", *map(str, matrix.columns)], rows)


def protocol_header(results: Sequence[EvaluationResult]) -> list[str]:
    """The protocol lines every report starts with (from the first result; equal across sets)."""
    p = results[0].protocol
    if p is None:
        return []
    faces = ", ".join(
        f"{r.test_set} {r.protocol.faces_per_video_mean:.1f} (min {r.protocol.faces_per_video_min}, "
        f"max {r.protocol.faces_per_video_max})"
        for r in results
        if r.protocol
    )
    return [
        f"- **Frames**: sampled at {p.frame_rate:g} FPS, every frame with exactly one face kept; faces per "
        f"video: {faces}",
        f"- **Face crop**: {p.face_crop}",
        f"- **Aggregation**: {p.aggregation}",
        f"- **Calibration**: {p.calibration}; decision: fake iff P(fake) > {p.threshold:g}",
        f"- **Intervals**: {p.bootstrap} (frame AUC: a drawn video brings all its frames)",
        f"- **Runtime**: {p.runtime}",
    ]


def _small_set_warning(r: EvaluationResult) -> list[str]:
    if min(r.metrics.n_real, r.metrics.n_fake) >= SMALL_SET:
        return []
    return [
        "",
        f"**Small test set {r.test_set}: {r.metrics.n_real} real / {r.metrics.n_fake} fake videos.** "
        f"A bootstrap over fewer than {SMALL_SET} videos per class understates the uncertainty "
        "(a perfect separation resamples to [1.000, 1.000]); read its intervals as a lower bound.",
    ]


def render_report(results: Sequence[EvaluationResult], title: str | None = None) -> str:
    """The markdown report: protocol header, main table, per-method table, cross-dataset matrix."""
    if not results:
        raise ValueError("nothing to report: no evaluation results")
    first = results[0]
    weights = ", ".join(sorted({r.weights for r in results}))
    trained_on = ", ".join(sorted({r.trained_on or "–" for r in results}))
    lines = [
        f"# {title or f'Evaluation of {first.model_version}'}",
        "",
        f"Weights: {weights}; trained on: {trained_on}.",
        *protocol_header(results),
        "",
        results_table(results),
    ]
    for r in results:
        lines += _small_set_warning(r)
    if any(len(r.per_method) for r in results):
        lines += ["", "## Per manipulation method (its fakes against all reals of the set)", ""]
        lines.append(per_method_table(results))
    if len({r.test_set for r in results}) > 1:
        lines += ["", "## Cross-dataset video AUC", "", _matrix_md(cross_dataset_matrix(results))]
        lines += ["", "## Cross-dataset frame AUC", "", _matrix_md(cross_dataset_matrix(results, "frame"))]
    if any(r.weights != "trained" for r in results):
        lines += ["", "**Untrained weights: these numbers measure the plumbing, not a detector.**"]
    return "\n".join(lines) + "\n"


def evaluation_id(model_version: str, data_hash: str) -> str:
    """Key of the `evaluations` row (64 characters at most)."""
    plain = f"{model_version}:{data_hash}"
    return plain if len(plain) <= 64 else hashlib.sha256(plain.encode()).hexdigest()[:64]


def _json_safe(value: object) -> object:
    """NaN (pandas' missing float) → None, numpy scalars → Python: PostgreSQL JSONB has no NaN."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def store_evaluation(
    results: Sequence[EvaluationResult],
    data_hashes: Mapping[str, str],
    store: ArtifactStore,
    db: ResultsDB,
) -> dict[str, str]:
    """Write each result to PostgreSQL and Parquet and each model's report; returns the report paths.

    `data_hashes` maps each test set's name to the hash of its rows (the evaluation's key).
    Re-evaluating the same model on the same test set replaces its row and files (idempotent).
    """
    reports: dict[str, str] = {}
    for r in results:
        data_hash = data_hashes[r.test_set]
        summary = r.summary()
        db.upsert_evaluation(
            evaluation_id=evaluation_id(r.model_version, data_hash),
            model_version=r.model_version,
            dataset=r.test_set,
            split="test",
            metrics=_json_safe(
                {
                    **r.metrics.model_dump(),
                    **summary,
                    "data_hash": data_hash,
                    "frame_metrics": r.frame_metrics.model_dump() if r.frame_metrics else None,
                    "per_method_auc": r.per_method_auc,
                    "per_method": r.per_method.to_dict(orient="records"),
                    "protocol": r.protocol.model_dump() if r.protocol else None,
                    "targets": r.targets,
                }
            ),
        )

        def rel(name: str, r: EvaluationResult = r, data_hash: str = data_hash) -> str:
            return layout.evaluation_rel(data_hash, name, r.model_version)

        store.write_bytes(rel("metrics.parquet"), _parquet(pd.DataFrame([summary])))
        store.write_bytes(rel("per_method.parquet"), _parquet(r.per_method))
        store.write_bytes(rel("predictions.parquet"), _parquet(r.predictions))
        store.write_bytes(rel("frame_predictions.parquet"), _parquet(r.frame_predictions))
        if r.roc_png:
            store.write_bytes(rel("roc.png"), r.roc_png)
        if r.reliability_png:
            store.write_bytes(rel("reliability.png"), r.reliability_png)
    for model_version in dict.fromkeys(r.model_version for r in results):
        own = [r for r in results if r.model_version == model_version]
        report_rel = layout.evaluation_report_rel(model_version)
        store.write_bytes(report_rel, render_report(own).encode())
        reports[model_version] = report_rel
    return reports


def render_ablation(rows: Sequence[object], title: str = "Ablations") -> str:
    """One table: each variant's AUCs with intervals and the paired Δ video AUC to the full model.

    `rows` are `training.ablation.AblationRow`s (typed loosely: this module does not train).
    """
    if not rows:
        raise ValueError("nothing to report: no ablation rows")
    results = [r.result for r in rows]  # type: ignore[attr-defined]
    header = [
        "variant",
        "what changes",
        "video AUC [95 % CI]",
        "Δ video AUC vs full [95 % CI]",
        "frame AUC [95 % CI]",
        "AP",
        "EER",
        "TPR@5%FPR",
        "ECE (cal.)",
    ]
    table = []
    for row, r in zip(rows, results, strict=True):
        delta = "–" if row.delta_auc is None else _with_ci(row.delta_auc, row.delta_ci)  # type: ignore[attr-defined]
        table.append(
            [
                row.variant,  # type: ignore[attr-defined]
                row.change,  # type: ignore[attr-defined]
                _with_ci(r.metrics.auc, r.video_auc_ci),
                "(reference)" if row is rows[0] else delta,
                _with_ci(r.frame_metrics.auc if r.frame_metrics else None, r.frame_auc_ci),
                _num(r.metrics.ap),
                _num(r.metrics.eer),
                _num(r.metrics.tpr_at_fpr_5),
                _num(r.metrics.ece),
            ]
        )
    first = results[0]
    lines = [
        f"# {title}: same recipe, same split, one part taken away",
        "",
        f"Test set {first.test_set}: {first.metrics.n_real} real / {first.metrics.n_fake} fake videos; "
        f"trained on: {first.trained_on or '–'}. A part adds what its removal costs: −Δ.",
        *protocol_header([first]),
        "- **Δ**: paired bootstrap (the same resampled videos score both models)",
        "",
        _md_table(header, table),
        *_small_set_warning(first),
    ]
    if any(r.weights != "trained" for r in results):
        lines += ["", "**Untrained weights: these numbers measure the plumbing, not a detector.**"]
    return "\n".join(lines) + "\n"
