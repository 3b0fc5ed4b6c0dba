"""probe_video / validate_probe / sample_frames on generated and shared media, and the hostile
inputs of issue 16: files that point at other files, lying lengths, resolution bombs, wedged
ffmpeg/ffprobe, one-frame videos, odd rotations."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dagster_deepfake.config import REPO_ROOT
from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media import gate
from dagster_deepfake.media.audio import extract_audio, has_audio_stream
from dagster_deepfake.media.ffmpeg_bin import find_binary
from dagster_deepfake.media.frames import expected_frame_count, output_size, sample_frames
from dagster_deepfake.media.probe import probe_video, validate_probe
from tests.conftest import shared_clip, write_reliability_section
from tests.mp4_boxes import set_durations, set_rotation, with_external_dref

SCOPE = {"min_height": 240, "max_height": 1080, "max_duration_seconds": 900}


def test_probe_reads_stream_facts(ffmpeg_video):
    path = ffmpeg_video(size="320x240", duration=2.0, rate=25, audio=True)
    p = probe_video(path)
    assert (p.codec, p.width, p.height) == ("h264", 320, 240)
    assert p.fps == pytest.approx(25.0)
    assert p.duration == pytest.approx(2.0, abs=0.1)
    assert p.has_audio and p.audio_codec == "aac"
    assert p.rotation == 0


def test_probe_without_audio(ffmpeg_video):
    p = probe_video(ffmpeg_video(audio=False))
    assert not p.has_audio and p.audio_codec is None
    assert any("no audio" in w for w in validate_probe(p, **SCOPE))


def test_rotated_video_reports_display_size(ffmpeg_video, tmp_path):
    src = ffmpeg_video(size="320x240", audio=False)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(src),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            str(rotated),
        ],
        check=True,
    )
    p = probe_video(rotated)
    assert p.rotation in (90, 270)
    assert (p.width, p.height) == (240, 320)
    frames = list(sample_frames(rotated, p, 5))
    assert frames[0].image.shape == (320, 240, 3)  # decoded upright


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"\x00\x01garbage" * 100, "not a readable media file"),
    ],
)
def test_probe_rejects_non_video(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(InvalidVideoError, match=reason) as err:
        probe_video(path)
    assert str(path) in str(err.value)


def test_probe_rejects_image_and_audio_only(tmp_path):
    png = tmp_path / "image.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240",
            "-frames:v",
            "1",
            "-f",
            "image2",
            "-c:v",
            "png",
            str(png),
        ],
        check=True,
    )
    with pytest.raises(InvalidVideoError, match="still image"):
        probe_video(png)
    audio = tmp_path / "audio.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=300", "-t", "1", str(audio)],
        check=True,
    )
    with pytest.raises(InvalidVideoError, match="audio-only"):
        probe_video(audio)


def test_truncated_file_is_rejected(ffmpeg_video, tmp_path):
    src = ffmpeg_video(duration=2.0)
    data = src.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 3])  # moov atom at the end is lost
    with pytest.raises(InvalidVideoError):
        p = probe_video(cut)
        list(sample_frames(cut, p, 5))


def test_validate_scope(ffmpeg_video):
    small = probe_video(ffmpeg_video("small.mp4", size="320x180", audio=False))
    with pytest.raises(InvalidVideoError, match="below the supported minimum of 240p"):
        validate_probe(small, **SCOPE)
    long = probe_video(ffmpeg_video("long.mp4", duration=3.0, audio=False))
    with pytest.raises(InvalidVideoError, match="exceeds the configured maximum"):
        validate_probe(long, **{**SCOPE, "max_duration_seconds": 2})


def test_sampling_grid_is_exact_and_stable(ffmpeg_video):
    path = ffmpeg_video(duration=3.0, rate=30)
    p = probe_video(path)
    first = list(sample_frames(path, p, 5))
    second = list(sample_frames(path, p, 5))
    assert [f.frame_id for f in first] == list(range(len(first)))
    assert len(first) == expected_frame_count(p, 5) == 15
    assert [f.timestamp for f in first] == pytest.approx([k / 5 for k in range(15)])
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, second, strict=True))
    # consecutive samples differ (the pattern moves), so this is not one frame repeated
    assert not np.array_equal(first[0].image, first[1].image)


@pytest.mark.parametrize("rate", [5, 10])
def test_shared_clip_sampling(rate):
    path = shared_clip("ffpp_c23_real_004.mp4")
    p = probe_video(path)
    assert (p.width, p.height, p.has_audio) == (1280, 720, False)
    frames = list(sample_frames(path, p, rate))
    assert abs(len(frames) - p.duration * rate) <= 1
    assert frames[0].image.shape == (720, 1280, 3)


def test_shared_clip_with_audio():
    p = probe_video(shared_clip("svls_wav2lip_fake.mp4"))
    assert p.has_audio and p.audio_sample_rate == 24000
    assert isinstance(p.path, str) and Path(p.path).name == "svls_wav2lip_fake.mp4"


# -- hostile inputs (issue 16) ----------------------------------------------------------------------


def _ff(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


class OpenWatch:
    """A FIFO that records whether anything ever opened it for reading: a reader blocks in
    open() until a writer comes, so a writer polling with O_NONBLOCK cannot miss it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENXIO  # no reader: nobody opened it
                time.sleep(0.002)
                continue
            self.opened = True
            os.close(fd)

    def close(self) -> bool:
        self._stop.set()
        self._thread.join(5)
        return self.opened


