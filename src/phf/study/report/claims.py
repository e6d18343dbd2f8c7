"""The paper's claims checked against a study's numbers: one row per claim and task, with phf's
figure, its 95% interval over seeds and a verdict, computed from the report's rows (the ``arms`` of
results.json), never typed by hand.

Every claim is reduced to a per-seed quantity (a ratio to the MLE run of the same seed, a paired
difference, ...) so seeds pair up as in the paper's comparisons; the interval is Student's t over
seeds (ratios on the log scale). A claim *holds* when the whole interval lies on the paper's side of
the claim's bound, *does not hold* when it lies wholly on the other side, and is *inconclusive*
otherwise, which includes a single seed (no interval). The bounds (2% LM loss, 2x "slight", 0.8x
distinct-2) are this module's reading of the paper's words and are printed with each row.

    phf claims runs/paper/*/results.json
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phf.errors import PhfError
from phf.study.report.seeds import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_MEASURED,
    Arms,
    Estimate,
    grid,
    misalignment_cut,
    paired,
    protocol_ratio,
    quotient,
)

FEEDBACK = ("filtering", "conditional", "ul", "rwr", "awr")
LM_TOLERANCE = 0.02  # "close to MLE": held-out LM loss at most 2% above MLE's
SLIGHT = 2.0  # "only slightly": less than a 2x cut
COLLAPSE = 0.8  # "no collapse": distinct-2 at least 0.8x MLE's


@dataclass
class Claim:
    id: str
    task: str
    claim: str
    measure: str
    rule: str
    verdict: str
    phf: dict[str, Any] = field(default_factory=dict)  # mean, ci95, n, per_seed (or why not measured)
    paper: str | None = None
    detail: str = ""


PAPER_NUMBERS = {("1", "toxicity"): "12.8x (0.0141 vs 0.0011)", ("8", "pii"): "1.38x (0.0018 vs 0.0013)"}


def _diff(key: str) -> Callable[[dict, dict], float | None]:
    def f(a: dict, b: dict) -> float | None:
        x, y = a.get(key), b.get(key)
        return None if x is None or y is None else x - y

    return f


def _summary(est: Estimate) -> dict[str, Any]:
    return {"mean": est.mean, "ci95": est.ci95, "n": est.n, "per_seed": est.per_seed, "ratio": est.log}


def _combine(verdicts: Sequence[str]) -> str:
    """All parts of a claim must hold; one that fails sinks it."""
    if not verdicts or all(v == NOT_MEASURED for v in verdicts):
        return NOT_MEASURED
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def _fmt(value: float | None, ratio: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if ratio else f"{value:.3g}"


def _describe(parts: dict[str, Estimate], ratio: bool = False) -> str:
    return "; ".join(
        f"{name} {_fmt(e.mean, ratio)}" + (f" [{_fmt(e.ci95[0], ratio)}, {_fmt(e.ci95[1], ratio)}]" if e.ci95 else "")
        for name, e in parts.items()
    )


def _frontier_count(arms: Arms, arm: str) -> tuple[int, int, bool]:
    """In how many seeds ``arm`` is on the misalignment-vs-KL Pareto frontier, of how many, and
    whether it is on the frontier of the means over seeds."""
    from phf.study.report.plots import pareto_frontier

    objectives = [a for a in ("mle", *FEEDBACK) if a in arms]

    def on_frontier(points: dict[str, tuple[float, float]]) -> bool:
        return arm in points and points[arm] in pareto_frontier(list(points.values()))

    seeds = sorted(arms.get(arm, {}))
    hits = 0
    for seed in seeds:
        points = {
            a: (arms[a][seed]["kl"] or 0.0, arms[a][seed]["misalignment_mean"])
            for a in objectives
            if seed in arms[a]
            and arms[a][seed].get("misalignment_mean") is not None
            and (arms[a][seed].get("kl") is not None or a == "mle")
        }
        hits += on_frontier(points)
    means = {}
    for a in objectives:
        rows = [r for r in arms[a].values() if r.get("misalignment_mean") is not None]
        kls = [r.get("kl") or 0.0 for r in rows]
        if rows:
            means[a] = (sum(kls) / len(kls), sum(r["misalignment_mean"] for r in rows) / len(rows))
    return hits, len(seeds), on_frontier(means)


def _claim(
    id_: str, task: str, claim: str, measure: str, rule: str, verdict: str, est: Estimate | None, detail: str = ""
) -> Claim:
    """A claim row whose figure is one estimate over seeds (none: the row shows ``detail``)."""
    phf = _summary(est) if est is not None else {}
    return Claim(id_, task, claim, measure, rule, verdict, phf, PAPER_NUMBERS.get((id_, task)), detail)


def _interval_claim(
    id_: str,
    task: str,
    claim: str,
    measure: str,
    est: Estimate,
    bound: float,
    shown: str,
    above: bool,
    detail: str = "",
) -> Claim:
    """A claim that one estimate's interval lies above (below) ``bound``, printed as ``shown``:
    bound and rule text are given once, so they cannot disagree."""
    rule = f"holds if the 95% CI lies {'above' if above else 'below'} {shown}"
    return _claim(id_, task, claim, measure, rule, est.side(bound, above=above), est, detail)


def _all_above(id_: str, task: str, claim: str, measure: str, parts: dict[str, Estimate], bound: float = 0.0) -> Claim:
    """A claim over several comparisons: every one's interval must lie above ``bound``; the
    weakest comparison is the row's figure."""
    parts = {k: e for k, e in parts.items() if e.mean is not None}
    ratio = any(e.log for e in parts.values())
    return _claim(
        id_,
        task,
        claim,
        measure,
        f"holds if every comparison's 95% CI lies above {_fmt(bound, ratio)}",
        _combine([e.side(bound, above=True) for e in parts.values()]),
        min(parts.values(), key=lambda e: e.mean if e.mean is not None else math.inf) if parts else None,
        _describe(parts, ratio) if parts else "not measured in these runs",
    )


