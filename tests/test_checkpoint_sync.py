"""A checkpoint published on one host serves on every host: through the artifact store, against
moto's S3 server on loopback (real HTTP, real s3fs) and a local root, with two model folders
standing for two hosts that share no disk."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from dagster_deepfake.models.checkpoint import (
    WEIGHTS_FILE,
    CheckpointManifest,
    build_untrained,
    save_checkpoint,
)
from dagster_deepfake.models.publish import current_target_name, publish_checkpoint
from dagster_deepfake.models.store import load_ensemble, resolve_checkpoint
from dagster_deepfake.models.sync import CheckpointSyncError, sync_published_checkpoint
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore, s3_storage_options
from resources import ModelStoreResource
from tests.s3_server import REGION, moto_s3_server


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a free port, with dummy AWS credentials in the env."""
    with moto_s3_server() as url:
        yield url


@pytest.fixture
def s3_root(s3_endpoint: str) -> str:
    """A fresh bucket's artifact root (`s3://<bucket>/v1`)."""
    import boto3

    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return f"s3://{bucket}/v1"


@pytest.fixture
def s3_store(s3_root: str, s3_endpoint: str) -> ArtifactStore:
    return ArtifactStore(s3_root, s3_storage_options(s3_root, s3_endpoint, REGION))


@pytest.fixture
def trained(tmp_path: Path) -> Callable[[str, int], Path]:
    """A tiny trained-looking checkpoint folder (`best/`) with its own weights per seed."""

    def make(version: str, seed: int) -> Path:
        model, _ = build_untrained("tiny", seed=seed)
        manifest = CheckpointManifest.for_model(model, model_version=version, trained=True)
        return save_checkpoint(tmp_path / "runs" / version / "best", model, manifest)

    return make


def _serve(store: ArtifactStore | None, model_dir: Path):
    (member, *_), _ = load_ensemble(None, str(model_dir), "tiny", 1, "cpu", store)
    return member


def _same_weights(model: torch.nn.Module, folder: Path) -> bool:
    from safetensors.torch import load_file

    saved = load_file(folder / WEIGHTS_FILE)
    state = model.state_dict()
    return set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in saved)


def _check_travels(store: ArtifactStore, tmp_path: Path, trained) -> None:
    host_a, host_b = tmp_path / "host-a" / "models", tmp_path / "host-b" / "models"
    untrained, manifest = _serve(store, host_b)  # before any training: the honest fallback
    assert not manifest.trained
    v1 = trained("tiny-v1", seed=1)
    publish_checkpoint(v1, host_a, store)
    pointer = json.loads(store.read_bytes(layout.CURRENT_MODEL_POINTER_REL))
    assert pointer["name"] == current_target_name(host_a) and pointer["model_version"] == "tiny-v1"
    assert {f["name"] for f in pointer["files"]} == {"model.safetensors", "manifest.json"}

    model, manifest = _serve(store, host_b)
    assert manifest.model_version == "tiny-v1" and manifest.trained
    assert _same_weights(model, v1) and model is not untrained
    assert current_target_name(host_b) == pointer["name"]
    assert not list((host_b / "published").glob("*.tmp"))
    assert _serve(store, host_b)[0] is model  # up to date: the same model, nothing downloaded again


def test_a_checkpoint_published_on_one_host_serves_on_another_over_s3(s3_store, tmp_path, trained):
    _check_travels(s3_store, tmp_path, trained)


def test_a_local_artifact_root_works_too(tmp_path, trained):
    _check_travels(ArtifactStore(str(tmp_path / "artifacts")), tmp_path, trained)


def test_a_republished_checkpoint_reaches_a_long_lived_worker(
    s3_root, s3_endpoint, s3_store, tmp_path, trained
):
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    # The worker's resource, as default_resources builds it from the shared settings.
    worker = ModelStoreResource(
        model_dir=str(host_b),
        registry_config="tiny",
        artifact_root=s3_root,
        s3_endpoint_url=s3_endpoint,
        s3_region=REGION,
    )
    publish_checkpoint(trained("tiny-v1", seed=1), host_a, s3_store)
    (first, m1), *_ = worker.load()[0]
    assert m1.model_version == "tiny-v1"
    assert worker.load()[0][0][0] is first  # loaded once per process
    old_name = current_target_name(host_b)

    v2 = trained("tiny-v2", seed=2)
    publish_checkpoint(v2, host_a, s3_store)
    (second, m2), *_ = worker.load()[0]  # the same process, the same ModelStore
    assert m2.model_version == "tiny-v2" and second is not first
    assert _same_weights(second, v2)
    assert current_target_name(host_b) != old_name
    assert (host_b / "published" / old_name).is_dir()  # the earlier model stays to inspect