def _referencing_files(tmp: Path, target: str) -> dict[str, tuple[Path, str]]:
    """Files named .mp4 that make ffmpeg's other demuxers open `target` -> (path, what)."""
    out = {}

    def put(name: str, text: str, what: str) -> None:
        path = tmp / name
        path.write_text(text)
        out[name] = (path, what)

    put(
        "playlist.mp4",
        f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n{target}\n#EXT-X-ENDLIST\n",
        "an HLS playlist",
    )
    put("ffconcat.mp4", f"ffconcat version 1.0\nfile '{target}'\n", "a concat list")
    put("concat.mp4", f"file '{target}'\nfile '{target}'\n", "a concat list")
    put(
        "manifest.mp4",
        '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">'
        f"<Period><AdaptationSet><Representation><BaseURL>{target}</BaseURL>"
        "</Representation></AdaptationSet></Period></MPD>\n",
        "an MPEG-DASH manifest",
    )
    put(
        "session.mp4",
        "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nm=video 5004 RTP/AVP 96\n",
        "an SDP",
    )
    put("meta.mp4", ";FFMETADATA1\ntitle=x\n", "an ffmetadata")
    return out


def test_files_that_point_at_other_files_are_refused_without_opening_them(ffmpeg_video, tmp_path):
    """Playlists, concat lists, manifests named .mp4 are refused by name of what they are, on every
    media entry point, and the file they reference (a FIFO that records any open) is never
    opened. The same files were analysed before the gate (HLS and concat open their target)."""
    real = ffmpeg_video("real.mp4", audio=True)
    real_probe = probe_video(real)
    watch = OpenWatch(tmp_path / "target.mp4")
    try:
        for name, (path, what) in _referencing_files(tmp_path, str(watch.path)).items():
            with pytest.raises(InvalidVideoError, match=what) as refused:
                probe_video(path)
            assert "\n" not in str(refused.value) and str(path) in str(refused.value), name
            with pytest.raises(InvalidVideoError, match=what):
                has_audio_stream(path)
            with pytest.raises(InvalidVideoError, match="audio could not be decoded"):
                extract_audio(path, has_audio=True)
            # Even handed the probe of a real video, the sampler gates the file itself.
            sampler = sample_frames(path, real_probe, 5)
            with pytest.raises(InvalidVideoError, match=what):
                list(sampler)
            assert sampler.frames_read == 0
    finally:
        assert not watch.close(), "a referenced file was opened"


