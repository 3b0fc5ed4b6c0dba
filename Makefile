# dagster-deepfake — see README.md. Every target sets the machine up first (idempotent).
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export PYTHONUNBUFFERED := 1
export XDG_RUNTIME_DIR ?= /tmp

.PHONY: setup demo test dagit lint fmt bench audit lock stop clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/dagster-deepfake demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

dagit: setup
	$(BIN)/dagster-deepfake db-url >/dev/null
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# A local Celery fleet (docs/DEPLOY.md, "Celery workers"): Redis, two workers, daemon, webserver.
cluster: setup
	$(BIN)/dagster-deepfake cluster

bench: setup
	$(BIN)/dagster-deepfake bench --out bench-out

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# Known vulnerabilities in the installed dependencies: pip-audit over the venv's pinned versions
# (the project itself is not on PyPI). PyPI's advisory feed is the vulnerability service; when
# it cannot be reached, or cannot answer for a package, the target fails instead of passing
# with packages silently skipped (--strict).
audit: setup
	@$(BIN)/python -c "import pip_audit" 2>/dev/null || $(BIN)/pip install -q pip-audit
	@url=https://pypi.org/pypi/pip-audit/$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('pip-audit'))")/json; \
	  err=$$($(BIN)/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=30)" $$url 2>&1 | tail -n 1); \
	  [ -z "$$err" ] || { echo "audit: PyPI's vulnerability service is not usable from this machine ($$url: $$err); nothing was audited" >&2; exit 2; }
	@reqs=$$(mktemp); $(BIN)/pip list --format=freeze --exclude-editable > $$reqs; \
	  $(BIN)/pip-audit --vulnerability-service pypi --strict --no-deps --disable-pip -r $$reqs --progress-spinner off; \
	  rc=$$?; rm -f $$reqs; exit $$rc

# requirements.lock from pyproject.toml, from PyPI, with hashes (docs/ARCHITECTURE.md §6): pins
# already there are kept; UPGRADE=1 moves every package to its newest allowed release. Needs uv
# (`make setup` installs it from the lock); no setup dependency, so a stale lock can be fixed.
lock:
	@$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) scripts/lock.py compile

stop:
	-$(BIN)/dagster-deepfake stop

clean: stop
	rm -rf .artifacts .bucket .pgdata .dagster_home .models .demo-data .pytest_cache .cluster
