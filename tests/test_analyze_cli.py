"""`dagster-deepfake analyze` refuses a bad file at the probe gate, before the model code loads:
one line, exit 2, and torch never imported (a refusal costs about a second, not a model load)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from commands.cli import main
code = main(["analyze", sys.argv[1]])
print("torch imported:", "torch" in sys.modules, "exit:", code)
"""


def test_refusal_comes_before_the_model_code(tmp_path):
    playlist = tmp_path / "clip.mp4"
    playlist.write_text("#EXTM3U\n#EXTINF:10,\n/etc/hostname\n")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(playlist)], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "torch imported: False exit: 2", proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "an HLS playlist" in lines[0] and "Traceback" not in proc.stderr


def test_every_help_page_renders(capsys):
    """`--help` of the command and of each subcommand prints usage and exits 0 (argparse formats
    help strings with %: a bare one used to end the top-level help in a traceback)."""
    import pytest

    from commands.cli import build_parser, main

    subcommands = next(a for a in build_parser()._actions if a.choices and isinstance(a.choices, dict))
    for argv in (["--help"], *([name, "--help"] for name in subcommands.choices)):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0, argv
        assert "usage:" in capsys.readouterr().out, argv
