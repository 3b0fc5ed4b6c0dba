"""Global assets: `dataset_manifest` → `trained_model` → `calibration` → `evaluation`.

They read the per-video features the partitioned assets cached (faces, flow, audio); training
never decodes video. A registered dataset is one `register-dataset` call (or `synth --n`).
"""

import datetime as dt

import dagster as dg
from pydantic import Field

from assets.common import GPU_POOL, GPU_QUEUE_TAGS, image_md
from dagster_deepfake.config import with_training_config
from dagster_deepfake.plots import line_plot_png
from dagster_deepfake.training import registered
from dagster_deepfake.training.features import StoreFeatureSource
from dagster_deepfake.training.manifests import manifest_hash
from resources import ArtifactStoreResource, PostgresResource, SettingsResource, TorchDeviceResource


@dg.asset(
    group_name="training",
    kinds={"parquet"},
    description="All registered datasets' videos with labels, splits and partition keys.",
)
def dataset_manifest(artifacts: ArtifactStoreResource, postgres: PostgresResource) -> dg.MaterializeResult:
    store = artifacts.store()
    rows = registered.training_rows(store, postgres.db())
    if rows.empty:
        raise dg.Failure(
            "no dataset registered: run `dagster-deepfake register-dataset` (or `synth --n N` + register)"
        )
    registered.write_training_manifest(store, rows)
    counts = rows.groupby(["split", "label"]).size().to_dict()
    return dg.MaterializeResult(
        metadata={
            "videos": len(rows),
            "with_cached_features": int(rows["features_cached"].sum()),
            "manifest_hash": manifest_hash(rows),
            "by_split_and_label": dg.MetadataValue.json(
                {f"{k[0]}/{k[1]}": int(v) for k, v in counts.items()}
            ),
        }
    )


class TrainingRunConfig(dg.Config):
    """Launchpad config of one training run."""

    training_config: str | None = Field(
        default=None,
        description="A settings YAML whose `model` and `training` sections replace the platform's for "
        "this run and whose explicit `data` keys (dataset, val_dataset, augmentation …) apply over the "
        "platform's, e.g. config/train-synthetic.yaml (the tiny model at lr 1e-3 on synthetic-demo). "
        "Empty: the platform's.",
    )


@dg.asset(
    deps=[dataset_manifest],
    group_name="training",
    kinds={"pytorch"},
    pool=GPU_POOL,
    op_tags=GPU_QUEUE_TAGS,
    description="AdamW + cosine warm-up, temporal-consistency loss, modality dropout; best checkpoint by "
    "validation AUC, published to <model_dir>/current. Resumes an interrupted run.",
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingRunConfig,
    settings: SettingsResource,
    artifacts: ArtifactStoreResource,
    torch_device: TorchDeviceResource,
) -> dg.MaterializeResult:
    from dagster_deepfake.models.publish import publish_checkpoint, training_run_dir
    from dagster_deepfake.models.weights_store import imported_weights_dir
    from dagster_deepfake.training.loop import train_detector

    s = settings.get()
    if config.training_config:
        s = with_training_config(s, config.training_config)
        context.log.info(
            f"training config {config.training_config}: model {s.model.registry_config}, "
            f"lr {s.training.learning_rate}, batch {s.training.batch_size}, epochs {s.training.epochs}"
        )
    store = artifacts.store()
    sets, labels, data_hash = registered.training_sets(store, s.data)
    for note in sets.notes:
        context.log.warning(note)
    train_ids, val_ids = list(sets.train["video_id"]), list(sets.val["video_id"])
    if not train_ids or not val_ids:
        raise dg.Failure(
            f"need cached features for train and val videos (train {len(train_ids)}, val {len(val_ids)})"
        )
    from dagster_deepfake.models.registry import resolve_model_config
    from dagster_deepfake.training.features import LRUFeatureSource

    detector_config = resolve_model_config(s.model)
    # One folder per (data, architecture): an interrupted run resumes, another model starts afresh.
    out_dir = training_run_dir(s.platform.model_dir, data_hash, detector_config.config_hash())
    source = LRUFeatureSource(StoreFeatureSource(store, labels))

    def on_epoch(stats) -> None:
        context.log.info(
            f"epoch {stats.epoch}: step {stats.step}, train loss {stats.train_loss:.4f}, "
            f"val AUC {'n/a' if stats.val_auc is None else f'{stats.val_auc:.3f}'}, lr {stats.lr:.2e}, "
            f"{stats.seconds:.1f}s"
        )
        # One observation per epoch: the asset's Plots tab draws the curves while training runs.
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key,
                metadata={
                    "epoch": stats.epoch,
                    "step": stats.step,
                    "train_loss": dg.MetadataValue.float(float(stats.train_loss)),
                    "val_auc": dg.MetadataValue.float(float(stats.val_auc or 0.0)),
                    "lr": dg.MetadataValue.float(float(stats.lr)),
                },
            )
        )

    trained_on = sets.train_names
    result = train_detector(
        detector_config,
        train_ids,
        val_ids,
        source,
        s.training,
        out_dir,
        device=torch_device.torch_device(),
        on_epoch=on_epoch,
        training_data_hash=data_hash,
        training_data=trained_on,
        data_cfg=s.data,
        weights_dir=imported_weights_dir(s.platform.model_dir),  # what `weights import` brought
    )
    # Atomic: serving sees the old checkpoint or the new one, never none (models/publish.py);
    # through the artifact store, every other host's next model load follows (models/sync.py).
    current = publish_checkpoint(result.best_checkpoint, s.platform.model_dir, store)
    epochs = [h.epoch for h in result.history]
    plot = line_plot_png(
        epochs,
        {
            "train loss": [h.train_loss for h in result.history],
            "val AUC": [h.val_auc or 0 for h in result.history],
        },
        title="training",
        xlabel="epoch",
    )
    return dg.MaterializeResult(
        metadata={
            "best_val_auc": dg.MetadataValue.float(float(result.best_val_auc or 0.0)),
            "epochs": len(result.history),
            "resumed_from_step": result.resumed_from_step,
            "train_videos": len(train_ids),
            "val_videos": len(val_ids),
            "training_data_hash": data_hash,
            "trained_on": trained_on,
            "checkpoint": dg.MetadataValue.path(str(current)),
            "curves": dg.MetadataValue.md(image_md(plot, "loss and AUC", "image/png")),
        }
    )