def test_mp4_external_data_reference_is_never_followed(ffmpeg_video, tmp_path):
    """An MP4 whose video track's data reference is an alias to another file (the one way an
    accepted container points elsewhere): ffmpeg opens it with `-enable_drefs 1`, the gate keeps
    it off, so the target (a FIFO recording any open) is never opened on any entry point."""
    src = ffmpeg_video("src.mp4", audio=True)  # moov after mdat: ffmpeg's default
    folder = tmp_path / "drop"
    folder.mkdir()
    evil = folder / "evil.mp4"
    evil.write_bytes(with_external_dref(src.read_bytes(), "target.mp4"))
    watch = OpenWatch(folder / "target.mp4")
    try:
        outcomes = []
        for call in (
            lambda: probe_video(evil),
            lambda: list(sample_frames(evil, probe_video(src), 5)),
            lambda: extract_audio(evil, has_audio=True),
        ):
            try:
                call()
                outcomes.append("completed")
            except InvalidVideoError as exc:
                assert "\n" not in exc.reason
                outcomes.append(exc.reason)
        assert not watch.opened, outcomes
        # The test can fail: without the gate's setting ffprobe does open the target.
        subprocess.run(
            ["ffprobe", "-v", "error", "-enable_drefs", "1", "-show_streams", str(evil)],
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 5
        while not watch.opened and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.opened, "the crafted alias was not followed even with enable_drefs 1"
    finally:
        watch.close()
    with pytest.raises(InvalidVideoError, match="track data is in another file"):
        probe_video(evil)


def test_a_fifo_in_place_of_a_file_never_blocks(ffmpeg_video, tmp_path):
    fifo = tmp_path / "x.mp4"
    os.mkfifo(fifo)
    p = probe_video(ffmpeg_video(audio=True))
    for call in (
        lambda: probe_video(fifo),
        lambda: list(sample_frames(fifo, p, 5)),
        lambda: extract_audio(fifo, has_audio=True),
        lambda: has_audio_stream(fifo),
    ):
        with pytest.raises(InvalidVideoError, match="not a regular file"):
            call()


@pytest.mark.parametrize("demuxer", gate.VIDEO_DEMUXERS)
def test_gate_arguments_alone_stop_other_demuxers(ffmpeg_video, tmp_path, demuxer):
    """Without the sniff (the file changed after it, or the sniff is fooled), the arguments
    still let only the named, allow-listed demuxer read the file: an HLS playlist that ffprobe
    follows by default gets nothing out of it."""
    real = ffmpeg_video("real.mp4", audio=False)
    playlist = tmp_path / "playlist.mp4"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n{real}\n#EXT-X-ENDLIST\n")
    plain = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", str(playlist)], capture_output=True, text=True
    )
    assert "codec_name=h264" in plain.stdout  # what ffprobe does without the gate
    args = gate.input_args(playlist, container=gate.Container(demuxer))
    assert args[-2:] == ["-i", f"file:{playlist}"]
    assert args[:2] == ["-protocol_whitelist", "file"] and ["-f", demuxer] == args[4:6]
    if demuxer == "mov":
        assert "-enable_drefs" in args and args[args.index("-enable_drefs") + 1] == "0"
    gated = subprocess.run(["ffprobe", "-v", "error", *args, "-show_streams"], capture_output=True, text=True)
    assert gated.returncode != 0 and "codec_name" not in gated.stdout
    # And with no explicit demuxer, the whitelist alone refuses hls.
    unnamed = [a for a in args if a not in ("-f", demuxer)]
    gated = subprocess.run(
        ["ffprobe", "-v", "error", *unnamed, "-show_streams"], capture_output=True, text=True
    )
    assert "not on whitelist" in gated.stderr and "codec_name" not in gated.stdout


