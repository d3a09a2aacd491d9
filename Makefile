# The two commands a new user needs: `make serve` and `make test` (each sets up .venv first).
.PHONY: setup serve test unit bench

setup:
	./scripts/setup.sh

serve: setup
	.venv/bin/flip-reward serve

test: setup
	.venv/bin/python -m pytest -q

unit: setup
	.venv/bin/python -m pytest -q tests/unit

# Throughput benchmark (service vs raw engine vs naive pipeline); table on stdout, JSON in bench/results/.
bench:
	.venv/bin/python bench/throughput.py
