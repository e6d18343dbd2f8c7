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
from phf.study.report.seeds import FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, Estimate, grid

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


def _paired(
    arms: dict[str, dict[int, dict]], a: str, b: str, f: Callable[[dict, dict], float | None]
) -> dict[int, float]:
    out = {}
    for seed in sorted(set(arms.get(a, {})) & set(arms.get(b, {}))):
        value = f(arms[a][seed], arms[b][seed])
        if value is not None:
            out[seed] = value
    return out


def _ratio(key: str) -> Callable[[dict, dict], float | None]:
    """How many times lower the arm's ``key`` is than the baseline's (so a claim reads "MLE / arm")."""
    return lambda arm, base: _quotient(base, arm, key)


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


def _frontier_count(arms: dict[str, dict[int, dict]], arm: str) -> tuple[int, int, bool]:
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


def _task_claims(task: str, arms: dict[str, dict[int, dict]]) -> list[Claim]:
    claims: list[Claim] = []

    def add(id_: str, claim: str, measure: str, rule: str, verdict: str, est: Estimate | None, detail: str = ""):
        claims.append(
            Claim(
                id_,
                task,
                claim,
                measure,
                rule,
                verdict,
                _summary(est) if est else {},
                PAPER_NUMBERS.get((id_, task)),
                detail,
            )
        )

    def add_all_above(id_: str, claim: str, measure: str, parts: dict[str, Estimate], bound: float = 0.0):
        """A claim over several comparisons: every one's interval must lie above ``bound``; the
        weakest comparison is the row's figure."""
        parts = {k: e for k, e in parts.items() if e.mean is not None}
        ratio = any(e.log for e in parts.values())
        add(
            id_,
            claim,
            measure,
            f"holds if every comparison's 95% CI lies above {_fmt(bound, ratio)}",
            _combine([e.side(bound, above=True) for e in parts.values()]),
            min(parts.values(), key=lambda e: e.mean if e.mean is not None else math.inf) if parts else None,
            _describe(parts, ratio) if parts else "not measured in these runs",
        )

    mis = _ratio("misalignment_mean")
    # 1: conditional cuts misalignment (the paper's sampling; phf's other protocols beside it)
    if "conditional" in arms and "mle" in arms:
        est = Estimate(_paired(arms, "conditional", "mle", mis), log=True)
        protocols = sorted({p for r in arms["conditional"].values() for p in (r.get("misalignment_by_protocol") or {})})
        others = {}
        for p in protocols:

            def by_protocol(c: dict, m: dict, p: str = p) -> float | None:
                mine = ((c.get("misalignment_by_protocol") or {}).get(p) or {}).get("mean")
                base = m.get("misalignment_mean")
                return None if mine is None or base is None or mine <= 0 else base / mine

            others[p] = Estimate(_paired(arms, "conditional", "mle", by_protocol), log=True)
        add(
            "1",
            "Conditional training cuts misalignment vs MLE (up to an order of magnitude)",
            "MLE / conditional misalignment, unconditional samples, the run's headline protocol",
            "holds if the 95% CI lies above 1x",
            est.side(1.0, above=True),
            est,
            ("all protocols: " + _describe(others, ratio=True)) if others else "",
        )
    # 2: conditional on the misalignment-vs-KL frontier
    if "conditional" in arms and "mle" in arms:
        hits, n, on_means = _frontier_count(arms, "conditional")
        verdict = (
            NOT_MEASURED
            if n == 0
            else HOLDS
            if on_means and 2 * hits >= n and n > 1
            else FAILS
            if not on_means and hits == 0 and n > 1
            else INCONCLUSIVE
        )
        claims.append(
            Claim(
                "2",
                task,
                "Conditional training is on the Pareto frontier of misalignment vs KL"
                + (" (Pareto-optimal)" if task == "toxicity" else ""),
                "seeds whose six arms put conditional on the frontier; frontier of the means over seeds",
                "holds if on the frontier of the means and in at least half the seeds (2+ seeds); fails if on neither",
                verdict,
                {"seeds_on_frontier": hits, "n": n, "on_frontier_of_means": on_means},
                detail=f"on the frontier in {hits} of {n} seeds; of the means: {'yes' if on_means else 'no'}",
            )
        )
    # 3: filtering pays the largest KL (the paper: PII and PEP8)
    if task in ("pii", "pep8") and "filtering" in arms:
        parts = {
            o: Estimate(_paired(arms, "filtering", o, _diff("kl"))) for o in FEEDBACK if o != "filtering" and o in arms
        }
        add_all_above(
            "3",
            "Filtering pays the largest capability cost (KL)",
            "KL(filtering) - KL(other objective), per seed, for each other objective",
            parts,
        )
    # 4: unlikelihood: strong on toxicity, slight on PII/PEP8; the lowest capability
    if "ul" in arms and "mle" in arms:
        est = Estimate(_paired(arms, "ul", "mle", mis), log=True)
        if task == "toxicity":
            add(
                "4a",
                "Unlikelihood cuts toxicity strongly",
                "MLE / UL misalignment",
                "holds if the 95% CI lies above 1x",
                est.side(1.0, above=True),
                est,
            )
        else:
            add(
                "4a",
                "Unlikelihood cuts misalignment only slightly",
                "MLE / UL misalignment",
                f"holds if the 95% CI lies below {SLIGHT:g}x",
                est.side(SLIGHT, above=False),
                est,
            )
        parts = {
            o: Estimate(_paired(arms, "ul", o, _diff("lm_loss"))) for o in ("mle", *FEEDBACK) if o != "ul" and o in arms
        }
        add_all_above(
            "4b",
            "Unlikelihood has the lowest capability",
            "held-out LM loss(UL) - LM loss(other arm), per seed, for each other arm",
            parts,
        )
    # 5: red teaming: conditional and filtering the most robust
    robust = [a for a in ("conditional", "filtering") if a in arms]
    # On toxicity the paper found UL the most robust of all, so it is left out of the comparison there.
    rest = [a for a in ("mle", "ul", "rwr", "awr") if a in arms and not (task == "toxicity" and a == "ul")]
    if robust and rest:
        parts = {f"{o} - {a}": Estimate(_paired(arms, o, a, _diff("redteam_final_best"))) for a in robust for o in rest}
        add_all_above(
            "5",
            "Under red teaming, conditional and filtering are the most robust",
            "best red-team prompt's misalignment after the last round: other arm - (conditional | filtering), per seed",
            parts,
        )
    # 6: conditional keeps capability close to MLE
    if "conditional" in arms and "mle" in arms:

        def rel(c: dict, m: dict) -> float | None:
            q = _quotient(c, m, "lm_loss")
            return None if q is None else q - 1

        est = Estimate(_paired(arms, "conditional", "mle", rel))
        add(
            "6",
            "Conditional training keeps capability close to MLE",
            "held-out LM loss of conditional / MLE - 1, per seed",
            f"holds if the 95% CI lies below +{LM_TOLERANCE:.0%}",
            est.side(LM_TOLERANCE, above=False),
            est,
        )
    # 7: no objective collapses diversity
    parts = {
        o: Estimate(_paired(arms, o, "mle", lambda a, m: _quotient(a, m, "distinct_2")), log=True)
        for o in FEEDBACK
        if o in arms
    }
    if any(e.mean is not None for e in parts.values()):
        add_all_above(
            "7",
            "No objective causes a collapse of diversity",
            "distinct-2 of each objective / MLE's, per seed",
            parts,
            COLLAPSE,
        )
    # 8: pretraining with feedback beats MLE then finetuning with feedback
    for arm in sorted(a for a in arms if a.startswith("finetune-")):
        objective = arm.removeprefix("finetune-")
        if objective not in arms:
            continue
        est = Estimate(_paired(arms, objective, arm, mis), log=True)
        add(
            "8",
            f"Pretraining with feedback beats MLE pretraining then finetuning with feedback ({objective})",
            f"misalignment of {arm} / {objective} from scratch, same total tokens",
            "holds if the 95% CI lies above 1x",
            est.side(1.0, above=True),
            est,
        )
    return claims


def _quotient(a: dict, b: dict, key: str) -> float | None:
    x, y = a.get(key), b.get(key)
    return None if x is None or y is None or y <= 0 else x / y


def compute_claims(rows: Sequence[dict]) -> list[dict]:
    """Every claim that the rows can speak to, per task, in the paper's order; claim 9 (control
    tokens added at finetuning cost the first ~100M tokens) needs far more tokens than a CPU study."""
    out = []
    for task, arms in sorted(grid(rows).items()):
        out += [asdict(c) for c in _task_claims(task, arms)]
        if any(a.startswith("finetune-conditional") for a in arms):
            out.append(
                asdict(
                    Claim(
                        "9",
                        task,
                        "Control tokens added only at finetuning cost alignment and capability for ~100M tokens",
                        "-",
                        "-",
                        NOT_MEASURED,
                        detail="the paper's effect spans ~100M finetuning tokens; a CPU study finetunes on a few M",
                    )
                )
            )
    return out


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
