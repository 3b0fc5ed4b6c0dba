"""The case report as PDF: the HTML printed by headless Chromium, in its own process group, bounded by
a timeout (docs/API.md "Case report").

The HTML is written to a private temporary folder and opened as a file: it holds everything
inline and its CSP forbids every fetch, and Chromium runs with networking, sync and updates off
and a throw-away profile, so printing reaches nothing outside that folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from dagster_deepfake.casereport import CaseReportError

DEFAULT_TIMEOUT_SECONDS = 60.0
CHROMIUM_ENV = "DAGSTER_DEEPFAKE_CHROMIUM"  # another browser binary (chromium, chrome, headless_shell)


class ChromiumUnavailableError(CaseReportError):
    """No Chromium to print with (the API answers 503)."""


class PdfRenderError(CaseReportError):
    """Chromium ran but gave no PDF (crashed or ran out of time)."""


def find_chromium() -> str | None:
    """$DAGSTER_DEEPFAKE_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH, else /usr/bin/chromium."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured if Path(configured).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def chromium_args(binary: str, profile: str) -> list[str]:
    """The flags every headless run here uses (the tests drive Chromium with these too)."""
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
    ]


# A browser is a few hundred MB: at most this many print at once in one process (the API's threads).
_PRINTERS = threading.BoundedSemaphore(2)


def html_to_pdf(html: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS, chromium: str | None = None) -> bytes:
    """Print `html` to PDF bytes; raises ChromiumUnavailableError or PdfRenderError (one line each)."""
    binary = chromium or find_chromium()
    if binary is None:
        raise ChromiumUnavailableError(
            f"PDF rendering needs Chromium, which is not installed (apt-get install chromium, or set ${CHROMIUM_ENV})"
        )
    if not _PRINTERS.acquire(timeout=timeout):
        raise PdfRenderError(f"other reports were still printing after {timeout:g} s; try again")
    try:
        return _print(html, binary, timeout)
    finally:
        _PRINTERS.release()


def _print(html: str, binary: str, timeout: float) -> bytes:
    with tempfile.TemporaryDirectory(prefix="ddf-report-") as tmp:
        page, out = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        page.write_text(html, encoding="utf-8")
        args = [
            *chromium_args(binary, str(Path(tmp) / "profile")),
            "--no-pdf-header-footer",  # no file path or date in the margins
            "--print-to-pdf-no-header",  # the same flag in older Chromium
            f"--print-to-pdf={out}",
            page.as_uri(),
        ]
        try:
            # Its own session: on timeout the whole process group (renderer, zygote …) is killed.
            proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            raise ChromiumUnavailableError(f"cannot start Chromium ({binary}): {exc.strerror}") from None
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise PdfRenderError(f"Chromium did not print the report within {timeout:g} s") from None
        finally:
            _kill_group(proc.pid)
        data = out.read_bytes() if out.is_file() else b""
        if not data.startswith(b"%PDF-"):
            last = (stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise PdfRenderError(f"Chromium exited {proc.returncode} without a PDF: {last[0][:200]}")
        return data


def _kill_group(pid: int) -> None:
    """Chromium's helpers can outlive the browser process: end the group it started, if any is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
