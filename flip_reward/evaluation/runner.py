"""`flip-reward eval`: score evaluation files with every method through the service, and measure.

All language-model methods go through the same service (a URL, or the app started in this
process) and therefore the same engine and model, so the comparison is fair. The trivial
baselines (length, random) and `relevance` (embedding cosine of instruction and response, no
language model) are computed here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from flip_reward.client import AsyncFlipClient
from flip_reward.evaluation import metrics
from flip_reward.evaluation.datasets import Dataset
from flip_reward.evaluation.probes import probes

if TYPE_CHECKING:
    from flip_reward.embeddings.encoder import Embedder

LENGTH_BUCKETS = ((0, 100, "<100 words"), (100, 300, "100-300 words"), (300, 10**9, ">300 words"))


@dataclass(frozen=True)
class MethodSpec:
    """One way of scoring: a service request (`options`) and how to read a score off its result."""

    name: str
    options: dict[str, Any] | None = None  # None: computed locally (length, random, relevance)
    read: str = "reward"  # reward | similarity:<name>


def lm_methods(modes: tuple[str, ...] = ("paper", "direct")) -> list[MethodSpec]:
    specs = [
        MethodSpec("likelihood (default)", {"method": "likelihood"}),
        MethodSpec("likelihood, no distractors", {"method": "likelihood", "distractors": 0}),
        MethodSpec("likelihood, no guard", {"method": "likelihood", "copy_guard": False}),
    ]
    for mode in modes:
        options = {"method": "generate", "prompt_mode": mode}
        for sim in ("f1", "embedding", "hybrid"):
            specs.append(MethodSpec(f"generate-{mode}-{sim}", options, f"similarity:{sim}"))
    specs.append(MethodSpec("llm-judge (1-10)", {"method": "judge"}))
    return specs


BASELINES = [MethodSpec("length (longer wins)"), MethodSpec("random"), MethodSpec("relevance (no LM)")]


def _read(result: dict | None, how: str) -> float | None:
    if result is None or (result.get("reward") is None and how == "reward"):
        return None
    if how == "reward":
        return result["reward"]
    _, sim = how.split(":")
    if not result.get("similarities"):  # the copy guard left nothing to reconstruct: reward 0; or an error
        return result.get("reward")
    return result["similarities"][sim]


class Evaluator:
    def __init__(self, client: AsyncFlipClient, seed: int = 0, progress: bool = True) -> None:
        self.client = client
        self.seed = seed
        self.progress = progress
        self._embedder: Embedder | None = None  # loaded on first use (the relevance baseline)
        self._cache: dict[tuple, list[dict | None]] = {}

    # --- scoring one list of (instruction, response, context) items with one method

    async def _service(self, items: list[dict], options: dict[str, Any], label: str) -> list[dict | None]:
        key = (
            tuple(sorted(options.items())),
            tuple((i.get("prompt"), str(i.get("messages")), i["response"]) for i in items),
        )
        if key not in self._cache:
            results: list[dict | None] = []
            chunk = 64
            bar = tqdm(total=len(items), desc=label, disable=not self.progress, leave=False)
            for start in range(0, len(items), chunk):
                results += await self.client.score(items[start : start + chunk], options=options)
                bar.update(min(chunk, len(items) - start))
            bar.close()
            self._cache[key] = results
        return self._cache[key]

    def _relevance(self, items: list[dict]) -> list[float | None]:
        if self._embedder is None:
            from flip_reward.embeddings.encoder import Embedder
            from flip_reward.models import resolve_embedding_model

            self._embedder = Embedder(resolve_embedding_model(None))
        instructions = self._embedder.encode([_instruction(i) for i in items])
        responses = self._embedder.encode([i["response"] for i in items])
        return [float(x) for x in np.sum(instructions * responses, axis=1)]

    async def scores(self, spec: MethodSpec, items: list[dict], label: str) -> list[float | None]:
        if spec.options is not None:
            results = await self._service(items, spec.options, f"{label} {spec.name}")
            return [_read(r, spec.read) for r in results]
        if spec.name.startswith("length"):
            return [float(len(i["response"].split())) for i in items]
        if spec.name == "random":
            rng = random.Random(self.seed)
            return [rng.random() for _ in items]
        return self._relevance(items)

    # --- one file

    async def evaluate(self, dataset: Dataset, specs: list[MethodSpec]) -> dict[str, Any]:
        if dataset.kind == "pairwise":
            return await self._pairwise(dataset, specs)
        if dataset.kind == "reconstruction":
            return await self._reconstruction(dataset, specs)
        return await self._best_of_n(dataset, specs)

    async def _pairwise(self, dataset: Dataset, specs: list[MethodSpec]) -> dict[str, Any]:
        rows = dataset.rows
        chosen_items = [_item(r, r["chosen"]) for r in rows]
        rejected = [r["rejected"] if isinstance(r["rejected"], list) else [r["rejected"]] for r in rows]
        rejected_items = [_item(r, text) for r, texts in zip(rows, rejected) for text in texts]
        words = [(len(r["chosen"].split()), len(rejected[k][0].split())) for k, r in enumerate(rows)]
        lengths = [(c + r) / 2 for c, r in words]
        # > 0: the chosen response is the longer one. A method that only tracks length wins those
        # pairs and loses the others; the split shows how much of an accuracy is length.
        longer = [c - r for c, r in words]
        out: dict[str, Any] = {"kind": "pairwise", "rows": len(rows), "methods": {}}
        for spec in specs:
            scores = await self.scores(spec, chosen_items + rejected_items, dataset.name)
            chosen, flat = scores[: len(rows)], scores[len(rows) :]
            grouped, at = [], 0
            for texts in rejected:
                grouped.append(flat[at : at + len(texts)])
                at += len(texts)
            first = [g[0] for g in grouped]
            entry: dict[str, Any] = {
                "accuracy": metrics.pairwise_accuracy(chosen, first, seed=self.seed).as_dict(),
                "missing": sum(s is None for s in scores),
                "by_length": {},
                "by_relative_length": {},
                "by_subset": {},
                "chosen_scores": chosen,
                "rejected_scores": first,
            }
            if any(len(g) == 3 for g in grouped):
                entry["best_of_4"] = metrics.best_of_4_accuracy(chosen, grouped).as_dict()
            outcomes = metrics.pair_outcomes(chosen, first)
            for low, high, name in LENGTH_BUCKETS:
                picked = [o for o, n in zip(outcomes, lengths) if low <= n < high]
                entry["by_length"][name] = metrics.bootstrap_mean(picked, seed=self.seed).as_dict()
            groups = {
                "chosen longer": [o for o, d in zip(outcomes, longer) if d > 0],
                "chosen shorter": [o for o, d in zip(outcomes, longer) if d < 0],
            }
            for name, picked in groups.items():
                entry["by_relative_length"][name] = metrics.bootstrap_mean(picked, seed=self.seed).as_dict()
            entry["length_balanced"] = metrics.length_balanced_accuracy(
                groups["chosen longer"], groups["chosen shorter"], seed=self.seed
            ).as_dict()
            subsets: dict[str, list[float]] = {}
            for o, r in zip(outcomes, rows):
                subsets.setdefault(r.get("subset") or dataset.name, []).append(o)
            entry["by_subset"] = {k: {"value": float(np.mean(v)), "n": len(v)} for k, v in sorted(subsets.items())}
            out["methods"][spec.name] = entry
        return out

    async def _reconstruction(self, dataset: Dataset, specs: list[MethodSpec]) -> dict[str, Any]:
        rows = dataset.rows
        n = len(rows)
        matched = [{"prompt": r["instruction"], "response": r["response"]} for r in rows]
        # The same response paired with another row's instruction: a good reward ranks it lower.
        other = [{"prompt": rows[(k + 1) % n]["instruction"], "response": r["response"]} for k, r in enumerate(rows)]
        probe_sets = [probes(r["instruction"], r["response"], seed=self.seed + k) for k, r in enumerate(rows)]
        probe_names = list(probe_sets[0])
        probe_items = [
            {"prompt": r["instruction"], "response": p[name]} for r, p in zip(rows, probe_sets) for name in probe_names
        ]
        out: dict[str, Any] = {"kind": "reconstruction", "rows": n, "methods": {}}
        for spec in specs:
            scores = await self.scores(spec, matched + other + probe_items, dataset.name)
            honest, mismatched, probe_scores = scores[:n], scores[n : 2 * n], scores[2 * n :]
            entry: dict[str, Any] = {
                "matched_vs_other_instruction": metrics.pairwise_accuracy(honest, mismatched, seed=self.seed).as_dict(),
                "reward_distribution": metrics.distribution(honest),
                "probes": {},
            }
            for j, name in enumerate(probe_names):
                hacked = probe_scores[j :: len(probe_names)]
                entry["probes"][name] = {
                    "honest_wins": metrics.pairwise_accuracy(honest, hacked, seed=self.seed).as_dict(),
                    "mean_probe_reward": _mean(hacked),
                    "mean_honest_reward": _mean(honest),
                }
            out["methods"][spec.name] = entry
        return out

    async def _best_of_n(self, dataset: Dataset, specs: list[MethodSpec]) -> dict[str, Any]:
        rows = dataset.rows
        items = [_item(r, text) for r in rows for text in r["responses"]]
        out: dict[str, Any] = {"kind": "bestofn", "rows": len(rows), "methods": {}}
        for spec in specs:
            flat = await self.scores(spec, items, dataset.name)
            groups, at = [], 0
            for r in rows:
                groups.append(flat[at : at + len(r["responses"])])
                at += len(r["responses"])
            out["methods"][spec.name] = metrics.best_of_n(groups, [r["scores"] for r in rows])
        return out


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _instruction(item: dict) -> str:
    return item["prompt"] if "prompt" in item else item["messages"][-1]["content"]


def _item(row: dict, response: str) -> dict:
    """A /batch_reward item for this row; empty responses stay scoreable as an explicit stand-in."""
    text = response if response.strip() else "(empty response)"
    if row.get("context"):
        return {"messages": row["context"] + [{"role": "user", "content": row["prompt"]}], "response": text}
    return {"prompt": row["prompt"], "response": text}


async def run_files(
    client: AsyncFlipClient, datasets: list[Dataset], specs: list[MethodSpec], seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    evaluator = Evaluator(client, seed=seed, progress=progress)
    results = {}
    for dataset in datasets:
        results[dataset.name] = await evaluator.evaluate(dataset, specs)
    return results


def default_files() -> list[Path]:
    """../shared/eval beside the checkout when present, else the slices in data/samples."""
    root = Path(__file__).resolve().parents[2]
    shared = root.parent / "shared" / "eval"
    folder = shared if shared.is_dir() else root / "data" / "samples"
    return sorted(folder.glob("*.jsonl"))
