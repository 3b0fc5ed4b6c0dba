"""`dagster-deepfake weights import|list`: bring published weights onto an offline machine.

Thin over `dagster_deepfake.models.weights_store` (docs/ARCHITECTURE.md §5): the settings say
which model the weights must fit (`model.audio`, `model.video`) and where they go
(`<platform.model_dir>/pretrained`). A refusal is one line naming the tensors that do not fit
(a `WeightsError`, printed by the CLI with exit code 2).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from dagster_deepfake.config import Settings, load_settings


def _describe(provenance: object) -> str:
    from dagster_deepfake.models.weights_store import WeightsProvenance

    assert isinstance(provenance, WeightsProvenance)
    left_out = f"; {len(provenance.ignored)} tensors left out (heads)" if provenance.ignored else ""
    source = provenance.source_files[-1]
    return (
        f"{provenance.branch}: {provenance.architecture} ({provenance.family}), {provenance.tensors} tensors, "
        f"{provenance.parameters:,} parameters, {provenance.naming} names{left_out}\n"
        f"  from   {provenance.source} ({Path(source.name).name} sha256 {source.sha256})\n"
        f"  stored sha256 {provenance.stored_sha256}, signature {provenance.signature}, "
        f"imported {provenance.imported_at:%Y-%m-%d %H:%M:%S} UTC"
    )


def _drop_untrained_fallbacks(model_dir: Path) -> list[Path]:
    """The saved untrained fallbacks were built without these weights: serving rebuilds them."""
    dropped = [p for p in model_dir.glob("untrained-*") if p.is_dir() and not p.is_symlink()]
    for path in dropped:
        shutil.rmtree(path)
    return dropped


def import_weights(settings: Settings, audio: str | None, video: str | None, naming: str = "auto") -> int:
    from dagster_deepfake.models.configuration import resolve_model_config
    from dagster_deepfake.models.weights_store import (
        WeightsError,
        import_audio_encoder,
        import_video_backbone,
        imported_weights_dir,
    )

    if not audio and not video:
        raise WeightsError("weights import: give --audio FOLDER and/or --video FILE")
    config = resolve_model_config(settings.model)
    model_dir = Path(settings.platform.model_dir)
    target = imported_weights_dir(model_dir)
    # All or nothing: the backbone (small) is checked before the audio encoder is stored.
    if audio and video:
        import_video_backbone(video, config.video, target, naming, check_only=True)  # type: ignore[arg-type]
    accepted = []
    if audio:
        accepted.append(import_audio_encoder(audio, config.audio, target))
    if video:
        accepted.append(import_video_backbone(video, config.video, target, naming))  # type: ignore[arg-type]
    for provenance in accepted:
        print(_describe(provenance))
    for branch, wanted in (("audio", config.audio.pretrained), ("video", config.video.pretrained)):
        if not wanted and any(p.branch.startswith(branch) for p in accepted):
            print(f"note: model.{branch}.pretrained is false: stored, but used only once it is true")
    dropped = _drop_untrained_fallbacks(model_dir)
    if dropped:
        print(f"removed {len(dropped)} saved untrained fallback(s); serving rebuilds them with these weights")
    print(f"stored under {target}; `pretrained: true` now loads them without a hub")
    return 0


def list_weights(settings: Settings) -> int:
    from dagster_deepfake.models.weights_store import imported_weights_dir, list_imported

    target = imported_weights_dir(settings.platform.model_dir)
    found = list_imported(target)
    if not found:
        print(f"no imported weights under {target} (dagster-deepfake weights import --audio … --video …)")
    for folder, provenance in found:
        print(f"{folder.name}\n{_describe(provenance)}")
    return 0


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.weights_command == "import":
        return import_weights(settings, args.audio, args.video, args.video_naming)
    return list_weights(settings)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`weights import` / `weights list` (registered by commands/cli.py)."""
    p = sub.add_parser("weights", help="bring published weights onto an offline machine (`weights import`)")
    actions = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import",
        help="check weights against the configured model and store them with SHA-256 and source",
    )
    imp.add_argument(
        "--audio",
        metavar="FOLDER",
        help="Hugging Face folder of wav2vec2-base or HuBERT-base (save_pretrained)",
    )
    imp.add_argument("--video", metavar="FILE", help="EfficientNet state dict (.safetensors, .pth, .bin)")
    imp.add_argument(
        "--video-naming",
        choices=["auto", "timm", "torchvision"],
        default="auto",
        help="tensor names of --video (auto: torchvision's `features.*` are recognised)",
    )
    imp.set_defaults(func=run)
    lst = actions.add_parser("list", help="imported weights and their provenance")
    lst.set_defaults(func=run)
