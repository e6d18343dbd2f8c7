"""Numbers as the report prints them, the results table's cells, and the sentences beside it
(misalignment relative to MLE, control-token use, the sampling settings, what is missing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phf.evaluation.results import KL, Diversity, HumanEval, Judge, LMLoss, Misalignment, Section, sections
from phf.study.report.runs import number

MISSING = "—"


def fmt(value: Any, digits: int = 3) -> str:
    """3 significant digits, trailing zeros kept (``0.0140``); '—' for a missing value."""
    value = number(value)
    if value is None:
        return MISSING
    if value == 0:
        return "0"
    text = f"{value:#.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa.rstrip('.')}e{int(exponent)}"
    return text.rstrip(".")


def fmt_percent(value: Any) -> str:
    value = number(value)
    if value is None:
        return MISSING
    return "0%" if value == 0 else f"{fmt(100 * value)}%"


def fmt_tokens(value: Any) -> str:
    value = number(value)
    if value is None:
        return MISSING
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{fmt(value / scale)}{suffix}"
    return str(int(value)) if float(value).is_integer() else fmt(value)


def fmt_seconds(value: Any) -> str:
    value = number(value)
    if value is None:
        return MISSING
    if value < 120:
        return f"{fmt(value)} s"
    if value < 7200:
        return f"{fmt(value / 60)} min"
    return f"{fmt(value / 3600)} h"


def fmt_mean_ci(mean: Any, ci: Any) -> str:
    """``mean ± half-width`` of the 95% interval (the bootstrap interval may be asymmetric; the
    exact bounds are in results.json)."""
    if number(mean) is None:
        return MISSING
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and number(ci[0]) is not None and number(ci[1]) is not None:
        return f"{fmt(mean)} ± {fmt((ci[1] - ci[0]) / 2, 2)}"
    return fmt(mean)


@dataclass(frozen=True)
class Column:
    """A metric column of the results table: the row values it shows (its section's headline names)
    and how it writes them."""

    key: str
    header: str
    values: tuple[str, ...]
    show: Callable[..., str] = fmt

    def cell(self, row: dict) -> str:
        return self.show(*(row.get(v) for v in self.values))


# The metric columns, by the eval.json section whose headline they show, in the table's order. A
# section skipped by design (Section.optional: HumanEval is off by default) has its columns only
# where some arm has it.
METRIC_COLUMNS: list[tuple[type[Section], list[Column]]] = [
    (
        Misalignment,
        [
            Column(
                "misalignment", "misalignment (mean ± 95% CI)", ("misalignment_mean", "misalignment_ci95"), fmt_mean_ci
            ),
            Column("max_at_25", "max@25", ("max_at_25",)),
            Column("hit_rate", "hit rate", ("hit_rate",), fmt_percent),
        ],
    ),
    (Judge, [Column("judge", "judge mean", ("judge_mean",))]),
    (LMLoss, [Column("lm_loss", "LM loss", ("lm_loss",))]),
    (KL, [Column("kl", "KL (nats)", ("kl",))]),
    (HumanEval, [Column("humaneval", "HumanEval pass@1", ("humaneval_pass_at_1",), fmt_percent)]),
    (
        Diversity,
        [
            Column("distinct_1", "distinct-1", ("distinct_1",)),
            Column("distinct_2", "distinct-2", ("distinct_2",)),
            Column("self_bleu_5", "Self-BLEU-5", ("self_bleu_5",)),
        ],
    ),
]


def columns(rows: list[dict]) -> list[tuple[str, str]]:
    """The results table's (key, header) columns: the arm, its objective, the metric columns (an
    optional section's where some arm has it), training tokens and wall time."""
    metrics = [
        (c.key, c.header)
        for kind, cols in METRIC_COLUMNS
        for c in cols
        if not kind.optional or any(r.get(v) is not None for r in rows for v in c.values)
    ]
    return [("arm", "arm"), ("objective", "objective"), *metrics, ("tokens", "training tokens"), ("wall", "wall time")]


def _cells(row: dict) -> dict[str, str]:
    objective = row.get("objective") or "?"
    if row.get("finetune"):
        objective += " (finetuned)"
    if row.get("protocol"):
        objective += f", {row['protocol']} sampling"
    metrics = {c.key: c.cell(row) if row["evaluated"] else MISSING for _, cols in METRIC_COLUMNS for c in cols}
    if not row["evaluated"]:
        metrics["misalignment"] = "not evaluated"
    return {
        "arm": row["name"],
        "objective": objective,
        **metrics,
        "tokens": fmt_tokens(row["training_tokens"]),
        "wall": fmt_seconds(row["wall_seconds"]),
    }


def results_rows(rows: list[dict]) -> list[list[str]]:
    keys = [k for k, _ in columns(rows)]
    return [[_cells(r)[k] for k in keys] for r in rows]


def _baseline(rows: list[dict]) -> dict | None:
    candidates = [r for r in rows if r.get("misalignment_mean") is not None and not r.get("finetune")]
    for test in (
        lambda r: r["name"].rsplit("/", 1)[-1].lower() == "mle" and r.get("objective") in (None, "mle"),
        lambda r: r.get("objective") == "mle",
        lambda r: r["name"].rsplit("/", 1)[-1].lower() == "mle",
    ):
        found = [r for r in candidates if test(r)]
        if found:
            return found[0]
    return None


def _group(row: dict) -> str:
    """Arms named "task/seed/objective" are compared with the MLE arm of the same task and seed."""
    return row["name"].rsplit("/", 1)[0] if "/" in row["name"] else ""


def ratios(rows: list[dict]) -> tuple[dict | None, list[str]]:
    base = _baseline(rows)
    if base is None:
        return None, []
    sentences = []
    for row in rows:
        mean = row.get("misalignment_mean")
        row["ratio_vs_mle"] = None
        own = _baseline([r for r in rows if _group(r) == _group(row)]) or base
        ref = own["misalignment_mean"]
        if row is own or mean is None:
            continue
        if mean > 0 and ref > 0:
            ratio = ref / mean
            row["ratio_vs_mle"] = ratio
            word = "lower" if ratio >= 1 else "higher"
            sentences.append(f"{row['name']}: {fmt(ratio if ratio >= 1 else 1 / ratio)}x {word} than MLE")
        elif mean == 0 and ref > 0:
            sentences.append(f"{row['name']}: 0 (no misaligned sample; MLE {fmt(ref)})")
        elif ref == 0 and mean > 0:
            sentences.append(f"{row['name']}: {fmt(mean)} where MLE is 0")
        else:
            sentences.append(f"{row['name']}: {fmt(mean)} (MLE {fmt(ref)}; no ratio)")
    return base, sentences


def control_sentence(rows: list[dict]) -> str | None:
    """How the conditional arms use their control tokens (eval.json's control_tokens and
    tag_prediction) and what each sampling protocol gave (misalignment_by_protocol)."""
    parts = [f"{r['name']} {fmt(r['control_auroc'])}" for r in rows if r.get("control_auroc") is not None]
    if not parts:
        return None
    text = (
        "Control-token use \u2014 AUROC with which log p(segment | bad) \u2212 log p(segment | good) tells held-out "
        "segments labelled bad from good (0.5: the model ignores its control tokens; 1: it separates them "
        "perfectly): " + "; ".join(parts) + "."
    )
    tags = [f"{r['name']} {fmt(r['tag_auroc'])}" for r in rows if r.get("tag_auroc") is not None]
    if tags:
        text += (
            " Tag prediction \u2014 AUROC with which the model's p(<|bad|>) at held-out segment starts, from the "
            "text before them, tells the segments labelled bad: " + "; ".join(tags) + "."
        )
    protocols = []
    for r in rows:
        by = r.get("misalignment_by_protocol") or {}
        if len(by) > 1:
            protocols.append(
                f"{r['name']} "
                + ", ".join(f"{p} {fmt(v['mean'])} ({fmt(v['tags_per_sample'])} tags/sample)" for p, v in by.items())
            )
    if protocols:
        text += (
            " Misalignment by sampling protocol (paper: both tags forbidden for text; emit-good: the model may "
            "emit <|good|>; recondition: every tag it samples becomes <|good|>): " + "; ".join(protocols) + "."
        )
    return text


def header_facts(rows: list[dict]) -> dict[str, Any]:
    scorers = []
    for r in rows:
        s = r.get("scorer")
        if s and r["evaluated"]:
            label = f"{s.get('name')} ({s.get('version')}; unit: {s.get('unit')})"
            if label not in scorers:
                scorers.append(label)
    ns = sorted({r["misalignment_n"] for r in rows if r.get("misalignment_n") is not None})
    settings: dict[str, Any] = next((r["eval_settings"] for r in rows if r.get("eval_settings")), {})
    return {
        "scorers": scorers,
        "samples": ns,
        "settings": settings,
        "judge": sorted({r["judge_scorer"] for r in rows if r.get("judge_scorer")}),
    }


def sampling_sentence(facts: dict) -> str:
    ns = facts["samples"]
    n = MISSING if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]} (differs between arms)"
    s = facts["settings"]
    bits = []
    if "temperature" in s:
        bits.append(f"temperature {s['temperature']}")
    if "top_p" in s:
        bits.append(f"top-p {s['top_p']}")
    if s.get("max_new_tokens"):
        bits.append(f"at most {s['max_new_tokens']} new tokens")
    return f"{n} unconditional samples per arm" + (f" ({', '.join(bits)})" if bits else "")


def _in_table_order(skipped: dict[str, str]) -> list[tuple[str, str]]:
    """Skipped sections in the table's order, those without a column after them (in eval.json's order)."""
    shown = [kind for kind, _ in METRIC_COLUMNS]
    rank = {key: shown.index(kind) if kind in shown else len(shown) for key, kind in sections().items()}
    return sorted(skipped.items(), key=lambda item: rank.get(item[0], len(shown)))


def missing_lines(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        parts = []
        if not r["evaluated"]:
            parts.append(
                "not evaluated (no eval.json)" if "eval.json" in r["missing"] else "not evaluated (eval.json unusable)"
            )
        absent = [m for m in r["missing"] if m != "eval.json"]
        if absent:
            parts.append("missing " + ", ".join(absent))
        parts += [f"{k} {v}" for k, v in _in_table_order(r["skipped"])]
        parts += r["notes"]
        if parts:
            lines.append(f"{r['name']}: " + "; ".join(parts))
    return lines
