"""A seeded mutation fuzzer over real and generated videos, through the media layer every entry
point uses (probe_video, validate_probe, frame sampling, audio extraction: tests/media_case.py)
and, for a few cases, through `dagster-deepfake analyze`.

Mutations: bit flips (anywhere, and in the header region), truncations, corrupted MP4 boxes,
wrong box sizes, inserted and duplicated boxes, swapped streams (track order and handler types),
lying header durations, swapped byte ranges, and bit flips in a Matroska copy. Each case runs in
its own subprocess with a wall-clock limit and an address-space limit; every case must end in a
completed result or a clean one-line refusal, never a traceback, a hang, a crash or a kill.

The run writes the "Fuzz" section of docs/RELIABILITY.md (set DAGSTER_DEEPFAKE_WRITE_DOCS=0 to
skip). DAGSTER_DEEPFAKE_FUZZ_SEED and DAGSTER_DEEPFAKE_FUZZ_CASES change the seed and the number
of media-layer cases (default 55).
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dagster_deepfake.config import REPO_ROOT
from dagster_deepfake.synthetic import generate_clip
from tests.conftest import SHARED_MEDIA, write_reliability_section
from tests.mp4_boxes import boxes, find, set_durations

SEED = int(os.environ.get("DAGSTER_DEEPFAKE_FUZZ_SEED", "20260116"))
CASES = int(os.environ.get("DAGSTER_DEEPFAKE_FUZZ_CASES", "55"))  # 5 per mutation kind
CLI_CASES = 4
CASE_TIMEOUT_S = 60  # a hang guard, far above any case (they take about a second)
CLI_TIMEOUT_S = 240
MEMORY_LIMIT = 3 * 1024**3  # RLIMIT_AS of a media case and its ffmpeg/ffprobe children
WORKERS = 2

# Shared clips used as seeds (the small ones; the 12 s 720p clip is covered by the corpus).
SHARED_SEEDS = ("ffpp_c23_real_004.mp4", "retalking_face_2_real.mp4", "svls_wav2lip_fake.mp4")


@dataclass
class Outcome:
    kind: str
    seed_file: str
    outcome: str  # completed | refused | DEFECT
    detail: str
    seconds: float
    rss_mb: float = 0.0
    child_rss_mb: float = 0.0
    via: str = "media"


@dataclass
class Seeds:
    mp4: list[Path] = field(default_factory=list)
    mkv: list[Path] = field(default_factory=list)


def _seeds(tmp: Path) -> Seeds:
    seeds = Seeds()
    for name in SHARED_SEEDS:
        if (SHARED_MEDIA / name).exists():
            seeds.mp4.append(SHARED_MEDIA / name)
    generated = tmp / "generated.mp4"
    generate_clip(generated, seed=41, identity=0, duration=2.0, width=320, height=240, audio="speech")
    seeds.mp4.append(generated)
    mkv = tmp / "generated.mkv"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(generated), "-c", "copy", str(mkv)], check=True
    )
    seeds.mkv.append(mkv)
    return seeds


# -- mutations: (rng, bytes) -> bytes ------------------------------------------------------------


def _flip(rng: random.Random, data: bytes, lo: int = 0, hi: int | None = None, n: int | None = None) -> bytes:
    out = bytearray(data)
    hi = len(out) if hi is None else min(hi, len(out))
    for _ in range(n or rng.randint(1, 64)):
        pos = rng.randrange(lo, hi)
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def bit_flips(rng: random.Random, data: bytes) -> bytes:
    return _flip(rng, data)


def header_bit_flips(rng: random.Random, data: bytes) -> bytes:
    """Flips inside the index (moov) or the first 4 KB: where parsers trust sizes and counts."""
    moov = find(data, "moov")
    if moov and rng.random() < 0.8:
        return _flip(rng, data, moov[0].offset, moov[0].end, rng.randint(1, 16))
    return _flip(rng, data, 0, 4096, rng.randint(1, 16))


def truncation(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randint(1, len(data) - 1)]


def _random_box(rng: random.Random, data: bytes, types: tuple[bytes, ...] = ()):
    found = [b for b in boxes(data) if not types or b.type in types]
    return rng.choice(found) if found else None


def corrupted_box(rng: random.Random, data: bytes) -> bytes:
    """Random bytes over part of one index box (stts, stsz, stco, stsd, mdhd, tkhd, …)."""
    box = _random_box(
        rng,
        data,
        (
            b"stts",
            b"stsz",
            b"stco",
            b"stsc",
            b"stss",
            b"ctts",
            b"stsd",
            b"mdhd",
            b"tkhd",
            b"mvhd",
            b"hdlr",
            b"elst",
            b"avcC",
            b"esds",
        ),
    )
    if box is None or box.size <= box.header:
        return bit_flips(rng, data)
    start = rng.randrange(box.payload, box.end)
    length = rng.randint(1, min(64, box.end - start))
    return data[:start] + rng.randbytes(length) + data[start + length :]


def wrong_box_size(rng: random.Random, data: bytes) -> bytes:
    box = _random_box(rng, data)
    if box is None:
        return bit_flips(rng, data)
    size = rng.choice(
        [0, 1, 7, 8, box.size - 1, box.size + 1, box.size * 2, 0xFFFFFFFF, rng.randrange(1 << 32)]
    )
    return data[: box.offset] + struct.pack(">I", size % (1 << 32)) + data[box.offset + 4 :]


def inserted_box(rng: random.Random, data: bytes) -> bytes:
    """A duplicated box, or a junk/huge-count box, inserted at a box boundary (parent sizes kept,
    so the insert lands inside its parent's payload as a stray child or overlaps the next)."""
    all_boxes = list(boxes(data))
    if not all_boxes:
        return bit_flips(rng, data)
    where = rng.choice(all_boxes)
    choice = rng.random()
    if choice < 0.4:
        dup = rng.choice(all_boxes)
        blob = data[dup.offset : dup.end][:65536]
    elif choice < 0.7:
        kind = rng.choice([b"stts", b"stsz", b"trak", b"moov", b"free", b"mdat", b"dref"])
        # version/flags, then a huge entry count and little data.
        payload = (
            b"\x00\x00\x00\x00"
            + struct.pack(">I", rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 1 << 20]))
            + rng.randbytes(16)
        )
        blob = struct.pack(">I", 8 + len(payload)) + kind + payload
    else:
        payload = rng.randbytes(rng.randint(0, 256))
        blob = struct.pack(">I", 8 + len(payload)) + rng.randbytes(4) + payload
    pos = where.offset if rng.random() < 0.5 else where.end
    return data[:pos] + blob + data[pos:]