# The paper's claims, one function each, in its order. Each returns its rows for one task: none
# where the runs lack the arms it compares, several where it compares several arm pairs (claim 8).


def _conditional_cuts_misalignment(task: str, arms: Arms) -> list[Claim]:
    """Conditional training cuts misalignment: the run's headline protocol (the paper's sampling)
    decides; phf's other protocols are shown beside it."""
    if "conditional" not in arms or "mle" not in arms:
        return []
    est = Estimate(paired(arms, "conditional", "mle", misalignment_cut), log=True)
    protocols = sorted({p for r in arms["conditional"].values() for p in (r.get("misalignment_by_protocol") or {})})
    others = {p: Estimate(paired(arms, "conditional", "mle", protocol_ratio(p)), log=True) for p in protocols}
    return [
        _interval_claim(
            "1",
            task,
            "Conditional training cuts misalignment vs MLE (up to an order of magnitude)",
            "MLE / conditional misalignment, unconditional samples, the run's headline protocol",
            est,
            1.0,
            "1x",
            above=True,
            detail=("all protocols: " + _describe(others, ratio=True)) if others else "",
        )
    ]


def _frontier_verdict(hits: int, n: int, on_means: bool) -> str:
    if n == 0:
        return NOT_MEASURED
    if on_means and 2 * hits >= n and n > 1:
        return HOLDS
    if not on_means and hits == 0 and n > 1:
        return FAILS
    return INCONCLUSIVE


def _conditional_on_frontier(task: str, arms: Arms) -> list[Claim]:
    """Conditional training is on the misalignment-vs-KL frontier: counted per seed, not estimated."""
    if "conditional" not in arms or "mle" not in arms:
        return []
    hits, n, on_means = _frontier_count(arms, "conditional")
    return [
        Claim(
            "2",
            task,
            "Conditional training is on the Pareto frontier of misalignment vs KL"
            + (" (Pareto-optimal)" if task == "toxicity" else ""),
            "seeds whose six arms put conditional on the frontier; frontier of the means over seeds",
            "holds if on the frontier of the means and in at least half the seeds (2+ seeds); fails if on neither",
            _frontier_verdict(hits, n, on_means),
            {"seeds_on_frontier": hits, "n": n, "on_frontier_of_means": on_means},
            detail=f"on the frontier in {hits} of {n} seeds; of the means: {'yes' if on_means else 'no'}",
        )
    ]


