# One image for every service; compose chooses the service by the command (compose.yaml).
#
#   docker build -t fashion-chameleon:cpu .                       the default: CPU-only torch
#   docker build -t fashion-chameleon:gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   CUDA torch (compose's gpu profile)
#
# Layers in the order they change: the page's bundle; the system libraries; the Python
# dependencies (from pyproject.toml, pinned by constraints.txt), which a code change never
# reinstalls; then the code. Base images are pinned to a supported release (bump deliberately;
# `docker buildx imagetools inspect IMAGE` gives a digest to pin harder).
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie
ARG NODE_IMAGE=node:24.11.1-trixie-slim

# The shopper page's JavaScript, bundled in a Node.js stage; only its output is kept.
FROM ${NODE_IMAGE} AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/src ./src
RUN npm run build

FROM ${PYTHON_IMAGE}
# HOME and MPLCONFIGDIR: the services run as users without a home (compose.yaml: one uid each, a
# read-only root with /tmp as tmpfs); MediaPipe imports matplotlib, which wants a writable folder.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib
# OpenCV's shared libraries (trixie's time_t transition renamed glib's to libglib2.0-0t64)
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0t64 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# torch from the index the build argument names, as an extra index beside PyPI: its local build tag
# (+cpu, +cu128) ranks above PyPI's plain release, so the CPU default never pulls CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0
COPY constraints.txt pyproject.toml ./
COPY scripts/requirements.py ./scripts/
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -c constraints.txt "${TORCH_SPEC}" \
 && python scripts/requirements.py serve gpu > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The code: this layer alone is rebuilt by a code change.
COPY README.md ./
COPY shared ./shared
COPY runtime ./runtime
COPY harness ./harness
COPY services ./services
COPY tools ./tools
COPY web/index.html web/style.css ./web/
COPY --from=web /web/dist ./web/dist
RUN pip install --no-deps . && python -m compileall -q /app
# No USER here: compose gives each service its own uid (and this image no home to write).
USER 65534:65534
