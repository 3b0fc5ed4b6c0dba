"""The reanalysis sensor: analyses that were asked for (a re-upload after the serving model
changed, or an explicit `POST /jobs/{id}/reanalyze`) → one `analyze_video` run each.

An analysis is a video under a model version (docs/ARCHITECTURE.md): the request is a row of
`analyses`, and its run key names the video, the model version and the request time, so the
same request never starts two runs while a new request (someone asked again) does.
"""

import dagster as dg

from assets.partitions import VIDEOS_PARTITION
from resources import PostgresResource

REQUESTED_MODEL_TAG = "dagster-deepfake/requested_model_version"


def build_reanalysis_sensor(job, batch_size: int = 50) -> dg.SensorDefinition:
    @dg.sensor(
        name="reanalysis_sensor",
        job=job,
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Runs the analyses asked for after the serving model changed or on an explicit re-run.",
    )
    def reanalysis_sensor(
        context: dg.SensorEvaluationContext, postgres: PostgresResource
    ) -> dg.SensorResult | dg.SkipReason:
        db = postgres.db()
        rows = db.requested_analyses(limit=batch_size)
        if not rows:
            return dg.SkipReason("no analysis requested")
        known = set(context.instance.get_dynamic_partitions(VIDEOS_PARTITION))
        requests = []
        for row in rows:
            if row["video_id"] not in known:
                context.log.warning(f"{row['video_id']}: not a partition; its reanalysis is dropped")
                db.set_analysis_status(row["video_id"], row["model_version"], "failed")
                continue
            requests.append(
                dg.RunRequest(
                    partition_key=row["video_id"],
                    run_key=f"{row['video_id']}:{row['model_version']}:{row['requested_at'].isoformat()}",
                    tags={REQUESTED_MODEL_TAG: row["model_version"][:200]},
                )
            )
            db.set_analysis_status(row["video_id"], row["model_version"], "launched")
        return dg.SensorResult(run_requests=requests)

    return reanalysis_sensor