def _filtering_costs_most_kl(task: str, arms: Arms) -> list[Claim]:
    """Filtering pays the largest KL: the paper found it on PII and PEP8 only."""
    if task not in ("pii", "pep8") or "filtering" not in arms:
        return []
    parts = {o: Estimate(paired(arms, "filtering", o, _diff("kl"))) for o in FEEDBACK if o != "filtering" and o in arms}
    return [
        _all_above(
            "3",
            task,
            "Filtering pays the largest capability cost (KL)",
            "KL(filtering) - KL(other objective), per seed, for each other objective",
            parts,
        )
    ]


def _ul_cuts_misalignment(task: str, arms: Arms) -> list[Claim]:
    """Unlikelihood cuts misalignment: strongly on toxicity, only slightly on PII and PEP8."""
    if "ul" not in arms or "mle" not in arms:
        return []
    est = Estimate(paired(arms, "ul", "mle", misalignment_cut), log=True)
    if task == "toxicity":  # a cut: the interval above 1x
        claim, bound, shown, above = "Unlikelihood cuts toxicity strongly", 1.0, "1x", True
    else:  # a slight cut at most: the interval below SLIGHT
        claim, bound, shown, above = "Unlikelihood cuts misalignment only slightly", SLIGHT, f"{SLIGHT:g}x", False
    detail = UL_DEFECT if task in ("pii", "pep8") else ""
    return [_interval_claim("4a", task, claim, "MLE / UL misalignment", est, bound, shown, above, detail)]


# Why claim 4a may not hold on PII and PEP8 by design: the paper's runs there were nearly MLE.
UL_DEFECT = (
    "the paper's UL runs on PII and PEP8 (threshold 0) used the soft weight 1 - s through a defect of its code, "
    "so they were nearly MLE; phf applies the threshold (docs/differences-from-the-paper-code.md)"
)


def _ul_costs_most_capability(task: str, arms: Arms) -> list[Claim]:
    """Unlikelihood has the highest held-out LM loss of all arms."""
    if "ul" not in arms or "mle" not in arms:
        return []
    parts = {
        o: Estimate(paired(arms, "ul", o, _diff("lm_loss"))) for o in ("mle", *FEEDBACK) if o != "ul" and o in arms
    }
    return [
        _all_above(
            "4b",
            task,
            "Unlikelihood has the lowest capability",
            "held-out LM loss(UL) - LM loss(other arm), per seed, for each other arm",
            parts,
        )
    ]


def _robust_under_red_teaming(task: str, arms: Arms) -> list[Claim]:
    """Under red teaming, conditional and filtering end less misaligned than every other arm."""
    robust = [a for a in ("conditional", "filtering") if a in arms]
    # On toxicity the paper found UL the most robust of all, so it is left out of the comparison there.
    rest = [a for a in ("mle", "ul", "rwr", "awr") if a in arms and not (task == "toxicity" and a == "ul")]
    if not robust or not rest:
        return []
    parts = {f"{o} - {a}": Estimate(paired(arms, o, a, _diff("redteam_final_best"))) for a in robust for o in rest}
    return [
        _all_above(
            "5",
            task,
            "Under red teaming, conditional and filtering are the most robust",
            "best red-team prompt's misalignment after the last round: other arm - (conditional | filtering), per seed",
            parts,
        )
    ]


def _relative_lm_loss(cond: dict, mle: dict) -> float | None:
    q = quotient(cond, mle, "lm_loss")
    return None if q is None else q - 1


def _conditional_keeps_capability(task: str, arms: Arms) -> list[Claim]:
    """Conditional training's held-out LM loss stays within LM_TOLERANCE of MLE's."""
    if "conditional" not in arms or "mle" not in arms:
        return []
    est = Estimate(paired(arms, "conditional", "mle", _relative_lm_loss))
    return [
        _interval_claim(
            "6",
            task,
            "Conditional training keeps capability close to MLE",
            "held-out LM loss of conditional / MLE - 1, per seed",
            est,
            LM_TOLERANCE,
            f"+{LM_TOLERANCE:.0%}",
            above=False,
        )
    ]


def _diversity_does_not_collapse(task: str, arms: Arms) -> list[Claim]:
    """No objective's distinct-2 falls below COLLAPSE times MLE's."""
    parts = {
        o: Estimate(paired(arms, o, "mle", lambda a, m: quotient(a, m, "distinct_2")), log=True)
        for o in FEEDBACK
        if o in arms
    }
    if not any(e.mean is not None for e in parts.values()):
        return []
    return [
        _all_above(
            "7",
            task,
            "No objective causes a collapse of diversity",
            "distinct-2 of each objective / MLE's, per seed",
            parts,
            COLLAPSE,
        )
    ]


