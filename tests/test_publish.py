"""Publishing a checkpoint is atomic: a reader polling `current` never finds it missing."""

from __future__ import annotations

import json
import threading

from dagster_deepfake.models.publish import publish_checkpoint


def _checkpoint(folder, version: str):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"model_version": version}))
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    return folder


def test_current_is_never_missing_while_publishing(tmp_path):
    models = tmp_path / "models"
    _checkpoint(models / "current", "v0")  # a real folder, as earlier versions left it
    publish_checkpoint(_checkpoint(tmp_path / "run0", "v0b"), models)  # moved aside once, then a link
    stop, seen, missing = threading.Event(), set(), []

    def read_forever():
        while not stop.is_set():
            try:
                seen.add(json.loads((models / "current" / "manifest.json").read_text())["model_version"])
            except (FileNotFoundError, NotADirectoryError) as exc:
                missing.append(exc)

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for i in range(1, 30):
            publish_checkpoint(_checkpoint(tmp_path / f"run{i}", f"v{i}"), models)
    finally:
        stop.set()
        reader.join()
    assert not missing
    assert json.loads((models / "current" / "manifest.json").read_text())["model_version"] == "v29"
    assert (models / "current").is_symlink() and len(seen) > 1
    # Every published checkpoint (and the one moved aside) stays readable.
    assert len(list((models / "published").iterdir())) == 31
