"""The probe gate: the only way an untrusted file reaches ffprobe or ffmpeg.

Every ffprobe/ffmpeg call on an input file builds its input arguments with `input_args`, which

1. sniffs the first bytes and refuses, with one line naming what the file is, anything that is not
   one of the accepted video containers (an HLS playlist, a concat list, a DASH manifest, an SDP
   description, a still image, a WAV file, text, …);
2. names the demuxer explicitly (`-f mov|matroska|avi|mpegts`, chosen from the sniffed bytes) and
   also limits the demuxers ffmpeg may use at all (`-format_whitelist`), so no probing can pick
   a demuxer that opens other files (hls, concat, image2, dash, sdp, …), even if the file
   changes between the sniff and the open;
3. allows only the local-file protocol (`-protocol_whitelist file`, input given as `file:<abs
   path>` so a name is never read as a URL or a pattern);
4. keeps the mov demuxer's external references off explicitly (`-enable_drefs 0`,
   `-use_absolute_path 0`): MP4/MOV data references ("drefs") are the one way an accepted
   container can point at another file;
5. caps the decoder's picture size (`-max_pixels`) so a resolution bomb fails inside the decoder
   before it allocates frames, and optionally the duration read (`-t`).

The accepted demuxers (Matroska, AVI, MPEG-TS, and mov with drefs off) read only the file they
were given.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dagster_deepfake.errors import InvalidVideoError

# 4096x2160 (DCI 4K) pixels: the default ceiling on a video's picture size.
DEFAULT_MAX_PIXELS = 4096 * 2160

# Demuxers of real video containers. `mov` is ffmpeg's MP4/MOV/M4V/3GP demuxer.
VIDEO_DEMUXERS: tuple[str, ...] = ("mov", "matroska", "avi", "mpegts")
# Audio extraction additionally reads WAV (the platform's own `write_wav` output).
AUDIO_DEMUXERS: tuple[str, ...] = (*VIDEO_DEMUXERS, "wav")

ACCEPTED = "only MP4/MOV/M4V, Matroska/WebM, AVI and MPEG-TS files are opened"

_CONTAINER_NAMES = {
    "mov": "MP4/MOV",
    "matroska": "Matroska/WebM",
    "avi": "AVI",
    "mpegts": "MPEG-TS",
    "wav": "WAV",
}

# ISO-BMFF / QuickTime top-level boxes a file may open with (at byte 4).
_QT_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot", b"junk", b"uuid"}
# ftyp major brands of still-image HEIF/AVIF files (the mov demuxer would read them).
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_SNIFF_BYTES = 4096

_REFERS = "it refers to other files or URLs"
_BINARY_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a still image (PNG)"),
    (b"\xff\xd8\xff", "a still image (JPEG)"),
    (b"GIF87a", "a still image (GIF)"),
    (b"GIF89a", "a still image (GIF)"),
    (b"BM", "a still image (BMP)"),
    (b"II*\x00", "a still image (TIFF)"),
    (b"MM\x00*", "a still image (TIFF)"),
    (b"\x00\x00\x01\x00", "a still image (ICO)"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"ID3", "an MP3 audio file"),
    (b"fLaC", "a FLAC audio file"),
    (b"OggS", "an Ogg file (container not accepted)"),
    (b"FLV", "an FLV video (container not accepted)"),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "an ASF/WMV file (container not accepted)"),
    (b".RMF", "a RealMedia file (container not accepted)"),
    (b"\x06\x0e\x2b\x34", "an MXF file (container not accepted)"),
    (b"\x00\x00\x01\xba", "an MPEG program stream (container not accepted)"),
    (b"\x00\x00\x01\xb3", "a raw MPEG video elementary stream (no container)"),
    (b"\x00\x00\x00\x01", "a raw H.264/H.265 elementary stream (no container)"),
)
# A printf-style frame-number pattern in a name: what ffmpeg's image2 demuxer expands.
_PATTERN_NAME = re.compile(r"%0?\d*d")


@dataclass(frozen=True)
class Container:
    """What the sniff found: ffmpeg's demuxer name and a human name."""

    demuxer: str

    @property
    def name(self) -> str:
        return _CONTAINER_NAMES[self.demuxer]


def _is_mpegts(head: bytes) -> bool:
    for packet, offset in ((188, 0), (192, 4)):
        if len(head) >= offset + 2 * packet + 1 and all(head[offset + k * packet] == 0x47 for k in range(3)):
            return True
    return False


def _container(head: bytes) -> Container | None:
    box_size = int.from_bytes(head[:4], "big")
    if len(head) >= 8 and head[4:8] in _QT_BOXES and (box_size in (0, 1) or box_size >= 8):
        return Container("mov")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Container("matroska")
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return Container("avi")
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return Container("wav")
    if _is_mpegts(head):
        return Container("mpegts")
    return None


