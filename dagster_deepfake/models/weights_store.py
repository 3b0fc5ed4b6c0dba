"""Bringing published weights onto an offline machine: check, store with provenance, serve.

`dagster-deepfake weights import` reads a local Hugging Face folder of wav2vec2-base / HuBERT-base
and an EfficientNet-B3 state dict (timm or torchvision naming), checks every tensor's name and
shape against the configured model, and stores the tensors under the target's own names in
`<model_dir>/pretrained/<branch>-<name>-<signature>/` with `provenance.json` (source, the
SHA-256 of every source file and of the stored file). From then on `pretrained: true` finds them
there (`find_imported`, called by `load_pretrained_weights`) without any hub, and the checkpoint
manifest carries the provenance (docs/ARCHITECTURE.md §5).

`signature` hashes the target's tensor names and shapes, so a store made for one architecture
is never offered to another (the tiny variant never sees wav2vec2-base weights). Everything read
here is untrusted input (DESIGN §9): regular files only, bounded sizes, `torch.load` only with
`weights_only=True`, and a refusal is one `WeightsError` line naming the tensors that do not fit.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn

from dagster_deepfake.errors import DeepfakeError

from .audio import build_speech_encoder, encoder_family
from .configuration import AudioModelConfig, VideoModelConfig

IMPORTED_DIR = "pretrained"
WEIGHTS_FILE = "model.safetensors"
PROVENANCE_FILE = "provenance.json"
#: The largest weights file read (wav2vec2-large is 1.3 GB; EfficientNet-B3 48 MB, wav2vec2-base 380 MB).
MAX_WEIGHTS_BYTES = 4 << 30
MAX_CONFIG_BYTES = 1 << 20
#: Tensor names shown in a refusal before "… and N more" (one line a person can read).
SHOWN_NAMES = 12

Branch = Literal["audio_encoder", "video_backbone"]
Naming = Literal["auto", "timm", "torchvision"]

#: Heads of published speech checkpoints (pre-training, CTC) that the bare encoder has no use for.
SPEECH_HEADS = ("quantizer.", "project_hid.", "project_q.", "lm_head.", "final_proj.", "label_embs_concat")


class WeightsError(DeepfakeError):
    """Weights that cannot be used: unreadable, or tensors that do not fit the configured model."""


class SourceFile(BaseModel):
    name: str
    sha256: str
    bytes: int


class WeightsProvenance(BaseModel):
    """Where imported weights came from; stored beside them and copied into checkpoint manifests."""

    branch: Branch
    architecture: str  # model.audio.encoder or model.video.backbone at import time
    family: str  # wav2vec2 | hubert | timm
    signature: str
    source: str  # the folder or file given to `weights import`, resolved
    naming: str  # hf | timm | torchvision
    source_files: list[SourceFile]
    stored_sha256: str
    tensors: int
    parameters: int
    ignored: list[str] = []  # source tensors deliberately left out (pre-training heads, classifier)
    imported_at: datetime


def imported_weights_dir(model_dir: str | Path) -> Path:
    """`<model_dir>/pretrained`: where `weights import` stores what it accepted."""
    return Path(model_dir) / IMPORTED_DIR


def signature(state: Mapping[str, torch.Tensor]) -> str:
    """12 hex digits over the sorted (name, shape) pairs: which architecture weights are for."""
    items = sorted((name, list(t.shape)) for name, t in state.items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:12]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _regular_file(path: Path, limit: int = MAX_WEIGHTS_BYTES) -> Path:
    """A regular file (symlinks resolved) no larger than `limit`, else a `WeightsError`."""
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise WeightsError(f"{path}: not a regular file")
    size = resolved.stat().st_size
    if size > limit:
        raise WeightsError(f"{path}: {size} bytes, more than the {limit} a weights file may have")
    return resolved


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a torch pickle (`weights_only=True`: no code runs),
    unwrapped from {"state_dict": …} / {"model": …} and a DataParallel `module.` prefix."""
    path = _regular_file(path)
    try:
        if path.suffix == ".safetensors":
            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors / pickle errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable weights file ({first})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


