"""Training library: clip sampling, batching, the loop (loss, modality dropout, resume),
calibration and evaluation, on features produced by the real perception pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from dagster_deepfake.config import Settings, TrainingConfig
from dagster_deepfake.models.checkpoint import (
    build_untrained,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from dagster_deepfake.models.inference import predict_video
from dagster_deepfake.models.onnx_backbone import ONNX_SUBDIR
from dagster_deepfake.models.registry import get_model_config
from dagster_deepfake.synthetic import generate_dataset
from dagster_deepfake.training.calibrate import (
    calibrate_checkpoint,
    collect_logits,
    write_manifest_atomic,
)
from dagster_deepfake.training.data import ClipCollator, ClipDataset
from dagster_deepfake.training.evaluate import evaluate_checkpoint
from dagster_deepfake.training.features import (
    InMemoryFeatureSource,
    LRUFeatureSource,
    VideoFeatures,
    extract_features_from_file,
)
from dagster_deepfake.training.loop import STATE_FILE, plan_training, train_detector

# Aligned crops are 224 px; the tiny backbone is size-agnostic (global pooling), so the
# tests shrink them to keep every training step well under a second on 2 cores.
CROP = 64
RATE = 16000


def _shrink(crops: np.ndarray) -> np.ndarray:
    return np.stack([cv2.resize(c, (CROP, CROP), interpolation=cv2.INTER_AREA) for c in crops])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """10 synthetic clips (2 s, 256x192, speech) through probe → frames → faces → flow → audio + VAD."""
    root = tmp_path_factory.mktemp("synthetic")
    manifest = generate_dataset(root, 10, seed=3, duration=2.0, width=256, height=192)
    settings = Settings.model_validate({"data": {"min_height": 192}})  # small clips keep this fast
    features = {}
    for row in manifest.itertuples():
        video_id = Path(row.path).stem
        f = extract_features_from_file(
            root / row.path, settings, video_id, int(row.label == "fake"), row.method
        )
        f.crops = _shrink(f.crops)
        features[video_id] = f
    ids = list(features)
    # Vary the lengths so batches need padding: drop the last faces of two videos.
    for video_id, keep in zip(ids[:2], (7, 4), strict=True):
        f = features[video_id]
        f.crops, f.flow, f.timestamps = f.crops[:keep], f.flow[:keep], f.timestamps[:keep]
    return {"source": InMemoryFeatureSource(features), "ids": ids, "manifest": manifest}


def _cfg(**overrides: object) -> TrainingConfig:
    base = {"learning_rate": 1e-3, "warmup_steps": 1000, "batch_size": 4, "epochs": 3}
    return TrainingConfig(**{**base, **overrides})


def _ramp_features(
    video_id: str, count: int, *, skip_after: int | None = None, label: int = 1
) -> VideoFeatures:
    """Faces whose pixel value is their index and a waveform whose value is its time in seconds."""
    frame_ids = np.arange(count) + (np.arange(count) > skip_after if skip_after is not None else 0)
    timestamps = frame_ids / 5.0
    duration = float(timestamps[-1]) + 0.2
    samples = int(duration * RATE)
    crops = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, 32, 32, 3)).copy()
    return VideoFeatures(
        video_id=video_id,
        label_int=label,
        method="face_swap" if label else "original",
        crops=crops,
        flow=np.stack([np.arange(count), np.arange(count)], 1).astype(np.float32),
        timestamps=timestamps,
        waveform=(np.arange(samples) / RATE).astype(np.float32),
        speech_mask=(np.arange(samples) // RATE) % 2 == 0,  # speech in even seconds
    )


# -- data --------------------------------------------------------------------------------------


def test_training_clip_is_a_contiguous_segment_with_the_matching_audio() -> None:
    f = _ramp_features("v", 20, skip_after=11)  # frame 12 was skipped: timestamps jump by 0.4 s
    ds = ClipDataset(["v"], InMemoryFeatureSource([f]), train=True, clip_frames=10, frame_rate=5.0)
    starts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        clip = ds[0]
        start = int(clip.faces[0, 0, 0, 0])
        starts.add(start)
        assert clip.frame_mask.all() and len(clip.faces) == 10
        assert clip.faces[:, 0, 0, 0].tolist() == list(range(start, start + 10))
        assert torch.equal(clip.flow[:, 0], torch.arange(start, start + 10, dtype=torch.float32))
        t0, t1 = f.timestamps[start], f.timestamps[start + 9] + 0.2
        # The waveform holds its own time: the span starts at the first face, ends one frame after the last.
        assert clip.waveform[0].item() == pytest.approx(t0, abs=1 / RATE)
        assert len(clip.waveform) == pytest.approx((t1 - t0) * RATE, abs=2)
        expected_speech = (clip.waveform.numpy() * RATE + 0.5).astype(int) // RATE % 2 == 0
        assert np.array_equal(clip.speech_mask.numpy(), expected_speech)
        ds.set_epoch(epoch)
        assert torch.equal(ds[0].faces, clip.faces), "the same epoch must give the same clip"
    assert len(starts) > 1, "clip starts must vary between epochs"


def test_short_video_is_padded_and_masked_and_eval_takes_the_whole_video() -> None:
    short, long = _ramp_features("short", 3), _ramp_features("long", 23)
    source = InMemoryFeatureSource([short, long])
    clip = ClipDataset(["short"], source, train=True, clip_frames=10)[0]
    assert clip.frame_mask.tolist() == [True] * 3 + [False] * 7
    assert clip.faces[3:].eq(0).all() and clip.flow[3:].eq(0).all()

    whole = ClipDataset(["long"], source, train=False)[0]
    assert len(whole.faces) == 23 and whole.frame_mask.all()
    assert torch.equal(whole.waveform, torch.from_numpy(long.waveform))
    capped = ClipDataset(["long"], source, train=False, max_eval_frames=10, window_frames=5)[0]
    assert len(capped.faces) == 10
    firsts = capped.faces[::5, 0, 0, 0].tolist()
    assert firsts[0] == 0 and firsts[-1] == 23 - 5, "segments spread over the whole video, whole windows"


def test_collate_normalises_like_the_model_and_pads_audio() -> None:
    model, _ = build_untrained("tiny")
    with_audio, no_audio = _ramp_features("a", 12), _ramp_features("b", 6, label=0)
    no_audio.waveform, no_audio.speech_mask = None, None
    source = InMemoryFeatureSource([with_audio, no_audio])
    ds = ClipDataset(["a", "b"], source, train=False)
    collate = ClipCollator.for_model(model)
    batch = collate([ds[0], ds[1]])
    assert batch.faces.shape == (2, 12, 3, 32, 32)
    expected = model.preprocess_faces(with_audio.crops)
    assert torch.allclose(batch.faces[0], expected, atol=1e-6)
    assert batch.frame_mask.sum(1).tolist() == [12, 6]
    assert batch.labels.tolist() == [1, 0]
    assert batch.waveform.shape[1] == len(with_audio.waveform)
    assert not batch.speech_mask[1].any(), "a clip without audio has no speech frames"
    assert collate([ds[1]]).waveform is None

    output = model(batch.faces, batch.flow, batch.frame_mask, batch.waveform, batch.speech_mask)
    assert output.audio_used.tolist() == [True, False]


def test_lru_source_keeps_recent_videos_within_budget() -> None:
    videos = [_ramp_features(f"v{i}", 10) for i in range(4)]
    lru = LRUFeatureSource(InMemoryFeatureSource(videos), max_bytes=int(2.5 * videos[0].nbytes))
    for name in ["v0", "v1", "v0", "v2", "v0", "v1"]:
        assert lru.load(name).video_id == name
    assert lru.cached_bytes <= lru.max_bytes
    assert (lru.hits, lru.misses) == (2, 4)  # v0 stays hot; v1 was evicted by v2


def test_plan_caps_batch_and_warmup_for_short_runs() -> None:
    plan = plan_training(10, TrainingConfig(batch_size=32, warmup_steps=1000, epochs=20))
    assert plan.batch_size == 10 and plan.steps_per_epoch == 1 and plan.total_steps == 20
    assert plan.warmup_steps == 2
    ffpp = plan_training(3600, TrainingConfig())  # FF++ c23 train split: 113 steps per epoch
    assert ffpp.total_steps == 20 * 113 and ffpp.warmup_steps == 226
    large = plan_training(100_000, TrainingConfig())
    assert large.warmup_steps == 1000
    assert plan_training(10, TrainingConfig(batch_size=4), max_steps=5).epochs == 2


# -- loop --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(dataset: dict[str, object], tmp_path_factory: pytest.TempPathFactory):
    ids = dataset["ids"]
    out = tmp_path_factory.mktemp("run")
    result = train_detector(
        "tiny",
        ids[:6],
        ids[6:],
        dataset["source"],
        _cfg(epochs=15),
        out,
        seed=0,
        training_data_hash="abc123",
        image_size=CROP,
    )
    return result, out


def test_training_lowers_the_loss_and_writes_a_trained_checkpoint(dataset, trained) -> None:
    result, _ = trained
    ids, source = dataset["ids"], dataset["source"]
    before, _ = build_untrained("tiny", seed=0)  # the run's initial weights
    after, manifest = load_checkpoint(result.last_checkpoint)

    def nll(model) -> float:
        logits, labels, _ = collect_logits(model, ids[:6], source)
        return float(torch.nn.functional.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels)))

    assert nll(after) < nll(before) - 0.1
    assert [h.epoch for h in result.history] == list(range(1, 16))
    assert [h.step for h in result.history] == list(range(2, 31, 2))  # 6 videos, batch 4
    assert manifest.trained and manifest.weights_label == "trained"
    assert manifest.training_data_hash == "abc123"
    assert manifest.training is not None
    assert manifest.training["modality_dropout_prob"] == TrainingConfig().modality_dropout_prob
    best = read_manifest(result.best_checkpoint)
    aucs = [h.val_auc for h in result.history]
    assert best.metrics["val_auc"] == pytest.approx(max(aucs)) == pytest.approx(result.best_val_auc)
    assert result.history[-1].lr < result.history[0].lr, "cosine schedule decays"


def test_modality_dropout_applies_to_training_clips_only(dataset, tmp_path: Path) -> None:
    ids, source = dataset["ids"], dataset["source"]
    runs = {}
    for p in (1.0, 0.0):
        result = train_detector(
            "tiny",
            ids[2:6],
            ids[6:8],
            source,
            _cfg(modality_dropout_prob=p, epochs=1),
            tmp_path / str(p),
            image_size=CROP,
        )
        runs[p] = result.history[-1]
    assert runs[1.0].train_audio_fraction == 0.0
    assert runs[1.0].val_audio_fraction == 1.0, "validation must use the audio it has"
    assert runs[0.0].train_audio_fraction == 1.0


def test_interrupted_run_resumes_from_the_saved_step(dataset, tmp_path: Path) -> None:
    ids, source = dataset["ids"], dataset["source"]
    args = ("tiny", ids[:8], ids[8:], source, _cfg(epochs=3), tmp_path)

    def interrupt(stats) -> None:
        raise KeyboardInterrupt(f"stopped after epoch {stats.epoch}")

    with pytest.raises(KeyboardInterrupt):
        train_detector(*args, on_epoch=interrupt, image_size=CROP)
    state = torch.load(tmp_path / "last" / STATE_FILE, weights_only=False)
    assert (state["epoch"], state["step"]) == (1, 2)
    first_epoch = json.loads((tmp_path / "history.json").read_text())[0]

    seen = []
    result = train_detector(*args, on_epoch=seen.append, image_size=CROP)
    assert result.resumed_from_step == 2
    assert [(s.epoch, s.step) for s in seen] == [(2, 4), (3, 6)], "continues, not from step 0"
    assert [h.step for h in result.history] == [2, 4, 6]
    assert result.history[0].train_loss == first_epoch["train_loss"]

    fresh = train_detector(*args, resume=False, max_epochs=1, image_size=CROP)
    assert fresh.resumed_from_step == 0 and fresh.history[0].step == 2


# -- calibration and evaluation ----------------------------------------------------------------


def test_calibration_softens_an_overconfident_model_and_writes_the_manifest(dataset, tmp_path: Path) -> None:
    ids, source = dataset["ids"], dataset["source"]
    model, manifest = build_untrained("tiny", seed=1)
    with torch.no_grad():  # deliberately over-confident: 40x larger logits
        model.head.classifier.weight.mul_(40.0)
        model.head.classifier.bias.mul_(40.0)
    save_checkpoint(tmp_path, model, manifest)

    result = calibrate_checkpoint(tmp_path, ids, source)
    assert result.temperature > 1.5
    assert result.ece_after < result.ece_before
    assert result.nll_after < result.nll_before
    assert result.reliability_png.startswith(b"\x89PNG")
    written = read_manifest(tmp_path)
    assert written.temperature == pytest.approx(result.temperature)
    assert written.metrics["val_ece_calibrated"] == pytest.approx(result.ece_after)
    assert not list(tmp_path.glob("*.tmp")), "the manifest is replaced atomically"


def test_evaluation_metrics_match_sklearn_and_serving(dataset, trained) -> None:
    result, _ = trained
    ids, source = dataset["ids"], dataset["source"]
    checkpoint = result.best_checkpoint
    manifest = read_manifest(checkpoint)
    manifest.temperature = 2.0
    write_manifest_atomic(checkpoint, manifest)

    evaluation = evaluate_checkpoint(checkpoint, ids, source)
    pred = evaluation.predictions
    assert list(pred["video_id"]) == ids and evaluation.temperature == 2.0
    y, p = pred["label"].to_numpy(), pred["p_fake"].to_numpy()
    m = evaluation.metrics
    assert m.auc == pytest.approx(roc_auc_score(y, p))
    assert m.accuracy == pytest.approx(accuracy_score(y, p > 0.5))
    tn, fp, _, _ = confusion_matrix(y, p > 0.5).ravel()
    assert m.fpr_at_threshold == pytest.approx(fp / (fp + tn))
    for method, auc in evaluation.per_method_auc.items():
        keep = (y == 0) | (pred["method"].to_numpy() == method)
        assert auc == pytest.approx(roc_auc_score(y[keep], p[keep]))
    assert evaluation.roc_png.startswith(b"\x89PNG")

    # The calibrated temperature halves the log-odds; the uncalibrated score is what serving computes.
    raw = pred["p_fake_uncalibrated"].to_numpy()
    logit = lambda q: np.log(q) - np.log1p(-q)  # noqa: E731
    assert np.allclose(logit(p), logit(raw) / 2.0, atol=1e-4)
    model, _ = load_checkpoint(checkpoint)
    for video_id in ids[:3]:  # the first two were shortened: batches were padded
        f = source.load(video_id)
        served = predict_video(model, f.crops, f.flow, f.waveform, f.speech_mask, bf16=False)
        row = pred.set_index("video_id").loc[video_id]
        assert row["p_fake_uncalibrated"] == pytest.approx(served.p_fake_raw, abs=1e-4)


def test_evaluation_through_onnx_runtime_scores_what_torch_does(dataset, trained, tmp_path: Path) -> None:
    # platform.cpu_backbone for evaluation and calibration, as for serving (score_videos).
    result, _ = trained
    ids, source = dataset["ids"], dataset["source"]
    in_torch = evaluate_checkpoint(result.best_checkpoint, ids, source, plots=False)
    exported = evaluate_checkpoint(
        result.best_checkpoint, ids, source, plots=False, cpu_backbone="onnxruntime", model_dir=tmp_path
    )
    assert list((tmp_path / ONNX_SUBDIR).glob("*.onnx")), "the backbone's graph is exported once"
    torch_p = in_torch.predictions["p_fake_uncalibrated"].to_numpy()
    onnx_p = exported.predictions["p_fake_uncalibrated"].to_numpy()
    assert np.abs(onnx_p - torch_p).max() <= 1e-4
    assert list(exported.predictions["video_id"]) == ids
    assert in_torch.protocol.runtime == "cpu, fp32, face backbone on torch"
    assert exported.protocol.runtime == "cpu, fp32, face backbone on ONNX Runtime (exported fp32 graph)"


def test_config_mismatch_refuses_to_resume(dataset, trained) -> None:
    result, out = trained
    other = get_model_config("tiny")
    other.classification.dropout = 0.5
    ids = dataset["ids"]
    with pytest.raises(ValueError, match="another model config"):
        train_detector(other, ids[:4], ids[6:], dataset["source"], _cfg(), out, image_size=CROP)