def swapped_streams(rng: random.Random, data: bytes) -> bytes:
    """Swap the two tracks' places in moov, or their handler types (video <-> sound)."""
    traks = find(data, "moov/trak")
    if len(traks) < 2:
        return wrong_box_size(rng, data)
    a, b = traks[0], traks[1]
    if rng.random() < 0.5:
        return (
            data[: a.offset]
            + data[b.offset : b.end]
            + data[a.end : b.offset]
            + data[a.offset : a.end]
            + data[b.end :]
        )
    out = bytearray(data)
    hdlrs = [
        h for h in find(data, "mdia/hdlr") if a.offset <= h.offset < a.end or b.offset <= h.offset < b.end
    ]
    if len(hdlrs) >= 2:
        p, q = hdlrs[0].payload + 8, hdlrs[1].payload + 8  # handler_type after version/flags, pre_defined
        out[p : p + 4], out[q : q + 4] = data[q : q + 4], data[p : p + 4]
    return bytes(out)


def lying_duration(rng: random.Random, data: bytes) -> bytes:
    if not find(data, "moov/mvhd"):
        return bit_flips(rng, data)
    return set_durations(data, rng.choice([0.001, 0.5, 1.0, 30.0, 1e6]))


def swapped_ranges(rng: random.Random, data: bytes) -> bytes:
    n = rng.randint(16, 4096)
    i, j = sorted(rng.sample(range(0, len(data) - n), 2))
    if j < i + n:
        return bit_flips(rng, data)
    return data[:i] + data[j : j + n] + data[i + n : j] + data[i : i + n] + data[j + n :]


