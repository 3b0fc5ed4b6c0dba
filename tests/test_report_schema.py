"""The result document: contract keys exactly, and the exported JSON Schema matches the code."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from dagster_deepfake.config import REPO_ROOT
from dagster_deepfake.report import ResultDocument, Runtime, json_schema, runtime_label

CONTRACT_EXAMPLE = {
    "job_id": "v_0123456789abcdef",
    "status": "completed",
    "prediction": {
        "overall_class": "fake",
        "overall_confidence": 0.91,
        "manipulation_confidence": 0.91,
        "modality_agreement": 0.8,
        "confidence_interval": [0.85, 0.95],
        "anomalous_frames": [
            {
                "frame_id": 12,
                "timestamp": 2.4,
                "confidence": 0.95,
                "saliency_url": "/jobs/v_0123456789abcdef/saliency/a.png",
            }
        ],
    },
    "metadata": {
        "processing_time_sec": 12.5,
        "video_duration_sec": 30.0,
        "frames_analyzed": 150,
        "model_version": "contract-abc",
        "ensemble_size": 1,
    },
}


def test_contract_example_round_trips_with_exact_keys():
    doc = ResultDocument.model_validate(CONTRACT_EXAMPLE)
    dumped = json.loads(doc.model_dump_json(exclude={"additions"}))
    assert dumped == CONTRACT_EXAMPLE
    assert set(dumped) == {"job_id", "status", "prediction", "metadata"}


def test_unknown_keys_and_bad_values_are_rejected():
    with pytest.raises(ValidationError):
        ResultDocument.model_validate({**CONTRACT_EXAMPLE, "verdict": "fake"})
    bad = json.loads(json.dumps(CONTRACT_EXAMPLE))
    bad["prediction"]["manipulation_confidence"] = 1.5
    with pytest.raises(ValidationError):
        ResultDocument.model_validate(bad)


def test_exported_schema_is_current():
    on_disk = (REPO_ROOT / "docs" / "result.schema.json").read_text()
    assert json.loads(on_disk) == json.loads(json_schema()), (
        "run: python -c 'from dagster_deepfake.report import json_schema; print(json_schema())' > docs/result.schema.json"
    )


def test_runtime_label_names_each_backbone_runtime_for_a_reader():
    onnx = Runtime(device="cpu", precision="fp32", backbone="onnxruntime")
    assert runtime_label(onnx) == "cpu, fp32, face backbone on ONNX Runtime (exported fp32 graph)"
    # The document's JSON (a dict) reads the same as the model.
    assert runtime_label(onnx.model_dump()) == runtime_label(onnx)
    assert runtime_label({"device": "cuda", "precision": "amp", "backbone": "torch"}) == (
        "cuda, amp, face backbone on torch"
    )
    # An evaluation whose members ran on both (an ensemble where one backbone would not export).
    mixed = {"device": "cpu", "precision": "fp32", "backbone": "onnxruntime+torch"}
    assert runtime_label(mixed) == "cpu, fp32, face backbone on ONNX Runtime (exported fp32 graph) + torch"
