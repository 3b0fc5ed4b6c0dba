"""`make demo`: train the tiny model on synthetic talking faces, then drop sample videos into
the local bucket, let Dagster's daemon and the upload sensor run them, and print what landed.

1. `synth` writes a small labelled synthetic dataset (cached in .demo-data/), registered as
   dataset `synthetic-demo`; the daemon's `dataset_backfill_sensor` runs every video through
   the per-video assets; `train_calibrate_evaluate` then trains, calibrates and evaluates the
   tiny model on those cached features (config/train-synthetic.yaml) and publishes it.
2. The sample clips go into the upload bucket; the upload sensor runs them, and their verdicts
   come from that model, labelled "trained on synthetic-demo": it has never seen a real face.

Progress is read from the results database (the `jobs` table), the same place the API and
an analyst read it; the only Dagster calls go through `commands.runs`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from commands.local_dagster import LocalDagster, LocalDagsterError, ensure_dagster_home, start_local_dagster
from commands.report import print_case_reports
from dagster_deepfake.config import REPO_ROOT, Settings, load_settings
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url, redact

DEMO_DATASET = "synthetic-demo"
DEMO_TRAINING_CONFIG = REPO_ROOT / "config" / "train-synthetic.yaml"
SHARED_MEDIA = Path(os.environ.get("DAGSTER_DEEPFAKE_SHARED_MEDIA", REPO_ROOT.parent / "shared" / "media"))
console = Console(width=160)


def _demo_clips(out: Path) -> list[Path]:
    """A few synthetic talking faces: real with speech, a lip-sync fake, and one without audio."""
    from dagster_deepfake.synthetic import generate_clip

    specs = [
        ("synthetic_real_speech.mp4", {"seed": 11, "audio": "speech"}),
        ("synthetic_fake_lipsync.mp4", {"seed": 12, "audio": "speech", "manipulation": "lip_sync"}),
        ("synthetic_real_no_audio.mp4", {"seed": 13, "audio": "none"}),
    ]
    paths = []
    for name, kwargs in specs:
        path = out / name
        generate_clip(path, duration=4.0, width=640, height=480, fps=25.0, **kwargs)
        paths.append(path)
    return paths


def _start_dagster(log_path: Path) -> LocalDagster:
    """The code server and `dagster-daemon` on the embedded instance (commands/local_dagster.py)."""
    env = {**os.environ, "DAGSTER_HOME": str(ensure_dagster_home())}
    with open(log_path, "ab") as log:  # the children keep their own copies of the descriptor
        return start_local_dagster(env, log)


def _wait_for_jobs(
    db: ResultsDB,
    names: dict[str, str],
    dagster: LocalDagster,
    deadline: float,
    t0: float,
    *,
    verbose: bool,
) -> dict[str, str]:
    """Poll the `jobs` table until every video is completed or failed (or the deadline passes)."""
    last: dict[str, str] = {}
    last_counts = ""
    while time.time() < deadline:
        if (down := dagster.poll()) is not None:
            raise RuntimeError(down)
        states = {vid: (db.get_job(vid) or {}).get("status", "waiting for sensor") for vid in names}
        if verbose:
            for vid, state in states.items():
                if last.get(vid) != state:
                    console.print(f"  {time.time() - t0:6.1f}s  {names[vid]:<40} {state}")
        else:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(states.values()).items()))
            if counts != last_counts:
                console.print(f"  {time.time() - t0:6.1f}s  {counts}")
                last_counts = counts
        last = states
        if all(s in ("completed", "failed") for s in states.values()):
            break
        time.sleep(2)
    return last


def _demo_model_is_trained(model_dir: str) -> bool:
    from dagster_deepfake.models.checkpoint import MANIFEST_FILE, read_manifest
    from dagster_deepfake.models.store import current_checkpoint_dir

    current = current_checkpoint_dir(model_dir)
    if not (current / MANIFEST_FILE).is_file():
        return False
    manifest = read_manifest(current)
    return manifest.trained and manifest.training_data == DEMO_DATASET


def _train_on_synthetic(
    settings: Settings, db: ResultsDB, dagster: LocalDagster, n: int, deadline: float, t0: float
) -> bool:
    """Synthetic dataset → registered → backfilled by the daemon → trained, calibrated, evaluated."""
    from commands.runs import add_partitions_to_instance, format_training_summary, run_training
    from dagster_deepfake.datasets import register_dataset
    from dagster_deepfake.synthetic import generate_dataset

    data_dir = REPO_ROOT / ".demo-data" / f"synthetic-{n}"
    if not (data_dir / "manifest.csv").is_file():
        console.print(
            f"[bold]generating[/] {n} labelled synthetic clips (real, face swap, reenactment, lip-sync) …"
        )
        generate_dataset(data_dir, n, seed=0)
    reg = register_dataset(settings, "csv", data_dir / "manifest.csv", name=DEMO_DATASET)
    added = add_partitions_to_instance(reg.video_ids)
    console.print(
        f"[bold]registered[/] dataset {reg.name}: {len(reg.video_ids)} videos ({added} new partitions); "
        "the dataset_backfill_sensor extracts their features (job extract_features) …"
    )
    names = {vid: f"{DEMO_DATASET}/{i}" for i, vid in enumerate(reg.video_ids)}
    states = _wait_for_jobs(db, names, dagster, deadline, t0, verbose=False)
    done = sum(s == "completed" for s in states.values())
    if done < len(names) // 2:
        console.print(f"[red]only {done} of {len(names)} training videos completed; not training[/]")
        return False
    console.print(
        f"[bold]training[/] the tiny model on {DEMO_DATASET} ({DEMO_TRAINING_CONFIG.name}); "
        "the run `train_calibrate_evaluate` is in the Dagster UI …"
    )
    ok, metadata = run_training(str(DEMO_TRAINING_CONFIG))
    if not ok:
        err = metadata.get("error", {})
        console.print(f"[red]training failed in {err.get('step')}: {err.get('message')}[/]")
        return False
    console.print(format_training_summary(metadata))
    _print_evaluation(metadata.get("evaluation", {}).get("report"))
    return True


def _print_evaluation(report: object) -> None:
    """The evaluation report (protocol, video/frame AUC with intervals, per method): paste-able markdown."""
    if isinstance(report, str):
        console.rule("evaluation (synthetic test split)")
        print(report, flush=True)  # plain: the report's [low, high] intervals are not rich markup


def _stored_evaluation(settings: Settings) -> str | None:
    """The serving model's last evaluation report, when one was stored (a reused demo model)."""
    from dagster_deepfake.models.checkpoint import read_manifest
    from dagster_deepfake.models.store import current_checkpoint_dir
    from dagster_deepfake.storage import layout
    from dagster_deepfake.storage.artifacts import ArtifactStore, s3_storage_options

    p = settings.platform
    store = ArtifactStore(
        p.artifact_root, s3_storage_options(p.artifact_root, p.s3_endpoint_url, p.s3_region)
    )
    rel = layout.evaluation_report_rel(read_manifest(current_checkpoint_dir(p.model_dir)).model_version)
    return store.read_bytes(rel).decode() if store.exists(rel) else None


