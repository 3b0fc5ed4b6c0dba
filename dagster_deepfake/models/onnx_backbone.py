"""The face backbone's feature maps through ONNX Runtime, for CPUs without native bf16.

Why (issue 20): on a CPU without native bf16 the model runs in fp32 (`inference.cpu_supports_bf16`),
and torch's fp32 EfficientNet-B3 is the largest part of a video's time. Measured on the 2-core AMD
EPYC machines, 150 faces of the contract backbone, predict_video's batches of 30, in the serving
process (`runtime.keep_freed_memory`; without it torch fp32 reads twice as slow), fresh processes
(docs/ARCHITECTURE.md §7):

    Zen 3, AVX2, no AVX-512 (the model runs fp32 here), 2026-12-03:
      torch fp32                               5.5-6.1 s first pass, 5.0 s next
      ONNX Runtime, calls of 30 faces          5.9-6.9 s first pass, 4.8-5.8 s next
      ONNX Runtime, calls of 10 faces          3.9-4.9 s first pass, 3.6-4.2 s next
    AVX512-BF16 with fp32 forced, calls of 30, 2026-12-03: torch 6.0 / 4.4 s, ONNX Runtime
      6.2 / 3.6-3.9 s (bf16 torch, this CPU's default, 4.3-4.7 s)
    export 2.0 s once, 42 MB

So `platform.cpu_backbone: auto` takes ONNX Runtime where the model runs in fp32 on the CPU, in
calls of `FACES_PER_CALL` faces, and leaves torch bf16 alone where the CPU has it. wav2vec2 stays
in torch: its ONNX Runtime graph (379 MB) was measured no faster there (30 s of audio on Zen 3:
ONNX Runtime 4.6-5.4 s first call, torch 3.9-4.8 s).

The graph is exported from the loaded model itself (torch's TorchScript exporter) into
`<model_dir>/onnx/<backbone>-<face size>px-<hash of its weights>.onnx`, once per checkpoint and
host, written to a temporary name and renamed, so processes that race only export twice; the
folder keeps the `KEEP_GRAPHS` graphs used last (`prune_graphs`).

Only the backbone goes through ONNX Runtime: pooling, the temporal encoder, fusion and the head
stay in torch, and Grad-CAM takes its gradient there from these maps (`explain/gradcam.py`), so
heat maps need no autograd through ONNX. The maps are fp32 like torch's; tests/test_precision_parity.py
checks P(fake) against torch fp32 on the same inputs (|ΔP| ≤ `BF16_MAX_P_FAKE_SHIFT`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dagster_deepfake.config import CpuBackbone

from .video import FrameEncoder

logger = logging.getLogger(__name__)

ONNX_SUBDIR = "onnx"
OPSET = 17

#: Faces per ONNX Runtime call: calls of 10 keep the activations in cache on 2 cores and beat
#: calls of 30 by ~1.5 s per 150 faces (table above); smaller calls gained nothing more.
FACES_PER_CALL = 10

#: Graphs kept in `<model_dir>/onnx`: the most recently used ones (loading a graph touches it), so
#: an ensemble of up to this many checkpoints keeps all of its graphs, and graphs of checkpoints
#: retrained away are deleted when a new one is exported. A loaded session no longer needs its file.
KEEP_GRAPHS = 8
#: A temporary file this old is an export that died (an export takes seconds).
STALE_EXPORT_SECONDS = 3600

# One session per loaded model, graph folder and face size, for as long as the model is loaded.
_runners: weakref.WeakKeyDictionary[FrameEncoder, dict[tuple[str, int], OnnxFeatureMaps | None]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def use_onnx_backbone(setting: CpuBackbone, device: str | torch.device, reduced_precision: bool) -> bool:
    """Whether the backbone runs in ONNX Runtime: only on the CPU in fp32; `auto` there means yes
    (bf16 is chosen only where the CPU has it natively, and then torch is used)."""
    if torch.device(device).type != "cpu" or reduced_precision:
        return False
    return setting in ("auto", "onnxruntime")


def backbone_digest(encoder: FrameEncoder) -> str:
    """A name for these exact weights: the backbone's name, and every tensor's name, shape and bytes."""
    digest = hashlib.sha256(encoder.config.backbone.encode())
    for name, tensor in encoder.backbone.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class _FeatureMaps(nn.Module):
    """forward(faces (M, 3, H, W) float32) -> (M, C, h, w) float32: `FrameEncoder.feature_maps`."""

    def __init__(self, encoder: FrameEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.encoder.feature_maps(faces)


def export_feature_maps(encoder: FrameEncoder, path: Path, image_size: int) -> Path:
    """Write the backbone's feature-map graph (dynamic batch) to `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    example = torch.zeros(2, 3, image_size, image_size)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                _FeatureMaps(encoder),
                (example,),
                str(partial),
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency
                input_names=["faces"],
                output_names=["maps"],
                dynamic_axes={"faces": {0: "faces"}, "maps": {0: "faces"}},
                opset_version=OPSET,
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        encoder.train(was_training)
    return path


