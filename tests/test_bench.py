"""`dagster-deepfake bench` on the smallest case: the table, the decode floor, the ensemble row,
and the benchmark's own model folder (a published trained checkpoint is never benchmarked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from commands.bench import run_bench
from dagster_deepfake.models.checkpoint import MANIFEST_FILE, read_manifest

STAGES = {"probe", "frames+faces", "flow", "audio+vad", "model load", "model", "saliency", "storage"}


@pytest.mark.slow
def test_bench_reports_every_stage_the_floor_and_an_ensemble(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    report = run_bench(
        out, durations=[2.0], resolutions=["240p"], model_config="tiny", ensemble_size=2, throughput_clips=0
    )
    (row,) = report["rows"]
    assert set(row["timings"]) == STAGES and all(t >= 0 for t in row["timings"].values())
    assert row["total_s"] == pytest.approx(sum(row["timings"].values()), abs=1e-2)
    assert row["decode_floor_s"] > 0 and row["x_floor"] == pytest.approx(
        row["total_s"] / row["decode_floor_s"], rel=0.01
    )
    assert row["frames"] == 10 and row["weights"] == "untrained" and row["peak_rss_mb"] > 100

    # The ensemble row ran two distinct checkpoints from the benchmark's own folder.
    ensemble = report["ensemble"]
    assert ensemble["ensemble_size"] == 2 and set(ensemble["timings"]) == STAGES
    members = sorted(p.parent for p in (out / "models").rglob(MANIFEST_FILE))
    assert len(members) == 2 and len({read_manifest(m).model_version for m in members}) == 2
    assert not (out / "models" / "current").exists()

    saved = json.loads((out / "bench.json").read_text())
    assert saved["rows"][0]["clip"] == row["clip"] and saved["throughput"] is None
    table = (out / "bench.md").read_text()
    assert row["clip"] in table and "×2 ensemble" in table and "Model `tiny` (untrained weights" in table
