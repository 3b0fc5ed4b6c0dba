"""Dataset manifests: FaceForensics++, Celeb-DF v2 or a labelled CSV → one table, one schema.

Columns (``MANIFEST_SCHEMA``, version ``MANIFEST_SCHEMA_VERSION``): path (absolute), label
(real/fake), label_int (0 real / 1 fake, the model's class index), split (train/val/test),
dataset (ffpp/celebdf/csv), method ("original" or the manipulation), identity (the person the
video shows, the unit of splitting), compression (FF++ only), relative_path (as the dataset or
the CSV names it).

Split rules, all deterministic (no random state; a hash of the identity decides):

* FaceForensics++: the official ``splits/{train,val,test}.json`` lists of [target, source]
  pairs when present; a fake ``TTT_SSS`` takes the split of its pair (= of its target). Ids the
  lists do not name (or no lists at all) are split 72/14/14 (the official 720/140/140) by a
  hash of their *group*: ids joined by a fake (target and source) form one group, so neither
  the target's frames nor the source's face ever cross splits. DeepFakeDetection (actors
  ``AA__scene``, fakes ``AA_BB__scene__hash``) follows the same rule with ``actor:AA`` ids.
* Celeb-DF v2: ``List_of_testing_videos.txt`` is the test split, exactly (the published
  benchmark). In that file ``1`` marks a real video and ``0`` a fake one; a line that
  contradicts the folder it names is an error. The other videos are split 80/20 train/val by a
  hash of the celebrity id (``idX``; the target of ``idX_idY_NNNN``), each YouTube-real video
  being its own identity. The official test list shares celebrities with the rest; pass
  ``exclusive_test_identities=True`` to move every video of a tested celebrity to test.
  Donor faces (``idY``) may cross train/val: Celeb-DF swaps every celebrity with many others,
  so grouping donors too would leave one group.
* CSV: the split column is taken as given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

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
DatasetKind = Literal["ffpp", "celebdf", "csv"]
LABEL_INT = {"real": 0, "fake": 1}
SPLITS = ("train", "val", "test")
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
# Known FF++ manipulations; other folders under manipulated_sequences are taken as methods too.
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")
FFPP_SPLIT_FRACTIONS = (0.72, 0.14)  # train, val; test is the rest (official 720/140/140)
CELEBDF_VAL_FRACTION = 0.2

_FFPP_REAL = re.compile(r"^(\d+)$")  # original_sequences/youtube: NNN
_FFPP_FAKE = re.compile(r"^(\d+)_(\d+)$")  # manipulated: TTT_SSS (target, source)
_DFD_REAL = re.compile(r"^(\d+)__")  # original_sequences/actors: AA__scene
_DFD_FAKE = re.compile(r"^(\d+)_(\d+)__")  # DeepFakeDetection: AA_BB__scene__hash
_CELEB_ID = re.compile(r"^(id\d+)_")  # Celeb-real idX_NNNN, Celeb-synthesis idX_idY_NNNN


class ManifestError(ValueError):
    """The dataset folder or CSV does not look like what was asked for; the message says why."""


def hash_split(key: str, fractions: tuple[float, float]) -> str:
    """Deterministic split of an identity key: train below fractions[0], then val, then test."""
    x = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    if x < fractions[0]:
        return "train"
    return "val" if x < fractions[0] + fractions[1] else "test"


def _videos(folder: Path, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=MANIFEST_SCHEMA.names)
    df["label_int"] = df["label"].map(LABEL_INT).astype("int8")
    return df.sort_values("relative_path", kind="stable").reset_index(drop=True)


class _Groups:
    """Union-find over identity ids: ids that appear together in one fake share a split."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def root(self, x: str) -> str:
        self._parent.setdefault(x, x)
        while self._parent[x] != x:
            self._parent[x] = self._parent[self._parent[x]]
            x = self._parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:  # the smaller id represents the group, so the hash key is order-free
            self._parent[max(ra, rb)] = min(ra, rb)


