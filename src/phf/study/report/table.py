"""Numbers as the report prints them, the results table's cells, and the sentences beside it
(misalignment relative to MLE, control-token use, the sampling settings, what is missing)."""

from __future__ import annotations

from typing import Any

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


COLUMNS = [
    ("arm", "arm"),
    ("objective", "objective"),
    ("misalignment", "misalignment (mean ± 95% CI)"),
    ("max_at_25", "max@25"),
    ("hit_rate", "hit rate"),
    ("judge", "judge mean"),
    ("lm_loss", "LM loss"),
    ("kl", "KL (nats)"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("self_bleu_5", "Self-BLEU-5"),
    ("tokens", "training tokens"),
    ("wall", "wall time"),
]
HUMANEVAL_COLUMN = ("humaneval", "HumanEval pass@1")  # after KL, where any arm has it


def columns(rows: list[dict]) -> list[tuple[str, str]]:
    """The results table's columns: :data:`COLUMNS`, and HumanEval where any arm was evaluated on it."""
    if not any(r.get("humaneval_pass_at_1") is not None for r in rows):
        return COLUMNS
    at = [k for k, _ in COLUMNS].index("kl") + 1
    return [*COLUMNS[:at], HUMANEVAL_COLUMN, *COLUMNS[at:]]


def _cells(row: dict) -> dict[str, str]:
    objective = row.get("objective") or "?"
    if row.get("finetune"):
        objective += " (finetuned)"
    if row.get("protocol"):
        objective += f", {row['protocol']} sampling"
    if not row["evaluated"]:
        cells = {k: MISSING for k, _ in [*COLUMNS, HUMANEVAL_COLUMN]}
        cells["misalignment"] = "not evaluated"
    else:
        cells = {
            "misalignment": fmt_mean_ci(row["misalignment_mean"], row["misalignment_ci95"]),
            "max_at_25": fmt(row["max_at_25"]),
            "hit_rate": fmt_percent(row["hit_rate"]),
            "judge": fmt(row["judge_mean"]),
            "lm_loss": fmt(row["lm_loss"]),
            "kl": fmt(row["kl"]),
            "humaneval": fmt_percent(row.get("humaneval_pass_at_1")),
            "distinct_1": fmt(row["distinct_1"]),
            "distinct_2": fmt(row["distinct_2"]),
            "self_bleu_5": fmt(row["self_bleu_5"]),
        }
    cells.update(
        arm=row["name"],
        objective=objective,
        tokens=fmt_tokens(row["training_tokens"]),
        wall=fmt_seconds(row["wall_seconds"]),
    )
    return cells


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
        parts += [f"{k} {v}" for k, v in r["skipped"].items()]
        parts += r["notes"]
        if parts:
            lines.append(f"{r['name']}: " + "; ".join(parts))
    return lines
