"""The report's table per objective over seeds: each arm against the MLE run of the same seed (the
ratio per seed, its geometric mean and 95% t-interval), and its capability numbers averaged over
seeds. What a reader compares objectives by; the results table above it lists every run."""

from __future__ import annotations

from collections.abc import Sequence

from phf.study.report.seeds import Arms, Estimate, grid, misalignment_cut, paired, protocol_ratio
from phf.study.report.table import MISSING, fmt

HEADERS = [
    "task",
    "arm",
    "seeds",
    "MLE / arm, per seed",
    "MLE / arm, geometric mean [95% CI]",
    "other sampling protocols",
    "LM loss",
    "KL (nats)",
    "distinct-2",
    "control AUROC",
]


def _ratios(arms: Arms, arm: str, protocol: str | None = None) -> dict[int, float]:
    """MLE's misalignment / the arm's, per seed both ran (under ``protocol``, else the headline)."""
    return paired(arms, arm, "mle", misalignment_cut if protocol is None else protocol_ratio(protocol))


def _estimate(est: Estimate) -> str:
    if est.mean is None:
        return MISSING
    ci = f" [{fmt(est.ci95[0])}x, {fmt(est.ci95[1])}x]" if est.ci95 else ""
    return f"{fmt(est.mean)}x{ci}"


def _mean(seeds: dict[int, dict], key: str) -> str:
    values = [row[key] for row in seeds.values() if row.get(key) is not None]
    return fmt(sum(values) / len(values)) if values else MISSING


def _protocols(arms: Arms, arm: str) -> str:
    """The geometric mean ratio under each sampling protocol other than the headline one."""
    first = next(iter(arms[arm].values()))
    others = [p for p in first.get("misalignment_by_protocol") or {} if p != first.get("protocol")]
    return "; ".join(f"{p} {_estimate(Estimate(_ratios(arms, arm, p), log=True))}" for p in others) or MISSING


def over_seeds_rows(rows: Sequence[dict]) -> list[list[str]]:
    """One row per task and arm, for tasks whose MLE arm ran on two seeds or more (one seed has no
    interval: the results table already says everything)."""
    out = []
    for task, arms in grid(rows).items():
        mle = arms.get("mle") or {}
        if len(mle) < 2:
            continue
        for arm, seeds in arms.items():
            ratios = _ratios(arms, arm)
            per_seed = ", ".join(f"{fmt(ratios[s])}x" if s in ratios else MISSING for s in sorted(seeds))
            auroc = [f"{row['control_auroc']:.2f}" for _, row in sorted(seeds.items()) if row.get("control_auroc")]
            out.append(
                [
                    task,
                    arm,
                    ", ".join(map(str, sorted(seeds))),
                    MISSING if arm == "mle" else per_seed,
                    MISSING if arm == "mle" else _estimate(Estimate(ratios, log=True)),
                    _protocols(arms, arm),
                    _mean(seeds, "lm_loss"),
                    _mean(seeds, "kl"),
                    _mean(seeds, "distinct_2"),
                    ", ".join(auroc) or MISSING,
                ]
            )
    return out