def _official_ffpp_splits(root: Path) -> dict[str, str]:
    official: dict[str, str] = {}
    for split in SPLITS:
        path = root / "splits" / f"{split}.json"
        if not path.is_file():
            continue
        try:
            pairs = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
        for pair in pairs:
            for vid in pair:
                vid = str(vid)
                if official.setdefault(vid, split) != split:
                    raise ManifestError(
                        f"{root / 'splits'}: id {vid} is listed in both {official[vid]} and {split}"
                    )
    return official


def parse_ffpp(root: str | Path, compression: str = "c23") -> pd.DataFrame:
    """FaceForensics++ (``original_sequences/{youtube,actors}/<c>/videos``, ``manipulated_sequences/<Method>/<c>/videos``)."""
    root = Path(root)
    originals = [
        (p, sub)
        for sub in ("youtube", "actors")
        for p in _videos(root / "original_sequences" / sub / compression / "videos")
    ]
    manipulated = root / "manipulated_sequences"
    method_dirs = sorted(d for d in manipulated.iterdir() if d.is_dir()) if manipulated.is_dir() else []
    fakes = [(p, d.name) for d in method_dirs for p in _videos(d / compression / "videos")]
    if not originals and not fakes:
        present = sorted({p.name for p in root.glob("*_sequences/*/*") if p.is_dir()})
        raise ManifestError(
            f"{root}: no FaceForensics++ videos for compression {compression!r} under "
            f"original_sequences/youtube/{compression}/videos or manipulated_sequences/<Method>/{compression}/videos"
            + (f" (compressions present: {present})" if present else "")
        )
    official = _official_ffpp_splits(root)
    groups = _Groups()
    rows: list[dict[str, Any]] = []

    def row(p: Path, label: str, method: str, identity: str) -> dict[str, Any]:
        return dict(
            path=str(p.resolve()),
            label=label,
            dataset="ffpp",
            method=method,
            identity=identity,
            compression=compression,
            relative_path=p.relative_to(root).as_posix(),
        )

    for p, sub in originals:
        m = (_FFPP_REAL if sub == "youtube" else _DFD_REAL).match(p.stem)
        identity = (m.group(1) if sub == "youtube" else f"actor:{m.group(1)}") if m else f"{sub}:{p.stem}"
        groups.root(identity)
        rows.append(row(p, "real", "original", identity))
    for p, method in fakes:
        if m := _FFPP_FAKE.match(p.stem):
            target, source = m.group(1), m.group(2)
        elif m := _DFD_FAKE.match(p.stem):
            target, source = f"actor:{m.group(1)}", f"actor:{m.group(2)}"
        else:  # an unknown naming scheme: the video is its own identity
            log.warning("FF++ %s: cannot read target/source ids from %s", method, p.name)
            target = source = f"{method}:{p.stem}"
        groups.join(target, source)
        rows.append(row(p, "fake", method, target))
    # A group some of whose ids the official lists name follows them (lists naming only part of
    # a pair); a group they do not name at all is split by the hash of its smallest id.
    group_split: dict[str, str] = {}
    for vid in sorted(official):
        group_split.setdefault(groups.root(vid), official[vid])
    for r in rows:
        root_id = groups.root(r["identity"])
        r["split"] = (
            official.get(r["identity"])
            or group_split.get(root_id)
            or hash_split(f"ffpp:{root_id}", FFPP_SPLIT_FRACTIONS)
        )
    return _frame(rows)


def _celebdf_test_list(listing: Path) -> dict[str, str]:
    """``List_of_testing_videos.txt``: "1 Celeb-real/x.mp4" (1 = real, 0 = fake) → {relative path: label}."""
    labels: dict[str, str] = {}
    for n, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise ManifestError(f"{listing}:{n}: expected '<1 real | 0 fake> <relative path>', got {line!r}")
        labels[parts[1].strip().replace("\\", "/")] = "real" if parts[0] == "1" else "fake"
    return labels