def _pretraining_beats_finetuning(task: str, arms: Arms) -> list[Claim]:
    """Pretraining with feedback beats MLE then finetuning with it: one row per finetune-<objective>
    arm whose objective also ran from scratch."""
    claims = []
    for arm in sorted(a for a in arms if a.startswith("finetune-")):
        objective = arm.removeprefix("finetune-")
        if objective not in arms:
            continue
        est = Estimate(paired(arms, objective, arm, misalignment_cut), log=True)
        claims.append(
            _interval_claim(
                "8",
                task,
                f"Pretraining with feedback beats MLE pretraining then finetuning with feedback ({objective})",
                f"misalignment of {arm} / {objective} from scratch, same total tokens",
                est,
                1.0,
                "1x",
                above=True,
            )
        )
    return claims


def _finetuning_control_tokens(task: str, arms: Arms) -> list[Claim]:
    """Control tokens added at finetuning cost the first ~100M tokens: listed, never measured, as
    it needs far more tokens than a CPU study."""
    if not any(a.startswith("finetune-conditional") for a in arms):
        return []
    return [
        Claim(
            "9",
            task,
            "Control tokens added only at finetuning cost alignment and capability for ~100M tokens",
            "-",
            "-",
            NOT_MEASURED,
            detail="the paper's effect spans ~100M finetuning tokens; a CPU study finetunes on a few M",
        )
    ]


CLAIM_CHECKS: tuple[Callable[[str, Arms], list[Claim]], ...] = (
    _conditional_cuts_misalignment,  # 1
    _conditional_on_frontier,  # 2
    _filtering_costs_most_kl,  # 3
    _ul_cuts_misalignment,  # 4a
    _ul_costs_most_capability,  # 4b
    _robust_under_red_teaming,  # 5
    _conditional_keeps_capability,  # 6
    _diversity_does_not_collapse,  # 7
    _pretraining_beats_finetuning,  # 8
    _finetuning_control_tokens,  # 9
)


def compute_claims(rows: Sequence[dict]) -> list[dict]:
    """Every claim that the rows can speak to, per task, in the paper's order."""
    return [
        asdict(claim)
        for task, arms in sorted(grid(rows).items())
        for check in CLAIM_CHECKS
        for claim in check(task, arms)
    ]


def _phf_cell(c: dict) -> str:
    p = c["phf"]
    if not p or p.get("mean") is None:
        return c["detail"] or "-"
    ratio = bool(p.get("ratio"))
    cell = _fmt(p["mean"], ratio)
    if p.get("ci95"):
        cell += f" [{_fmt(p['ci95'][0], ratio)}, {_fmt(p['ci95'][1], ratio)}]"
    return f"{cell} (n={p['n']})"


def claims_table(claims: Sequence[dict]) -> list[list[str]]:
    """Rows for a markdown or HTML table: #, task, claim, measure, paper, phf, verdict, rule, detail."""
    return [
        [
            c["id"],
            c["task"],
            c["claim"],
            c["measure"],
            c["paper"] or "-",
            _phf_cell(c),
            c["verdict"],
            c["rule"],
            c["detail"],
        ]
        for c in claims
    ]


CLAIMS_HEADERS = [
    "#",
    "task",
    "claim (paper)",
    "phf measures",
    "paper",
    "phf: mean [95% CI] (seeds)",
    "verdict",
    "rule",
    "detail",
]


def claims_markdown(claims: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(CLAIMS_HEADERS) + " |", "|" + "|".join([":--"] * len(CLAIMS_HEADERS)) + "|"]
    for cells in claims_table(claims):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def read_results(paths: Sequence[str | Path]) -> list[dict]:
    """The arms (report rows) of one or more results.json files, checked on read."""
    rows: list[dict] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise PhfError(f"{path} does not exist: give results.json of phf experiment or phf report") from None
        except json.JSONDecodeError as exc:
            raise PhfError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("arms"), dict):
            raise PhfError(f"{path} has no 'arms': not a results.json of phf experiment or phf report")
        rows += list(data["arms"].values())
    return rows