def test_image_sequence_pattern_names_are_not_expanded(ffmpeg_video, tmp_path):
    """A name with a frame-number pattern is a literal file name to the gate (`file:` input,
    explicit demuxer): the frames of seq_001.jpg … never reach the analysis."""
    for k in (1, 2, 3):
        _ff(
            "-f", "lavfi", "-i", "testsrc2=size=320x240", "-frames:v", "1", str(tmp_path / f"seq_{k:03d}.jpg")
        )
    pattern = tmp_path / "seq_%03d.jpg"
    pattern.write_bytes((tmp_path / "seq_001.jpg").read_bytes())
    with pytest.raises(InvalidVideoError, match="still image"):
        probe_video(pattern)
    text_pattern = tmp_path / "clip_%d.mp4"
    text_pattern.write_text("not a video\n")
    with pytest.raises(InvalidVideoError, match="an image sequence pattern"):
        probe_video(text_pattern)
    # A real video whose name looks like a pattern is read as the file it is.
    video = tmp_path / "take_%02d.mp4"
    video.write_bytes(ffmpeg_video("v.mp4", audio=False).read_bytes())
    p = probe_video(video)
    assert len(list(sample_frames(video, p, 5))) == expected_frame_count(p, 5)


@pytest.mark.parametrize(
    "content, what",
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "still image \\(PNG\\)"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64, "still image \\(HEIF/AVIF"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64, "a WAV audio file"),
        (b"FLV\x01\x05" + b"\x00" * 64, "an FLV video \\(container not accepted\\)"),
        (b"\x00\x00\x00\x01\x67\x42" + b"\x00" * 64, "raw H.264/H.265 elementary stream"),
        (b"hello, this is a note\n", "a text file"),
        (b"http://example.com/video.mp4\n", "holding a URL"),
    ],
)
def test_sniff_names_what_the_file_is(tmp_path, content, what):
    path = tmp_path / "x.mp4"
    path.write_bytes(content)
    with pytest.raises(InvalidVideoError, match=what):
        probe_video(path)


@pytest.fixture(scope="module")
def lying_header(tmp_path_factory) -> tuple[Path, Path]:
    """(honest, lying): 20 minutes of 25 FPS video (30 000 tiny frames, ~1.4 MB), and the same
    samples with every header duration patched to say 60 s. Built in well under a second."""
    tmp = tmp_path_factory.mktemp("lying")
    second = tmp / "second.mp4"
    _ff(
        *("-f", "lavfi", "-i", "color=c=gray:size=320x240:rate=25", "-t", "1"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-crf", "51", "-pix_fmt", "yuv420p", str(second)),
    )
    honest = tmp / "honest.mp4"
    _ff("-stream_loop", "1199", "-i", str(second), "-c", "copy", "-use_editlist", "0", str(honest))
    lying = tmp / "lying.mp4"
    lying.write_bytes(set_durations(honest.read_bytes(), 60.0))
    return honest, lying


def test_lying_header_is_refused_from_the_packets(lying_header):
    honest, lying = lying_header
    assert probe_video(honest).duration == pytest.approx(1200, abs=1)
    with pytest.raises(InvalidVideoError, match=r"header says 60\.0 s but the video stream runs 1200\.0 s"):
        probe_video(lying)
    # ffprobe's header view is what the old check trusted.
    header = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(lying)],
        capture_output=True,
        text=True,
    )
    assert float(header.stdout) == pytest.approx(60.0)


