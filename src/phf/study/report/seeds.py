"""Runs grouped by task, arm and seed, and statistics over seeds: what the paper's figures and
claims compare. A study lays its runs out as ``<task>/seed<N>/<arm>``; seeds pair up (each arm
against the MLE run of the same seed), and an interval over seeds is Student's t (ratios on the log
scale)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"


@dataclass
class Estimate:
    """A per-seed quantity's mean and 95% t-interval over seeds (``log``: the geometric mean)."""

    per_seed: dict[int, float]
    log: bool = False
    mean: float | None = None
    ci95: list[float] | None = None

    def __post_init__(self) -> None:
        values = list(self.per_seed.values())
        if not values or (self.log and min(values) <= 0):
            return  # nothing measured, or a ratio of zero, which has no log: no mean rather than a wrong one
        if self.log:
            values = [math.log(v) for v in values]
        from scipy import stats

        back: Callable[[float], float] = math.exp if self.log else float
        centre = sum(values) / len(values)
        self.mean = back(centre)
        if len(values) > 1:
            sd = math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))
            half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
            self.ci95 = [back(centre - half), back(centre + half)]

    @property
    def n(self) -> int:
        return len(self.per_seed)

    def side(self, bound: float, above: bool) -> str:
        """The verdict of "this quantity lies above (below) ``bound``"."""
        if self.mean is None:
            return NOT_MEASURED
        if self.ci95 is None:
            return INCONCLUSIVE
        low, high = self.ci95
        if (low > bound) if above else (high < bound):
            return HOLDS
        if (high < bound) if above else (low > bound):
            return FAILS
        return INCONCLUSIVE


def where(row: dict) -> tuple[str, int | None, str]:
    """(task, seed, arm) of a report row: from the study layout ``<task>/seed<N>/<arm>`` in its path
    or name, else the scorer's name and no seed."""
    parts = [p for p in re.split(r"[\\/]", str(row.get("path") or "")) if p] or str(row["name"]).split("/")
    arm = str(row["name"]).split("/")[-1]
    for i in range(len(parts) - 1, -1, -1):
        if m := re.fullmatch(r"seed(\d+)", parts[i]):
            task = parts[i - 1] if i > 0 else ((row.get("scorer") or {}).get("name") or "-")
            return task, int(m.group(1)), arm
    return (row.get("scorer") or {}).get("name") or "-", None, arm


def grid(rows: Sequence[dict]) -> dict[str, dict[str, dict[int, dict]]]:
    """task -> arm -> seed -> row, evaluated rows only (a run without a seed counts as seed 0)."""
    grid: dict[str, dict[str, dict[int, dict]]] = {}
    for row in rows:
        if not row.get("evaluated"):
            continue
        task, seed, arm = where(row)
        grid.setdefault(task, {}).setdefault(arm, {})[seed if seed is not None else 0] = row
    return grid


# One task's evaluated rows: arm -> seed -> report row (grid).
Arms = dict[str, dict[int, dict]]


def paired(arms: Arms, a: str, b: str, f: Callable[[dict, dict], float | None]) -> dict[int, float]:
    """``f(row of a, row of b)`` for every seed both arms ran (None: left out)."""
    out = {}
    for seed in sorted(set(arms.get(a, {})) & set(arms.get(b, {}))):
        value = f(arms[a][seed], arms[b][seed])
        if value is not None:
            out[seed] = value
    return out


def quotient(a: dict, b: dict, key: str) -> float | None:
    x, y = a.get(key), b.get(key)
    return None if x is None or y is None or y <= 0 else x / y


def misalignment_cut(arm: dict, mle: dict) -> float | None:
    """How many times lower the arm's misalignment is than MLE's (a claim reads "MLE / arm")."""
    return quotient(mle, arm, "misalignment_mean")


def protocol_ratio(protocol: str) -> Callable[[dict, dict], float | None]:
    """MLE's headline misalignment / the arm's under one sampling ``protocol``."""

    def f(arm: dict, mle: dict) -> float | None:
        mine = ((arm.get("misalignment_by_protocol") or {}).get(protocol) or {}).get("mean")
        base = mle.get("misalignment_mean")
        return None if mine is None or base is None or mine <= 0 else base / mine

    return f


def by_arm(rows: Sequence[dict], key: str) -> dict[str, dict[str, Estimate]]:
    """task -> arm -> the mean and 95% interval over seeds of ``key`` (arms in the order they came)."""
    out: dict[str, dict[str, Estimate]] = {}
    for task, arms in grid(rows).items():
        for arm, seeds in arms.items():
            values = {s: r[key] for s, r in seeds.items() if r.get(key) is not None}
            if values:
                out.setdefault(task, {})[arm] = Estimate(values)
    return out


def finetune_pairs(
    rows: Sequence[dict], key: str = "misalignment_mean"
) -> dict[str, list[tuple[str, Estimate, Estimate]]]:
    """task -> (objective, from scratch, MLE then finetuned) for every ``finetune-<objective>`` arm
    whose objective also ran from scratch: the paper's Fig. 6 comparison at equal total tokens."""
    stats = by_arm(rows, key)
    out: dict[str, list[tuple[str, Estimate, Estimate]]] = {}
    for task, arms in stats.items():
        for arm, est in arms.items():
            objective = arm.removeprefix("finetune-")
            if arm.startswith("finetune-") and objective in arms:
                out.setdefault(task, []).append((objective, arms[objective], est))
    return out


def mean_curve(curves: Sequence[dict[float, float]]) -> tuple[list[float], list[float], list[list[float] | None]]:
    """The mean over seeds of curves keyed by training tokens, at the points every curve has, with
    the 95% interval over seeds at each point (None for a single seed)."""
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    means, cis = [], []
    for t in common:
        est = Estimate({i: c[t] for i, c in enumerate(curves)})
        means.append(est.mean if est.mean is not None else math.nan)
        cis.append(est.ci95)
    return common, means, cis