def parse_celebdf(root: str | Path, *, exclusive_test_identities: bool = False) -> pd.DataFrame:
    """Celeb-DF v2 (``Celeb-real/``, ``YouTube-real/``, ``Celeb-synthesis/``, ``List_of_testing_videos.txt``)."""
    root = Path(root)
    folders = {
        "Celeb-real": ("real", "original"),
        "YouTube-real": ("real", "original"),
        "Celeb-synthesis": ("fake", "celeb-synthesis"),
    }
    if not any((root / f).is_dir() for f in folders):
        raise ManifestError(f"{root}: none of {sorted(folders)} found; is this Celeb-DF v2?")
    listing = root / "List_of_testing_videos.txt"
    test = _celebdf_test_list(listing) if listing.is_file() else {}
    if not test:
        log.warning("%s: no List_of_testing_videos.txt; the manifest has no test split", root)
    rows: list[dict[str, Any]] = []
    for folder, (label, method) in folders.items():
        # Some copies keep the videos one level down (Celeb-real/videos/*.mp4); the test list
        # names them as <folder>/<file>, so that is the key either way.
        for p in _videos(root / folder, recursive=True):
            key = f"{folder}/{p.name}"
            if key in test and test[key] != label:
                raise ManifestError(
                    f"{listing}: {key} is marked {test[key]} but lies in {folder} ({label}); "
                    "the file's convention is 1 = real, 0 = fake"
                )
            m = _CELEB_ID.match(p.name)
            identity = m.group(1) if m else f"yt:{p.stem}"
            split = (
                "test" if key in test else hash_split(f"celebdf:{identity}", (1 - CELEBDF_VAL_FRACTION, 1.0))
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
                    relative_path=p.relative_to(root).as_posix(),
                )
            )
    df = _frame(rows)
    found = {f"{Path(r).parts[0]}/{Path(r).name}" for r in df["relative_path"]}
    absent = sorted(set(test) - found)
    if absent:
        log.warning("%s: %d test-list videos are not on disk, e.g. %s", listing, len(absent), absent[:3])
    if exclusive_test_identities:
        tested = set(df.loc[df["split"] == "test", "identity"])
        df.loc[df["identity"].isin(tested), "split"] = "test"
    return df


_CSV_LABELS = {"real": "real", "fake": "fake", "0": "real", "1": "fake", "0.0": "real", "1.0": "fake"}


def _first(values: Iterable[Any], n: int = 5) -> list[str]:
    return [str(v) for v in list(values)[:n]]


def parse_csv(path: str | Path) -> pd.DataFrame:
    """A labelled CSV: path (absolute or relative to the CSV), label (real/fake or 0 real / 1 fake), split; optional method, identity."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: CSV manifest not found")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in ("path", "label", "split") if c not in raw.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing columns {missing} (need path, label, split; optional method, identity); "
            f"found {list(raw.columns)}"
        )
    if raw.empty:
        raise ManifestError(f"{path}: no rows")
    labels = raw["label"].str.strip().str.lower().map(_CSV_LABELS)
    if labels.isna().any():
        bad = raw.loc[labels.isna(), "label"].unique()
        raise ManifestError(f"{path}: unknown labels {_first(bad)} (use real/fake or 0 = real / 1 = fake)")
    splits = raw["split"].str.strip().str.lower()
    if not splits.isin(SPLITS).all():
        raise ManifestError(
            f"{path}: split must be train, val or test; got {_first(sorted(set(splits) - set(SPLITS)))}"
        )
    files = [(path.parent / p.strip()).resolve() for p in raw["path"]]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise ManifestError(f"{path}: {len(absent)} listed videos do not exist, e.g. {absent[:3]}")
    counts = Counter(files)
    repeated = [str(f) for f, n in counts.items() if n > 1]
    if repeated:
        raise ManifestError(f"{path}: {len(repeated)} videos are listed more than once, e.g. {repeated[:3]}")
    methods = raw["method"].str.strip() if "method" in raw else pd.Series([""] * len(raw))
    identities = raw["identity"].str.strip() if "identity" in raw else pd.Series([""] * len(raw))
    rows = [
        dict(
            path=str(f),
            label=label,
            split=split,
            dataset="csv",
            method=method or ("original" if label == "real" else "unknown"),
            identity=identity or f.stem,  # without an identity column each video is its own identity
            compression=None,
            relative_path=rel.strip(),
        )
        for f, label, split, method, identity, rel in zip(
            files, labels, splits, methods, identities, raw["path"], strict=True
        )
    ]
    return _frame(rows)


def load_manifest(kind: str, root: str | Path, **options: Any) -> pd.DataFrame:
    """Dispatch to ``parse_<kind>`` (ffpp: a folder, celebdf: a folder, csv: a file); `options` go to the parser."""
    parsers = {"ffpp": parse_ffpp, "celebdf": parse_celebdf, "csv": parse_csv}
    if kind not in parsers:
        raise ManifestError(f"unknown dataset kind {kind!r}; expected one of {sorted(parsers)}")
    df = parsers[kind](root, **options)
    if df.empty:
        raise ManifestError(f"{root}: no videos found for a {kind} dataset")
    return df


def manifest_hash(df: pd.DataFrame) -> str:
    """12 hex digits of SHA-256 over the sorted (path, label, split) rows: independent of row order."""
    keys = sorted(f"{p}|{lab}|{s}" for p, lab, s in zip(df["path"], df["label"], df["split"], strict=True))
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write Parquet with ``MANIFEST_SCHEMA`` (atomically: a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df[MANIFEST_SCHEMA.names], schema=MANIFEST_SCHEMA, preserve_index=False)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by `write_manifest`; another schema version is a ManifestError."""
    found = (pq.read_schema(path).metadata or {}).get(b"schema_version", b"?").decode()
    if found != str(MANIFEST_SCHEMA_VERSION):
        raise ManifestError(
            f"{path}: manifest schema version {found}, this code reads {MANIFEST_SCHEMA_VERSION}"
        )
    return pq.read_table(path, schema=MANIFEST_SCHEMA).to_pandas()


