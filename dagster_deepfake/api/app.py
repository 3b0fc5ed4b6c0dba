"""The app: `create_app` wires the routes over one context; `serve` runs it (no exposed bind without a token)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dagster_deepfake.api import jobs, page, report, uploads
from dagster_deepfake.api.context import ApiContext, Context, _s3_options
from dagster_deepfake.config import Settings
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url
from dagster_deepfake.storage.postgres import jobs as jobs_table

log = logging.getLogger(__name__)

API_VERSION = "1"
TOKEN_ENV = "DAGSTER_DEEPFAKE_API_TOKEN"  # read by the CLI, never by this module


class InsecureBindError(ValueError):
    """Refusing to serve on a non-loopback address without a bearer token."""


def create_app(settings: Settings, *, token: str | None, db: ResultsDB | None = None) -> FastAPI:
    """The FastAPI app over these settings' bucket, artifact store and results database."""
    p = settings.platform
    if db is None:
        db = ResultsDB(p.postgres_url or embedded_postgres_url(p.postgres_data_dir))
    db.create_schema()
    bucket = UploadBucket(p.upload_uri, p.upload_suffixes, _s3_options(settings, p.upload_uri))
    store = ArtifactStore(p.artifact_root, _s3_options(settings, p.artifact_root))
    app = FastAPI(
        title="dagster-deepfake",
        version=API_VERSION,
        description=(
            "Upload a talking-face video, poll its job, read the deepfake verdict. "
            "See docs/API.md for curl examples, auth and limits."
        ),
    )
    app.state.ctx = ApiContext(settings=settings, db=db, bucket=bucket, store=store, token=token or None)
    app.state.spool = uploads.SpoolBudget(p.upload_spool_budget_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    _add_routes(app)
    return app


_WHERE = {"query": "query parameter", "path": "path parameter", "header": "header", "body": "body field"}


def validation_message(errors: Sequence[Any]) -> str:
    """FastAPI's list of validation errors as the one line docs/API.md promises, naming the field."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where = _WHERE.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:])
        parts.append(
            f"{where} '{name}': {err.get('msg', 'invalid')}" if name else f"{where}: {err.get('msg')}"
        )
    return " ".join("; ".join(parts).split()) or "invalid request"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": validation_message(errors)}, status_code=422)


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"], summary="Liveness and database check (no auth)")
    def healthz(ctx: Context) -> JSONResponse:
        try:
            ctx.db.count(jobs_table)
        except Exception as exc:  # any database failure means "not healthy", whatever its type
            log.warning("health check: database unreachable: %s", type(exc).__name__)
            return JSONResponse({"status": "unhealthy", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "auth": ctx.token is not None})

    uploads.add_routes(app)
    jobs.add_routes(app)
    page.add_routes(app)
    report.add_routes(app)


# -- serving ----------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere: treat it as exposed


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the API beyond this machine without a bearer token."""
    if not token and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to serve on {host} without a bearer token: pass --token or set ${TOKEN_ENV} "
            "(only loopback addresses may run without one)"
        )


def build_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    **uvicorn_kwargs: Any,
) -> uvicorn.Server:
    """A configured uvicorn server for the app (not started): `serve` runs it, tests run it in a thread."""
    check_bind(host, token)
    app = create_app(settings, token=token)
    config = uvicorn.Config(app, host=host, port=port, **{"log_level": "info", **uvicorn_kwargs})
    return uvicorn.Server(config)


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    **uvicorn_kwargs: Any,
) -> None:
    """Run the API until interrupted (`dagster-deepfake serve`)."""
    server = build_server(settings, host, port, token, **uvicorn_kwargs)
    log.info(
        "serving the API on http://%s:%d (docs at /docs; bearer token %s)",
        host,
        port,
        "required" if token else "not required",
    )
    server.run()
