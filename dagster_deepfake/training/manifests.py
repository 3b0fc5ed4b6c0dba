"""Dataset manifests: FaceForensics++, Celeb-DF v2 or a CSV → one table with a fixed schema.

Columns: path (absolute), label (real/fake), label_int (0/1), split (train/val/test), dataset,
method ("original" or the manipulation), identity (the source identity used for splitting),
compression, relative_path.

Splits never let an identity cross: FF++ uses the official `splits/{train,val,test}.json`
(pairs of ids) when present, else a hash of the source id (72/14/14, the official 720/140/140);
Celeb-DF takes `List_of_testing_videos.txt` as test and splits the rest by celebrity id
(80/20 train/val) — YouTube-real videos have no celebrity, each is its own identity.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("label_int", pa.int8()),
        ("split", pa.string()),
        ("dataset", pa.string()),
        ("method", pa.string()),
        ("identity", pa.string()),
        ("compression", pa.string()),
        ("relative_path", pa.string()),
    ],
    metadata={"schema_version": str(MANIFEST_SCHEMA_VERSION)},
)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")


class ManifestError(ValueError):
    """The dataset folder or CSV does not look like what was asked for."""


def _bucket(key: str, fractions: tuple[float, float]) -> str:
    """Deterministic split from a hash of the identity: train / val / test."""
    x = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if x < fractions[0] else "val" if x < fractions[0] + fractions[1] else "test"


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=MANIFEST_SCHEMA.names)
    if df.empty:
        return df
    df["label_int"] = (df["label"] == "fake").astype("int8")
    return df.sort_values("relative_path").reset_index(drop=True)


def _videos(folder: Path) -> list[Path]:
    return (
        sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if folder.is_dir() else []
    )


def parse_ffpp(root: str | Path, compression: str = "c23") -> pd.DataFrame:
    root = Path(root)
    originals = _videos(root / "original_sequences" / "youtube" / compression / "videos")
    if not originals and not (root / "manipulated_sequences").is_dir():
        raise ManifestError(
            f"{root}: no original_sequences/youtube/{compression}/videos or manipulated_sequences"
        )
    official: dict[str, str] = {}
    for split, name in (("train", "train.json"), ("val", "val.json"), ("test", "test.json")):
        path = root / "splits" / name
        if path.is_file():
            for pair in json.loads(path.read_text()):
                for vid in pair:
                    official[str(vid)] = split

    def split_of(source_id: str) -> str:
        return official.get(source_id) or _bucket(f"ffpp:{source_id}", (0.72, 0.14))

    rows = []
    for p in originals:
        rows.append(
            dict(
                path=str(p.resolve()),
                label="real",
                split=split_of(p.stem),
                dataset="ffpp",
                method="original",
                identity=p.stem,
                compression=compression,
                relative_path=str(p.relative_to(root)),
            )
        )
    manipulated = root / "manipulated_sequences"
    for method_dir in sorted(manipulated.iterdir()) if manipulated.is_dir() else []:
        for p in _videos(method_dir / compression / "videos"):
            target = p.stem.split("_")[0]  # TTT_SSS: the target's identity (its frames, its split)
            rows.append(
                dict(
                    path=str(p.resolve()),
                    label="fake",
                    split=split_of(target),
                    dataset="ffpp",
                    method=method_dir.name,
                    identity=target,
                    compression=compression,
                    relative_path=str(p.relative_to(root)),
                )
            )
    return _frame(rows)


def parse_celebdf(root: str | Path) -> pd.DataFrame:
    root = Path(root)
    folders = {
        "Celeb-real": ("real", "original"),
        "YouTube-real": ("real", "original"),
        "Celeb-synthesis": ("fake", "celeb-synthesis"),
    }
    if not any((root / f).is_dir() for f in folders):
        raise ManifestError(f"{root}: none of {sorted(folders)} found; is this Celeb-DF v2?")
    test: dict[str, str] = {}
    listing = root / "List_of_testing_videos.txt"
    if listing.is_file():
        for line in listing.read_text().splitlines():
            if line.strip():
                flag, rel = line.split(maxsplit=1)
                # In this file 1 marks a real video and 0 a fake one.
                test[rel.strip()] = "real" if flag == "1" else "fake"
    rows = []
    for folder, (label, method) in folders.items():
        for p in _videos(root / folder):
            rel = f"{folder}/{p.name}"
            match = re.match(r"(id\d+)_", p.name)
            identity = match.group(1) if match else f"yt:{p.stem}"
            split = (
                "test"
                if rel in test
                else ("train" if _bucket(f"celebdf:{identity}", (0.8, 0.2)) == "train" else "val")
            )
            rows.append(
                dict(
                    path=str(p.resolve()),
                    label=label,
                    split=split,
                    dataset="celebdf",
                    method=method,
                    identity=identity,
                    compression=None,
                    relative_path=rel,
                )
            )
    df = _frame(rows)
    # An identity in the test list is test everywhere, so none leaks into train/val.
    test_ids = set(df.loc[df["split"] == "test", "identity"])
    df.loc[df["identity"].isin(test_ids), "split"] = "test"
    return df


def parse_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: CSV manifest not found")
    raw = pd.read_csv(path)
    missing = {"path", "label", "split"} - set(raw.columns)
    if missing:
        raise ManifestError(
            f"{path}: missing columns {sorted(missing)} (need path, label, split; optional method, identity)"
        )
    labels = (
        raw["label"].astype(str).str.lower().map({"real": "real", "fake": "fake", "0": "real", "1": "fake"})
    )
    if labels.isna().any():
        bad = raw.loc[labels.isna(), "label"].unique()[:5]
        raise ManifestError(f"{path}: unknown labels {list(bad)} (use real/fake or 0/1)")
    splits = raw["split"].astype(str).str.lower()
    if not splits.isin(["train", "val", "test"]).all():
        raise ManifestError(
            f"{path}: split must be train, val or test; got {sorted(set(splits) - {'train', 'val', 'test'})}"
        )
    files = [(path.parent / p).resolve() for p in raw["path"].astype(str)]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise ManifestError(f"{path}: {len(absent)} listed videos do not exist, e.g. {absent[:3]}")
    rows = [
        dict(
            path=str(f),
            label=lab,
            split=spl,
            dataset="csv",
            method=str(raw["method"].iloc[i])
            if "method" in raw and pd.notna(raw["method"].iloc[i])
            else ("original" if lab == "real" else "unknown"),
            identity=str(raw["identity"].iloc[i]) if "identity" in raw else f.stem,
            compression=None,
            relative_path=str(raw["path"].iloc[i]),
        )
        for i, (f, lab, spl) in enumerate(zip(files, labels, splits, strict=True))
    ]
    return _frame(rows)


def load_manifest(kind: str, root: str | Path) -> pd.DataFrame:
    parsers = {"ffpp": parse_ffpp, "celebdf": parse_celebdf, "csv": parse_csv}
    if kind not in parsers:
        raise ManifestError(f"unknown dataset kind {kind!r}; expected one of {sorted(parsers)}")
    df = parsers[kind](root)
    if df.empty:
        raise ManifestError(f"{root}: no videos found for a {kind} dataset")
    return df


def manifest_hash(df: pd.DataFrame) -> str:
    """Short hash over (path, label, split), independent of row order."""
    keys = sorted(f"{p}|{lab}|{s}" for p, lab, s in zip(df["path"], df["label"], df["split"], strict=True))
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df[MANIFEST_SCHEMA.names], schema=MANIFEST_SCHEMA, preserve_index=False)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    return pq.read_table(path, schema=MANIFEST_SCHEMA).to_pandas()