class OnnxFeatureMaps:
    """An ONNX Runtime session of one backbone. `__call__(faces (M, 3, H, W)) -> (M, C, h, w)`."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # The cores this process may use: a pinned batch run's share (runtime.claim_cpu_slot).
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        array = faces.detach().float().contiguous().cpu().numpy()
        maps = [
            self.session.run(["maps"], {"faces": array[start : start + FACES_PER_CALL]})[0]
            for start in range(0, len(array), FACES_PER_CALL)
        ]
        return torch.from_numpy(maps[0] if len(maps) == 1 else np.concatenate(maps))


def prune_graphs(folder: Path, keep: int = KEEP_GRAPHS) -> list[Path]:
    """Delete all but the `keep` most recently used graphs in `folder`, and the temporary files of
    exports that died (older than `STALE_EXPORT_SECONDS`). Returns what was deleted."""
    graphs: list[tuple[float, Path]] = []
    stale: list[Path] = []
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for entry in entries:
        try:
            mtime = entry.stat().st_mtime
        except OSError:  # deleted meanwhile by another process
            continue
        if entry.suffix == ".onnx":
            graphs.append((mtime, entry))
        elif entry.suffix == ".tmp" and now - mtime > STALE_EXPORT_SECONDS:
            stale.append(entry)
    graphs.sort(reverse=True)
    removed = []
    for entry in [path for _, path in graphs[keep:]] + stale:
        try:
            entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    if removed:
        logger.info("deleted %d ONNX graph file(s) not used lately from %s", len(removed), folder)
    return removed


def onnx_feature_maps(
    encoder: FrameEncoder, model_dir: str | Path, image_size: int
) -> OnnxFeatureMaps | None:
    """The session for this encoder (one per loaded model and process), exporting its graph the
    first time these weights are seen on this host. None, with one warning, where the backbone
    cannot be exported or loaded (a timm model the exporter does not cover): torch serves then."""
    with _lock:
        sessions = _runners.setdefault(encoder, {})
        key = (str(model_dir), image_size)
        if key not in sessions:
            name = f"{encoder.config.backbone}-{image_size}px-{backbone_digest(encoder)}.onnx"
            path = Path(model_dir) / ONNX_SUBDIR / name
            try:
                if path.is_file():
                    with contextlib.suppress(OSError):  # a read-only model_dir: it is only read
                        os.utime(path)  # last used now: pruning keeps it
                else:
                    logger.info(
                        "exporting the %s backbone for ONNX Runtime to %s (once)",
                        encoder.config.backbone,
                        path,
                    )
                    export_feature_maps(encoder, path, image_size)
                    prune_graphs(path.parent)
                sessions[key] = OnnxFeatureMaps(path)
            except Exception as exc:  # noqa: BLE001 - any exporter/runtime failure: torch serves
                logger.warning(
                    "the %s backbone does not run in ONNX Runtime (%s: %s); using torch",
                    encoder.config.backbone,
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                )
                sessions[key] = None
        return sessions[key]


__all__ = [
    "FACES_PER_CALL",
    "KEEP_GRAPHS",
    "CpuBackbone",
    "OnnxFeatureMaps",
    "backbone_digest",
    "export_feature_maps",
    "onnx_feature_maps",
    "prune_graphs",
    "use_onnx_backbone",
]