def run_demo(
    *,
    config_path: str | None = None,
    timeout_s: float = 1800,
    with_shared: bool = True,
    train_videos: int = 30,
) -> int:
    t0 = time.time()
    deadline = t0 + timeout_s
    settings = load_settings(config_path)
    p = settings.platform
    db = ResultsDB(p.postgres_url or embedded_postgres_url(p.postgres_data_dir))
    db.create_schema()
    console.print(f"[bold]results database[/] {redact(db.url)}")
    bucket = UploadBucket(p.upload_uri, p.upload_suffixes)
    bucket.ensure()
    ensure_dagster_home()

    log_path = REPO_ROOT / ".dagster_home" / "daemon.log"
    console.print(f"[bold]starting[/] the code server and dagster-daemon (log: {log_path}) …")
    try:
        dagster = _start_dagster(log_path)
    except LocalDagsterError as exc:
        console.print(f"[red]{exc}: {log_path}[/]")
        return 1
    try:
        if train_videos and _demo_model_is_trained(p.model_dir):
            console.print(
                f"[bold]reusing[/] the tiny model already trained on {DEMO_DATASET} (`make clean` drops it)"
            )
            _print_evaluation(_stored_evaluation(settings))
        elif train_videos:
            _train_on_synthetic(settings, db, dagster, train_videos, deadline, t0)

        with tempfile.TemporaryDirectory(prefix="ddf-demo-") as tmp:
            console.print("[bold]generating[/] synthetic talking-face clips to analyse …")
            sources = _demo_clips(Path(tmp))
            if with_shared and SHARED_MEDIA.is_dir():
                sources += sorted(SHARED_MEDIA.glob("*.mp4"))
            elif with_shared:
                console.print(
                    f"[yellow]no shared sample clips at {SHARED_MEDIA}; using synthetic clips only[/]"
                )
            expected: dict[str, str] = {}
            for src in sources:
                obj = bucket.put_file(str(src), f"demo/{src.name}")
                expected[partition_key_for_sha256(sha256_file(str(src)))] = src.name
                console.print(f"  dropped {obj.uri}")
        console.print("[bold]waiting[/] for the upload sensor and the analysis runs …")
        last = _wait_for_jobs(db, expected, dagster, deadline, t0, verbose=True)
        if not all(s in ("completed", "failed") for s in last.values()):
            console.print(
                f"[red]timed out after {timeout_s:.0f} s; runs are still visible in `make dagit`[/]"
            )
    except RuntimeError as exc:
        console.print(f"[red]{exc}; see {log_path}[/]")
        return 1
    finally:
        dagster.stop()

    _print_summary(db, expected, settings.platform.artifact_root)
    print_case_reports(settings, expected, REPO_ROOT / ".demo-data" / "reports", console)
    console.print(f"demo finished in {time.time() - t0:.0f} s")
    return 0 if all(last.get(v) in ("completed", "failed") for v in expected) else 1


