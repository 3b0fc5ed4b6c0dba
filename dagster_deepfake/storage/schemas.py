"""Fixed, versioned Parquet schemas. Bump a table's version when its columns change.

Each table is written one file per video partition (see ArtifactStore). The schema is
enforced on write: a missing or extra column is a bug, not something to paper over.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa


@dataclass(frozen=True)
class TableSpec:
    name: str
    version: int
    schema: pa.Schema

    def to_arrow(self, frame: pd.DataFrame) -> pa.Table:
        expected = set(self.schema.names)
        got = set(frame.columns)
        if expected != got:
            raise ValueError(
                f"table {self.name!r} v{self.version}: missing columns {sorted(expected - got)}, "
                f"unexpected columns {sorted(got - expected)}"
            )
        table = pa.Table.from_pandas(frame[self.schema.names], schema=self.schema, preserve_index=False)
        return table.replace_schema_metadata({"table": self.name, "schema_version": str(self.version)})


_f32, _f64, _i32, _i64, _str, _bool = (
    pa.float32(),
    pa.float64(),
    pa.int32(),
    pa.int64(),
    pa.string(),
    pa.bool_(),
)
_ts = pa.timestamp("us", tz="UTC")

TABLES: dict[str, TableSpec] = {}


def _register(name: str, version: int, fields: list[tuple[str, pa.DataType]]) -> TableSpec:
    spec = TableSpec(name, version, pa.schema([pa.field(n, t) for n, t in fields]))
    TABLES[name] = spec
    return spec


VIDEOS = _register(
    "videos",
    1,
    [
        ("video_id", _str),
        ("sha256", _str),
        ("source_uri", _str),
        ("file_name", _str),
        ("uploader", _str),
        ("size_bytes", _i64),
        ("container", _str),
        ("codec", _str),
        ("width", _i32),
        ("height", _i32),
        ("rotation", _i32),
        ("fps", _f64),
        ("duration", _f64),
        ("has_audio", _bool),
        ("audio_codec", _str),
        ("warnings", pa.list_(_str)),
        ("ingested_at", _ts),
    ],
)

FRAMES = _register(
    "frames",
    1,
    [
        ("video_id", _str),
        ("frame_id", _i32),
        ("timestamp", _f64),
        ("path", _str),
        ("width", _i32),
        ("height", _i32),
    ],
)

FACES = _register(
    "faces",
    1,
    [
        ("video_id", _str),
        ("frame_id", _i32),
        ("timestamp", _f64),
        ("num_faces", _i32),
        ("score", _f32),
        ("bbox", pa.list_(_f32)),
        ("landmarks", pa.list_(_f32)),
        ("kept", _bool),
        ("skip_reason", _str),
    ],
)

FLOW = _register(
    "flow",
    1,
    [
        ("video_id", _str),
        ("frame_id", _i32),
        ("timestamp", _f64),
        ("flow_mean", _f32),
        ("flow_std", _f32),
        ("has_predecessor", _bool),
    ],
)

SPEECH = _register(
    "speech_segments",
    1,
    [("video_id", _str), ("segment_id", _i32), ("start", _f64), ("end", _f64), ("duration", _f64)],
)

WINDOWS = _register(
    "windows",
    1,
    [
        ("video_id", _str),
        ("window_id", _i32),
        ("start", _f64),
        ("end", _f64),
        ("n_frames", _i32),
        ("p_fake", _f64),
        ("p_fake_video_only", _f64),
    ],
)

PREDICTIONS = _register(
    "predictions",
    # v2: `precision` (fp32/bf16/amp) and `warnings` (the serving model's, e.g. untrained weights);
    # v3: `provenance` (JSON: the checkpoints and settings the verdict rests on, provenance.py)
    3,
    [
        ("video_id", _str),
        ("model_version", _str),
        ("verdict", _str),
        ("p_fake", _f64),
        ("p_fake_uncalibrated", _f64),
        ("p_fake_video_only", _f64),
        ("ci_low", _f64),
        ("ci_high", _f64),
        ("interval_method", _str),
        ("ensemble_size", _i32),
        ("temperature", _f64),
        ("frames_analyzed", _i32),
        ("modalities", pa.list_(_str)),
        ("pretrained_audio", _bool),
        ("pretrained_video", _bool),
        ("trained", _bool),
        ("trained_on", _str),
        ("precision", _str),
        ("warnings", pa.list_(_str)),
        ("provenance", _str),
        ("created_at", _ts),
    ],
)

# Faces as tracks (data.faces.max_faces > 1): one row per tracked face, per track's flow and
# windows, and one row per track (scored or too short); dagster_deepfake/faces/tracks.py.
FACE_TRACKS = _register(
    "face_tracks",
    1,
    [
        ("video_id", _str),
        ("track_id", _i32),
        ("frame_id", _i32),
        ("timestamp", _f64),
        ("score", _f32),
        ("bbox", pa.list_(_f32)),
        ("landmarks", pa.list_(_f32)),
    ],
)

TRACK_FLOW = _register(
    "track_flow",
    1,
    [
        ("video_id", _str),
        ("track_id", _i32),
        ("frame_id", _i32),
        ("timestamp", _f64),
        ("flow_mean", _f32),
        ("flow_std", _f32),
        ("has_predecessor", _bool),
    ],
)

TRACK_WINDOWS = _register(
    "track_windows",
    1,
    [
        ("video_id", _str),
        ("track_id", _i32),
        ("window_id", _i32),
        ("start", _f64),
        ("end", _f64),
        ("n_frames", _i32),
        ("p_fake", _f64),
        ("p_fake_video_only", _f64),
    ],
)

TRACK_PREDICTIONS = _register(
    "track_predictions",
    1,
    [
        ("video_id", _str),
        ("track_id", _i32),
        ("n_frames", _i32),
        ("first_frame", _i32),
        ("last_frame", _i32),
        ("first_timestamp", _f64),
        ("last_timestamp", _f64),
        ("scored", _bool),
        ("reason", _str),
        ("verdict", _str),
        ("p_fake", _f64),
        ("ci_low", _f64),
        ("ci_high", _f64),
        ("p_fake_video_only", _f64),
        ("primary", _bool),
        ("bbox", pa.list_(_f32)),
        ("thumbnail", _str),
    ],
)

REPORTS = _register(
    "reports",
    1,
    [("video_id", _str), ("job_id", _str), ("status", _str), ("document", _str), ("created_at", _ts)],
)


def get_table_spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}") from None