MP4_MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "bit flips": bit_flips,
    "header bit flips": header_bit_flips,
    "truncation": truncation,
    "corrupted box": corrupted_box,
    "wrong box size": wrong_box_size,
    "inserted box": inserted_box,
    "swapped streams": swapped_streams,
    "lying duration": lying_duration,
    "swapped byte ranges": swapped_ranges,
}
MKV_MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "Matroska bit flips": bit_flips,
    "Matroska truncation": truncation,
}


def _make_cases(tmp: Path, seeds: Seeds, n: int) -> list[tuple[str, Path, Path]]:
    """(mutation kind, seed file, mutated file): the kinds in turn, seeds and params drawn from SEED."""
    rng = random.Random(SEED)
    kinds = [(k, f, seeds.mp4) for k, f in MP4_MUTATIONS.items()] + [
        (k, f, seeds.mkv) for k, f in MKV_MUTATIONS.items()
    ]
    out = []
    cache: dict[Path, bytes] = {}
    for i in range(n):
        kind, mutate, pool = kinds[i % len(kinds)]
        seed_file = rng.choice(pool)
        data = cache.setdefault(seed_file, seed_file.read_bytes())
        mutated = mutate(random.Random(rng.getrandbits(64)), data)
        path = tmp / f"case{i:03d}{seed_file.suffix}"
        path.write_bytes(mutated)
        out.append((kind, seed_file, path))
    return out


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _one_line(text: str) -> bool:
    return bool(text) and "\n" not in text.strip() and "Traceback" not in text


def _run_media_case(kind: str, seed_file: Path, path: Path) -> Outcome:
    start = time.perf_counter()
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.media_case", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=CASE_TIMEOUT_S,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        return Outcome(
            kind, seed_file.name, "DEFECT", f"hang: no result in {CASE_TIMEOUT_S} s", CASE_TIMEOUT_S
        )
    seconds = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or "Traceback" in proc.stderr:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return Outcome(kind, seed_file.name, "DEFECT", f"exit {proc.returncode}: {why}"[:200], seconds)
    result = json.loads(lines[-1])
    detail = result.get("reason") or f"{result.get('frames')} frames"
    outcome = result["outcome"]
    if outcome == "refused" and not _one_line(result.get("reason", "")):
        outcome, detail = "DEFECT", f"refusal is not one clean line: {detail!r}"[:200]
    return Outcome(kind, seed_file.name, outcome, detail, seconds, result["rss_mb"], result["child_rss_mb"])


def _run_cli_case(kind: str, seed_file: Path, path: Path, model_dir: Path) -> Outcome:
    """`dagster-deepfake analyze` on one mutated file (tiny model): exit 0, or exit 2 with one
    stderr line naming the file. Time-limited only: torch reserves far more address space than
    it uses, and under an address-space limit it spins instead of failing."""
    env = {
        **os.environ,
        "DAGSTER_DEEPFAKE_CONFIG": str(REPO_ROOT / "config" / "train-synthetic.yaml"),
        "DAGSTER_DEEPFAKE_MODEL_DIR": str(model_dir),
    }
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "commands.cli", "analyze", "--model", "tiny", "--", str(path)]
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
        )
        _, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Outcome(
            kind, seed_file.name, "DEFECT", f"hang: no result in {CLI_TIMEOUT_S} s", CLI_TIMEOUT_S, via="cli"
        )
    seconds = time.perf_counter() - start
    err_lines = [line for line in err.strip().splitlines() if line.strip()]
    if proc.returncode == 0:
        return Outcome(kind, seed_file.name, "completed", "analysed", seconds, via="cli")
    last = err_lines[-1] if err_lines else ""
    clean = proc.returncode == 2 and "Traceback" not in err and str(path) in last
    detail = last.replace(str(path.parent) + "/", "")[:200]
    return Outcome(
        kind,
        seed_file.name,
        "refused" if clean else "DEFECT",
        detail if clean else f"exit {proc.returncode}: {detail}",
        seconds,
        via="cli",
    )