# --- which registered datasets `train` uses ---------------------------------------------------

#: Contract names of the public datasets and the manifest kind (`dataset` column) they parse as.
DATASET_ALIASES = {
    "faceforensics++": "ffpp",
    "ff++": "ffpp",
    "ffpp": "ffpp",
    "celeb-df-v2": "celebdf",
    "celeb-df": "celebdf",
    "celebdf": "celebdf",
}


@dataclass(frozen=True)
class TrainingSets:
    """The rows `train` trains and validates on, and what was decided, in words."""

    train: pd.DataFrame
    val: pd.DataFrame
    notes: list[str]

    @property
    def train_names(self) -> str:
        """The registered dataset names the training rows come from, e.g. "synthetic-demo"."""
        return ", ".join(sorted(set(self.train["dataset_name"])))

    @property
    def val_names(self) -> str:
        return ", ".join(sorted(set(self.val["dataset_name"])))


def _dataset_mask(rows: pd.DataFrame, wanted: str) -> pd.Series:
    """Rows of the registered dataset named `wanted`, or of its kind (`faceforensics++` → ffpp)."""
    mask = rows["dataset_name"] == wanted
    kind = DATASET_ALIASES.get(wanted.lower())
    if kind is not None:
        mask |= rows["dataset"] == kind
    return mask


def choose_training_sets(rows: pd.DataFrame, dataset: str, val_dataset: str) -> TrainingSets:
    """`data.dataset`'s train split and `data.val_dataset`'s val split (the contract: FF++ train,
    Celeb-DF v2 validation).

    `rows`: the registered datasets' manifest rows with a `dataset_name` column (the name given
    at registration). A dataset matches by that name, or by its kind for the contract's names
    (`faceforensics++` is any registered FF++ folder). When a wanted dataset is not registered,
    a note says so and every registered dataset's split of that role is used instead (what the
    synthetic demo needs when the platform's config names the contract's datasets).
    """
    registered = ", ".join(sorted(set(rows["dataset_name"]))) or "none"
    notes: list[str] = []
    chosen: dict[str, pd.DataFrame] = {}
    for role, key, wanted, split in (
        ("training", "data.dataset", dataset, "train"),
        ("validation", "data.val_dataset", val_dataset, "val"),
    ):
        mask = _dataset_mask(rows, wanted)
        if not mask.any():
            notes.append(
                f"{key} {wanted!r} is not registered (registered: {registered}); {role} uses the "
                f"{split} split of every registered dataset"
            )
            mask = pd.Series(True, index=rows.index)
        chosen[split] = rows[mask & (rows["split"] == split)]
    return TrainingSets(chosen["train"], chosen["val"], notes)
