"""Dataset manifest parsers on fixture trees built here (empty files stand in for videos)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_deepfake.training.manifests import (
    MANIFEST_SCHEMA,
    ManifestError,
    load_manifest,
    manifest_hash,
    parse_celebdf,
    parse_csv,
    parse_ffpp,
    read_manifest,
    write_manifest,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _ffpp_tree(root: Path, n_ids: int = 20, methods=("Deepfakes", "NeuralTextures")) -> list[tuple[str, str]]:
    """FF++ as published: ids paired (000, 001), (002, 003)…, a fake for each direction of each pair."""
    pairs = [(f"{i:03d}", f"{i + 1:03d}") for i in range(0, n_ids, 2)]
    for a, b in pairs:
        for vid in (a, b):
            _touch(root / f"original_sequences/youtube/c23/videos/{vid}.mp4")
        for method in methods:
            for target, source in ((a, b), (b, a)):
                _touch(root / f"manipulated_sequences/{method}/c23/videos/{target}_{source}.mp4")
    return pairs


def _split_by_rel(df: pd.DataFrame) -> dict[str, str]:
    return dict(zip(df["relative_path"], df["split"], strict=True))


def test_ffpp_official_splits_are_respected(tmp_path):
    pairs = _ffpp_tree(tmp_path)  # 10 pairs
    (tmp_path / "splits").mkdir()
    official = {"train": pairs[:6], "val": pairs[6:8], "test": pairs[8:]}
    for split, listed in official.items():
        (tmp_path / f"splits/{split}.json").write_text(json.dumps([list(p) for p in listed]))
    df = parse_ffpp(tmp_path)
    assert len(df) == 20 + 2 * 20
    assert set(df["method"]) == {"original", "Deepfakes", "NeuralTextures"}
    assert list(df.columns) == MANIFEST_SCHEMA.names
    by_rel = _split_by_rel(df)
    for split, listed in official.items():
        for target, source in listed:
            assert by_rel[f"original_sequences/youtube/c23/videos/{target}.mp4"] == split
            assert by_rel[f"manipulated_sequences/Deepfakes/c23/videos/{source}_{target}.mp4"] == split
    assert (df.loc[df["label"] == "fake", "label_int"] == 1).all()
    assert (df.loc[df["label"] == "real", "label_int"] == 0).all()
    fake = df.set_index("relative_path").loc["manipulated_sequences/NeuralTextures/c23/videos/004_005.mp4"]
    assert fake["identity"] == "004" and fake["compression"] == "c23"
    assert Path(fake["path"]).is_absolute() and Path(fake["path"]).is_file()


def test_ffpp_split_lists_naming_an_id_twice_are_an_error(tmp_path):
    _ffpp_tree(tmp_path, n_ids=4)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/train.json").write_text('[["000", "001"]]')
    (tmp_path / "splits/test.json").write_text('[["001", "002"]]')
    with pytest.raises(ManifestError, match="id 001 is listed in both train and test"):
        parse_ffpp(tmp_path)


def test_ffpp_fallback_split_keeps_target_and_source_together(tmp_path):
    pairs = _ffpp_tree(tmp_path, n_ids=400, methods=("Deepfakes",))
    df = parse_ffpp(tmp_path)
    assert df.groupby("identity")["split"].nunique().max() == 1
    by_rel = _split_by_rel(df)
    for a, b in pairs:  # the source's face in a fake never shows up in another split
        real_a = by_rel[f"original_sequences/youtube/c23/videos/{a}.mp4"]
        assert by_rel[f"original_sequences/youtube/c23/videos/{b}.mp4"] == real_a
        assert by_rel[f"manipulated_sequences/Deepfakes/c23/videos/{a}_{b}.mp4"] == real_a
    share = df[df["method"] == "original"]["split"].value_counts(normalize=True)
    assert 0.6 < share["train"] < 0.84 and 0.06 < share["val"] < 0.24 and 0.06 < share["test"] < 0.24
    assert parse_ffpp(tmp_path).equals(df)  # deterministic


def test_ffpp_deepfakedetection_names_and_missing_compression(tmp_path):
    _touch(tmp_path / "original_sequences/actors/c23/videos/01__walking.mp4")
    _touch(tmp_path / "original_sequences/actors/c23/videos/02__talking.mp4")
    _touch(tmp_path / "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__YVGY8LOK.mp4")
    _touch(tmp_path / "manipulated_sequences/FaceShifter/c23/videos/odd-name.mp4")
    df = parse_ffpp(tmp_path).set_index("relative_path")
    fake = df.loc["manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__YVGY8LOK.mp4"]
    assert (
        fake["identity"] == "actor:01" and fake["method"] == "DeepFakeDetection" and fake["label"] == "fake"
    )
    actor2 = df.loc["original_sequences/actors/c23/videos/02__talking.mp4"]
    assert actor2["identity"] == "actor:02" and actor2["split"] == fake["split"]  # source joins the target
    assert df.loc["manipulated_sequences/FaceShifter/c23/videos/odd-name.mp4", "label"] == "fake"
    with pytest.raises(ManifestError, match=r"compression 'c40'.*compressions present: \['c23'\]"):
        parse_ffpp(tmp_path, compression="c40")


@pytest.fixture
def celebdf(tmp_path: Path) -> Path:
    for i in range(12):
        for n in range(2):
            _touch(tmp_path / f"Celeb-real/id{i}_{n:04d}.mp4")
        _touch(tmp_path / f"Celeb-synthesis/id{i}_id{(i + 1) % 12}_0000.mp4")
    for n in range(4):
        _touch(tmp_path / f"YouTube-real/{n:05d}.mp4")
    (tmp_path / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00001.mp4\n1 Celeb-real/id1_0000.mp4\n0 Celeb-synthesis/id1_id2_0000.mp4\n"
        "0 Celeb-synthesis/id5_id6_0000.mp4\n"
    )
    return tmp_path


def test_celebdf_test_list_is_the_test_split_and_labels_follow_folders(celebdf):
    df = parse_celebdf(celebdf)
    assert len(df) == 12 * 3 + 4
    assert set(df.loc[df["split"] == "test", "relative_path"]) == {
        "YouTube-real/00001.mp4",
        "Celeb-real/id1_0000.mp4",
        "Celeb-synthesis/id1_id2_0000.mp4",
        "Celeb-synthesis/id5_id6_0000.mp4",
    }
    rows = df.set_index("relative_path")
    assert rows.loc["Celeb-synthesis/id1_id2_0000.mp4", ["label", "label_int", "identity"]].tolist() == [
        "fake",
        1,
        "id1",
    ]
    assert rows.loc["YouTube-real/00000.mp4", ["label", "identity"]].tolist() == ["real", "yt:00000"]
    assert rows.loc["Celeb-real/id3_0001.mp4", "label_int"] == 0
    rest = df[df["split"] != "test"]
    assert set(rest["split"]) == {"train", "val"}
    assert rest.groupby("identity")["split"].nunique().max() == 1  # no celebrity in both train and val


def test_celebdf_exclusive_test_identities(celebdf):
    df = parse_celebdf(celebdf, exclusive_test_identities=True)
    tested = set(df.loc[df["split"] == "test", "identity"])
    assert tested == {"id1", "id5", "yt:00001"}
    assert df.groupby("identity")["split"].nunique().max() == 1
    assert (df.loc[df["identity"] == "id1", "split"] == "test").all()


def test_celebdf_list_contradicting_its_folder_is_an_error(celebdf, caplog):
    listing = celebdf / "List_of_testing_videos.txt"
    listing.write_text("0 Celeb-real/id1_0000.mp4\n")  # would mean 0 = real: the wrong convention
    with pytest.raises(ManifestError, match="1 = real, 0 = fake"):
        parse_celebdf(celebdf)
    listing.write_text("1 Celeb-real/id1_0000.mp4\n1 Celeb-real/id99_0000.mp4\n")
    with caplog.at_level(logging.WARNING):
        df = parse_celebdf(celebdf)
    assert "id99_0000.mp4" in caplog.text  # listed but not on disk: said, not fatal
    assert (df["split"] == "test").sum() == 1


def test_celebdf_videos_in_a_subfolder_still_match_the_test_list(tmp_path):
    _touch(tmp_path / "Celeb-real/videos/id0_0000.mp4")
    _touch(tmp_path / "Celeb-synthesis/videos/id0_id1_0000.mp4")
    (tmp_path / "List_of_testing_videos.txt").write_text("0 Celeb-synthesis/id0_id1_0000.mp4\n")
    rows = load_manifest("celebdf", tmp_path).set_index("relative_path")
    assert rows.loc["Celeb-synthesis/videos/id0_id1_0000.mp4", "split"] == "test"
    assert rows.loc["Celeb-real/videos/id0_0000.mp4", "split"] != "test"


def test_csv_manifest(tmp_path):
    _touch(tmp_path / "videos/a.mp4")
    _touch(tmp_path / "videos/b.mp4")
    elsewhere = _touch(tmp_path / "other/c.mp4")
    good = tmp_path / "good.csv"
    good.write_text(
        "path,label,split,method,identity\n"
        "videos/a.mp4,fake,train,lipsync,alice\n"
        f"{elsewhere},0,val,,\n"
        "videos/b.mp4, REAL ,Test,,bob\n"
    )
    df = parse_csv(good).set_index("relative_path")
    assert df.loc["videos/a.mp4", ["label", "label_int", "method", "identity"]].tolist() == [
        "fake",
        1,
        "lipsync",
        "alice",
    ]
    c = df.loc[str(elsewhere)]
    assert c["label"] == "real" and c["method"] == "original" and c["identity"] == "c" and c["split"] == "val"
    assert df.loc["videos/b.mp4", ["label", "split"]].tolist() == ["real", "test"]
    assert df.loc["videos/a.mp4", "path"] == str((tmp_path / "videos/a.mp4").resolve())
    assert set(df["dataset"]) == {"csv"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\nvideos/a.mp4,real\n", r"missing columns \['split'\]"),
        ("path,label,split\nvideos/a.mp4,maybe,train\n", r"unknown labels \['maybe'\]"),
        (
            "path,label,split\nvideos/a.mp4,real,holdout\n",
            r"split must be train, val or test; got \['holdout'\]",
        ),
        (
            "path,label,split\nnope1.mp4,real,train\nnope2.mp4,fake,train\n",
            r"2 listed videos do not exist.*nope1",
        ),
        ("path,label,split\nvideos/a.mp4,real,train\nvideos/a.mp4,fake,test\n", "listed more than once"),
        ("path,label,split\n", "no rows"),
    ],
)
def test_csv_errors_are_specific(tmp_path, text, message):
    _touch(tmp_path / "videos/a.mp4")
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(ManifestError, match=message):
        parse_csv(bad)


def test_load_manifest_dispatch_errors(tmp_path):
    with pytest.raises(ManifestError, match="unknown dataset kind 'kinetics'"):
        load_manifest("kinetics", tmp_path)
    with pytest.raises(ManifestError, match="is this Celeb-DF v2"):
        load_manifest("celebdf", tmp_path)
    with pytest.raises(ManifestError, match="CSV manifest not found"):
        load_manifest("csv", tmp_path / "missing.csv")


def test_hash_and_parquet_round_trip(tmp_path):
    _ffpp_tree(tmp_path / "ds", n_ids=6)
    df = load_manifest("ffpp", tmp_path / "ds")
    assert manifest_hash(df) == manifest_hash(df.sample(frac=1, random_state=0))
    changed = df.copy()
    changed.loc[0, "label"] = "real" if df.loc[0, "label"] == "fake" else "fake"
    assert manifest_hash(changed) != manifest_hash(df)
    resplit = df.copy()
    resplit.loc[0, "split"] = "test" if df.loc[0, "split"] != "test" else "train"
    assert manifest_hash(resplit) != manifest_hash(df)

    path = write_manifest(df, tmp_path / "out/m.parquet")
    assert pq.read_schema(path).metadata[b"schema_version"] == b"1"
    pd.testing.assert_frame_equal(read_manifest(path), df, check_dtype=False)

    old = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata({"schema_version": "0"})
    pq.write_table(old, tmp_path / "old.parquet")
    with pytest.raises(ManifestError, match="schema version 0"):
        read_manifest(tmp_path / "old.parquet")