def test_edit_list_lead_in_is_not_a_lying_length(tmp_path):
    """A lossless cut from the middle of a long GOP keeps 8 s of lead-in packets that the edit
    list discards: the stream shown is 2 s, as the header says, and the file is accepted."""
    src, cut = tmp_path / "gop.mp4", tmp_path / "cut.mp4"
    _ff(
        *("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "12", "-g", "250"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(src)),
    )
    _ff("-ss", "8", "-i", str(src), "-t", "2", "-c", "copy", str(cut))
    p = probe_video(cut)
    assert p.duration == pytest.approx(2.0, abs=0.05) and p.stream_duration == pytest.approx(2.0, abs=0.05)
    assert p.n_packets == 50 and p.n_frames == 250  # 200 lead-in packets decoded, never shown
    assert len(list(sample_frames(cut, p, 5))) == 10


def test_audio_that_outlasts_the_picture_is_not_a_lying_length(tmp_path):
    path = tmp_path / "long_audio.mp4"
    _ff(
        *("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=5"),
        *("-f", "lavfi", "-i", "sine=frequency=440:duration=9"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)),
    )
    p = probe_video(path)
    assert p.duration == pytest.approx(5.0, abs=0.05) and p.has_audio


def test_streamed_matroska_without_a_length_is_measured_not_refused(tmp_path):
    """A WebM/Matroska written to a pipe (a browser's MediaRecorder, a live capture) has no
    Duration: its length is what the packets cover."""
    path = tmp_path / "streamed.mkv"
    with path.open("wb") as out:
        subprocess.run(
            [
                *(
                    "ffmpeg",
                    "-nostdin",
                    "-v",
                    "error",
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=320x240:rate=25:duration=3",
                ),
                *("-f", "lavfi", "-i", "sine=frequency=440:duration=3"),
                *(
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-pix_fmt",
                    "yuv420p",
                    "-f",
                    "matroska",
                    "pipe:",
                ),
            ],
            stdout=out,
            check=True,
        )
    header = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
    )
    assert header.stdout.strip() == "N/A"
    p = probe_video(path)
    assert p.duration == pytest.approx(3.0, abs=0.1) and p.has_audio
    assert len(list(sample_frames(path, p, 5))) == 15


def test_sampling_stops_at_the_validated_length(lying_header):
    """Belt to the braces: handed a probe that believes the header (60 s), the sampler reads
    the input only to 61 s (-t) and never yields more than the grid's 300 frames + 2."""
    honest, lying = lying_header
    believed = dataclasses.replace(probe_video(honest), duration=60.0, stream_duration=None, n_packets=None)
    sampler = sample_frames(lying, believed, 5)
    frames = list(sampler)
    assert len(frames) == sampler.frame_limit == 302 and frames[-1].frame_id == 301
    assert any("validated length of 60.0 s" in w for w in sampler.warnings)
    assert "-t" in sampler._command() and sampler._command()[sampler._command().index("-t") + 1] == "61.000"


def test_length_limits_use_the_stream_not_the_header(ffmpeg_video):
    p = probe_video(ffmpeg_video(duration=3.0, audio=False))
    longer = dataclasses.replace(p, duration=1.0, stream_duration=3.0)
    with pytest.raises(InvalidVideoError, match="duration 3.0 s exceeds"):
        validate_probe(longer, **{**SCOPE, "max_duration_seconds": 2})
    with pytest.raises(InvalidVideoError, match="75 frames exceed the limit of 50"):
        validate_probe(p, **SCOPE, max_frames=50)


@pytest.fixture(scope="module")
def resolution_bomb(tmp_path_factory) -> Path:
    """A 16000x8000 H.264 file of 2 frames (~380 KB)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.mp4"
    _ff(
        *("-f", "lavfi", "-i", "color=c=gray:size=16000x8000:rate=25", "-frames:v", "2"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)),
    )
    return path


def _media_case(path: Path) -> dict:
    """tests/media_case.py in a subprocess: outcome and peak RSS of it and its ffmpeg children."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.media_case", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The per-video memory bound of the media layer stated in README.md ("Per-video memory"):
# ffprobe/ffmpeg below 400 MB, the Python side below 300 MB, for any input.
FFMPEG_RSS_BOUND_MB, PYTHON_RSS_BOUND_MB = 400, 300


