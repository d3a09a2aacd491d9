"""Evaluation files (JSONL), in the formats of the project's eval data README:

- pairwise:        {"id", "prompt", "chosen", "rejected", "subset"?, "context"?}
                   ("rejected" may also be a list of 3 for best-of-4 files)
- reconstruction:  {"id", "instruction", "response"}
- best-of-N:       {"id", "prompt", "responses": [...], "scores": [...], "context"?}
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Dataset:
    name: str
    kind: str  # pairwise | reconstruction | bestofn
    rows: list[dict] = field(default_factory=list)


def detect_kind(row: dict) -> str:
    if "chosen" in row and "rejected" in row:
        return "pairwise"
    if "responses" in row and "scores" in row:
        return "bestofn"
    if "instruction" in row and "response" in row:
        return "reconstruction"
    raise ValueError(f"unknown row format with keys {sorted(row)}")


def load(path: Path, limit: int | None = None, seed: int = 0) -> Dataset:
    """Read a file; with `limit`, a seeded random sample of that many rows (kept in file order)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no rows")
    kind = detect_kind(rows[0])
    if limit is not None and limit < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows = [rows[i] for i in keep]
    return Dataset(name=Path(path).stem, kind=kind, rows=rows)
