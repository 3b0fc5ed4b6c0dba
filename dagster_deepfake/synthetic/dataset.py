"""A folder of synthetic clips plus `manifest.csv`, split by identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dagster_deepfake.synthetic.clip import MANIPULATIONS, AudioMode, generate_clip

MANIFEST_COLUMNS = ["path", "label", "split", "method", "identity", "seed", "has_audio", "duration"]


def split_identities(identities: list[int], seed: int) -> dict[int, str]:
    """train/val/test ≈ 60/20/20 of the identities (at least one each when there are ≥ 3)."""
    order = np.random.default_rng([seed, 0x5B]).permutation(sorted(identities))
    n = len(order)
    n_val = max(1, round(0.2 * n)) if n >= 3 else 0
    n_test = max(1, round(0.2 * n)) if n >= 3 else 0
    n_train = n - n_val - n_test
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return {int(k): name for k, name in zip(order, names, strict=True)}


def generate_dataset(
    out_dir: str | Path,
    n: int,
    *,
    seed: int = 0,
    duration: float = 3.0,
    width: int = 320,
    height: int = 240,
    fps: float = 25.0,
    fake_fraction: float = 0.5,
    n_identities: int | None = None,
    audio: AudioMode = "speech",
) -> pd.DataFrame:
    """Write `n` clips under `out_dir` (real/ and fake/<method>/) and `out_dir/manifest.csv`.

    Clips go round-robin over the identities, and within each identity real and fake alternate,
    so every split holds both labels; fakes cycle through face_swap, reenactment and lip_sync.
    No identity appears in two splits. Returns the manifest (paths relative to `out_dir`).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= fake_fraction <= 1.0:
        raise ValueError(f"fake_fraction must be in [0, 1], got {fake_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_identities = n_identities or max(5, min(n // 4, 100))
    # Identities are numbered per dataset seed so that two datasets with different seeds differ.
    identities = [seed * 10_000 + k for k in range(n_identities)]
    split_of = split_identities(identities, seed)

    rows = []
    n_fakes = 0
    for i in range(n):
        k, round_ = i % n_identities, i // n_identities
        # Spread fakes evenly over each identity's clips, offset by identity (fake_fraction 0.5 →
        # alternating, half the identities starting with a real clip).
        is_fake = int((round_ + k + 1) * fake_fraction) > int((round_ + k) * fake_fraction)
        manipulation = MANIPULATIONS[n_fakes % len(MANIPULATIONS)] if is_fake else None
        n_fakes += is_fake
        clip_seed = int(np.random.default_rng([seed, i, 0xDA7A]).integers(0, 2**31 - 1))
        method = manipulation or "original"
        relative = Path("fake" if is_fake else "real") / ("" if manipulation is None else method)
        relative = relative / f"{i:05d}_id{identities[k]}_{method}.mp4"
        clip = generate_clip(
            out_dir / relative,
            seed=clip_seed,
            duration=duration,
            width=width,
            height=height,
            fps=fps,
            audio=audio,
            identity=identities[k],
            manipulation=manipulation,
        )
        rows.append(
            {
                "path": relative.as_posix(),
                "label": clip.label,
                "split": split_of[identities[k]],
                "method": method,
                "identity": identities[k],
                "seed": clip_seed,
                "has_audio": clip.has_audio,
                "duration": clip.duration,
            }
        )
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame.to_csv(out_dir / "manifest.csv", index=False)
    return frame