def test_a_tampered_or_missing_upload_is_refused_and_the_old_checkpoint_keeps_serving(
    s3_store, tmp_path, trained
):
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    publish_checkpoint(trained("tiny-v1", seed=1), host_a, s3_store)
    good, _ = _serve(s3_store, host_b)
    kept = current_target_name(host_b)

    publish_checkpoint(trained("tiny-v2", seed=2), host_a, s3_store)
    name = json.loads(s3_store.read_bytes(layout.CURRENT_MODEL_POINTER_REL))["name"]
    weights_rel = layout.published_model_rel(name, WEIGHTS_FILE)
    original = s3_store.read_bytes(weights_rel)
    tampered = bytearray(original)
    tampered[-1] ^= 0xFF  # same size, other bytes
    s3_store.write_bytes(weights_rel, bytes(tampered))
    with pytest.raises(CheckpointSyncError, match=r"refused: model\.safetensors has SHA-256") as err:
        _serve(s3_store, host_b)
    assert "\n" not in str(err.value) and "keeping the current checkpoint" in str(err.value)
    assert current_target_name(host_b) == kept
    assert not (host_b / "published" / name).exists()
    assert not (host_b / "published" / f"{name}.tmp").exists()
    assert _serve(None, host_b)[0] is good  # what is local still serves, untouched

    s3_store.remove(weights_rel)
    with pytest.raises(CheckpointSyncError, match="is missing from the artifact store"):
        _serve(s3_store, host_b)
    assert current_target_name(host_b) == kept

    s3_store.write_bytes(weights_rel, original)  # the upload repaired: the next load follows
    assert _serve(s3_store, host_b)[1].model_version == "tiny-v2"

    s3_store.write_bytes(layout.CURRENT_MODEL_POINTER_REL, b'{"name": "../../etc"}')
    with pytest.raises(CheckpointSyncError, match="is not a valid pointer"):
        _serve(s3_store, host_b)


def test_the_pointer_is_written_last(tmp_path, trained):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    seen: list[tuple[str, bool]] = []
    put_file, write_bytes = store.put_file, store.write_bytes

    def record_put(local: str, rel: str) -> str:
        seen.append((rel, store.exists(layout.CURRENT_MODEL_POINTER_REL)))
        return put_file(local, rel)

    def record_write(rel: str, data: bytes) -> str:
        seen.append((rel, store.exists(layout.CURRENT_MODEL_POINTER_REL)))
        return write_bytes(rel, data)

    store.put_file, store.write_bytes = record_put, record_write  # type: ignore[method-assign]
    publish_checkpoint(trained("tiny-v1", seed=1), tmp_path / "a", store)
    assert [rel.rsplit("/", 1)[-1] for rel, _ in seen] == [
        "manifest.json",
        "model.safetensors",
        "current.json",
    ]
    assert not any(pointer_there for _, pointer_there in seen)


def test_two_processes_syncing_at_once_download_once(s3_store, tmp_path, trained):
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    publish_checkpoint(trained("tiny-v1", seed=1), host_a, s3_store)
    results: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def sync() -> None:
        start.wait()
        try:
            results.append(sync_published_checkpoint(s3_store, host_b))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sync) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [False, False, False, True]
    assert [p.name for p in (host_b / "published").iterdir()] == [current_target_name(host_b)]


def test_an_explicit_checkpoint_wins_and_skips_the_sync(tmp_path, trained):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    store.write_bytes(layout.CURRENT_MODEL_POINTER_REL, b"not json")  # would fail a sync
    explicit = trained("tiny-pinned", seed=3)
    assert resolve_checkpoint(str(explicit), str(tmp_path / "b"), "tiny", store) == explicit
    with pytest.raises(CheckpointSyncError, match="not a valid pointer"):
        resolve_checkpoint(None, str(tmp_path / "b"), "tiny", store)


def test_calibration_on_another_host_republishes_and_every_host_follows(s3_store, tmp_path, trained):
    """What the calibration asset does: sync the trained model, change its manifest, republish."""
    from dagster_deepfake.models.checkpoint import read_manifest
    from dagster_deepfake.models.store import synced_current_dir
    from dagster_deepfake.training.calibrate import write_manifest_atomic

    trainer, calibrator = tmp_path / "trainer", tmp_path / "calibrator"
    publish_checkpoint(trained("tiny-v1", seed=1), trainer, s3_store)
    first = current_target_name(trainer)
    current = synced_current_dir(str(calibrator), s3_store)  # trained elsewhere, here now
    assert current_target_name(calibrator) == first
    manifest = read_manifest(current)
    write_manifest_atomic(current, manifest.model_copy(update={"temperature": 1.7}))
    publish_checkpoint(current.resolve(), calibrator, s3_store)
    again = current_target_name(calibrator)
    assert again != first and again.count("T") == first.count("T")  # one stamp, not two
    assert _serve(s3_store, trainer)[1].temperature == pytest.approx(1.7)
    assert current_target_name(trainer) == again
