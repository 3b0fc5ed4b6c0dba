"""`dagster-deepfake evaluate` and `dagster-deepfake ablate`: evaluation comparable with the field.

`evaluate` scores one or more checkpoints on the test split of each registered dataset (a
cross-dataset matrix when there are several), from the features the per-video assets cached,
and writes what the `evaluation` asset writes: PostgreSQL `evaluations`, Parquet and the
markdown report under `evaluations/` (storage/layout.py). `ablate` trains the same recipe with
audio off, flow off and each temporal encoder on one split and prints one table
(docs/EVALUATION.md). Both call the library (training/evaluate.py, training/ablation.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dagster_deepfake.config import Settings, load_settings, with_training_config

if TYPE_CHECKING:  # imported where used: every command's start-up builds this parser (issue 20)
    import pandas as pd

    from dagster_deepfake.storage.artifacts import ArtifactStore
    from dagster_deepfake.storage.postgres import ResultsDB


def _store_and_db(settings: Settings) -> tuple[ArtifactStore, ResultsDB]:
    from dagster_deepfake.storage.artifacts import ArtifactStore, s3_storage_options
    from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url

    p = settings.platform
    store = ArtifactStore(
        p.artifact_root, s3_storage_options(p.artifact_root, p.s3_endpoint_url, p.s3_region)
    )
    db = ResultsDB(p.postgres_url or embedded_postgres_url(p.postgres_data_dir))
    db.create_schema()
    return store, db


def _usable_rows(store: ArtifactStore, db: ResultsDB) -> pd.DataFrame:
    from dagster_deepfake.training.registered import training_rows

    rows = training_rows(store, db)
    if rows.empty:
        raise ValueError("no dataset registered: run `dagster-deepfake register-dataset` first")
    usable = rows[rows["features_cached"]]
    if usable.empty:
        raise ValueError("no registered video has cached features yet (the backfill sensor extracts them)")
    return usable


def _device(settings: Settings, requested: str | None) -> str:
    from dagster_deepfake.models.inference import select_device

    return select_device(requested or settings.platform.device)


def _checkpoint_dirs(given: list[str] | None, settings: Settings) -> list[Path]:
    from dagster_deepfake.models.checkpoint import MANIFEST_FILE
    from dagster_deepfake.models.store import current_checkpoint_dir

    dirs = [Path(c) for c in given] if given else [current_checkpoint_dir(settings.platform.model_dir)]
    for d in dirs:
        if not (d / MANIFEST_FILE).is_file():
            raise FileNotFoundError(
                f"{d}: not a checkpoint (no {MANIFEST_FILE}); train one or pass --checkpoint"
            )
    return dirs


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dagster_deepfake.training.eval_report import render_report, store_evaluation
    from dagster_deepfake.training.evaluate import evaluate_test_sets
    from dagster_deepfake.training.features import LRUFeatureSource, StoreFeatureSource
    from dagster_deepfake.training.registered import evaluation_sets

    settings = load_settings(args.config)
    store, db = _store_and_db(settings)
    try:
        sets, labels, hashes = evaluation_sets(_usable_rows(store, db), args.dataset, args.split)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not sets:
        print(
            f"error: no registered dataset has a {args.split!r} split with cached features", file=sys.stderr
        )
        return 2
    device = _device(settings, args.device)
    source = LRUFeatureSource(StoreFeatureSource(store, labels))
    results = []
    for checkpoint in _checkpoint_dirs(args.checkpoint, settings):
        print(f"evaluating {checkpoint} on {', '.join(f'{k} ({len(v)} videos)' for k, v in sets.items())} …")
        results += evaluate_test_sets(
            checkpoint,
            sets,
            source,
            device=device,
            threshold=settings.model.classification.threshold,
            data_cfg=settings.data,
            targets=settings.targets,
            n_resamples=args.bootstrap,
            seed=args.seed,
            cpu_backbone=settings.platform.cpu_backbone,
            model_dir=settings.platform.model_dir,
        )
    reports = store_evaluation(results, hashes, store, db)
    report = render_report(results)
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.md").write_text(report)
        print(f"report: {out / 'evaluation.md'}")
    for model_version, rel in reports.items():
        print(
            f"stored: PostgreSQL evaluations ({model_version}); {store.full_url(rel)} and Parquet beside it"
        )
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    import pandas as pd

    from dagster_deepfake.training.ablation import run_ablations
    from dagster_deepfake.training.eval_report import render_ablation
    from dagster_deepfake.training.features import LRUFeatureSource, StoreFeatureSource
    from dagster_deepfake.training.manifests import choose_training_sets, manifest_hash

    settings = load_settings(args.config)
    if args.training_config:
        settings = with_training_config(settings, args.training_config)
    training = settings.training
    if args.epochs:
        training = training.model_copy(update={"epochs": args.epochs})
    store, db = _store_and_db(settings)
    try:
        rows = _usable_rows(store, db)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dataset = args.dataset or settings.data.dataset
    sets = choose_training_sets(rows, dataset, args.val_dataset or settings.data.val_dataset)
    for note in sets.notes:
        print(f"note: {note}")
    test_names = [args.test_dataset] if args.test_dataset else sorted(set(sets.train["dataset_name"]))
    test = rows[(rows["split"] == "test") & rows["dataset_name"].isin(test_names)]
    if sets.train.empty or sets.val.empty or test.empty:
        print(
            f"error: need train, val and test videos with cached features (train {len(sets.train)}, "
            f"val {len(sets.val)}, test {len(test)} of {', '.join(test_names) or 'none'})",
            file=sys.stderr,
        )
        return 2
    every = pd.concat([sets.train, sets.val, test])
    labels = {r.video_id: (int(r.label_int), str(r.method)) for r in every.itertuples()}
    source = LRUFeatureSource(StoreFeatureSource(store, labels))
    out = Path(args.out)
    print(
        f"ablations of {settings.model.registry_config}: {len(sets.train)} train / {len(sets.val)} val / "
        f"{len(test)} test videos, {training.epochs} epochs each, results in {out}"
    )
    result = run_ablations(
        settings.model,
        training,
        list(sets.train["video_id"]),
        list(sets.val["video_id"]),
        list(test["video_id"]),
        source,
        out,
        test_set="+".join(test_names),
        device=_device(settings, args.device),
        seed=args.seed,
        data_cfg=settings.data,
        targets=settings.targets,
        n_resamples=args.bootstrap,
        training_data=sets.train_names,
        training_data_hash=manifest_hash(pd.concat([sets.train, sets.val])),
        on_variant=lambda name: print(f"  training, calibrating and evaluating: {name} …", flush=True),
    )
    table = render_ablation(result)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table)
    summary = pd.DataFrame(
        [
            {
                "variant": r.variant,
                "change": r.change,
                **r.result.summary(),
                "delta_video_auc": r.delta_auc,
                "delta_low": r.delta_ci.low if r.delta_ci else None,
                "delta_high": r.delta_ci.high if r.delta_ci else None,
                "checkpoint": str(r.checkpoint),
            }
            for r in result
        ]
    )
    summary.to_parquet(out / "ablation.parquet", index=False)
    print(f"table: {out / 'ablation.md'}, rows: {out / 'ablation.parquet'}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `evaluate` and `ablate` subcommands (registered by commands/cli.py)."""
    p = sub.add_parser(
        "evaluate",
        help="video/frame AUC with bootstrap intervals, AP, EER, TPR@1/5%%FPR, ECE, per method, cross-dataset",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        help="checkpoint folder (repeatable; default: the serving model <model_dir>/current)",
    )
    p.add_argument(
        "--dataset",
        action="append",
        help="registered dataset whose split to test on (repeatable; default: every one with that split)",
    )
    p.add_argument("--split", default="test", help="which split is the test set (default: test)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of videos (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default: platform.device)")
    p.add_argument("--out", default=None, help="also write the markdown report to DIR/evaluation.md")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "ablate",
        help="train the same recipe with audio off, flow off and each temporal encoder; one table",
    )
    p.add_argument("--dataset", default=None, help="training set (default: data.dataset)")
    p.add_argument("--val-dataset", default=None, help="validation set (default: data.val_dataset)")
    p.add_argument("--test-dataset", default=None, help="test set (default: the training set's test split)")
    p.add_argument("--training-config", default=None, help="YAML for model/training, as for `train`")
    p.add_argument("--epochs", type=int, default=None, help="override training.epochs for every variant")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="training and bootstrap seed (the same for all)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="ablations", help="folder for the runs, ablation.md and ablation.parquet")
    p.set_defaults(func=cmd_ablate)
