"""The REST API: upload a video for analysis, poll its job, read the result, look at it.

`POST /analyze-video` streams a multipart upload to a temporary file (the size limit is
enforced while streaming), sniffs the content (container signature, then ffprobe, then the
v1 scope), hashes it into the content-addressed job id and drops it into the upload bucket
under ``api/<job_id>/<sanitised name>``. The bucket sensor then starts the run exactly as
for any other bucket drop; the API never talks to Dagster.

A job id is the video's partition key (``v_`` + 16 hex of the SHA-256), so the same bytes
uploaded twice are one job: the second upload answers 200 with the job's current status
and stores nothing.

Auth: with a token configured, every endpoint except ``/healthz`` and the OpenAPI docs
needs ``Authorization: Bearer <token>``. `serve` refuses to bind a non-loopback address
without a token. The token is never logged.

Layout: `app` (create_app, serve, bind checks), `context` (per-app context, auth, error body),
`uploads` (POST /analyze-video), `jobs` (job routes and models), `page` (the HTML view).
"""

from dagster_deepfake.api.app import (
    API_VERSION,
    TOKEN_ENV,
    InsecureBindError,
    build_server,
    check_bind,
    create_app,
    is_loopback,
    serve,
)
from dagster_deepfake.api.context import ApiContext, ErrorBody
from dagster_deepfake.api.jobs import JobDetail, JobLinks, JobPage, JobSummary
from dagster_deepfake.api.page import render_view
from dagster_deepfake.api.uploads import (
    MULTIPART_OVERHEAD_BYTES,
    UPLOAD_FIELD,
    JobSubmitted,
    safe_file_name,
)

__all__ = [
    "API_VERSION",
    "MULTIPART_OVERHEAD_BYTES",
    "TOKEN_ENV",
    "UPLOAD_FIELD",
    "ApiContext",
    "ErrorBody",
    "InsecureBindError",
    "JobDetail",
    "JobLinks",
    "JobPage",
    "JobSubmitted",
    "JobSummary",
    "build_server",
    "check_bind",
    "create_app",
    "is_loopback",
    "render_view",
    "safe_file_name",
    "serve",
]
