"""Just enough ISO-BMFF (MP4/MOV) box walking to build hostile test files: lying durations,
odd display matrices, and the box-level mutations of the fuzzer."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# Boxes whose payload is a sequence of boxes.
CONTAINERS = {
    b"moov",
    b"trak",
    b"mdia",
    b"minf",
    b"stbl",
    b"edts",
    b"dinf",
    b"mvex",
    b"moof",
    b"traf",
    b"udta",
}


@dataclass(frozen=True)
class Box:
    offset: int  # of the size field
    size: int  # whole box, header included
    type: bytes
    header: int  # 8, or 16 with a 64-bit size
    path: str  # "moov/trak/mdia/mdhd"

    @property
    def payload(self) -> int:
        return self.offset + self.header

    @property
    def end(self) -> int:
        return self.offset + self.size


def boxes(data: bytes | bytearray, start: int = 0, end: int | None = None, parent: str = "") -> Iterator[Box]:
    """Every box, depth first, with its path. Stops quietly at the first malformed size."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1 and pos + 16 <= end:
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        path = f"{parent}/{kind.decode('latin-1')}" if parent else kind.decode("latin-1")
        box = Box(pos, size, kind, header, path)
        yield box
        if kind in CONTAINERS:
            yield from boxes(data, pos + header, pos + size, path)
        pos += size


def find(data: bytes | bytearray, suffix: str) -> list[Box]:
    return [b for b in boxes(data) if b.path.endswith(suffix)]


def _timescale_duration_offsets(data: bytes | bytearray, box: Box) -> tuple[int | None, int, int]:
    """(offset of timescale or None, offset of duration, duration width) in mvhd/tkhd/mdhd."""
    version = data[box.payload]
    p = box.payload + 4
    if box.type == b"tkhd":
        return (None, p + 16, 4) if version == 0 else (None, p + 24, 8)
    return (p + 8, p + 12, 4) if version == 0 else (p + 16, p + 20, 8)


def set_durations(data: bytes, seconds: float) -> bytes:
    """Make every header duration (mvhd, each tkhd and mdhd) claim `seconds`; samples untouched."""
    out = bytearray(data)
    mvhd = find(out, "moov/mvhd")[0]
    ts_off, _, _ = _timescale_duration_offsets(out, mvhd)
    movie_scale = struct.unpack(">I", out[ts_off : ts_off + 4])[0]
    for box in find(out, "mvhd") + find(out, "tkhd") + find(out, "mdhd"):
        ts_off, dur_off, width = _timescale_duration_offsets(out, box)
        scale = movie_scale if ts_off is None else struct.unpack(">I", out[ts_off : ts_off + 4])[0]
        value = int(seconds * scale)
        out[dur_off : dur_off + width] = value.to_bytes(width, "big")
    return bytes(out)


def set_rotation(data: bytes, degrees: float) -> bytes:
    """Write a display matrix rotating the first video track by `degrees` (tkhd matrix)."""
    out = bytearray(data)
    for tkhd in find(out, "moov/trak/tkhd"):
        version = out[tkhd.payload]
        # tkhd v0 payload: version/flags 4, times 8, id 4, reserved 4, duration 4, reserved 8,
        # layer 2, group 2, volume 2, reserved 2 -> matrix at +40 (v1: +52), 9 x 32-bit.
        matrix = tkhd.payload + (52 if version == 1 else 40)
        width = struct.unpack(">I", out[matrix + 36 : matrix + 40])[0]
        if width == 0:  # an audio track
            continue
        rad = math.radians(degrees)
        a, b = math.cos(rad), math.sin(rad)
        values = [a, b, 0.0, -b, a, 0.0, 0.0, 0.0, 1.0]
        packed = b""
        for i, v in enumerate(values):
            fixed = int(round(v * (1 << 30 if i in (2, 5, 8) else 1 << 16)))
            packed += struct.pack(">i", fixed)
        out[matrix : matrix + 36] = packed
        break
    return bytes(out)


def _alias_entry(target_name: str) -> bytes:
    """A QuickTime alias ('alis') data-reference entry naming `target_name` in the movie's own
    folder (nlvl_from = nlvl_to = 1): what ffmpeg's mov demuxer opens when enable_drefs is on."""
    name = target_name.encode()
    body = bytearray()
    body += b"\x00" * 10
    body += bytes([3]) + b"vol".ljust(27, b"\x00")
    body += b"\x00" * 12
    body += bytes([len(name[:63])]) + name[:63].ljust(63, b"\x00")
    body += b"\x00" * 16
    body += struct.pack(">HH", 1, 1)  # nlvl_from, nlvl_to
    body += b"\x00" * 16
    path = b"/" + name
    body += struct.pack(">HH", 2, len(path)) + path + (b"\x00" if len(path) % 2 else b"")
    body += struct.pack(">hH", -1, 0)
    return struct.pack(">I", 12 + len(body)) + b"alis" + b"\x00\x00\x00\x00" + bytes(body)


def with_external_dref(data: bytes, target_name: str) -> bytes:
    """The file with its video track's data reference pointing at another file (an alias). The
    index (moov) must come after the media data, so no chunk offset moves."""
    drefs = [d for d in find(data, "minf/dinf/dref")]
    moov = find(data, "moov")[0]
    mdat = find(data, "mdat")[0]
    assert drefs and moov.offset > mdat.offset, "needs a moov-last MP4"
    dref = drefs[0]
    new = b"\x00\x00\x00\x00" + struct.pack(">I", 1) + _alias_entry(target_name)
    new = struct.pack(">I", 8 + len(new)) + b"dref" + new
    delta = len(new) - dref.size
    out = bytearray(data[: dref.offset] + new + data[dref.end :])
    for box in boxes(data):
        if box.offset < dref.offset < box.end and box.header == 8:  # ancestors of the dref
            size = struct.unpack(">I", data[box.offset : box.offset + 4])[0]
            out[box.offset : box.offset + 4] = struct.pack(">I", size + delta)
    return bytes(out)
