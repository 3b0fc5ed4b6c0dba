"""`dagster-deepfake weights import`: published weights checked, stored with provenance, served.

Tiny configurations of the real classes, written to tmp folders the way users get them: a Hugging
Face folder from `save_pretrained` (a pre-training checkpoint, with its heads and prefix) and a
timm / torchvision state dict file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file
from transformers import HubertModel, Wav2Vec2ForPreTraining, Wav2Vec2Model

from commands.cli import main
from dagster_deepfake.config import ModelConfig
from dagster_deepfake.models.checkpoint import build_untrained, load_checkpoint, save_checkpoint
from dagster_deepfake.models.weights import build_detector
from dagster_deepfake.models.weights_store import (
    WeightsError,
    check_fit,
    configured_backbone,
    import_audio_encoder,
    import_video_backbone,
    torchvision_to_timm_efficientnet,
)


def _tiny(**audio: object) -> ModelConfig:
    return ModelConfig(
        registry_config="tiny", audio={"pretrained": True, **audio}, video={"pretrained": True}
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path, Wav2Vec2ForPreTraining, dict[str, torch.Tensor]]:
    """A wav2vec2 pre-training checkpoint folder and an ImageNet-style timm state dict (with classifier)."""
    cfg = _tiny()
    torch.manual_seed(3)
    speech = Wav2Vec2ForPreTraining(cfg.audio.to_wav2vec2_config())
    speech.save_pretrained(tmp_path / "wav2vec2-tiny")
    backbone = timm.create_model(cfg.video.backbone, num_classes=10).state_dict()
    torch.save(backbone, tmp_path / "effnet.pth")
    return tmp_path / "wav2vec2-tiny", tmp_path / "effnet.pth", speech, backbone


def test_good_weights_are_stored_with_provenance_and_loaded_without_a_hub(
    tmp_path: Path, published: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, effnet, speech, backbone = published
    cfg = _tiny()
    store = tmp_path / "models" / "pretrained"
    audio = import_audio_encoder(folder, cfg.audio, store)
    video = import_video_backbone(effnet, cfg.video, store)
    assert audio.naming == "hf" and video.naming == "timm"
    assert {"quantizer.codevectors", "project_q.weight"} <= set(audio.ignored)  # pre-training heads
    assert video.ignored == ["classifier.weight", "classifier.bias"]
    assert audio.source_files[-1].sha256 == _sha(folder / "model.safetensors")
    assert video.source_files[0].sha256 == _sha(effnet)

    from dagster_deepfake.models import weights as weights_module

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("imported weights must be found before the HF cache or hub")

    monkeypatch.setattr(weights_module, "load_wav2vec2", no_hub)
    monkeypatch.setattr(weights_module, "load_timm_backbone", no_hub)
    model, flags = build_detector(cfg, seed=0, weights_dir=store)
    assert flags.audio_encoder and flags.video_backbone
    assert flags.sources["audio_encoder"].stored_sha256 == audio.stored_sha256
    name = "encoder.layers.1.attention.k_proj.weight"
    assert torch.equal(model.audio_encoder.wav2vec2.state_dict()[name], speech.wav2vec2.state_dict()[name])
    assert torch.equal(model.frame_encoder.backbone.conv_stem.weight, backbone["conv_stem.weight"])
    # Loading must not undo the freeze policy (tiny: layer 0 frozen, layer 1 tuned).
    layers = model.audio_encoder.wav2vec2.encoder.layers
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())

    # Checkpoints carry the provenance, and another set of weights is another model version.
    untrained, manifest = build_untrained(cfg, pretrained=True, weights_dir=store)
    assert manifest.pretrained.sources["video_backbone"].source == str(effnet.resolve())
    assert (
        manifest.model_version.endswith(manifest.pretrained.version_tag) and manifest.pretrained.version_tag
    )
    save_checkpoint(tmp_path / "ckpt", untrained, manifest)
    _, reread = load_checkpoint(tmp_path / "ckpt")
    assert reread.pretrained.sources["audio_encoder"].stored_sha256 == audio.stored_sha256

    # The tiny variant's own sizes with pretrained false never look at the store.
    _, none = build_detector(ModelConfig(registry_config="tiny"), seed=0, weights_dir=store)
    assert not none.any and not none.sources


def test_a_tampered_store_is_refused_not_served(tmp_path: Path, published: tuple) -> None:
    _, effnet, _, _ = published
    cfg = _tiny()
    store = tmp_path / "store"
    import_video_backbone(effnet, cfg.video, store)
    stored = next(store.glob("video_backbone-*")) / "model.safetensors"
    tensors = load_file(str(stored))
    tensors["conv_stem.weight"] = tensors["conv_stem.weight"] + 1
    save_file(tensors, str(stored))
    with pytest.raises(WeightsError, match="SHA-256 differs"):
        build_detector(ModelConfig(registry_config="tiny", video={"pretrained": True}), weights_dir=store)


def test_wrong_shape_is_refused_naming_the_tensors(tmp_path: Path) -> None:
    cfg = _tiny()
    other = cfg.audio.model_copy(update={"intermediate_size": 128})
    Wav2Vec2Model(other.to_wav2vec2_config()).save_pretrained(tmp_path / "w2v")
    with pytest.raises(WeightsError) as err:
        import_audio_encoder(tmp_path / "w2v", cfg.audio, tmp_path / "store")
    message = str(err.value)
    assert "\n" not in message and "6 of wrong shape" in message
    assert (
        "encoder.layers.0.feed_forward.intermediate_dense.weight (file (128, 32), model (64, 32))" in message
    )
    assert not (tmp_path / "store").exists()  # nothing stored


def test_missing_and_unexpected_tensors_are_refused_naming_them(tmp_path: Path) -> None:
    cfg = _tiny()
    state = timm.create_model(cfg.video.backbone, num_classes=0).state_dict()
    del state["conv_head.weight"]
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsError) as err:
        import_video_backbone(tmp_path / "partial.safetensors", cfg.video, tmp_path / "store")
    assert "1 missing: conv_head.weight" in str(err.value)
    assert "1 unexpected: extra.weight" in str(err.value)


def test_the_cli_imports_and_refuses_in_one_line(
    tmp_path: Path, published: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, effnet, _, _ = published
    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n  registry_config: tiny\n  audio: {pretrained: true}\n  video: {pretrained: true}\n"
        f"platform:\n  model_dir: {tmp_path / 'models'}\n"
    )
    stale = tmp_path / "models" / "untrained-tiny-0123"
    stale.mkdir(parents=True)
    rc = main(["--config", str(config), "weights", "import", "--audio", str(folder), "--video", str(effnet)])
    out = capsys.readouterr().out
    assert rc == 0 and "audio_encoder: tiny-wav2vec2" in out and _sha(effnet) in out
    assert not stale.exists()  # the fallback built without these weights is rebuilt
    assert main(["--config", str(config), "weights", "list"]) == 0
    assert "video_backbone-test_efficientnet-" in capsys.readouterr().out

    provenance = next((tmp_path / "models" / "pretrained").glob("audio_encoder-*")) / "provenance.json"
    stamp = provenance.stat().st_mtime_ns
    rc = main(
        [
            "--config",
            str(config),
            "weights",
            "import",
            "--audio",
            str(folder),
            "--video",
            str(folder / "model.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "missing: conv_stem.weight" in err
    assert provenance.stat().st_mtime_ns == stamp  # all or nothing: the accepted audio was not re-stored
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    assert main(["--config", str(config), "weights", "import", "--video", str(tmp_path / "junk.pth")]) == 2
    assert "not a readable weights file" in capsys.readouterr().err


def test_torchvision_efficientnet_b3_maps_onto_timm_names_and_computes_the_same() -> None:
    torch.manual_seed(0)
    tv = torchvision.models.efficientnet_b3(weights=None).eval()
    for module in tv.modules():  # non-trivial BN statistics, so a swapped BN would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    mapped = torchvision_to_timm_efficientnet(tv.state_dict())
    assert (
        mapped["blocks.0.0.se.conv_reduce.weight"].shape
        == tv.state_dict()["features.1.0.block.1.fc1.weight"].shape
    )
    backbone_state = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    from dagster_deepfake.config import VideoModelConfig

    target = configured_backbone(VideoModelConfig()).state_dict()  # the contract's efficientnet_b3
    tensors = check_fit(backbone_state, target, "torchvision efficientnet_b3")
    model = timm.create_model("efficientnet_b3", num_classes=0).eval()
    model.load_state_dict(tensors, strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = torch.flatten(tv.avgpool(tv.features(x)), 1)
        assert torch.allclose(model(x), expected, atol=1e-4, rtol=1e-4)


def test_hubert_weights_import_and_a_wav2vec2_folder_is_refused_for_hubert(tmp_path: Path) -> None:
    cfg = _tiny(encoder="tiny-hubert")
    from dagster_deepfake.models.audio import build_speech_encoder

    source = build_speech_encoder(cfg.audio)
    assert isinstance(source, HubertModel)
    source.save_pretrained(tmp_path / "hubert")
    provenance = import_audio_encoder(tmp_path / "hubert", cfg.audio, tmp_path / "store")
    assert provenance.family == "hubert"
    model, flags = build_detector(cfg, seed=1, weights_dir=tmp_path / "store")
    assert isinstance(model.audio_encoder.wav2vec2, HubertModel) and flags.audio_encoder
    assert torch.equal(
        model.audio_encoder.wav2vec2.encoder.layers[1].attention.q_proj.weight,
        source.encoder.layers[1].attention.q_proj.weight,
    )
    Wav2Vec2Model(cfg.audio.to_wav2vec2_config()).save_pretrained(tmp_path / "w2v")
    with pytest.raises(WeightsError, match="a wav2vec2 checkpoint, but model.audio.encoder 'tiny-hubert'"):
        import_audio_encoder(tmp_path / "w2v", cfg.audio, tmp_path / "store")


def test_legacy_weight_norm_names_are_accepted(tmp_path: Path) -> None:
    cfg = _tiny()
    state = Wav2Vec2Model(cfg.audio.to_wav2vec2_config()).state_dict()
    legacy = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in state.items()
    }
    folder = tmp_path / "old"
    folder.mkdir()
    save_file(legacy, str(folder / "model.safetensors"))
    provenance = import_audio_encoder(folder, cfg.audio, tmp_path / "store")
    assert provenance.tensors == len(state)
