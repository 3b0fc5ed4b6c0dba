"""Errors a user can act on. Each names the file and says what was wrong."""

from __future__ import annotations

import os


class DeepfakeError(Exception):
    """Base class for every error this project raises on purpose."""


class InvalidVideoError(DeepfakeError):
    """The input cannot be analysed (not a video, truncated, too short, out of scope …)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NoFaceFoundError(DeepfakeError):
    """No sampled frame held exactly one face, so there is nothing to classify."""

    def __init__(
        self, path: str | os.PathLike[str], reason: str = "no face found in any sampled frame"
    ) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DeviceUnavailableError(DeepfakeError):
    """The configured torch device (e.g. `platform.device: cuda`) is not present on this machine."""


class MissingDependencyError(DeepfakeError):
    """A required external program (ffmpeg, ffprobe, …) is not installed."""


class ConfigError(DeepfakeError):
    """The settings file holds an unknown key or a value the code cannot honour.

    `str()` is one line: ``config/config.yaml: model.fusion.strategy: only 'cross_attention'
    is implemented (got 'concat')``.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}" if source else message)
