"""Every key of the contract's configuration block: it parses, it has its effect, and a value
the code cannot honour is a one-line error naming the file and the key (tiny model, CPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from commands.cli import main as cli_main
from dagster_deepfake.config import (
    DEFAULT_CONFIG_PATH,
    REPO_ROOT,
    AugmentationConfig,
    DataConfig,
    ModelConfig,
    Settings,
    TrainingConfig,
    load_settings,
    overlay_explicit,
    resolve_model_config,
)
from dagster_deepfake.errors import ConfigError
from dagster_deepfake.models import weights as weights_module
from dagster_deepfake.models.checkpoint import CheckpointManifest, build_untrained, save_checkpoint
from dagster_deepfake.models.describe import describe_model
from dagster_deepfake.models.store import current_checkpoint_dir, load_ensemble, untrained_checkpoint_dir
from dagster_deepfake.models.weights import PretrainedFlags, build_detector
from dagster_deepfake.training import loop as loop_module
from dagster_deepfake.training.augment import WindowAugment
from dagster_deepfake.training.features import InMemoryFeatureSource, VideoFeatures
from dagster_deepfake.training.loop import build_optimizer, build_scheduler, plan_training, train_detector
from dagster_deepfake.training.manifests import choose_training_sets

#: The contract's block, exactly as the contract writes it (32 keys).
CONTRACT = {
    "model": {
        "audio": {
            "encoder": "wav2vec2-base",
            "pretrained": True,
            "freeze_encoder_blocks": 8,
            "fine_tune_blocks": 4,
        },
        "video": {"backbone": "efficientnet_b3", "pretrained": True, "freeze_backbone": False},
        "temporal": {"encoder_type": "conv1d", "window_frames": 5},
        "fusion": {"strategy": "cross_attention", "hidden_dim": 512, "attention_heads": 4},
        "classification": {"num_classes": 2, "dropout": 0.2},
    },
    "training": {
        "batch_size": 32,
        "learning_rate": 0.0001,
        "epochs": 20,
        "optimizer": "adamw",
        "scheduler": "cosine",
        "warmup_steps": 1000,
        "temporal_consistency_weight": 0.1,
        "modality_dropout_prob": 0.2,
    },
    "data": {
        "dataset": "faceforensics++",
        "val_dataset": "celeb-df-v2",
        "frame_rate": 5,
        "resolution": 224,
        "vad_enabled": True,
        "optical_flow_enabled": True,
        "augmentation": {"enable": True, "color_jitter": True, "random_crop": True, "random_flip": True},
    },
}


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _get(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: ") :]


# -- the file ----------------------------------------------------------------------------------


def test_config_yaml_holds_the_32_contract_keys_verbatim() -> None:
    contract = _leaves(CONTRACT)
    assert len(contract) == 32
    on_disk = _leaves(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()))
    for key, value in contract.items():
        assert key in on_disk, f"config/config.yaml lacks {key}"
        assert on_disk[key] == value and type(on_disk[key]) is type(value), key
    settings, defaults = load_settings(DEFAULT_CONFIG_PATH), Settings()
    for key, value in contract.items():
        assert _get(settings, key) == value == _get(defaults, key), key


def test_unknown_keys_are_one_line_errors_naming_file_and_key(tmp_path: Path) -> None:
    assert _error(tmp_path, "model:\n  fusion:\n    num_heads: 4\n") == "model.fusion.num_heads: unknown key"
    assert (
        _error(tmp_path, "training:\n  modality_dropout: 0.2\n") == "training.modality_dropout: unknown key"
    )
    assert _error(tmp_path, "modle: {}\n") == "modle: unknown key"
    assert "not valid YAML" in _error(tmp_path, "model: [\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "model:\n  fusion:\n    strategy: concat\n",
            "model.fusion.strategy: only 'cross_attention' is implemented (got 'concat')",
        ),
        (
            "model:\n  classification:\n    num_classes: 3\n",
            "model.classification.num_classes: only 2 classes [real, fake] are implemented (got 3)",
        ),
        (
            "training:\n  optimizer: lion\n",
            "training.optimizer: unknown optimizer 'lion' (implemented: adamw, adam, sgd)",
        ),
        (
            "training:\n  scheduler: step\n",
            "training.scheduler: unknown scheduler 'step' (implemented: cosine, linear, constant)",
        ),
        ("model:\n  temporal:\n    encoder_type: lstm\n", "model.temporal.encoder_type: "),
        ("data:\n  frame_rate: 4\n", "data.frame_rate: Input should be greater than or equal to 5"),
        ("data:\n  frame_rate: 11\n", "data.frame_rate: Input should be less than or equal to 10"),
        ("data:\n  vad_enabled: maybe\n", "data.vad_enabled: "),
        ("model:\n  registry_config: huge\n", "model.registry_config: unknown variant 'huge'"),
        (
            "model:\n  audio:\n    fine_tune_blocks: 3\n",
            "model.audio.freeze_encoder_blocks: freeze_encoder_blocks (8) + fine_tune_blocks (3) must add "
            "up to the encoder's depth, audio.num_encoder_blocks (12)",
        ),
        (
            "model:\n  registry_config: tiny\n  fusion:\n    hidden_dim: 30\n",
            "model.fusion.attention_heads: hidden_dim (30) must be divisible by attention_heads (4)",
        ),
    ],
)
def test_values_the_code_cannot_honour_are_one_line_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert _error(tmp_path, text).startswith(expected)


def test_the_cli_prints_a_config_error_as_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "model:\n  fusion:\n    strategy: concat\n")
    assert cli_main(["--config", str(path), "model", "describe"]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: {path}: model.fusion.strategy: only 'cross_attention' is implemented (got 'concat')\n"
    )


def test_frame_rate_5_to_10_and_the_switches_parse(tmp_path: Path) -> None:
    settings = load_settings(
        _write(tmp_path, "data:\n  frame_rate: 10\n  vad_enabled: false\n  optical_flow_enabled: false\n")
    )
    assert settings.data.frame_rate == 10
    assert settings.data.vad_enabled is False and settings.data.optical_flow_enabled is False
    assert DataConfig().vad_enabled is True and DataConfig().optical_flow_enabled is True


# -- model: variants are layers, explicit keys win ---------------------------------------------


def test_explicit_keys_win_over_the_variant_and_derived_sizes_follow(tmp_path: Path) -> None:
    settings = load_settings(
        _write(tmp_path, "model:\n  registry_config: tiny\n  fusion:\n    hidden_dim: 512\n")
    )
    model = settings.model
    assert model.fusion.hidden_dim == 512  # the contract default, set explicitly: it wins
    assert model.audio.hidden_size == 32  # not set: the tiny variant's
    assert model.audio.projection_dim == 512 and model.fusion.output_dim == 64 + 512
    assert resolve_model_config(model) == model
    assert ModelConfig.model_validate_json(model.model_dump_json()) == model  # stable round trip
    with pytest.raises(ConfigError, match="model.fusion.output_dim: must equal"):
        load_settings(
            _write(
                tmp_path,
                "model:\n  registry_config: tiny\n  fusion:\n    hidden_dim: 512\n    output_dim: 96\n",
            )
        )


def test_window_frames_heads_hidden_dim_dropout_and_encoder_type_build(tmp_path: Path) -> None:
    text = (
        "model:\n  registry_config: tiny\n  temporal:\n    window_frames: 3\n    encoder_type: transformer\n"
        "  fusion:\n    hidden_dim: 48\n    attention_heads: 8\n  classification:\n    dropout: 0.5\n"
    )
    config = resolve_model_config(load_settings(_write(tmp_path, text)).model)
    model, _ = build_detector(config, pretrained=False, seed=0)
    assert type(model.video_encoder.temporal).__name__ == "TransformerTemporalEncoder"
    assert model.fusion.attention.num_heads == 8 and model.fusion.attention.embed_dim == 48
    assert model.head.dropout.p == 0.5
    model.eval()
    frames = 12
    out = model(
        torch.zeros(1, frames, 3, 32, 32),
        torch.zeros(1, frames, 2),
        torch.ones(1, frames, dtype=torch.bool),
        torch.randn(1, 16000),
    )
    assert out.window_logits.shape == (1, 4, 2)  # ceil(12 / 3) windows
    assert out.audio_context.shape[-1] == 48
    described = describe_model(config)
    assert ("B", "W", "48") in [b.output_shape for b in described.blocks]


def test_serving_fallback_builds_the_yaml_architecture(tmp_path: Path) -> None:
    model_config = ModelConfig(registry_config="tiny", fusion={"attention_heads": 8})
    (model, manifest), *_ = load_ensemble(None, str(tmp_path), model_config, 1)[0]
    assert model.fusion.attention.num_heads == 8
    assert not manifest.trained and manifest.weights_label == "untrained"
    assert untrained_checkpoint_dir(str(tmp_path), model_config).is_dir()
    (plain, _), *_ = load_ensemble(None, str(tmp_path), "tiny", 1)[0]  # the variant alone: 4 heads
    assert plain.fusion.attention.num_heads == 4


def test_serving_warns_when_the_checkpoint_differs_from_the_yaml(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, manifest = build_untrained("tiny", seed=0)
    save_checkpoint(
        current_checkpoint_dir(str(tmp_path)), model, manifest.model_copy(update={"trained": True})
    )
    wanted = ModelConfig(registry_config="tiny", fusion={"attention_heads": 8})
    with caplog.at_level(logging.WARNING):
        (served, _), *_ = load_ensemble(None, str(tmp_path), wanted, 1)[0]
    assert served.fusion.attention.num_heads == 4  # a checkpoint keeps its own architecture
    assert "model.fusion.attention_heads: yaml 8, checkpoint 4" in caplog.text


# -- model: weights and freezing ---------------------------------------------------------------


def test_pretrained_false_never_looks_for_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pretrained: false must not look for weights")

    monkeypatch.setattr(weights_module, "load_wav2vec2", forbidden)
    monkeypatch.setattr(weights_module, "load_timm_backbone", forbidden)
    _, flags = build_detector(ModelConfig(registry_config="tiny"), seed=0, allow_download=True)
    assert flags == PretrainedFlags()


def test_pretrained_true_runs_the_real_loaders_and_falls_back_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[str] = []

    def from_pretrained(source: str, **kwargs: object) -> None:
        asked.append(source)
        raise OSError(f"{source} is not available offline")

    monkeypatch.setattr(weights_module.Wav2Vec2Model, "from_pretrained", from_pretrained)
    config = ModelConfig(
        registry_config="tiny",
        audio={"encoder": "wav2vec2-base", "pretrained": True},
        video={"pretrained": True, "weights": "/nonexistent/backbone.safetensors"},
    )
    with caplog.at_level(logging.WARNING):
        _, flags = build_detector(config, seed=0, allow_download=False)
    assert asked == ["facebook/wav2vec2-base"]  # the contract's short name, resolved
    assert flags == PretrainedFlags()
    assert "RANDOM INITIALISATION" in caplog.text and "facebook/wav2vec2-base" in caplog.text


def test_a_local_encoder_folder_is_used_as_is(tmp_path: Path) -> None:
    folder = tmp_path / "w2v"
    folder.mkdir()
    assert ModelConfig(audio={"encoder": str(folder)}).audio.source == str(folder)
    assert ModelConfig(audio={"encoder": "org/other-wav2vec2"}).audio.source == "org/other-wav2vec2"


def test_freeze_encoder_blocks_freezes_exactly_those_layers() -> None:
    config = ModelConfig(registry_config="tiny")  # 2 layers: 1 frozen + 1 fine-tuned
    model, _ = build_detector(config, pretrained=False, seed=0)
    layers = model.audio_encoder.wav2vec2.encoder.layers
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    all_frozen = ModelConfig(
        registry_config="tiny", audio={"freeze_encoder_blocks": 2, "fine_tune_blocks": 0}
    )
    model, _ = build_detector(all_frozen, pretrained=False, seed=0)
    assert not any(p.requires_grad for p in model.audio_encoder.wav2vec2.encoder.layers.parameters())
    assert model.audio_encoder.projection.weight.requires_grad


def test_freeze_backbone_keeps_the_backbone_fixed_and_in_eval_mode() -> None:
    config = ModelConfig(registry_config="tiny", video={"freeze_backbone": True})
    model, _ = build_detector(config, pretrained=False, seed=0)
    backbone = model.frame_encoder.backbone
    assert not any(p.requires_grad for p in backbone.parameters())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}  # weights and BN statistics
    model.train()
    assert not backbone.training and model.video_encoder.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, TrainingConfig(learning_rate=0.1))
    out = model(torch.rand(2, 5, 3, 32, 32), torch.zeros(2, 5, 2), None, torch.randn(2, 16000))
    out.video_logits.sum().backward()
    optimizer.step()
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not ModelConfig().video.freeze_backbone  # the contract trains it


# -- training ----------------------------------------------------------------------------------


def test_batch_size_epochs_and_warmup_plan_the_run() -> None:
    plan = plan_training(100, TrainingConfig(batch_size=10, epochs=3, warmup_steps=2))
    assert (plan.batch_size, plan.steps_per_epoch, plan.epochs, plan.total_steps, plan.warmup_steps) == (
        10,
        10,
        3,
        30,
        2,
    )


def test_optimizer_learning_rate_and_scheduler() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert type(build_optimizer(params, TrainingConfig())).__name__ == "AdamW"
    sgd = build_optimizer(params, TrainingConfig(optimizer="sgd", learning_rate=0.01))
    assert type(sgd).__name__ == "SGD" and sgd.param_groups[0]["lr"] == 0.01
    plan = plan_training(100, TrainingConfig(batch_size=10, epochs=1, warmup_steps=0))
    curves = {}
    for name in ("cosine", "linear", "constant"):
        cfg = TrainingConfig(scheduler=name, learning_rate=1.0, warmup_steps=0)
        scheduler = build_scheduler(build_optimizer(params, cfg), cfg, plan)
        for _ in range(5):
            scheduler.optimizer.step()
            scheduler.step()
        curves[name] = scheduler.get_last_lr()[0]
    assert curves["constant"] == pytest.approx(1.0)
    assert curves["linear"] == pytest.approx(0.5)
    assert curves["cosine"] == pytest.approx(0.5)  # half way: cos(pi/2)
    warm = TrainingConfig(scheduler="cosine", learning_rate=1.0, warmup_steps=1000)
    warm_plan = plan_training(100_000, warm.model_copy(update={"batch_size": 10}))
    scheduler = build_scheduler(build_optimizer(params, warm), warm, warm_plan)
    assert scheduler.get_last_lr()[0] == 0.0  # starts the 1000 warm-up steps at 0


def _features(video_id: str, label: int, frames: int = 10, size: int = 40) -> VideoFeatures:
    rng = np.random.default_rng(abs(hash(video_id)) % 2**32)
    return VideoFeatures(
        video_id=video_id,
        label_int=label,
        method="face_swap" if label else "original",
        crops=rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8),
        flow=rng.random((frames, 2), dtype=np.float32),
        timestamps=np.arange(frames) / 5.0,
        waveform=rng.standard_normal(32000).astype(np.float32) * 0.1,
        speech_mask=np.ones(32000, dtype=bool),
    )


def test_the_training_loop_applies_every_training_and_augmentation_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ids = ["a", "b", "c", "d"]
    source = InMemoryFeatureSource({v: _features(v, i % 2) for i, v in enumerate(ids)})
    seen: dict[str, object] = {}
    real_loss, real_augment = loop_module.detector_loss, WindowAugment.from_config

    def loss(*args, lambda_tc, **kwargs):
        seen["lambda_tc"] = lambda_tc
        return real_loss(*args, lambda_tc=lambda_tc, **kwargs)

    def augment(config, *, size, train, seed):
        seen["augment"] = (config, size)
        return real_augment(config, size=size, train=train, seed=seed)

    monkeypatch.setattr(loop_module, "detector_loss", loss)
    monkeypatch.setattr(WindowAugment, "from_config", augment)
    training = TrainingConfig(
        optimizer="sgd", scheduler="constant", temporal_consistency_weight=0.7, modality_dropout_prob=1.0
    )
    data = DataConfig(resolution=32, augmentation={"random_crop": False})
    result = train_detector(
        "tiny", ids[:2], ids[2:], source, training, tmp_path / "on", max_steps=1, data_cfg=data
    )
    assert seen["lambda_tc"] == 0.7
    assert seen["augment"][1] == 32  # data.resolution: the augmented faces' side
    assert seen["augment"][0].random_crop is False
    assert result.history[0].train_audio_fraction == 0.0  # modality_dropout_prob 1.0 in training
    assert result.history[0].val_audio_fraction == 1.0
    manifest = CheckpointManifest.model_validate_json((result.last_checkpoint / "manifest.json").read_text())
    assert manifest.training["optimizer"] == "sgd" and manifest.training["scheduler"] == "constant"

    seen.clear()
    off = DataConfig(resolution=32, augmentation={"enable": False})
    train_detector("tiny", ids[:2], ids[2:], source, training, tmp_path / "off", max_steps=1, data_cfg=off)
    assert "augment" not in seen  # enable: false → no augmentation at all


def test_augmentation_switches() -> None:
    def switches(**kwargs: bool) -> tuple[bool, bool, bool]:
        a = WindowAugment.from_config(AugmentationConfig(**kwargs), size=32, seed=0)
        return a.color_jitter, a.random_crop, a.random_flip

    assert switches() == (True, True, True)
    assert switches(enable=False) == (False, False, False)
    assert switches(color_jitter=False) == (False, True, True)
    assert switches(random_crop=False) == (True, False, True)
    assert switches(random_flip=False) == (True, True, False)
    frames = torch.rand(4, 3, 32, 32)
    flipped_only = WindowAugment.from_config(
        AugmentationConfig(color_jitter=False, random_crop=False), size=32, seed=0
    )
    for _ in range(8):  # flips happen with p = 0.5; without the switch the frames come back unchanged
        params = flipped_only.sample_params(32, 32)
        out = flipped_only.apply(frames, params)
        assert torch.allclose(out, frames.flip(-1) if params.flip else frames, atol=1e-6)
    none = WindowAugment.from_config(AugmentationConfig(enable=False), size=32, seed=0)
    assert torch.allclose(none(frames)[0], frames, atol=1e-6)


# -- data --------------------------------------------------------------------------------------


def _rows() -> pd.DataFrame:
    rows = []
    for name, kind in (("ffpp-1234", "ffpp"), ("celebdf-5678", "celebdf"), ("synthetic-demo", "csv")):
        for split in ("train", "val", "test"):
            rows.append(
                {"dataset_name": name, "dataset": kind, "split": split, "video_id": f"{name}/{split}"}
            )
    return pd.DataFrame(rows)


def test_dataset_and_val_dataset_choose_what_train_uses() -> None:
    contract = choose_training_sets(_rows(), "faceforensics++", "celeb-df-v2")  # matched by kind
    assert list(contract.train["video_id"]) == ["ffpp-1234/train"]
    assert list(contract.val["video_id"]) == ["celebdf-5678/val"]
    assert contract.notes == []
    demo = choose_training_sets(_rows(), "synthetic-demo", "synthetic-demo")  # by registered name
    assert list(demo.train["video_id"]) == ["synthetic-demo/train"]
    assert list(demo.val["video_id"]) == ["synthetic-demo/val"]
    only_demo = _rows().query("dataset_name == 'synthetic-demo'")
    fallback = choose_training_sets(only_demo, "faceforensics++", "celeb-df-v2")
    assert list(fallback.train["video_id"]) == ["synthetic-demo/train"]
    assert fallback.notes[0] == (
        "data.dataset 'faceforensics++' is not registered (registered: synthetic-demo); training uses "
        "the train split of every registered dataset"
    )
    assert fallback.notes[1].startswith("data.val_dataset 'celeb-df-v2' is not registered")


def test_the_demo_training_config_names_its_dataset() -> None:
    run = load_settings(REPO_ROOT / "config" / "train-synthetic.yaml")
    assert run.data.dataset == run.data.val_dataset == "synthetic-demo"
    platform = Settings.model_validate({"data": {"frame_rate": 8}})
    merged = overlay_explicit(platform.data, run.data)
    assert merged.dataset == "synthetic-demo" and merged.frame_rate == 8  # only its explicit keys apply


def test_resolution_is_the_aligned_face_size(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, "data:\n  resolution: 112\n"))
    assert settings.data.resolution == 112 and settings.data.faces.aligned_size == 112
    assert Settings().data.faces.aligned_size == 224
    from dagster_deepfake.faces.base import FaceDetection
    from dagster_deepfake.faces.extract import extract_faces

    class OneFace:
        name = "one"

        def detect(self, images):
            landmarks = np.array([[38, 52], [74, 52], [56, 72], [42, 92], [70, 92]], dtype=np.float32)
            return [
                [FaceDetection(bbox=(20.0, 20.0, 92.0, 110.0), score=0.99, landmarks=landmarks)]
                for _ in images
            ]

    frame = np.zeros((128, 128, 3), dtype=np.uint8)
    extraction = extract_faces([(0, 0.0, frame)], OneFace(), settings.data.faces)
    assert extraction.crops.shape[1:3] == (112, 112)


def test_published_weights_of_other_sizes_fall_back_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import Wav2Vec2Model

    config = ModelConfig(registry_config="tiny", audio={"pretrained": True, "encoder": str(tmp_path / "w2v")})
    other = config.audio.model_copy(update={"intermediate_size": 128})
    Wav2Vec2Model(other.to_wav2vec2_config()).save_pretrained(tmp_path / "w2v")
    with caplog.at_level(logging.WARNING):
        _, flags = build_detector(config, seed=0)
    assert flags == PretrainedFlags()
    assert "do not fit the configured sizes" in caplog.text and "RANDOM INITIALISATION" in caplog.text


def test_checkpoints_written_before_the_one_tree_still_load(tmp_path: Path) -> None:
    import json

    from dagster_deepfake.models.checkpoint import load_checkpoint

    model, manifest = build_untrained("tiny", seed=0)
    save_checkpoint(tmp_path, model, manifest)
    data = json.loads((tmp_path / "manifest.json").read_text())
    old = data["detector_config"]
    old["name"] = old.pop("registry_config")
    old["head"] = old.pop("classification")
    old["fusion"]["num_heads"] = old["fusion"].pop("attention_heads")
    old["fusion"].update(type="cross_modal_attention", modality_dropout=0.2)
    old["video"]["backbone_weights"] = old["video"].pop("weights")
    old["video"]["input_size"] = 224
    del old["video"]["pretrained"], old["video"]["freeze_backbone"], old["audio"]["pretrained"]
    old["allow_pretrained"] = False
    data["config_hash"] = "0123456789ab"  # hashed over the old layout
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    loaded, upgraded = load_checkpoint(tmp_path)
    assert upgraded.detector_config == manifest.detector_config
    assert torch.equal(loaded.head.classifier.weight, model.head.classifier.weight)


def test_the_serving_fallback_uses_local_published_weights_when_pretrained(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    save_file(
        timm.create_model("test_efficientnet", num_classes=0).state_dict(), str(tmp_path / "b.safetensors")
    )
    config = ModelConfig(
        registry_config="tiny", video={"pretrained": True, "weights": str(tmp_path / "b.safetensors")}
    )
    (_, manifest), *_ = load_ensemble(None, str(tmp_path / "models"), config, 1)[0]
    assert manifest.pretrained == PretrainedFlags(audio_encoder=False, video_backbone=True)
    assert not manifest.trained and manifest.weights_label == "pretrained-backbones"