def _print_summary(db: ResultsDB, expected: dict[str, str], artifact_root: str) -> None:
    table = Table(title="What landed")
    for col in (
        "file",
        "video_id",
        "status",
        "resolution",
        "duration",
        "audio",
        "verdict",
        "P(fake)",
        "weights",
        "reason",
    ):
        table.add_column(col)
    for vid, name in expected.items():
        job = db.get_job(vid) or {}
        video = db.get_video(vid) or {}
        probe = video.get("probe") or {}
        pred = db.get_prediction(vid) or {}
        table.add_row(
            name,
            vid,
            job.get("status", "-"),
            f"{probe.get('width', '?')}x{probe.get('height', '?')}" if probe else "-",
            f"{probe['duration']:.1f}s" if probe.get("duration") else "-",
            str(probe.get("has_audio", "-")),
            pred.get("verdict", "-"),
            f"{pred['p_fake']:.3f}" if pred.get("p_fake") is not None else "-",
            (
                f"trained on {str(pred.get('trained_on')).split(' (')[0]}"
                if pred.get("trained")
                else "UNTRAINED"
            )
            if pred
            else "-",
            (job.get("reason") or "")[:60],
        )
    console.print(table)
    preds = [db.get_prediction(v) for v in expected]
    if any(p is not None and p["trained"] for p in preds):
        console.print(
            "[bold yellow]⚠ these verdicts come from the tiny model trained for a few minutes on SYNTHETIC faces "
            f"({DEMO_DATASET}); it shows the pipeline end to end and is no forensic detector for real video.[/]"
        )
    if any(p is not None and not p["trained"] for p in preds):
        console.print(
            "[bold red]⚠ these verdicts come from an UNTRAINED model (random initialisation, pretrained: false); "
            "they exercise the pipeline and carry no forensic meaning.[/]"
        )
    console.print(f"Parquet tables:   {artifact_root}/tables/<table>/v<version>/<video_id>.parquet")
    console.print(f"Artifacts:        {artifact_root}/videos/<video_id>/")
    console.print(
        "PostgreSQL:       tables videos, jobs, predictions (`dagster-deepfake db-url` prints the URL)"
    )
    console.print("Dagster UI:       `make dagit`, then http://127.0.0.1:3000 (partitions, runs, metadata)")
    console.print(
        "Job pages:        `dagster-deepfake serve`, then http://127.0.0.1:8000/jobs/<video_id>/view"
    )
