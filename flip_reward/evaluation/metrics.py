"""Reward-model quality metrics. Pure functions over scores; None means "no reward for this one"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.low, self.high], "n": self.n}


def pair_outcomes(chosen: Sequence[float | None], rejected: Sequence[float | None]) -> np.ndarray:
    """1 when chosen scores above rejected, 0 below, 0.5 for a tie. A pair where either side has
    no reward counts as a tie: the method could not tell them apart."""
    out = []
    for c, r in zip(chosen, rejected, strict=True):
        if c is None or r is None or c == r:
            out.append(0.5)
        else:
            out.append(1.0 if c > r else 0.0)
    return np.asarray(out, dtype=float)


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, seed: int, resamples: int) -> Estimate:
    """`statistic(*samples)` with a 95% percentile-bootstrap interval (scipy.stats.bootstrap), each
    sample resampled on its own. An empty sample leaves it undefined (n=0); a sample of one, or all
    values equal, leaves nothing to resample (the interval is the point value). n: all values."""
    n, smallest = sum(len(s) for s in samples), min(len(s) for s in samples)
    if smallest == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float(statistic(*samples))
    if smallest == 1 or np.all(np.concatenate(samples) == samples[0][0]):
        return Estimate(value, value, value, n)
    result = stats.bootstrap(
        samples, statistic, confidence_level=0.95, n_resamples=resamples, method="percentile", random_state=seed
    )
    ci = result.confidence_interval
    return Estimate(value, float(ci.low), float(ci.high), n)


def bootstrap_mean(values: Sequence[float] | np.ndarray, seed: int = 0, resamples: int = 2000) -> Estimate:
    """Mean with a 95% percentile-bootstrap interval."""
    return _bootstrap((np.asarray(values, dtype=float),), np.mean, seed, resamples)


def pairwise_accuracy(chosen: Sequence[float | None], rejected: Sequence[float | None], seed: int = 0) -> Estimate:
    return bootstrap_mean(pair_outcomes(chosen, rejected), seed=seed)


def length_balanced_accuracy(
    chosen_longer: Sequence[float], chosen_shorter: Sequence[float], seed: int = 0, resamples: int = 2000
) -> Estimate:
    """Mean of the accuracy on pairs whose chosen response is the longer one and on pairs where it
    is the shorter one (the outcomes of each group), with a bootstrap interval that resamples each
    group on its own. "Longer wins" scores exactly 0.5 here, whatever share of the file favours
    length, so a method above 0.5 ranks by something other than length. n: the pairs in both groups
    (0 when either group is empty: there is nothing to balance)."""

    def balanced(longer: np.ndarray, shorter: np.ndarray, axis: int = -1) -> np.ndarray:
        return (longer.mean(axis=axis) + shorter.mean(axis=axis)) / 2

    samples = (np.asarray(chosen_longer, dtype=float), np.asarray(chosen_shorter, dtype=float))
    return _bootstrap(samples, balanced, seed, resamples)


def best_of_n(scores: Sequence[Sequence[float | None]], quality: Sequence[Sequence[float]]) -> dict:
    """For groups of N candidates with a known quality each: the mean quality of the candidate the
    method ranks first (ties: the lowest index), against picking at random (the group mean) and the
    oracle (the group best), and the mean Spearman rank correlation with the given quality."""
    picked, random_pick, oracle, rhos = [], [], [], []
    for group_scores, group_quality in zip(scores, quality, strict=True):
        usable = [(-1e300 if s is None else s) for s in group_scores]
        best = int(np.argmax(usable))  # argmax returns the first of equal maxima
        picked.append(group_quality[best])
        random_pick.append(float(np.mean(group_quality)))
        oracle.append(float(np.max(group_quality)))
        if len(set(usable)) > 1 and len(set(group_quality)) > 1:
            rhos.append(stats.spearmanr(usable, group_quality).statistic)
    return {
        "top1_quality": float(np.mean(picked)),
        "random_quality": float(np.mean(random_pick)),
        "oracle_quality": float(np.mean(oracle)),
        "spearman": float(np.mean(rhos)) if rhos else float("nan"),
        "groups": len(picked),
    }


def best_of_4_accuracy(chosen: Sequence[float | None], rejected: Sequence[Sequence[float | None]]) -> Estimate:
    """RewardBench-2 style: correct when the chosen response scores above every rejected one."""
    outcomes = [
        1.0 if c is not None and all(r is None or c > r for r in rs) else 0.0
        for c, rs in zip(chosen, rejected, strict=True)
    ]
    return bootstrap_mean(outcomes)


def distribution(values: Sequence[float | None]) -> dict:
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if len(data) == 0:
        return {"n": 0, "missing": len(values)}
    q = np.quantile(data, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "n": len(data),
        "missing": len(values) - len(data),
        "mean": float(data.mean()),
        "p10": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "p75": float(q[3]),
        "p90": float(q[4]),
    }
