"""requirements.lock matches pyproject.toml and what is installed (docs/ARCHITECTURE.md §6).

`make setup` installs the lock with --no-deps, so nothing resolves at install time: a dependency
added to pyproject.toml without `make lock` would be silently missing. These tests catch that.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def test_lock_covers_pyproject():
    assert lock.problems() == []


def test_every_project_requirement_is_pinned_with_hashes():
    entries = lock.read_lock()
    for text in lock.project_requirements():
        name = lock._packaging()[0](text).name
        entry = entries[lock.norm(name)]
        assert entry["hashes"], name
    assert entries["torch"]["version"] == "2.14.1" and entries["torchvision"]["version"] == "0.29.1"


def _pyproject_with(tmp_path: Path, extra_dep: str) -> Path:
    text = (ROOT / "pyproject.toml").read_text()
    out = tmp_path / "pyproject.toml"
    out.write_text(text.replace("dependencies = [\n", f'dependencies = [\n  "{extra_dep}",\n', 1))
    return out


def test_missing_and_incompatible_dependencies_are_reported(tmp_path):
    missing = lock.problems(pyproject=_pyproject_with(tmp_path, "left-pad-not-locked>=1"))
    assert any("left-pad-not-locked" in p and "missing" in p for p in missing)
    timm = lock.read_lock()["timm"]["version"]
    bad = lock.problems(pyproject=_pyproject_with(tmp_path, f"timm!={timm}"))
    assert any(p.startswith("timm:") and timm in p for p in bad)


def test_unmatched_torch_pair_is_reported(tmp_path):
    text = (
        (ROOT / "requirements.lock").read_text().replace("\ntorchvision==0.29.1 ", "\ntorchvision==0.28.0 ")
    )
    assert "torchvision==0.28.0" in text
    (tmp_path / "requirements.lock").write_text(text)
    bad = lock.problems(lock=tmp_path / "requirements.lock")
    assert any("matching pair" in p for p in bad)


def test_check_command_fails_on_stale_lock(tmp_path):
    # The same check `make setup` runs before installing: a non-zero exit and the reason.
    stale = _pyproject_with(tmp_path, "left-pad-not-locked>=1")
    code = (
        "import sys, importlib.util as u; s = u.spec_from_file_location('lock', sys.argv[1]); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); m.PYPROJECT = __import__('pathlib').Path(sys.argv[2]); "
        "sys.exit(m.main(['check']))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "scripts" / "lock.py"), str(stale)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "left-pad-not-locked" in res.stderr and "make lock" in res.stderr


def test_installed_versions_are_the_locked_ones():
    entries = lock.read_lock()
    differ = {}
    for dist in md.distributions():
        entry = entries.get(lock.norm(dist.metadata["Name"]))
        if entry is not None and dist.version != entry["version"]:
            differ[entry["name"]] = (dist.version, entry["version"])
    assert differ == {}, f"installed vs locked (run `make setup`): {differ}"


def _local_wheels() -> list[Path]:
    """torch/torchvision wheels in the local mirror pip is configured with (this machine kind)."""
    pip = Path(sys.executable).with_name("pip")
    found = []
    for arg in lock.uv_args(str(pip)):
        if arg.startswith("file://"):
            files = Path(arg[len("file://") :]).parent / "files"
            found += sorted(files.glob("torch-2.14.1-cp311-*x86_64.whl"))
            found += sorted(files.glob("torchvision-0.29.1-cp311-*x86_64.whl"))
    return found


def test_local_torch_wheels_match_the_locked_hashes():
    # pip --require-hashes hashes the file it is about to install; do the same over the mirror's copies.
    wheels = _local_wheels()
    if not wheels:
        pytest.skip("no local torch mirror in pip's config on this machine")
    entries = lock.read_lock()
    for wheel in wheels:
        digest = hashlib.sha256()
        with wheel.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        name = wheel.name.split("-")[0]
        assert digest.hexdigest() in entries[name]["hashes"], wheel
