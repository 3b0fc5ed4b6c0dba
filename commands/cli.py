"""`dagster-deepfake`: the command line of the platform.

Every subcommand is a thin shell over the library; errors a user can act on print one line
(no traceback) and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

from dagster_deepfake.errors import DeepfakeError

Handler = Callable[[argparse.Namespace], int]


def _cmd_analyze(args: argparse.Namespace) -> int:
    from dagster_deepfake.analyze import analyze_file, render_text
    from dagster_deepfake.config import load_settings

    settings = load_settings(args.config)
    if args.max_faces is not None:  # faces as tracks (docs/CONFIG.md)
        settings.data.faces.max_faces = args.max_faces
    started = time.perf_counter()
    result = analyze_file(args.video, settings, model_config=args.model, out_dir=args.out)
    if args.timings:  # the whole wall (issue 20): start-up before the first stage, the rest after
        from commands.timings import whole_wall

        result.timings = whole_wall(result.timings, time.perf_counter() - started)
    if args.json:
        # The contract's result document, built by the same builder as the `report` asset's.
        print(json.dumps(result.document, indent=2, default=str))
    else:
        print(render_text(result, timings=args.timings))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dagster_deepfake.synthetic import generate_clip, generate_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.n:
        frame = generate_dataset(
            out,
            args.n,
            seed=args.seed,
            duration=args.duration,
            width=args.width,
            height=args.height,
            fps=args.fps,
        )
        print(f"wrote {len(frame)} clips and {out / 'manifest.csv'}")
        print(frame.groupby(["split", "label"]).size().to_string())
        print(
            "next: dagster-deepfake register-dataset --kind csv "
            f"--root {out / 'manifest.csv'} --name synthetic-{args.n}"
        )
        return 0
    clip = generate_clip(
        out / f"synthetic_{args.seed:04d}.mp4",
        seed=args.seed,
        duration=args.duration,
        width=args.width,
        height=args.height,
        fps=args.fps,
        audio=args.audio,
        num_faces=args.faces,
        manipulation=args.manipulation,
    )
    print(json.dumps(clip.to_dict(), indent=2, default=str))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from commands.demo import run_demo

    return run_demo(
        config_path=args.config,
        timeout_s=args.timeout,
        with_shared=not args.no_shared,
        train_videos=args.train_videos,
    )


def _cmd_daemon(args: argparse.Namespace) -> int:
    from commands.local_dagster import run_in_foreground

    return run_in_foreground(args.config)


def _cmd_register_dataset(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from dagster_deepfake.config import load_settings
    from dagster_deepfake.datasets import register_dataset

    settings = load_settings(args.config)
    with Progress() as progress:
        task = progress.add_task("hashing videos", total=None)
        reg = register_dataset(
            settings,
            args.kind,
            args.root,
            name=args.name,
            on_start=lambda n: progress.update(task, total=n, description=f"hashing {n} videos"),
            on_progress=lambda n: progress.advance(task, n),
        )
    from commands.runs import add_partitions_to_instance

    added = add_partitions_to_instance(reg.video_ids, batch_size=args.batch_size)
    manifest = reg.manifest
    assert manifest is not None
    print(f"dataset {reg.name}: {len(manifest)} rows, {len(reg.video_ids)} videos, {added} new partitions")
    print(f"  splits: {manifest.groupby(['split', 'label']).size().to_dict()}")
    print(f"  manifest: {reg.manifest_path}")
    if reg.duplicates:
        print(f"  {reg.duplicates} rows repeat another row's bytes (one partition each)")
    if reg.missing:
        print(f"  {len(reg.missing)} paths are missing, e.g. {reg.missing[:3]}")
    print("the dataset_backfill_sensor requests their runs (watch them with `make dagit`)")
    print("then train: dagster-deepfake train [--training-config config/train-synthetic.yaml]")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from commands.runs import format_training_summary, run_training

    print(f"running train_calibrate_evaluate (training config: {args.training_config or 'the platform'})")
    ok, metadata = run_training(args.training_config)
    if not ok:
        err = metadata.get("error", {})
        print(f"error: training failed in {err.get('step')}: {err.get('message')}", file=sys.stderr)
        return 1
    print(format_training_summary(metadata))
    return 0


def _cmd_model_describe(args: argparse.Namespace) -> int:
    from dagster_deepfake.config import load_settings
    from dagster_deepfake.models.describe import describe_model, format_description
    from dagster_deepfake.models.registry import list_model_configs
    from dagster_deepfake.models.weights_store import imported_weights_dir

    settings = load_settings(args.config)
    if args.all:
        targets: list = list_model_configs()
    elif args.model_config:
        targets = [args.model_config]
    else:  # what the settings file builds: its variant with its explicit keys on top
        targets = [settings.model]
    weights_dir = imported_weights_dir(settings.platform.model_dir)
    for target in targets:
        print(format_description(describe_model(target, weights_dir=weights_dir)))
        print()
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    # One parser: commands/bench.py's own (its --help lists every option).
    from commands.bench import main as bench_main

    return bench_main(args.bench_args)


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from dagster_deepfake.api import TOKEN_ENV, InsecureBindError, serve
    from dagster_deepfake.config import load_settings

    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        serve(load_settings(args.config), host=args.host, port=args.port, token=token)
    except InsecureBindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_db_url(args: argparse.Namespace) -> int:
    from dagster_deepfake.config import load_settings
    from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url, redact

    p = load_settings(args.config).platform
    db = ResultsDB(p.postgres_url or embedded_postgres_url(p.postgres_data_dir))
    db.create_schema()
    print(db.url if args.show_password else redact(db.url))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from dagster_deepfake.config import load_settings
    from dagster_deepfake.storage.postgres import stop_embedded_postgres

    p = load_settings(args.config).platform
    if p.postgres_url or not stop_embedded_postgres(p.postgres_data_dir):
        print("no embedded PostgreSQL is running")
    else:
        print(f"stopped PostgreSQL in {p.postgres_data_dir}")
    from dagster_deepfake.broker import stop_redis

    if stop_redis(".cluster/redis"):
        print("stopped Redis in .cluster/redis")
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from pathlib import Path

    from commands.cluster import run_cluster

    return run_cluster(args.config, Path(args.dir).resolve(), args.port, args.broker_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dagster-deepfake",
        description="Tell whether a talking-face video is real or manipulated, and show why.",
    )
    parser.add_argument(
        "--config", help="config file (default: $DAGSTER_DEEPFAKE_CONFIG or config/config.yaml)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "analyze", help="run the whole per-video pipeline in-process on one file and print the result"
    )
    p.add_argument("video", help="path to a video file")
    p.add_argument("--json", action="store_true", help="print the result document as JSON")
    p.add_argument("--timings", action="store_true", help="print wall time per stage")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where the Grad-CAM heat maps go (DIR/<video_id>/; default: heat-maps/ beside the video)",
    )
    p.add_argument("--model", default=None, help="model registry config (default: model.registry_config)")
    p.add_argument(
        "--max-faces",
        type=int,
        default=None,
        metavar="N",
        help="data.faces.max_faces: above 1, every face is tracked and scored (default: the config's, 1)",
    )
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "synth", help="write synthetic talking-face test videos (labelled, deterministic by seed)"
    )
    p.add_argument("--out", default="synthetic", help="output folder (default: ./synthetic)")
    p.add_argument("--n", type=int, default=0, help="write a labelled dataset of N clips with manifest.csv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per clip")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--audio", choices=["speech", "silence", "none"], default="speech")
    p.add_argument("--faces", type=int, choices=[0, 1, 2], default=1, help="faces in frame (single clip)")
    p.add_argument(
        "--manipulation", choices=["face_swap", "reenactment", "lip_sync"], default=None, help="make a fake"
    )
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "demo",
        help="drop sample videos into the local bucket, let the sensor run them through Dagster, print a summary",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for everything")
    p.add_argument(
        "--train-videos",
        type=int,
        default=30,
        help="synthetic clips to train the tiny model on first (0: skip training, serve untrained weights)",
    )
    p.add_argument("--no-shared", action="store_true", help="skip the sample clips in ../shared/media")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "daemon",
        help="run the code server and dagster-daemon (sensors, queue, runs) on $DAGSTER_HOME until Ctrl-C",
    )
    p.set_defaults(func=_cmd_daemon)

    p = sub.add_parser("model", help="inspect the detector (`model describe`)")
    model_sub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    d = model_sub.add_parser(
        "describe", help="each block's output shape, trainable/frozen parameters, weights"
    )
    d.add_argument(
        "--variant",
        "--config",
        dest="model_config",
        default=None,
        help="a registry variant alone (contract, tiny); default: the settings file's `model` section",
    )
    d.add_argument("--all", action="store_true", help="describe every registered config")
    d.set_defaults(func=_cmd_model_describe)

    from commands.weights import add_parser as add_weights_parser

    add_weights_parser(sub)

    p = sub.add_parser(
        "register-dataset",
        help="add every video of a labelled dataset as a partition; the backfill sensor then runs them",
    )
    p.add_argument("--kind", choices=["ffpp", "celebdf", "csv"], required=True)
    p.add_argument("--root", required=True, help="dataset root folder (or the CSV file for --kind csv)")
    p.add_argument("--name", help="dataset name (default: KIND-<manifest hash>)")
    p.add_argument("--batch-size", type=int, default=1000, help="partitions per add request")
    p.set_defaults(func=_cmd_register_dataset)

    p = sub.add_parser(
        "train",
        help="run train_calibrate_evaluate on the registered datasets' cached features (recorded in Dagster)",
    )
    p.add_argument(
        "--training-config",
        default=None,
        help="YAML whose model/training sections apply to this run (e.g. config/train-synthetic.yaml)",
    )
    p.set_defaults(func=_cmd_train)

    from commands.evaluate import add_parsers as add_evaluate_parsers

    add_evaluate_parsers(sub)  # `evaluate` and `ablate`

    p = sub.add_parser(
        "bench",
        add_help=False,
        help="per-stage timings, throughput, peak memory and the decode floor (bench --help: options)",
    )
    p.set_defaults(bench_args=[])  # filled by main(): every option after `bench` is bench's own
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "serve", help="run the REST API (POST /analyze-video, GET /jobs, /jobs/{id}/view, /docs)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--token",
        default=None,
        help="bearer token (default: $DAGSTER_DEEPFAKE_API_TOKEN); required for a non-loopback --host",
    )
    p.set_defaults(func=_cmd_serve)

    from commands import report as report_command

    p = sub.add_parser(
        "report", help="a job's case report (.html or .pdf): verdict, evidence, chain of custody"
    )
    report_command.add_arguments(p)
    p.set_defaults(func=report_command.run)

    p = sub.add_parser("db-url", help="start the embedded PostgreSQL if needed and print the results DB URL")
    p.add_argument("--show-password", action="store_true")
    p.set_defaults(func=_cmd_db_url)

    p = sub.add_parser("stop", help="stop the embedded PostgreSQL server (and the cluster's Redis)")
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser(
        "cluster", help="a local Celery fleet: Redis, two workers, daemon and webserver (docs/DEPLOY.md)"
    )
    p.add_argument("--dir", default=".cluster", help="its Redis data, homes and logs (default .cluster)")
    p.add_argument("--port", type=int, default=3000, help="webserver port")
    p.add_argument("--broker-port", type=int, default=6379, help="Redis port on 127.0.0.1")
    p.set_defaults(func=_cmd_cluster)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return _run(argv)[0]


def _run(argv: Sequence[str] | None) -> tuple[int, Handler]:
    """(exit code, the subcommand's handler)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "func", None) is _cmd_bench:
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0), args.func
    except DeepfakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, args.func
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, args.func
    except KeyboardInterrupt:
        return 130, args.func


def console() -> None:
    """The `dagster-deepfake` script (and `python -m commands.cli`).

    `analyze` ends its process with `os._exit` once output and logs are flushed: the interpreter's
    teardown of torch, ONNX Runtime and some 4,000 modules took 1.5 s of a 30 s clip's wall on two
    cores (issue 20) and releases nothing an ending process keeps. Every file analyze writes is
    closed by then.
    """
    code, command = _run(None)
    if command is _cmd_analyze:
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