@pytest.mark.timeout(600)
def test_mutation_fuzzer(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    started = time.perf_counter()
    seeds = _seeds(tmp_path)
    (tmp_path / "cases").mkdir()
    cases = _make_cases(tmp_path / "cases", seeds, CASES)
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda c: _run_media_case(*c), cases))
        # A few mutated files through the whole CLI: the first cases that completed and that were
        # refused in the media layer, so both paths of `analyze` are taken.
        completed = [c for c, r in zip(cases, results, strict=True) if r.outcome == "completed"][
            : CLI_CASES // 2
        ]
        refused = [c for c, r in zip(cases, results, strict=True) if r.outcome == "refused"][
            : CLI_CASES - len(completed)
        ]
        model_dir = tmp_path / "models"
        cli_results = list(pool.map(lambda c: _run_cli_case(*c, model_dir), completed + refused))
    elapsed = time.perf_counter() - started
    _write_doc(results, cli_results, elapsed)
    defects = [r for r in results + cli_results if r.outcome == "DEFECT"]
    assert not defects, [(r.kind, r.seed_file, r.via, r.detail) for r in defects]
    assert {r.outcome for r in results} == {"completed", "refused"}  # the mutations reach both ends


def _write_doc(results: list[Outcome], cli_results: list[Outcome], elapsed: float) -> None:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    reasons: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_kind[r.kind][r.outcome] += 1
        if r.outcome == "refused":
            reasons[r.kind][_reason_class(r.detail)] += 1
    lines = [
        "## Fuzz",
        "",
        f"`tests/test_fuzz.py`: {len(results)} seeded mutations (seed {SEED}) of the shared clips "
        f"({', '.join(SHARED_SEEDS)}) and a generated clip (MP4 and Matroska), each in its own process "
        f"with a {CASE_TIMEOUT_S} s limit and a {MEMORY_LIMIT // 1024**3} GiB address-space limit, through "
        "probe_video, validate_probe, frame sampling and audio extraction; "
        f"{len(cli_results)} of them also through `dagster-deepfake analyze`. Whole run {elapsed:.0f} s "
        "on this machine (2 cores, shared with other jobs: times are indicative). "
        "*defects* counts tracebacks, hangs, crashes and kills; it must be 0.",
        "",
        "| mutation | cases | completed | refused (one line) | defects | most common refusal | max s | max RSS python / ffmpeg MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in list(MP4_MUTATIONS) + list(MKV_MUTATIONS):
        rs = [r for r in results if r.kind == kind]
        if not rs:
            continue
        c = by_kind[kind]
        common = reasons[kind].most_common(1)[0][0] if reasons[kind] else "—"
        lines.append(
            f"| {kind} | {len(rs)} | {c['completed']} | {c['refused']} | {c['DEFECT']} | {common} | "
            f"{max(r.seconds for r in rs):.1f} | {max(r.rss_mb for r in rs):.0f} / {max(r.child_rss_mb for r in rs):.0f} |"
        )
    total = Counter(r.outcome for r in results)
    lines.append(
        f"| **all** | {len(results)} | {total['completed']} | {total['refused']} | {total['DEFECT']} | | "
        f"{max(r.seconds for r in results):.1f} | {max(r.rss_mb for r in results):.0f} / "
        f"{max(r.child_rss_mb for r in results):.0f} |"
    )
    if cli_results:
        lines += [
            "",
            "Through the CLI (`dagster-deepfake analyze --model tiny`, exit 0, or exit 2 and one stderr line):",
            "",
        ]
        lines += ["| mutation | seed | outcome | stderr / result | s |", "|---|---|---|---|---|"]
        for r in cli_results:
            lines.append(
                f"| {r.kind} | `{r.seed_file}` | {r.outcome} | {r.detail.replace('|', '/')[:110]} | {r.seconds:.1f} |"
            )
    write_reliability_section("fuzz", lines)


def _reason_class(reason: str) -> str:
    """A refusal reason without its specifics (numbers, ffmpeg's detail), for counting."""
    text = re.sub(r"\(.*", "", reason).strip()
    text = re.sub(r"\d[\d.,x]*", "N", text)
    return text[:60].replace("|", "/")
