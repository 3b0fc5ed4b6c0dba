"""Dagster resources: thin `ConfigurableResource` wrappers around the library's storage and devices."""

import os
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from dagster_deepfake.config import Settings, load_settings
from dagster_deepfake.storage.artifacts import ArtifactStore, s3_storage_options
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url

POSTGRES_URL_ENV = "DAGSTER_DEEPFAKE_POSTGRES_URL"


class SettingsResource(dg.ConfigurableResource):
    """The contract and platform settings (config/config.yaml unless `config_path` says otherwise)."""

    config_path: str | None = None
    # A complete settings document as JSON (tests, one-off runs); empty means the file as is.
    settings_json: str = ""
    _settings: Settings | None = PrivateAttr(default=None)

    def get(self) -> Settings:
        if self._settings is None:
            self._settings = (
                Settings.model_validate_json(self.settings_json)
                if self.settings_json
                else load_settings(self.config_path)
            )
        return self._settings


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where frames, faces, tables and reports land: a local folder or an fsspec URL."""

    root: str
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.root, s3_storage_options(self.root, self.s3_endpoint_url, self.s3_region))


class UploadBucketResource(dg.ConfigurableResource):
    """The bucket analysts drop videos into (file:// by default, s3:// in production)."""

    uri: str
    suffixes: list[str]
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def bucket(self) -> UploadBucket:
        options = s3_storage_options(self.uri, self.s3_endpoint_url, self.s3_region)
        return UploadBucket(self.uri, self.suffixes, options)


class PostgresResource(dg.ConfigurableResource):
    """The results database. With no `url`, the project's embedded PostgreSQL in `data_dir` is started."""

    url: str | None = None
    data_dir: str = ".pgdata"
    _db: ResultsDB | None = PrivateAttr(default=None)

    def db(self) -> ResultsDB:
        if self._db is None:
            db = ResultsDB(self.url or embedded_postgres_url(self.data_dir))
            db.create_schema()
            self._db = db
        return self._db


class TorchDeviceResource(dg.ConfigurableResource):
    """Which torch device model steps use: `auto` picks CUDA when present, else CPU."""

    device: str = "auto"

    def torch_device(self) -> str:
        from dagster_deepfake.errors import DeviceUnavailableError
        from dagster_deepfake.models.inference import select_device

        try:
            return select_device(self.device)
        except DeviceUnavailableError as exc:
            raise dg.Failure(str(exc)) from exc


def _postgres_url(url: str | None) -> Any:
    """The results DB URL as Dagster should hold it: an EnvVar when it came from the environment,
    so that the UI's resource page and run snapshots show the variable's name, not the password."""
    if url and os.environ.get(POSTGRES_URL_ENV) == url:
        return dg.EnvVar(POSTGRES_URL_ENV)
    return url


def default_resources(settings: Settings | None = None, config_path: str | None = None) -> dict[str, Any]:
    """Resources bound to `settings` (default: the settings file): what `definitions.py` and the tests use."""
    s = settings or load_settings(config_path)
    p = s.platform
    return {
        "settings": SettingsResource(
            config_path=config_path, settings_json=s.model_dump_json() if settings else ""
        ),
        "artifacts": ArtifactStoreResource(
            root=p.artifact_root, s3_endpoint_url=p.s3_endpoint_url, s3_region=p.s3_region
        ),
        "upload_bucket": UploadBucketResource(
            uri=p.upload_uri,
            suffixes=p.upload_suffixes,
            s3_endpoint_url=p.s3_endpoint_url,
            s3_region=p.s3_region,
        ),
        "postgres": PostgresResource(url=_postgres_url(p.postgres_url), data_dir=p.postgres_data_dir),
        "torch_device": TorchDeviceResource(device=p.device),
        "model_store": ModelStoreResource(
            checkpoint=p.checkpoint,
            model_dir=p.model_dir,
            registry_config=s.model.registry_config,
            model_json=s.model.model_dump_json(),
            ensemble_size=s.inference.ensemble_size,
            artifact_root=p.artifact_root,
            s3_endpoint_url=p.s3_endpoint_url,
            s3_region=p.s3_region,
        ),
    }


class ModelStoreResource(dg.ConfigurableResource):
    """The checkpoints that serve predictions, loaded once per process.

    `checkpoint` null: `<model_dir>/current` if training published one, else an untrained
    model of the settings' `model` section (`model_json`, resolved; without it the
    `registry_config` variant alone) saved once with a fixed seed (flagged `trained: false`).
    With `artifact_root` (the artifacts resource's root and S3 options), the checkpoint training
    published there is synced into `model_dir` first: hosts share no disk (models/sync.py).
    """

    checkpoint: str | None = None
    model_dir: str
    registry_config: str
    # `settings.model` as JSON: the architecture the YAML describes (variant + explicit keys).
    model_json: str = ""
    ensemble_size: int = 1
    artifact_root: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def load(self, device: str = "cpu"):
        from dagster_deepfake.config import ModelConfig
        from dagster_deepfake.models.store import load_ensemble

        model = ModelConfig.model_validate_json(self.model_json) if self.model_json else self.registry_config
        root = self.artifact_root
        options = s3_storage_options(root, self.s3_endpoint_url, self.s3_region) if root else {}
        artifacts = ArtifactStore(root, options) if root else None
        return load_ensemble(self.checkpoint, self.model_dir, model, self.ensemble_size, device, artifacts)
