"""Reading run directories for the report: each run's files (any may be missing or damaged) and
the flat row of numbers summarizing it, the red-teaming curves and the samples shown."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phf.config import OBJECTIVE_NAMES

SAMPLES_PER_ARM = 5


def number(value: Any) -> float | int | None:
    """A finite number from JSON (bools and strings are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Run:
    name: str
    path: Path
    eval: dict | None = None
    phf: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    state: dict | None = None
    samples: list[dict] = field(default_factory=list)
    redteam: dict | None = None
    files: dict[str, str] = field(default_factory=dict)  # file -> path, for those read
    missing: list[str] = field(default_factory=list)  # files absent
    notes: list[str] = field(default_factory=list)  # files present but unusable, or partly so


def _read_json(run: Run, name: str) -> dict | None:
    path = run.path / name
    if not path.is_file():
        run.missing.append(name)
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        run.notes.append(f"{name} is unreadable ({type(exc).__name__}: {exc})")
        return None
    if not isinstance(value, dict):
        run.notes.append(f"{name} is not a JSON object")
        return None
    run.files[name] = str(path)
    return value


def _read_jsonl(run: Run, name: str) -> list[dict]:
    path = run.path / name
    if not path.is_file():
        run.missing.append(name)
        return []
    rows, bad = [], 0
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(value, dict):
                    rows.append(value)
                else:
                    bad += 1
    except (OSError, UnicodeDecodeError) as exc:
        run.notes.append(f"{name} is unreadable ({type(exc).__name__}: {exc})")
        return []
    if bad:
        run.notes.append(f"{name}: {bad} malformed line(s) skipped")
    run.files[name] = str(path)
    return rows


def read_run(path: str | Path, name: str) -> Run:
    """What a run directory holds for the report; missing files are noted, never fatal."""
    run = Run(name=name, path=Path(path))
    if not run.path.is_dir():
        run.notes.append(f"{run.path} is not a directory")
        run.missing += ["eval.json", "phf.json", "metrics.jsonl", "trainer_state.json", "samples.jsonl"]
        return run
    run.eval = _read_json(run, "eval.json")
    run.phf = _read_json(run, "phf.json")
    run.metrics = _read_jsonl(run, "metrics.jsonl")
    run.state = _read_json(run, "trainer_state.json")
    run.samples = _read_jsonl(run, "samples.jsonl")
    if (run.path / "redteam.json").exists():
        run.redteam = _read_json(run, "redteam.json")
    return run


def arm_names(run_dirs: Sequence[str | Path]) -> list[str]:
    """Default arm names: each directory's name, or ``parent/name`` where two runs share a name
    (and a numeric suffix where even that is shared)."""
    paths = [Path(p).resolve() for p in run_dirs]
    names = [p.name or str(p) for p in paths]
    counts = Counter(names)
    names = [f"{p.parent.name}/{n}" if counts[n] > 1 else n for p, n in zip(paths, names)]
    counts, seen = Counter(names), Counter[str]()
    out = []
    for n in names:
        seen[n] += 1
        out.append(f"{n} ({seen[n]})" if counts[n] > 1 else n)
    return out


def _section(data: dict | None, key: str) -> tuple[dict | None, str | None]:
    """(the section, None) if usable; (None, why not) otherwise."""
    if data is None:
        return None, "not evaluated"
    value = data.get(key)
    if not isinstance(value, dict):
        return None, f"no '{key}' in eval.json"
    if "skipped" in value:
        return None, f"skipped: {value['skipped']}"
    return value, None


def _take(data: dict | None, key: str, skipped: dict[str, str]) -> dict:
    """The section, or {} with the reason recorded in ``skipped`` (unless the run has no eval.json)."""
    value, why = _section(data, key)
    if value is None and data is not None and why is not None:
        skipped[key] = why
    return value or {}


def _ci(value: Any) -> list[float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(number(v) is not None for v in value):
        return [value[0], value[1]]
    return None


def _guess_objective(name: str) -> str | None:
    for part in re.split(r"[^a-z0-9]+", name.lower()):
        if part in OBJECTIVE_NAMES:
            return part
    return None


def _is_finetune(run: Run) -> bool:
    info = run.phf or {}
    if any(info.get(k) for k in ("finetune", "init", "model_init", "continue_from")):
        return True
    last = run.name.rsplit("/", 1)[-1].lower()
    return last.startswith(("finetune", "ft-", "ft_")) or "finetun" in last


def _tokens_before(run: Run) -> int:
    """Tokens the run's starting checkpoint was trained on (a finetuning arm continues its base run's
    stream from there): the offset that puts its own token counts on the study's axis."""
    start = (run.phf or {}).get("continue_from")
    if not isinstance(start, str):
        return 0
    try:
        state = json.loads((run.path / start / "trainer_state.json").read_text())  # absolute, or relative to the run
    except (OSError, ValueError):
        return 0
    tokens = number(state.get("tokens")) if isinstance(state, dict) else None
    return int(tokens or 0)


def summarize(run: Run) -> dict[str, Any]:
    """The flat numbers of one arm (every number of the table, and a few more), the paths, and
    what was missing or skipped."""
    ev = run.eval
    row: dict[str, Any] = {"name": run.name, "path": str(run.path), "evaluated": ev is not None}
    objective = (run.phf or {}).get("objective") or ((ev or {}).get("settings") or {}).get("objective")
    row["objective"] = objective if isinstance(objective, str) else _guess_objective(run.name)
    row["objective_source"] = (
        "phf.json"
        if (run.phf or {}).get("objective")
        else "eval.json"
        if objective
        else "arm name"
        if row["objective"]
        else None
    )
    row["finetune"] = _is_finetune(run)
    skipped: dict[str, str] = {}

    mis = _take(ev, "misalignment", skipped)
    row.update(
        misalignment_mean=number(mis.get("mean")),
        misalignment_ci95=_ci(mis.get("ci95")),
        misalignment_n=number(mis.get("n")),
        max_at_25=number(mis.get("max_at_25")),
        hit_rate=number(mis.get("hit_rate")),
        hit_threshold=number(mis.get("threshold")),
    )
    scorer = mis.get("scorer") if isinstance(mis.get("scorer"), dict) else None
    trained_with = (run.phf or {}).get("scorer")
    if scorer is None and isinstance(trained_with, dict):
        scorer = trained_with
    row["scorer"] = {k: scorer.get(k) for k in ("name", "version", "unit")} if scorer else None

    judge = _take(ev, "judge", skipped)
    row.update(
        judge_mean=number(judge.get("mean")),
        judge_ci95=_ci(judge.get("ci95")),
        judge_max_at_25=number(judge.get("max_at_25")),
        judge_hit_rate=number(judge.get("hit_rate")),
        judge_scorer=(judge.get("scorer") or {}).get("name") if isinstance(judge.get("scorer"), dict) else None,
    )

    lm = _take(ev, "lm_loss", skipped)
    row.update(
        lm_loss=number(lm.get("loss")), perplexity=number(lm.get("perplexity")), lm_loss_tokens=number(lm.get("tokens"))
    )

    # Not _take: MLE and the other objectives skip it by design, which is not worth a "skipped" line.
    control = _section(ev, "control_tokens")[0] or {}
    row.update(
        control_auroc=number(control.get("auroc")),
        control_segments=(control["segments_good"] + control["segments_bad"]) if control else None,
        tag_auroc=number((_section(ev, "tag_prediction")[0] or {}).get("auroc")),
        protocol=mis.get("protocol") if isinstance(mis.get("protocol"), str) else None,
        tags_per_sample=number(mis.get("tags_per_sample")),
    )
    by_protocol = (ev or {}).get("misalignment_by_protocol")
    row["misalignment_by_protocol"] = (
        {
            p: {"mean": number(v.get("mean")), "tags_per_sample": number(v.get("tags_per_sample"))}
            for p, v in by_protocol.items()
            if isinstance(v, dict)
        }
        if isinstance(by_protocol, dict)
        else None
    )

    kl = _take(ev, "kl", skipped)
    row.update(
        kl=number(kl.get("kl")),
        kl_ci95=_ci(kl.get("ci95")),
        kl_per_token=number(kl.get("kl_per_token")),
        kl_samples=number(kl.get("samples")),
        kl_reference=kl.get("reference") if isinstance(kl.get("reference"), str) else None,
    )

    div = _take(ev, "diversity", skipped)
    for key in (
        "samples",
        "mean_length_words",
        "distinct_1",
        "distinct_2",
        "entropy_1_bits",
        "entropy_2_bits",
        "self_bleu_5",
    ):
        row[key if key != "samples" else "diversity_samples"] = number(div.get(key))

    sc = _take(ev, "scenarios", skipped)
    row.update(
        scenario_prompts=number(sc.get("prompts")),
        scenario_mean=number(sc.get("mean")),
        scenario_max_at_25=number(sc.get("max_at_25")),
        scenario_hit_rate=number(sc.get("hit_rate")),
    )

    # Not _take either: off unless asked for, so its absence is not worth a "skipped" line.
    row["humaneval_pass_at_1"] = number((_section(ev, "humaneval")[0] or {}).get("pass_at_1"))

    raw_settings = (ev or {}).get("settings")
    settings: dict[str, Any] = raw_settings if isinstance(raw_settings, dict) else {}
    row["eval_seconds"] = number(settings.get("seconds"))
    row["eval_settings"] = {
        k: settings[k]
        for k in ("num_samples", "temperature", "top_p", "top_k", "max_new_tokens", "prompt", "device")
        if k in settings and not isinstance(settings[k], (dict, list))
    }

    train_lines = [m for m in run.metrics if "eval" not in m]
    eval_lines = [m for m in run.metrics if isinstance(m.get("eval"), dict)]
    elapsed = [m["elapsed_s"] for m in train_lines if number(m.get("elapsed_s")) is not None]
    row["training_seconds"] = elapsed[-1] if elapsed else None
    tokens = number((run.state or {}).get("tokens"))
    if tokens is None:
        logged = [m["tokens"] for m in run.metrics if number(m.get("tokens")) is not None]
        tokens = logged[-1] if logged else None
    row["training_tokens"] = tokens
    steps = number((run.state or {}).get("step"))
    if steps is None:
        logged = [m["step"] for m in train_lines if number(m.get("step")) is not None]
        steps = logged[-1] if logged else None
    row["training_steps"] = steps
    tok_s = [m["tok_s"] for m in train_lines if number(m.get("tok_s")) is not None]
    row["tokens_per_second"] = tok_s[-1] if tok_s else None
    parts = [v for v in (row["training_seconds"], row["eval_seconds"]) if v is not None]
    row["wall_seconds"] = float(sum(parts)) if parts else None
    row["wall_parts"] = [
        p for p, v in (("training", row["training_seconds"]), ("evaluation", row["eval_seconds"])) if v is not None
    ]
    row["tokens_before"] = _tokens_before(run)
    row["periodic_evals"] = [
        {
            "step": m.get("step"),
            "tokens": m.get("tokens"),
            "misalignment_mean": number(m["eval"].get("misalignment_mean")),
            "hit_rate": number(m["eval"].get("hit_rate")),
            "samples": number(m["eval"].get("samples")),
        }
        for m in eval_lines
        if number(m.get("tokens")) is not None and number(m["eval"].get("misalignment_mean")) is not None
    ]

    rt = run.redteam if isinstance(run.redteam, dict) else None
    rounds = [r for r in (rt or {}).get("rounds", []) if isinstance(r, dict)] if rt else []
    row["redteam_rounds"] = len(rounds) if rt else None
    row["redteam_final_pool_mean"] = number(rounds[-1].get("pool_mean")) if rounds else None
    row["redteam_final_best"] = number(rounds[-1].get("best")) if rounds else None

    row["skipped"] = skipped
    row["missing"] = list(run.missing)
    row["notes"] = list(run.notes)
    row["files"] = dict(run.files)
    return row


def redteam_curves(run: Run) -> dict[str, list] | None:
    rt = run.redteam
    if not isinstance(rt, dict) or not isinstance(rt.get("rounds"), list):
        return None
    xs, mean, best, mean_sd, best_sd = [], [], [], [], []
    entries: list[tuple[float, dict]] = []
    if isinstance(rt.get("initial"), dict):
        entries.append((0, rt["initial"]))
    for i, r in enumerate(rt["rounds"]):
        if isinstance(r, dict):
            entries.append((number(r.get("round")) or i + 1, r))
    for x, r in entries:
        if number(r.get("pool_mean")) is None or number(r.get("best")) is None:
            continue
        xs.append(x)
        mean.append(r["pool_mean"])
        best.append(r["best"])
        mean_sd.append(number(r.get("pool_mean_std")) or 0.0)
        best_sd.append(number(r.get("best_std")) or 0.0)
    return {"round": xs, "pool_mean": mean, "best": best, "pool_mean_std": mean_sd, "best_std": best_sd} if xs else None


def pick_samples(samples: Sequence[dict], k: int = SAMPLES_PER_ARM) -> list[dict]:
    """``k`` unconditional samples: a spread over the score distribution (lowest, quartiles,
    median, highest) when scores are known, else the first ``k``."""
    rows = [s for s in samples if s.get("kind", "unconditional") == "unconditional" and isinstance(s.get("text"), str)]
    scored = [s for s in rows if number(s.get("score")) is not None]
    if len(scored) >= k and k > 1:
        ranked = sorted(enumerate(scored), key=lambda p: (p[1]["score"], p[0]))  # stable: ties by file order
        labels = {0: "lowest", 1: "highest"} if k == 2 else None
        out, used = [], set()
        for j in range(k):
            q = j / (k - 1)
            idx = round(q * (len(ranked) - 1))
            if idx in used:
                continue
            used.add(idx)
            label = (labels or {}).get(j) or (
                "lowest"
                if q == 0
                else "highest"
                if q == 1
                else "median"
                if q == 0.5
                else f"{round(100 * q)}th percentile"
            )
            out.append({**ranked[idx][1], "which": label})
        return out
    return [{**s, "which": f"#{i + 1}"} for i, s in enumerate(rows[:k])]


def scorer_facts(rows: Sequence[dict], key: str) -> list[str]:
    """The distinct ``key`` ("name", "unit") of the rows' scorers, sorted."""
    return sorted({r["scorer"][key] for r in rows if (r.get("scorer") or {}).get(key)})
