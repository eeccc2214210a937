# One image for every service; the service is chosen by the command (see compose.yaml).
# The shopper page's JavaScript is bundled in a Node.js stage; only its output is kept.
FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/src ./src
RUN npm run build

FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY runtime ./runtime
COPY harness ./harness
COPY services ./services
COPY tools ./tools
COPY web/index.html web/style.css ./web/
COPY --from=web /web/dist ./web/dist
# CPU torch by default; the GPU profile overrides TORCH_SPEC/PIP_EXTRA at build time.
ARG TORCH_SPEC="torch==2.13.0"
# e.g. --build-arg PIP_EXTRA="--index-url <the PyTorch CPU wheel index>" keeps the image small
ARG PIP_EXTRA=""
RUN pip install $PIP_EXTRA "$TORCH_SPEC" && pip install ".[serve,gpu]"
USER nobody
