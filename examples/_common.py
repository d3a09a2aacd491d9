"""Shared bits of the examples: the service URL and the sample data."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"
URL = os.environ.get("FLIP_REWARD_URL", "http://127.0.0.1:8000")


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def selfinstruct(n: int) -> list[dict]:
    return load_jsonl(SAMPLES / "selfinstruct_reconstruction_64.jsonl")[:n]