def test_resolution_bomb_is_refused_before_decoding(resolution_bomb, ffmpeg_video):
    with pytest.raises(InvalidVideoError, match=r"16000x8000 .* exceeds the limit of 8,847,360 pixels"):
        probe_video(resolution_bomb)
    # A probe that claims a small size does not get the sampler past the decoder's own cap.
    small = probe_video(ffmpeg_video(audio=False))
    sampler = sample_frames(resolution_bomb, small, 25)
    with pytest.raises(InvalidVideoError, match="exceeds the limit"):
        list(sampler)
    assert sampler.frames_read == 0
    big = dataclasses.replace(small, width=16000, height=8000, coded_width=16000, coded_height=8000)
    with pytest.raises(InvalidVideoError, match="exceeds the limit"):
        list(sample_frames(resolution_bomb, big, 25))  # refused from the probe, before ffmpeg
    with pytest.raises(InvalidVideoError, match="exceeds the limit"):
        validate_probe(big, **SCOPE)
    case = _media_case(resolution_bomb)
    assert case["outcome"] == "refused" and "exceeds the limit" in case["reason"]
    assert case["child_rss_mb"] < FFMPEG_RSS_BOUND_MB and case["rss_mb"] < PYTHON_RSS_BOUND_MB, case


def test_4k_is_decoded_at_1080p_inside_ffmpeg(tmp_path):
    """Above 1080p but within the pixel cap: frames come out at 1080p on their shorter side
    (aspect kept), so what Python holds does not grow with the input; memory stays bounded."""
    uhd = tmp_path / "uhd.mp4"
    _ff(
        *("-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=25", "-frames:v", "3"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(uhd)),
    )
    p = probe_video(uhd)
    assert any("scaled down to 1080p" in w for w in validate_probe(p, **SCOPE))
    frames = list(sample_frames(uhd, p, 25))
    assert len(frames) == 3 and frames[0].image.shape == (1080, 1920, 3)
    case = _media_case(uhd)
    assert case["outcome"] == "completed" and case["shape"] == [1080, 1920, 3]
    assert case["child_rss_mb"] < FFMPEG_RSS_BOUND_MB and case["rss_mb"] < PYTHON_RSS_BOUND_MB, case


def test_frames_up_to_1080p_decode_exactly_as_a_plain_ffmpeg_decode():
    """The gate, -t and the scale step change nothing for in-scope inputs: same bytes as the
    pre-gate command."""
    path = shared_clip("ffpp_c23_real_004.mp4")
    p = probe_video(path)
    plain = subprocess.run(
        [
            *("ffmpeg", "-nostdin", "-v", "error", "-i", str(path)),
            *("-filter_complex", "[0:v]fps=fps=5:round=near[s0]", "-map", "[s0]"),
            *("-f", "rawvideo", "-pix_fmt", "rgb24", "-vsync", "passthrough", "pipe:"),
        ],
        capture_output=True,
        check=True,
    ).stdout
    ours = b"".join(f.image.tobytes() for f in sample_frames(path, p, 5))
    assert ours == plain


def test_output_size_caps_the_shorter_side():
    assert output_size(1280, 720) == (1280, 720)
    assert output_size(1920, 1080) == (1920, 1080)
    assert output_size(3840, 2160) == (1920, 1080)
    assert output_size(2160, 3840) == (1080, 1920)
    assert output_size(4096, 1600) == (2765, 1080)
    assert output_size(640, 480, None) == (640, 480)


@pytest.fixture
def stuck_binary(tmp_path, monkeypatch):
    """Point ffprobe/ffmpeg at a program that never finishes (a wedged decoder)."""

    def install(name: str) -> None:
        fake = tmp_path / f"stuck-{name}"
        fake.write_text("#!/bin/sh\nexec sleep 60\n")
        fake.chmod(0o755)
        monkeypatch.setenv(f"{name.upper()}_BINARY", str(fake))
        find_binary.cache_clear()

    yield install
    find_binary.cache_clear()