def _describe_text(text: str) -> str:
    stripped = text.lstrip("\ufeff \t\r\n")
    lower = stripped.lower()
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    if stripped.startswith("#EXTM3U") or "#EXT-X-" in stripped or "#EXTINF" in stripped:
        return f"an HLS playlist ({_REFERS})"
    if lower.startswith("ffconcat") or any(re.match(r"file\s+\S", line) for line in lines[:20]):
        return f"a concat list ({_REFERS})"
    if "<mpd" in lower or "urn:mpeg:dash" in lower:
        return f"an MPEG-DASH manifest ({_REFERS})"
    if "<smoothstreamingmedia" in lower:
        return f"a Smooth Streaming manifest ({_REFERS})"
    if lines and lines[0] == "v=0" and any(line.startswith(("m=", "c=", "o=")) for line in lines):
        return f"an SDP session description ({_REFERS})"
    if stripped.startswith(";FFMETADATA"):
        return "an ffmetadata text file"
    if stripped.startswith("WEBVTT") or re.match(r"\d+\s*\n\d\d:\d\d:\d\d[,.]\d+ -->", stripped):
        return "a subtitle file"
    if stripped.startswith("[playlist]") or lower.startswith("<?xml") and "<playlist" in lower:
        return f"a playlist ({_REFERS})"
    if re.match(r"[a-z][a-z0-9+.-]*://", lower):
        return f"a text file holding a URL ({_REFERS})"
    if lower.startswith(("<!doctype html", "<html")):
        return "an HTML page"
    if lower.startswith("<?xml"):
        return "an XML document"
    return "a text file"


def describe(head: bytes, name: str = "") -> str | None:
    """What the first bytes are when they are not an accepted container ("an HLS playlist (…)",
    "a still image (PNG)", "text" …); None when they are one, or when nothing is recognised."""
    container = _container(head)
    if container is not None:
        if container.demuxer == "mov" and head[4:8] == b"ftyp" and head[8:12] in _IMAGE_BRANDS:
            return f"a still image (HEIF/AVIF, brand {head[8:12].decode('latin-1').strip()})"
        return "a WAV audio file" if container.demuxer == "wav" else None
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a still image (WebP)"
    for magic, what in _BINARY_SIGNATURES:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The cut may split one multi-byte character; anything earlier is binary.
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if text and all(c.isprintable() or c.isspace() for c in text):
        what = _describe_text(text)
        if _PATTERN_NAME.search(name):
            return (
                f"an image sequence pattern ('{_PATTERN_NAME.search(name).group()}' in the name), or {what}"
            )
        return what
    if _PATTERN_NAME.search(name):
        return f"an image sequence pattern ('{_PATTERN_NAME.search(name).group()}' in the name)"
    return None


