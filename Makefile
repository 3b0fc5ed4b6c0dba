# dagster-deepfake — see README.md. Every target sets the machine up first (idempotent).
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export PYTHONUNBUFFERED := 1
export XDG_RUNTIME_DIR ?= /tmp

.PHONY: setup demo test dagit lint fmt bench stop clean

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

bench: setup
	$(BIN)/dagster-deepfake bench --out bench-out

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

stop:
	-$(BIN)/dagster-deepfake stop

clean: stop
	rm -rf .artifacts .bucket .pgdata .dagster_home .pytest_cache