def test_ffprobe_timeout_is_a_one_line_reason(ffmpeg_video, stuck_binary):
    path = ffmpeg_video(audio=True)
    stuck_binary("ffprobe")
    with pytest.raises(InvalidVideoError, match="ffprobe did not finish within 1 s") as err:
        probe_video(path, timeout_s=1)
    assert str(err.value) == f"{path}: ffprobe did not finish within 1 s"
    with pytest.raises(InvalidVideoError, match="did not finish within 1 s"):
        has_audio_stream(path, timeout_s=1)


def test_ffmpeg_timeouts_are_one_line_reasons(ffmpeg_video, stuck_binary):
    path = ffmpeg_video(audio=True)
    p = probe_video(path)
    stuck_binary("ffmpeg")
    with pytest.raises(InvalidVideoError, match="ffmpeg \\(frame sampling\\) produced nothing for 1 s"):
        list(sample_frames(path, p, 5, stall_timeout_s=1))
    with pytest.raises(InvalidVideoError, match="audio decoding did not finish within 1 s"):
        extract_audio(path, has_audio=True, timeout_s=1)


def test_one_frame_video_is_too_short_not_undecodable(tmp_path):
    one, two = tmp_path / "one.mp4", tmp_path / "two.mp4"
    for path, n in ((one, "1"), (two, "2")):
        _ff(
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-frames:v",
            n,
            "-pix_fmt",
            "yuv420p",
            str(path),
        )
    p = probe_video(one)
    assert p.n_packets == 1
    with pytest.raises(InvalidVideoError, match=r"too short: 1 frame \(0.04 s\)"):
        validate_probe(p, **SCOPE)
    # Two frames (0.08 s) pass the scope but hold no point of the 5 FPS grid: said so, honestly.
    p = probe_video(two)
    validate_probe(p, **SCOPE)
    with pytest.raises(
        InvalidVideoError, match="too short: 2 frames, 0.08 s is less than one sampling interval"
    ):
        list(sample_frames(two, p, 5))


def test_odd_rotation_does_not_claim_upright(ffmpeg_video, tmp_path):
    src = ffmpeg_video(size="320x240", audio=False)
    tilted = tmp_path / "tilted.mp4"
    tilted.write_bytes(set_rotation(src.read_bytes(), 45.0))
    p = probe_video(tilted)
    assert p.rotation % 90 != 0 and (p.width, p.height) == (320, 240)
    warning = next(w for w in validate_probe(p, **SCOPE) if "rotated" in w)
    assert "upright" not in warning and "not a multiple of 90°" in warning and "corners cut off" in warning
    frame = next(iter(sample_frames(tilted, p, 5))).image
    assert frame.shape == (240, 320, 3)
    assert frame[0, 0].max() < 16 and frame[-1, -1].max() < 16  # the rotated-out corners are black
    upright = ffmpeg_video("upright.mp4", size="320x240", audio=False)
    assert next(iter(sample_frames(upright, probe_video(upright), 5))).image[0, 0].max() > 16


