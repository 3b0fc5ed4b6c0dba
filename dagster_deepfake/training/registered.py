"""What the registered datasets hold for training: the training manifest (every registered video
with its label, split, partition key and whether its features are cached) and the sets chosen
from it by `data.dataset` / `data.val_dataset`. Read by the training assets (docs/ARCHITECTURE.md §3).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dagster_deepfake.config import DataConfig
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.postgres import ResultsDB
from dagster_deepfake.training.manifests import (
    TrainingSets,
    choose_training_sets,
    manifest_hash,
    read_manifest,
)

Labels = dict[str, tuple[int, str]]


def training_rows(store: ArtifactStore, db: ResultsDB) -> pd.DataFrame:
    """Every registered dataset's rows with their partition key and whether features are cached."""
    frames = []
    for name in store.list(layout.DATASETS_DIR):
        rel = layout.dataset_manifest_rel(name)
        if store.exists(rel):
            with store.local_path(rel) as local:
                frames.append(read_manifest(local).assign(dataset_name=name))
    if not frames:
        return pd.DataFrame()
    manifest = pd.concat(frames, ignore_index=True)
    ids = db.video_ids_by_source([Path(p).resolve().as_uri() for p in manifest["path"]])
    manifest["video_id"] = [ids.get(Path(p).resolve().as_uri()) for p in manifest["path"]]
    manifest["features_cached"] = [
        bool(v) and store.has_table("faces", v) and store.has_table("flow", v) for v in manifest["video_id"]
    ]
    return manifest


def write_training_manifest(store: ArtifactStore, rows: pd.DataFrame) -> None:
    store.write_bytes(layout.TRAINING_MANIFEST_REL, rows.to_parquet(index=False))


def usable_rows(store: ArtifactStore) -> pd.DataFrame:
    """The training manifest's videos whose features are cached."""
    with store.local_path(layout.TRAINING_MANIFEST_REL) as local:
        rows = pd.read_parquet(local)
    return rows[rows["features_cached"]]


def split_ids(store: ArtifactStore, split: str) -> tuple[list[str], Labels, str]:
    """One split's video ids, every usable video's (label, method), and the data hash."""
    usable = usable_rows(store)
    labels = {r.video_id: (int(r.label_int), str(r.method)) for r in usable.itertuples()}
    return list(usable.loc[usable["split"] == split, "video_id"]), labels, manifest_hash(usable)


def training_sets(store: ArtifactStore, data: DataConfig) -> tuple[TrainingSets, Labels, str]:
    """`data.dataset`'s train split and `data.val_dataset`'s val split, their labels and data hash."""
    sets = choose_training_sets(usable_rows(store), data.dataset, data.val_dataset)
    both = pd.concat([sets.train, sets.val])
    labels = {r.video_id: (int(r.label_int), str(r.method)) for r in both.itertuples()}
    return sets, labels, manifest_hash(both)


def evaluation_sets(
    rows: pd.DataFrame, names: list[str] | None = None, split: str = "test"
) -> tuple[dict[str, list[str]], Labels, dict[str, str]]:
    """Each registered dataset's `split` as its own test set (a cross-dataset evaluation).

    `rows` are usable training-manifest rows (`usable_rows`, or `training_rows` filtered on
    `features_cached`); `names` picks datasets by name (default: every one with such a split).
    Returns the ids per dataset, every listed video's (label, method) and each set's data hash.
    """
    chosen = rows[rows["split"] == split]
    if names:
        unknown = sorted(set(names) - set(rows["dataset_name"]))
        if unknown:
            known = ", ".join(sorted(set(rows["dataset_name"]))) or "none"
            raise ValueError(
                f"no registered dataset with cached features named {unknown} (registered: {known})"
            )
        chosen = chosen[chosen["dataset_name"].isin(names)]
    sets, hashes = {}, {}
    for name, group in chosen.groupby("dataset_name", sort=True):
        sets[str(name)] = list(group["video_id"])
        hashes[str(name)] = manifest_hash(group)
    labels = {r.video_id: (int(r.label_int), str(r.method)) for r in chosen.itertuples()}
    return sets, labels, hashes
