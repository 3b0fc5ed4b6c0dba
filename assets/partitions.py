"""One partition per video, keyed by content (`v_` + 16 hex digits of SHA-256)."""

import dagster as dg

VIDEOS_PARTITION = "videos"
videos_partitions = dg.DynamicPartitionsDefinition(name=VIDEOS_PARTITION)

# Tags a run carries so a person can find it by the uploaded object.
SOURCE_URI_TAG = "dagster-deepfake/source_uri"
FILE_NAME_TAG = "dagster-deepfake/file_name"
