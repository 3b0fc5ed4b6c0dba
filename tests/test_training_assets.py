"""The training half through Dagster: a registered synthetic dataset, its `extract_features`
runs, then `train_calibrate_evaluate` with a per-run training config, against an ephemeral
instance and the real PostgreSQL; afterwards predictions are served by what it published."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from sqlalchemy import select

from code_location.definitions import (
    ASSET_CHECKS,
    PER_VIDEO_ASSETS,
    TRAINING_ASSETS,
    extract_features_job,
    train_job,
)
from commands.cli import main as cli_main
from dagster_deepfake.analyze import analyze_file
from dagster_deepfake.datasets import register_dataset
from dagster_deepfake.models.checkpoint import read_manifest
from dagster_deepfake.models.store import current_checkpoint_dir, load_ensemble
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.postgres import evaluations
from dagster_deepfake.synthetic import generate_dataset
from resources import default_resources
from sensors.datasets import add_video_partitions

EPOCHS = 3


@pytest.mark.slow
def test_train_calibrate_evaluate_on_a_registered_dataset(settings, db, tmp_path: Path, capsys):
    settings.platform.model_dir = str(tmp_path / "models")  # never the repository's .models
    data = tmp_path / "synthetic"
    manifest = generate_dataset(data, 12, seed=3, duration=2.0)
    reg = register_dataset(settings, "csv", data / "manifest.csv", name="synthetic-test")
    instance = dg.DagsterInstance.ephemeral()
    add_video_partitions(instance, reg.video_ids)
    defs = dg.Definitions(
        assets=[*PER_VIDEO_ASSETS, *TRAINING_ASSETS],
        asset_checks=ASSET_CHECKS,
        jobs=[extract_features_job, train_job],
        resources=default_resources(settings),
    )
    for video_id in reg.video_ids:
        run = defs.resolve_job_def("extract_features").execute_in_process(
            partition_key=video_id, instance=instance
        )
        assert run.success, video_id

    training_yaml = tmp_path / "train.yaml"
    training_yaml.write_text(
        f"model:\n  registry_config: tiny\ntraining:\n  learning_rate: 1.0e-3\n  batch_size: 4\n  epochs: {EPOCHS}\n"
    )
    result = defs.resolve_job_def("train_calibrate_evaluate").execute_in_process(
        instance=instance,
        run_config={"ops": {"trained_model": {"config": {"training_config": str(training_yaml)}}}},
    )
    assert result.success

    # The dataset manifest saw every registered video with its cached features.
    listed = result.asset_materializations_for_node("dataset_manifest")[0].metadata
    assert listed["videos"].value == len(manifest) and listed["with_cached_features"].value == len(manifest)

    # One observation per epoch (the UI's curves) and the run's config took effect.
    observed = [
        e.asset_observation_data.asset_observation.metadata
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    assert [o["epoch"].value for o in observed] == list(range(1, EPOCHS + 1))
    trained = result.asset_materializations_for_node("trained_model")[0].metadata
    assert trained["epochs"].value == EPOCHS and trained["trained_on"].value == "synthetic-test"

    # The published checkpoint says what it is, and calibration wrote its temperature into it.
    published = read_manifest(current_checkpoint_dir(settings.platform.model_dir))
    assert published.trained and published.registry_config == "tiny"
    assert published.training_data == "synthetic-test"
    calibration = result.asset_materializations_for_node("calibration")[0].metadata
    assert published.temperature == pytest.approx(calibration["temperature"].value)

    # Published through the artifact store as well (calibrated: calibration republishes): a host
    # with a model folder of its own serves the very same model (models/sync.py).
    other_host = tmp_path / "other-host-models"
    store = ArtifactStore(settings.platform.artifact_root)
    (_, served), *_ = load_ensemble(None, str(other_host), "tiny", 1, "cpu", store)[0]
    assert served.model_version == published.model_version and served.temperature == published.temperature
    assert (
        Path(os.readlink(other_host / "current")).name
        == Path(os.readlink(current_checkpoint_dir(settings.platform.model_dir))).name
    )

    # The evaluation is a PostgreSQL row for this model on the test split.
    with db.engine.connect() as conn:
        rows = conn.execute(select(evaluations)).mappings().all()
    assert [(r["model_version"], r["split"], r["dataset"]) for r in rows] == [
        (published.model_version, "test", "synthetic-test")
    ]
    stored = rows[0]["metrics"]
    assert 0.0 <= stored["auc"] <= 1.0 and 0.0 <= stored["frame_auc"] <= 1.0
    assert stored["video_auc_low"] <= stored["video_auc"] <= stored["video_auc_high"]
    evaluated = result.asset_materializations_for_node("evaluation")[0].metadata
    report = evaluated["report"].value
    assert report.startswith(f"# Evaluation of {published.model_version}") and "5 FPS" in report
    assert "| synthetic-test |" in evaluated["table"].value

    # The same evaluation from the command line (and the ablations in one table), on the same store.
    cli_yaml = tmp_path / "cli.yaml"
    p = settings.platform
    keys = {"artifact_root": p.artifact_root, "postgres_url": p.postgres_url, "model_dir": p.model_dir}
    cli_yaml.write_text("platform:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in keys.items()))
    out = tmp_path / "eval-out"
    assert cli_main(["--config", str(cli_yaml), "evaluate", "--bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| synthetic-test |" in printed and (out / "evaluation.md").read_text() in printed
    assert cli_main(["--config", str(cli_yaml), "evaluate", "--dataset", "nope"]) == 2
    ablate = ["--config", str(cli_yaml), "ablate", "--training-config", str(training_yaml), "--epochs", "1"]
    assert cli_main([*ablate, "--bootstrap", "50", "--out", str(tmp_path / "abl")]) == 0
    table = capsys.readouterr().out
    assert "| no audio |" in table and "| temporal transformer |" in table and "(reference)" in table
    assert len(pd.read_parquet(tmp_path / "abl" / "ablation.parquet")) == 4

    # From now on predictions come from that model and say so.
    clip = data / str(manifest.loc[manifest["split"] == "test", "path"].iloc[0])
    document = analyze_file(clip, settings).document
    assert document["additions"]["weights"] == "trained"
    assert document["additions"]["trained_on"].startswith("synthetic-test (data ")
    assert document["metadata"]["model_version"] == published.model_version
