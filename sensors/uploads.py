"""The upload-bucket sensor: new objects → video partitions → runs (a batch per tick, assets/batch.py).

Shaped like Dagster's dynamic-partition examples: one `SensorResult` carrying the run
requests, the `build_add_request` for new keys and the cursor. The scan and cursor logic
live in `dagster_deepfake.ingest` so they are tested without Dagster.

The bucket offers regular files only: FIFOs, sockets, devices and symbolic links are skipped
with one log line each (remembered in the cursor, so not repeated every tick) and never
opened. Nothing in a tick blocks: local opens are non-blocking and type-checked, every hash
has the tick's deadline, and an object not handled in time stays behind the cursor for the
next tick.
"""

import time

import dagster as dg

from assets.batch import batch_run_requests, goes_as_batches
from assets.partitions import FILE_NAME_TAG, SOURCE_URI_TAG, VIDEOS_PARTITION, videos_partitions
from dagster_deepfake.config import Settings
from dagster_deepfake.errors import DeepfakeError
from dagster_deepfake.ingest import (
    DEFAULT_LOOKBACK_SECONDS,
    Registration,
    ScanCursor,
    register_object,
    select_new_objects,
)
from dagster_deepfake.models.serving import reanalyze_if_stale
from dagster_deepfake.storage.bucket import ReadDeadlineError
from resources import PostgresResource, SettingsResource, UploadBucketResource

# Dagster cancels a sensor evaluation after 60 s by default. No new object is started after
# TICK_BUDGET_SECONDS (at least one per tick is always tried, so a slow listing cannot stall the
# sensor), and no read goes on past TICK_DEADLINE_SECONDS; the cursor moves only past what was
# registered, so the rest waits for the next tick.
TICK_BUDGET_SECONDS = 40.0
TICK_DEADLINE_SECONDS = 50.0


def run_request_for(reg: Registration, job_name: str | None = None) -> dg.RunRequest:
    """The analysis run of one newly registered video (one run per partition)."""
    return dg.RunRequest(
        job_name=job_name,
        partition_key=reg.video_id,
        run_key=reg.video_id,
        tags={SOURCE_URI_TAG: reg.source_uri[:4000], FILE_NAME_TAG: reg.file_name[:255]},
    )


def requests_for(
    regs: list[Registration], batch_job: dg.JobDefinition | None, settings: Settings, job_name: str
) -> list[dg.RunRequest]:
    """One run per video, or, with a batch job and several videos in the tick, `analyze_batch`
    runs of them (assets/batch.py `batch_run_requests`). A lone upload keeps a run of its own."""
    if not goes_as_batches(len(regs), settings, batch_job):
        return [run_request_for(reg, job_name) for reg in regs]
    return batch_run_requests([r.video_id for r in regs], job_name, settings)


def build_upload_sensor(
    job, interval_seconds: int, batch_job: dg.JobDefinition | None = None
) -> dg.SensorDefinition:
    @dg.sensor(
        name="upload_bucket_sensor",
        jobs=[job] if batch_job is None else [job, batch_job],
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
        deadline = started + TICK_DEADLINE_SECONDS
        cursor = ScanCursor.from_json(context.cursor)
        listing = bucket.scan()
        listed = listing.objects
        now = time.time()
        skipped = {s.key: s.what for s in listing.skipped}
        for key, what in skipped.items():
            if cursor.skipped.get(key) != what:
                context.log.warning(f"skipped {key}: {what}; only regular files are analysed")
        cursor = cursor.with_skipped(skipped)

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
            if scan.cursor.to_json() != (context.cursor or ScanCursor().to_json()):
                context.update_cursor(scan.cursor.to_json())  # settle states and reported skips
            return dg.SkipReason(f"no new uploads ({scan.waiting} still settling)")
        db = postgres.db()
        known = set(context.instance.get_dynamic_partitions(VIDEOS_PARTITION))
        new_keys: list[str] = []
        registered: list[Registration] = []
        handled = 0
        for obj in scan.objects:
            if handled and time.monotonic() - started > TICK_BUDGET_SECONDS:
                context.log.info(f"tick budget spent after {handled} objects; the rest waits")
                break
            try:
                reg = register_object(bucket, obj, db, deadline=deadline)
            except ReadDeadlineError:
                # Not handled: the cursor stays before it and the next tick reads it again.
                context.log.info(f"tick out of time while reading {obj.key}; it and the rest wait")
                break
            except (OSError, ValueError, DeepfakeError) as exc:
                # An unreadable object (or one swapped for a FIFO or a link since the listing)
                # is reported and skipped; it never blocks the others.
                handled += 1
                context.log.warning(f"could not read {obj.uri}: {exc}")
                continue
            handled += 1
            if reg.video_id in known or reg.video_id in new_keys:
                # Same bytes again: a new analysis only under a new serving model (reanalysis sensor).
                again = reanalyze_if_stale(
                    db, settings.get(), reg.video_id, requested_by=f"re-upload:{obj.key}"
                )
                context.log.info(
                    f"{obj.key}: same bytes as {reg.video_id}; "
                    + ("the serving model changed: reanalysis requested" if again else "no new run")
                )
                continue
            new_keys.append(reg.video_id)
            registered.append(reg)
        requests = requests_for(registered, batch_job, settings.get(), job.name)
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
