"""The upload-bucket sensor: new objects → video partitions → one run each.

Shaped like Dagster's dynamic-partition examples: one `SensorResult` carrying the run
requests, the `build_add_request` for new keys and the cursor. The scan and cursor logic
live in `dagster_deepfake.ingest` so they are tested without Dagster.
"""

import time

import dagster as dg

from assets.partitions import FILE_NAME_TAG, SOURCE_URI_TAG, VIDEOS_PARTITION, videos_partitions
from dagster_deepfake.ingest import (
    DEFAULT_LOOKBACK_SECONDS,
    ScanCursor,
    register_object,
    select_new_objects,
)
from resources import PostgresResource, SettingsResource, UploadBucketResource

# Dagster cancels a sensor evaluation after 60 s by default; hashing stops well before that
# and the cursor moves only past what was registered, so the rest waits for the next tick
# (at least one object per tick is always taken, so a slow listing cannot stall the sensor).
TICK_BUDGET_SECONDS = 40.0


def build_upload_sensor(job, interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="upload_bucket_sensor",
        job=job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers each new video in the upload bucket as a partition and requests its analysis run.",
    )
    def upload_bucket_sensor(
        context: dg.SensorEvaluationContext,
        upload_bucket: UploadBucketResource,
        postgres: PostgresResource,
        settings: SettingsResource,
    ) -> dg.SensorResult | dg.SkipReason:
        platform = settings.get().platform
        bucket = upload_bucket.bucket()
        started = time.monotonic()
        cursor = ScanCursor.from_json(context.cursor)
        listed = bucket.list_objects()
        now = time.time()

        def scan_with(limit: int):
            return select_new_objects(
                listed,
                cursor,
                now=now,
                settle_seconds=platform.upload_settle_seconds,
                limit=limit,
                lookback_seconds=DEFAULT_LOOKBACK_SECONDS,
            )

        scan = scan_with(platform.sensor_max_objects_per_tick)
        if not scan.objects:
            return dg.SkipReason(f"no new uploads ({scan.waiting} still settling)")
        db = postgres.db()
        known = set(context.instance.get_dynamic_partitions(VIDEOS_PARTITION))
        new_keys: list[str] = []
        requests: list[dg.RunRequest] = []
        handled = 0
        for obj in scan.objects:
            if handled and time.monotonic() - started > TICK_BUDGET_SECONDS:
                context.log.info(f"tick budget spent after {handled} objects; the rest waits")
                break
            handled += 1
            try:
                reg = register_object(bucket, obj, db)
            except (OSError, ValueError) as exc:
                # An unreadable object is reported and skipped; it never blocks the others.
                context.log.warning(f"could not read {obj.uri}: {exc}")
                continue
            if reg.video_id in known or reg.video_id in new_keys:
                context.log.info(f"{obj.key}: same bytes as {reg.video_id}, already registered; no new run")
                continue
            new_keys.append(reg.video_id)
            requests.append(
                dg.RunRequest(
                    partition_key=reg.video_id,
                    run_key=reg.video_id,
                    tags={SOURCE_URI_TAG: reg.source_uri[:4000], FILE_NAME_TAG: reg.file_name[:255]},
                )
            )
        if handled < len(scan.objects):
            scan = scan_with(handled)
        context.log.info(
            f"{len(scan.objects)} new objects, {len(new_keys)} new videos, {scan.waiting} waiting"
        )
        return dg.SensorResult(
            run_requests=requests,
            cursor=scan.cursor.to_json(),
            dynamic_partitions_requests=[videos_partitions.build_add_request(new_keys)] if new_keys else [],
        )

    return upload_bucket_sensor
