"""Locate the ffmpeg / ffprobe binaries once, with one clear message when they are missing."""

from __future__ import annotations

import os
import shutil
from functools import cache

from dagster_deepfake.errors import MissingDependencyError

_HINT = "install it with `make setup` (Debian: apt-get install ffmpeg) or set {env} to the binary's path"


@cache
def find_binary(name: str) -> str:
    """Absolute path of `name` ("ffmpeg" or "ffprobe"); $FFMPEG_BINARY / $FFPROBE_BINARY win."""
    env = f"{name.upper()}_BINARY"
    candidate = os.environ.get(env) or shutil.which(name)
    if not candidate or not os.access(candidate, os.X_OK):
        raise MissingDependencyError(f"{name} not found on PATH; " + _HINT.format(env=env))
    return candidate


def ffmpeg() -> str:
    return find_binary("ffmpeg")


def ffprobe() -> str:
    return find_binary("ffprobe")