def sniff(path: str | os.PathLike[str], *, allow: tuple[str, ...] = VIDEO_DEMUXERS) -> Container:
    """The container of `path` from its first bytes; InvalidVideoError saying what the file is
    when it is not one of `allow`."""
    try:
        # O_NONBLOCK: a FIFO or device in place of a file must not block the open; only a
        # regular file is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InvalidVideoError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidVideoError(path, "not a regular file")
        head = os.read(fd, _SNIFF_BYTES)
    except OSError as exc:
        raise InvalidVideoError(path, f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if not head:
        raise InvalidVideoError(path, "empty file (0 bytes)")
    container = _container(head)
    what = describe(head, Path(path).name)
    if container is not None and container.demuxer in allow and (what is None or container.demuxer == "wav"):
        return container
    if what is not None:
        raise InvalidVideoError(path, f"{what}, not a video ({ACCEPTED})")
    if container is not None:  # recognised, but not accepted here
        raise InvalidVideoError(path, f"a {container.name} file, not a video ({ACCEPTED})")
    raise InvalidVideoError(path, f"not a readable media file (unrecognised binary data; {ACCEPTED})")


def input_args(
    path: str | os.PathLike[str],
    *,
    allow: tuple[str, ...] = VIDEO_DEMUXERS,
    container: Container | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    duration: float | None = None,
) -> list[str]:
    """ffprobe/ffmpeg arguments that open `path` through the gate, ending with `-i file:<path>`.

    `container` skips the sniff when the caller already did it; `duration` (seconds) stops
    reading the input there (ffmpeg only, `-t`).
    """
    container = container or sniff(path, allow=allow)
    if container.demuxer not in allow:
        raise InvalidVideoError(path, f"a {container.name} file, not a video ({ACCEPTED})")
    args = [
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        ",".join(allow),
        "-f",
        container.demuxer,
    ]
    if container.demuxer == "mov":
        args += ["-enable_drefs", "0", "-use_absolute_path", "0"]
    if max_pixels:
        args += ["-max_pixels", str(int(max_pixels))]
    if duration is not None:
        args += ["-t", f"{duration:.3f}"]
    return [*args, "-i", "file:" + os.path.abspath(path)]


_PIXELS = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count")


def pixel_limit_reason(width: int, height: int, max_pixels: int) -> str:
    named = " (4096x2160)" if max_pixels == DEFAULT_MAX_PIXELS else ""
    return (
        f"resolution {width}x{height} ({width * height:,} pixels) exceeds the limit of "
        f"{max_pixels:,} pixels per frame{named}; nothing was decoded"
    )


def oversize_in(stderr: str) -> tuple[int, int] | None:
    """(width, height) when ffmpeg's stderr says a picture exceeded `-max_pixels`."""
    found = _PIXELS.search(stderr)
    return (int(found.group(1)), int(found.group(2))) if found else None


def last_line(stderr: str | bytes, default: str, path: str | os.PathLike[str] | None = None) -> str:
    """ffmpeg's last stderr line, without its `[demuxer @ 0x…]` prefix and the `file:<path>: `
    that ffmpeg puts before errors about the input (the caller's message names the file)."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    line = (text.strip().splitlines() or [default])[-1].strip()
    line = re.sub(r"^(\[[^\]]+ @ 0x[0-9a-f]+\]\s*)+", "", line)
    if path is not None:
        line = line.removeprefix(f"file:{os.path.abspath(path)}: ")
    return line[:200] or default


def run_tool(
    cmd: list[str], path: str | os.PathLike[str], *, timeout_s: float, what: str
) -> subprocess.CompletedProcess[bytes]:
    """Run ffprobe/ffmpeg to completion, binary output; a timeout or a start failure becomes an
    InvalidVideoError ("ffprobe did not finish within 60 s") instead of a traceback."""
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InvalidVideoError(path, f"{what} did not finish within {timeout_s:g} s") from None
    except OSError as exc:
        raise InvalidVideoError(path, f"{what} could not be started ({exc.strerror or exc})") from None


class StreamedTool:
    """A running ffprobe/ffmpeg whose stdout is read incrementally, with stderr spooled to a
    temporary file (so a chatty decoder can never block on a full pipe), a wall-clock limit for
    the whole run (`timeout_s`) and one for any single wait on output (`stall_s`)."""

    def __init__(
        self,
        cmd: list[str],
        path: str | os.PathLike[str],
        *,
        what: str,
        timeout_s: float | None = None,
        stall_s: float | None = None,
        bufsize: int = -1,
    ) -> None:
        self.path, self.what = path, what
        self.timeout_s, self.stall_s = timeout_s, stall_s
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.killed_for: str | None = None
        self._started = time.monotonic()
        self._waiting_since: float | None = None
        self._done = threading.Event()
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=bufsize
            )
        except OSError as exc:
            self._stderr.close()
            raise InvalidVideoError(path, f"{what} could not be started ({exc.strerror or exc})") from None
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self._watch.start()

    def _watchdog(self) -> None:
        while not self._done.wait(0.2):
            now = time.monotonic()
            if self.timeout_s is not None and now - self._started > self.timeout_s:
                self.killed_for = f"{self.what} did not finish within {self.timeout_s:g} s"
            elif (
                self.stall_s is not None
                and self._waiting_since is not None
                and now - self._waiting_since > self.stall_s
            ):
                self.killed_for = f"{self.what} produced nothing for {self.stall_s:g} s"
            if self.killed_for:
                self.proc.kill()
                return

    def read(self, n: int) -> bytes:
        """Up to `n` bytes (fewer only at the end of output)."""
        self._waiting_since = time.monotonic()
        try:
            return self.stdout.read(n)
        finally:
            self._waiting_since = None

    def readline(self) -> bytes:
        self._waiting_since = time.monotonic()
        try:
            return self.stdout.readline()
        finally:
            self._waiting_since = None

    def stop(self) -> None:
        """Stop the process early (the caller has what it needs)."""
        if self.proc.poll() is None:
            self.proc.kill()

    def close(self) -> tuple[int, str]:
        """Wait for the process; (exit code, stderr text). Raises InvalidVideoError when the
        watchdog had to kill it."""
        self.stdout.close()
        code = self.proc.wait()
        self._done.set()
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - 65536))  # the end says why it stopped
        err = self._stderr.read().decode(errors="replace")
        self._stderr.close()
        if self.killed_for:
            raise InvalidVideoError(self.path, self.killed_for)
        return code, err