def test_hostile_media_table(ffmpeg_video, tmp_path, lying_header, resolution_bomb):
    """Every hostile-media class through the media layer in a subprocess (tests/media_case.py):
    its outcome, wall time and peak memory go into docs/RELIABILITY.md ("Hostile media")."""
    real = ffmpeg_video("real.mp4", audio=True)
    refs = _referencing_files(tmp_path, str(real))
    uhd = tmp_path / "uhd.mp4"
    _ff(
        *("-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=25", "-frames:v", "3"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(uhd)),
    )
    one = tmp_path / "one.mp4"
    _ff(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25",
        "-frames:v",
        "1",
        "-pix_fmt",
        "yuv420p",
        str(one),
    )
    tilted = tmp_path / "tilted.mp4"
    tilted.write_bytes(set_rotation(ffmpeg_video("t.mp4", audio=False).read_bytes(), 45.0))
    pattern = tmp_path / "clip_%03d.mp4"
    pattern.write_text("not a video\n")
    aliased = tmp_path / "aliased.mp4"
    aliased.write_bytes(with_external_dref(real.read_bytes(), real.name))
    cases = [
        (
            "HLS playlist named .mp4, pointing at a local video",
            refs["playlist.mp4"][0],
            "refused",
            "HLS playlist",
        ),
        (
            "concat list named .mp4, pointing at a local video",
            refs["concat.mp4"][0],
            "refused",
            "concat list",
        ),
        ("MPEG-DASH manifest named .mp4", refs["manifest.mp4"][0], "refused", "DASH manifest"),
        ("SDP description named .mp4 (network streams)", refs["session.mp4"][0], "refused", "SDP"),
        ("image-sequence pattern name (`%03d`)", pattern, "refused", "image sequence pattern"),
        ("MP4 whose video data is an alias to a local video", aliased, "refused", "in another file"),
        ("header says 60 s, stream holds 20 min (1.4 MB)", lying_header[1], "refused", "header says 60.0 s"),
        ("16000x8000 H.264 (2 frames, 380 KB)", resolution_bomb, "refused", "exceeds the limit"),
        ("3840x2160 H.264 (within the pixel limit)", uhd, "completed", "scaled down to 1080p"),
        ("one-frame video", one, "refused", "too short: 1 frame"),
        ("45° display matrix", tilted, "completed", "not a multiple of 90°"),
    ]
    rows, failures = [], []
    for label, path, expected, needle in cases:
        case = _media_case(path)
        text = case.get("reason") or " ".join(case.get("warnings") or [])
        if case["outcome"] == "completed":
            text = f"{case['frames']} frames of {case['shape'][1]}x{case['shape'][0]}; " + text
        ok = case["outcome"] == expected and needle in text
        if not ok:
            failures.append((label, case))
        rows.append(
            f"| {label} | {case['outcome']} | {text.replace('|', '/')[:150]} | {case['seconds']:.2f} | "
            f"{case['rss_mb']:.0f} / {case['child_rss_mb']:.0f} | {'yes' if ok else 'NO'} |"
        )
    assert not failures, failures
    lines = [
        "## Hostile media",
        "",
        "Each file went through the media layer every entry point uses (probe gate, probe_video,",
        "validate_probe with the default scope, frame sampling to the end, audio extraction) in its",
        "own process (`tests/media_case.py`). *s* is that process's wall time including Python start",
        "(about 0.3 s); *RSS* its peak and the peak of its largest ffprobe/ffmpeg child, in MB",
        "(the child figure includes the few tens of MB it inherits at fork). 2-core machine shared",
        "with other jobs: times are indicative. The same classes go through the CLI and Dagster in",
        "*Bad inputs* above; wedged ffprobe/ffmpeg runs end in one line too (`ffprobe did not finish",
        "within 60 s`, `ffmpeg (frame sampling) produced nothing for 120 s`; tests",
        "`test_ffprobe_timeout_is_a_one_line_reason`, `test_ffmpeg_timeouts_are_one_line_reasons`).",
        "",
        "| input | outcome | reason / result | s | RSS python / ffmpeg MB | as documented |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    write_reliability_section("hostile-media", lines)


def test_frame_png_is_lossless_with_the_fast_filter() -> None:
    """Frames are stored as PNG with one fixed row filter (media/images.py): still bit-exact."""
    from dagster_deepfake.media.images import decode_image, encode_png

    rng = np.random.default_rng(3)
    gradient = np.broadcast_to(np.arange(320, dtype=np.uint16)[None, :, None] % 256, (180, 320, 3))
    for image in (rng.integers(0, 256, (180, 320, 3), dtype=np.uint8), gradient.astype(np.uint8)):
        png = encode_png(np.ascontiguousarray(image))
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(decode_image(png), image)
