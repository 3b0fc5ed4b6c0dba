"""`make demo`: drop sample videos into the local bucket, let Dagster's daemon and the upload
sensor run them, wait, and print what landed where.

Progress is read from the results database (the `jobs` table), the same place the API and
an analyst read it, so the demo needs no Dagster imports of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dagster_deepfake.config import REPO_ROOT, load_settings
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url, redact

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


def _start_daemon(log_path: Path) -> subprocess.Popen[bytes]:
    daemon = Path(sys.executable).with_name("dagster-daemon")
    env = {**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))}
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    instance_yaml = Path(env["DAGSTER_HOME"]) / "dagster.yaml"
    if not instance_yaml.exists():
        shutil.copy(REPO_ROOT / "deploy" / "dagster.local.yaml", instance_yaml)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen(
        [str(daemon), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run_demo(*, config_path: str | None = None, timeout_s: float = 1200, with_shared: bool = True) -> int:
    t0 = time.time()
    settings = load_settings(config_path)
    p = settings.platform
    db = ResultsDB(p.postgres_url or embedded_postgres_url(p.postgres_data_dir))
    db.create_schema()
    console.print(f"[bold]results database[/] {redact(db.url)}")
    bucket = UploadBucket(p.upload_uri, p.upload_suffixes)
    bucket.ensure()

    with tempfile.TemporaryDirectory(prefix="ddf-demo-") as tmp:
        console.print("[bold]generating[/] synthetic talking-face clips …")
        sources = _demo_clips(Path(tmp))
        if with_shared and SHARED_MEDIA.is_dir():
            sources += sorted(SHARED_MEDIA.glob("*.mp4"))
        elif with_shared:
            console.print(f"[yellow]no shared sample clips at {SHARED_MEDIA}; using synthetic clips only[/]")
        expected: dict[str, str] = {}
        for src in sources:
            obj = bucket.put_file(str(src), f"demo/{src.name}")
            expected[partition_key_for_sha256(sha256_file(str(src)))] = src.name
            console.print(f"  dropped {obj.uri}")

    log_path = REPO_ROOT / ".dagster_home" / "daemon.log"
    console.print(
        f"[bold]starting[/] dagster-daemon (log: {log_path}); the upload sensor picks the files up …"
    )
    daemon = _start_daemon(log_path)
    last: dict[str, str] = {}
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if daemon.poll() is not None:
                console.print(f"[red]dagster-daemon exited with {daemon.returncode}; see {log_path}[/]")
                return 1
            states = {vid: (db.get_job(vid) or {}).get("status", "waiting for sensor") for vid in expected}
            for vid, state in states.items():
                if last.get(vid) != state:
                    console.print(f"  {time.time() - t0:6.1f}s  {expected[vid]:<40} {state}")
            last = states
            if all(s in ("completed", "failed") for s in states.values()):
                break
            time.sleep(2)
        else:
            console.print(
                f"[red]timed out after {timeout_s:.0f} s; runs are still visible in `make dagit`[/]"
            )
    finally:
        _stop(daemon)

    _print_summary(db, expected, settings.platform.artifact_root)
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
            ("trained" if pred.get("trained") else "untrained") if pred else "-",
            (job.get("reason") or "")[:60],
        )
    console.print(table)
    preds = [db.get_prediction(v) for v in expected]
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


def stop_embedded_postgres(config_path: str | None = None) -> None:
    """Stop the project's own PostgreSQL server, if it runs."""
    settings = load_settings(config_path)
    data_dir = Path(settings.platform.postgres_data_dir)
    if settings.platform.postgres_url or not (data_dir / "postmaster.pid").exists():
        console.print("no embedded PostgreSQL is running")
        return
    import pgserver
    from pgserver._commands import pg_ctl  # pgserver's bundled binaries

    server = pgserver.get_server(data_dir, cleanup_mode=None)
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=data_dir, user=server.system_user)
    console.print(f"stopped PostgreSQL in {data_dir}")
