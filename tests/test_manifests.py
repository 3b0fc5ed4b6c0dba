"""Dataset manifest parsers on fixture trees built here (empty files stand in for videos)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dagster_deepfake.training.manifests import (
    ManifestError,
    load_manifest,
    manifest_hash,
    parse_celebdf,
    parse_csv,
    parse_ffpp,
    read_manifest,
    write_manifest,
)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _ffpp_tree(root, ids=range(20)):
    for i in ids:
        _touch(root / f"original_sequences/youtube/c23/videos/{i:03d}.mp4")
    for method in ("Deepfakes", "NeuralTextures"):
        for i in ids:
            _touch(root / f"manipulated_sequences/{method}/c23/videos/{i:03d}_{(i + 1) % 20:03d}.mp4")


def test_ffpp_official_splits(tmp_path):
    _ffpp_tree(tmp_path)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/train.json").write_text(
        json.dumps([[f"{i:03d}", f"{i + 1:03d}"] for i in range(0, 12, 2)])
    )
    (tmp_path / "splits/val.json").write_text(json.dumps([["012", "013"], ["014", "015"]]))
    (tmp_path / "splits/test.json").write_text(json.dumps([["016", "017"], ["018", "019"]]))
    df = parse_ffpp(tmp_path)
    assert len(df) == 60 and set(df["method"]) == {"original", "Deepfakes", "NeuralTextures"}
    assert (df.loc[df["identity"] == "016", "split"] == "test").all()
    assert (df.loc[df["identity"] == "003", "split"] == "train").all()
    assert df.groupby("identity")["split"].nunique().max() == 1
    assert set(df.loc[df["label"] == "fake", "label_int"]) == {1}


def test_ffpp_fallback_split_never_leaks_identity(tmp_path):
    _ffpp_tree(tmp_path, ids=range(200))
    df = parse_ffpp(tmp_path)
    assert df.groupby("identity")["split"].nunique().max() == 1
    share = df[df["method"] == "original"]["split"].value_counts(normalize=True)
    assert 0.6 < share["train"] < 0.85 and share["test"] > 0.05
    assert parse_ffpp(tmp_path).equals(df)  # deterministic


def test_celebdf_test_list_and_identities(tmp_path):
    for name in ["id0_0000.mp4", "id0_0001.mp4", "id1_0000.mp4", "id2_0000.mp4"]:
        _touch(tmp_path / "Celeb-real" / name)
    for name in ["00000.mp4", "00001.mp4"]:
        _touch(tmp_path / "YouTube-real" / name)
    for name in ["id0_id1_0000.mp4", "id1_id2_0000.mp4", "id2_id0_0000.mp4"]:
        _touch(tmp_path / "Celeb-synthesis" / name)
    (tmp_path / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id1_0000.mp4\n0 Celeb-synthesis/id1_id2_0000.mp4\n1 YouTube-real/00001.mp4\n"
    )
    df = parse_celebdf(tmp_path)
    assert len(df) == 9
    tested = df[df["split"] == "test"]
    assert set(tested["relative_path"]) >= {"Celeb-real/id1_0000.mp4", "Celeb-synthesis/id1_id2_0000.mp4"}
    assert df.set_index("relative_path").loc["Celeb-synthesis/id1_id2_0000.mp4", "label"] == "fake"
    assert df.set_index("relative_path").loc["YouTube-real/00000.mp4", "label"] == "real"
    assert df.groupby("identity")["split"].nunique().max() == 1


def test_csv_errors_are_specific(tmp_path):
    _touch(tmp_path / "a.mp4")
    good = tmp_path / "good.csv"
    good.write_text("path,label,split,method\na.mp4,fake,train,lipsync\n")
    df = parse_csv(good)
    assert df.loc[0, "method"] == "lipsync" and df.loc[0, "label_int"] == 1
    cases = {
        "path,label\na.mp4,real\n": "missing columns",
        "path,label,split\na.mp4,maybe,train\n": "unknown labels",
        "path,label,split\na.mp4,real,holdout\n": "split must be",
        "path,label,split\nnope.mp4,real,train\n": "do not exist",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ManifestError, match=message):
            parse_csv(bad)
    with pytest.raises(ManifestError, match="unknown dataset kind"):
        load_manifest("kinetics", tmp_path)


def test_hash_and_parquet_round_trip(tmp_path):
    _ffpp_tree(tmp_path / "ds", ids=range(5))
    df = parse_ffpp(tmp_path / "ds")
    assert manifest_hash(df) == manifest_hash(df.sample(frac=1, random_state=0))
    changed = df.copy()
    changed.loc[0, "label"] = "real" if df.loc[0, "label"] == "fake" else "fake"
    assert manifest_hash(changed) != manifest_hash(df)
    back = read_manifest(write_manifest(df, tmp_path / "m.parquet"))
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
