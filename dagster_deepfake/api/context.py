"""What every route shares: the per-app context, the bearer-token check, the error body."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from dagster_deepfake.config import Settings
from dagster_deepfake.storage.artifacts import ArtifactStore, s3_storage_options
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.postgres import ResultsDB


class ErrorBody(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
}


# -- app wiring -------------------------------------------------------------------------------------
@dataclass
class ApiContext:
    """Everything a request needs; built once per app."""

    settings: Settings
    db: ResultsDB
    bucket: UploadBucket
    store: ArtifactStore
    token: str | None


def _s3_options(settings: Settings, url: str) -> dict[str, Any]:
    return s3_storage_options(url, settings.platform.s3_endpoint_url, settings.platform.s3_region)


def _context(request: Request) -> ApiContext:
    return request.app.state.ctx


Context = Annotated[ApiContext, Depends(_context)]
_bearer = HTTPBearer(auto_error=False, description="the token given to `dagster-deepfake serve --token`")


def _authenticate(
    ctx: Context, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The caller's identity (recorded as the uploader); 401 when a token is configured and not given."""
    if ctx.token is None:
        return "api"
    given = credentials.credentials.encode() if credentials else b""
    # Constant-time compare so response timing says nothing about how much of a guess was right.
    if not credentials or not hmac.compare_digest(given, ctx.token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return "api:token"


Identity = Annotated[str, Depends(_authenticate)]