@dg.asset(
    deps=[trained_model],
    group_name="training",
    kinds={"pytorch"},
    description="Temperature scaling fitted on the validation videos (NLL); ECE and reliability before/after.",
)
def calibration(
    settings: SettingsResource, artifacts: ArtifactStoreResource, torch_device: TorchDeviceResource
) -> dg.MaterializeResult:
    from dagster_deepfake.models.publish import publish_checkpoint
    from dagster_deepfake.models.store import synced_current_dir
    from dagster_deepfake.training.calibrate import calibrate_checkpoint

    s = settings.get()
    store = artifacts.store()
    sets, labels, _ = registered.training_sets(store, s.data)  # the validation set training used
    val_ids = list(sets.val["video_id"])
    # The published checkpoint, even when training ran on another host (models/sync.py) …
    current = synced_current_dir(s.platform.model_dir, store)
    fit = calibrate_checkpoint(
        current,
        val_ids,
        StoreFeatureSource(store, labels),
        device=torch_device.torch_device(),
        cpu_backbone=s.platform.cpu_backbone,  # the logits serving computes (score_videos)
        model_dir=s.platform.model_dir,
    )
    # … and republished with its temperature, so that every host serves it calibrated.
    publish_checkpoint(current.resolve(), s.platform.model_dir, store)
    return dg.MaterializeResult(
        metadata={
            "temperature": dg.MetadataValue.float(fit.temperature),
            # ECE over few videos is coarse; T minimises NLL, which may leave ECE no lower.
            "val_videos": len(val_ids),
            "ece_before": dg.MetadataValue.float(fit.ece_before),
            "ece_after": dg.MetadataValue.float(fit.ece_after),
            "nll_before": dg.MetadataValue.float(fit.nll_before),
            "nll_after": dg.MetadataValue.float(fit.nll_after),
            "reliability": dg.MetadataValue.md(image_md(fit.reliability_png, "reliability", "image/png")),
        }
    )


@dg.asset(
    deps=[calibration],
    group_name="training",
    kinds={"parquet", "postgres"},
    description="Per registered test set: video- and frame-level AUC with bootstrap intervals, AP, EER, "
    "TPR at 1/5 % FPR, FPR at the threshold, ECE before/after calibration, per method, cross-dataset.",
)
def evaluation(
    settings: SettingsResource,
    artifacts: ArtifactStoreResource,
    postgres: PostgresResource,
    torch_device: TorchDeviceResource,
) -> dg.MaterializeResult:
    from dagster_deepfake.models.store import synced_current_dir
    from dagster_deepfake.training.eval_report import render_report, results_table, store_evaluation
    from dagster_deepfake.training.evaluate import evaluate_test_sets

    s = settings.get()
    store = artifacts.store()
    sets, labels, hashes = registered.evaluation_sets(registered.usable_rows(store))
    if not sets:
        raise dg.Failure("no registered dataset has a test split with cached features")
    results = evaluate_test_sets(
        synced_current_dir(s.platform.model_dir, store),
        sets,
        StoreFeatureSource(store, labels),
        threshold=s.model.classification.threshold,
        device=torch_device.torch_device(),
        data_cfg=s.data,
        targets=s.targets,
        cpu_backbone=s.platform.cpu_backbone,
        model_dir=s.platform.model_dir,
    )
    reports = store_evaluation(results, hashes, store, postgres.db())
    head = results[0]  # the first test set by name; every set is in the table and the report
    m = head.metrics
    return dg.MaterializeResult(
        metadata={
            "test_set": head.test_set,
            "auc": m.auc,
            "auc_ci": dg.MetadataValue.json(head.video_auc_ci.model_dump() if head.video_auc_ci else None),
            "frame_auc": head.frame_metrics.auc if head.frame_metrics else None,
            "ap": m.ap,
            "accuracy": m.accuracy,
            "fpr_at_0.5": m.fpr_at_threshold,
            "tpr_at_1pct_fpr": m.tpr_at_fpr_1,
            "tpr_at_5pct_fpr": m.tpr_at_fpr_5,
            "eer": m.eer,
            "ece": m.ece,
            "ece_uncalibrated": head.ece_uncalibrated,
            "per_method_auc": dg.MetadataValue.json(head.per_method_auc),
            "meets_targets": all(
                bool(r.targets["auc"]["pass"] and r.targets["fpr"]["pass"]) for r in results
            ),
            "weights": head.weights,
            "test_sets": dg.MetadataValue.json({r.test_set: len(r.predictions) for r in results}),
            "test_videos": sum(len(r.predictions) for r in results),
            "evaluated_at": dt.datetime.now(dt.UTC).isoformat(),
            "report_path": dg.MetadataValue.path(store.full_url(reports[head.model_version])),
            "table": dg.MetadataValue.text(results_table(results)),
            "report": dg.MetadataValue.md(render_report(results)),
            "roc": dg.MetadataValue.md(
                image_md(head.roc_png, "ROC", "image/png") if head.roc_png else "one class only"
            ),
            "reliability": dg.MetadataValue.md(
                image_md(head.reliability_png, "reliability", "image/png") if head.reliability_png else "-"
            ),
        }
    )