# --- torchvision → timm (EfficientNet) -----------------------------------------------------------

_TV_BLOCK = re.compile(r"^features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)$")
_TV_LAYER = re.compile(r"^features\.(\d+)\.([01])\.(.+)$")
# Sub-module index inside a torchvision MBConv → timm's names, by block kind. A block without
# expansion (the first stage, timm's DepthwiseSeparableConv) is dw, se, pw; the others (timm's
# InvertedResidual) are expand, dw, se, project. `.0` is the conv, `.1` its batch norm.
_DS = {"0.0": "conv_dw", "0.1": "bn1", "1": "se", "2.0": "conv_pw", "2.1": "bn2"}
_IR = {
    "0.0": "conv_pw",
    "0.1": "bn1",
    "1.0": "conv_dw",
    "1.1": "bn2",
    "2": "se",
    "3.0": "conv_pwl",
    "3.1": "bn3",
}


def torchvision_to_timm_efficientnet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's `efficientnet_b*` names → timm's (`features.0` stem → `conv_stem`/`bn1`,
    `features.{s+1}.{b}.block.*` → `blocks.{s}.{b}.*`, the last `features.*` → `conv_head`/`bn2`,
    SE `fc1`/`fc2` → `se.conv_reduce`/`conv_expand`, `classifier.1` → `classifier`). Names that
    match no rule are kept as they are, so the check then reports them."""
    stages = [int(m.group(1)) for k in state if (m := re.match(r"^features\.(\d+)\.", k))]
    last = max(stages, default=-1)
    sub_blocks: dict[tuple[int, int], int] = {}
    for key in state:
        if m := _TV_BLOCK.match(key):
            block = (int(m.group(1)), int(m.group(2)))
            sub_blocks[block] = max(sub_blocks.get(block, 0), int(m.group(3)))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = key
        if m := _TV_BLOCK.match(key):
            stage, index, part, rest = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            table = _DS if sub_blocks[(stage, index)] == 2 else _IR
            head, _, tail = rest.partition(".")
            if f"{part}.{head}" in table:
                new = f"blocks.{stage - 1}.{index}.{table[f'{part}.{head}']}.{tail}"
            elif part in table and table[part] == "se":
                se = {"fc1": "conv_reduce", "fc2": "conv_expand"}.get(head, head)
                new = f"blocks.{stage - 1}.{index}.se.{se}.{tail}"
        elif (m := _TV_LAYER.match(key)) and int(m.group(1)) in (0, last):
            conv, norm = ("conv_stem", "bn1") if int(m.group(1)) == 0 else ("conv_head", "bn2")
            new = f"{conv if m.group(2) == '0' else norm}.{m.group(3)}"
        elif key.startswith("classifier.1."):
            new = "classifier." + key.removeprefix("classifier.1.")
        out[new] = tensor
    return out


def looks_torchvision(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("features.") for k in state) and not any(k.startswith("blocks.") for k in state)


# --- speech encoders (Hugging Face folders) ------------------------------------------------------


def read_hf_folder(folder: Path) -> tuple[dict[str, torch.Tensor], list[Path], str | None]:
    """(tensors, the files read, config.json's model_type) of a `save_pretrained` folder."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: not a folder (a Hugging Face folder with config.json and weights)")
    config_path = folder / "config.json"
    files: list[Path] = []
    model_type = None
    if config_path.exists():
        files.append(_regular_file(config_path, MAX_CONFIG_BYTES))
        try:
            model_type = json.loads(config_path.read_text()).get("model_type")
        except ValueError as exc:
            raise WeightsError(f"{config_path}: not JSON ({exc})") from None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            files.append(_regular_file(folder / name))
            return read_state_dict(folder / name), files, model_type
    if any(folder.glob("*.index.json")):
        raise WeightsError(f"{folder}: sharded checkpoints are not supported; save it as one file")
    raise WeightsError(f"{folder}: holds neither model.safetensors nor pytorch_model.bin")


def normalise_speech_names(
    state: Mapping[str, torch.Tensor], family: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Published wav2vec2/HuBERT names → the bare encoder's: drop the `wav2vec2.`/`hubert.`
    prefix of task models, leave out pre-training and CTC heads (returned as `ignored`), and
    rename the legacy weight-norm (`weight_g`/`weight_v`) and LayerNorm (`gamma`/`beta`) tensors
    as transformers does when it loads them."""
    prefix = f"{family}."
    has_prefix = any(k.startswith(prefix) for k in state)
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, tensor in state.items():
        if has_prefix and key.startswith(prefix):
            key = key.removeprefix(prefix)
        elif key.startswith(SPEECH_HEADS):
            ignored.append(key)
            continue
        key = key.replace("conv.weight_g", "conv.parametrizations.weight.original0")
        key = key.replace("conv.weight_v", "conv.parametrizations.weight.original1")
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
        out[key] = tensor
    return out, ignored


# --- the check -------------------------------------------------------------------------------


def _shown(names: list[str]) -> str:
    more = len(names) - SHOWN_NAMES
    return ", ".join(names[:SHOWN_NAMES]) + (f" … and {more} more" if more > 0 else "")


def check_fit(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """`source` in the target's names, shapes and dtypes, or one `WeightsError` line naming every
    tensor that does not fit (missing, wrong shape, unexpected). BatchNorm's
    `num_batches_tracked` counters are optional (not weights; many published files lack them)."""
    missing = [k for k in target if k not in source and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in source if k not in target]
    wrong = [
        f"{k} (file {tuple(source[k].shape)}, model {tuple(target[k].shape)})"
        for k in target
        if k in source and tuple(source[k].shape) != tuple(target[k].shape)
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} of wrong shape: {_shown(wrong)}")
    if missing:
        problems.append(f"{len(missing)} missing: {_shown(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_shown(unexpected)}")
    if problems:
        raise WeightsError(
            f"{what}: refused, tensors do not fit the configured model: " + "; ".join(problems)
        )
    return {
        k: (source[k] if k in source else t.new_zeros(t.shape, device="cpu")).to(t.dtype).contiguous()
        for k, t in target.items()
    }


# --- store and find --------------------------------------------------------------------------


def store_dir(weights_dir: Path, branch: Branch, name: str, sig: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name or name)
    return Path(weights_dir) / f"{branch}-{safe}-{sig}"


def store_weights(
    weights_dir: Path,
    branch: Branch,
    architecture: str,
    family: str,
    tensors: dict[str, torch.Tensor],
    *,
    source: Path,
    naming: str,
    files: list[Path],
    ignored: list[str],
) -> WeightsProvenance:
    """Write `model.safetensors` + `provenance.json` (write-then-rename) and return the provenance."""
    sig = signature(tensors)
    folder = store_dir(weights_dir, branch, architecture, sig)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"signature": sig, "branch": branch})
    tmp.replace(folder / WEIGHTS_FILE)
    provenance = WeightsProvenance(
        branch=branch,
        architecture=architecture,
        family=family,
        signature=sig,
        source=str(source.expanduser().resolve()),
        naming=naming,
        source_files=[SourceFile(name=str(f), sha256=sha256_file(f), bytes=f.stat().st_size) for f in files],
        stored_sha256=sha256_file(folder / WEIGHTS_FILE),
        tensors=len(tensors),
        parameters=sum(t.numel() for t in tensors.values()),
        ignored=ignored,
        imported_at=datetime.now(UTC),
    )
    tmp = folder / (PROVENANCE_FILE + ".tmp")
    tmp.write_text(provenance.model_dump_json(indent=2))
    tmp.replace(folder / PROVENANCE_FILE)
    return provenance


def read_provenance(folder: Path) -> WeightsProvenance | None:
    path = folder / PROVENANCE_FILE
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        return None
    try:
        return WeightsProvenance.model_validate_json(path.read_text())
    except ValueError:
        return None


def find_imported(
    weights_dir: str | Path | None, branch: Branch, module: nn.Module
) -> tuple[dict[str, torch.Tensor], WeightsProvenance] | None:
    """The imported tensors for exactly `module`'s architecture (by signature) and their
    provenance; None when none were imported. A stored file whose SHA-256 no longer matches its
    provenance (edited, truncated) raises: serving other weights than recorded is never silent."""
    match = match_imported(weights_dir, branch, module)
    if match is None:
        return None
    folder, provenance = match
    if sha256_file(folder / WEIGHTS_FILE) != provenance.stored_sha256:
        raise WeightsError(f"{folder / WEIGHTS_FILE}: SHA-256 differs from {PROVENANCE_FILE}; re-import it")
    return load_file(str(folder / WEIGHTS_FILE)), provenance


def match_imported(
    weights_dir: str | Path | None, branch: Branch, module: nn.Module
) -> tuple[Path, WeightsProvenance] | None:
    """The store folder (and provenance) imported for exactly `module`'s architecture, unread."""
    if weights_dir is None:
        return None
    sig = signature(module.state_dict())
    for folder in sorted(Path(weights_dir).glob(f"{branch}-*-{sig}")):
        provenance = read_provenance(folder)
        if provenance is not None:
            return folder, provenance
    return None


def list_imported(weights_dir: str | Path) -> list[tuple[Path, WeightsProvenance]]:
    folder = Path(weights_dir)
    if not folder.is_dir():
        return []
    found = [(p, read_provenance(p)) for p in sorted(folder.iterdir()) if p.is_dir()]
    return [(p, prov) for p, prov in found if prov is not None]


# --- import ----------------------------------------------------------------------------------


def configured_audio_encoder(config: AudioModelConfig) -> nn.Module:
    """The configured wav2vec2 / HuBERT on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return build_speech_encoder(config)


def configured_backbone(config: VideoModelConfig) -> nn.Module:
    import timm

    with torch.device("meta"):
        return timm.create_model(config.backbone, pretrained=False, num_classes=0)


def import_audio_encoder(
    folder: str | Path, config: AudioModelConfig, weights_dir: str | Path
) -> WeightsProvenance:
    """Check a Hugging Face folder of wav2vec2 / HuBERT against `model.audio` and store it."""
    folder = Path(folder)
    family = encoder_family(config)
    state, files, model_type = read_hf_folder(folder)
    if model_type is not None and model_type != family:
        raise WeightsError(
            f"{folder}: a {model_type} checkpoint, but model.audio.encoder {config.encoder!r} is a "
            f"{family} encoder (set model.audio.encoder: {'hubert-base' if model_type == 'hubert' else 'wav2vec2-base'})"
        )
    state, ignored = normalise_speech_names(state, family)
    target = configured_audio_encoder(config).state_dict()
    tensors = check_fit(state, target, f"{folder} (audio encoder {config.encoder}, {family})")
    return store_weights(
        Path(weights_dir),
        "audio_encoder",
        config.encoder,
        family,
        tensors,
        source=folder,
        naming="hf",
        files=files,
        ignored=ignored,
    )


def import_video_backbone(
    path: str | Path,
    config: VideoModelConfig,
    weights_dir: str | Path,
    naming: Naming = "auto",
    *,
    check_only: bool = False,
) -> WeightsProvenance | None:
    """Check an EfficientNet state dict (timm or torchvision names) against `model.video` and store
    it (`check_only`: check, store nothing, return None).

    The classifier of an ImageNet checkpoint is left out (the detector uses the pooled features)."""
    path = Path(path)
    state = read_state_dict(path)
    if naming == "torchvision" or (naming == "auto" and looks_torchvision(state)):
        state, naming = torchvision_to_timm_efficientnet(state), "torchvision"
    else:
        naming = "timm"
    ignored = [k for k in state if k.startswith(("classifier.", "fc.", "head.fc."))]
    state = {k: v for k, v in state.items() if k not in ignored}
    target = configured_backbone(config).state_dict()
    tensors = check_fit(state, target, f"{path} (video backbone {config.backbone}, {naming} names)")
    if check_only:
        return None
    return store_weights(
        Path(weights_dir),
        "video_backbone",
        config.backbone,
        "timm",
        tensors,
        source=path,
        naming=naming,
        files=[_regular_file(path)],
        ignored=ignored,
    )
