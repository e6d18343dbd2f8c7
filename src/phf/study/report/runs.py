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
from typing import Any, TypeVar

from phf.config import OBJECTIVE_NAMES
from phf.evaluation.results import EvalResults, Skipped, headline, sections
from phf.io.records import FormatError, Record
from phf.training.run_info import RunInfo

SAMPLES_PER_ARM = 5
R = TypeVar("R", bound=Record)


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
    eval: EvalResults | None = None
    phf: RunInfo | None = None
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


def _read_record(run: Run, name: str, kind: type[R]) -> R | None:
    """The file read as ``kind``, checked; a file that is not one is noted as unusable."""
    data = _read_json(run, name)
    if data is None:
        return None
    try:
        return kind.from_dict(data, name)
    except FormatError as exc:
        run.notes.append(str(exc))  # names the file and the key
        del run.files[name]
        return None


def read_run(path: str | Path, name: str) -> Run:
    """What a run directory holds for the report; missing files are noted, never fatal."""
    run = Run(name=name, path=Path(path))
    if not run.path.is_dir():
        run.notes.append(f"{run.path} is not a directory")
        run.missing += ["eval.json", "phf.json", "metrics.jsonl", "trainer_state.json", "samples.jsonl"]
        return run
    run.eval = _read_record(run, "eval.json", EvalResults)
    run.phf = _read_record(run, "phf.json", RunInfo)
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
    if run.phf is not None and (run.phf.init or run.phf.continue_from):
        return True
    last = run.name.rsplit("/", 1)[-1].lower()
    return last.startswith(("finetune", "ft-", "ft_")) or "finetun" in last


def _tokens_before(run: Run) -> int:
    """Tokens the run's starting checkpoint was trained on (a finetuning arm continues its base run's
    stream from there): the offset that puts its own token counts on the study's axis."""
    start = run.phf.continue_from if run.phf else None
    if start is None:
        return 0
    try:
        state = json.loads((run.path / start / "trainer_state.json").read_text())  # absolute, or relative to the run
    except (OSError, ValueError):
        return 0
    tokens = number(state.get("tokens")) if isinstance(state, dict) else None
    return int(tokens or 0)


def _plain(value: Any) -> Any:
    """A headline value as the report's row holds it: non-finite numbers and malformed intervals are None."""
    if isinstance(value, list):
        return _ci(value)
    return value if value is None or isinstance(value, str) else number(value)


def _skipped(ev: EvalResults | None) -> dict[str, str]:
    """Why each section a run is expected to have is not there (sections skipped by design are not
    worth a line: MLE has no control tokens, HumanEval is off by default)."""
    why = {}
    for key, kind in sections().items():
        section = getattr(ev, key) if ev else None
        if ev is not None and not isinstance(section, kind) and not kind.optional:
            why[key] = f"skipped: {section.because}" if isinstance(section, Skipped) else f"no '{key}' in eval.json"
    return why


def _objective(run: Run) -> dict[str, Any]:
    """The arm's objective and where it was read: phf.json, eval.json's settings, else the arm's name."""
    for source, objective in (
        ("phf.json", run.phf.objective if run.phf else None),
        ("eval.json", run.eval.settings.objective if run.eval else None),
        ("arm name", _guess_objective(run.name)),
    ):
        if objective:
            return {"objective": objective, "objective_source": source}
    return {"objective": None, "objective_source": None}


def _scorer(run: Run) -> dict[str, Any] | None:
    """The task scorer's name, version and unit: the one evaluated with, else the one trained with."""
    scorer = run.eval.misalignment.scorer if run.eval else run.phf.scorer if run.phf else None
    return {k: scorer.get(k) for k in ("name", "version", "unit")} if scorer else None


def _by_protocol(ev: EvalResults | None) -> dict[str, dict[str, Any]] | None:
    if ev is None or ev.misalignment_by_protocol is None:
        return None
    return {
        p: {"mean": _plain(m.mean), "tags_per_sample": _plain(m.tags_per_sample)}
        for p, m in ev.misalignment_by_protocol.items()
    }


def _evaluation_settings(ev: EvalResults | None) -> dict[str, Any]:
    if ev is None:
        return {"eval_seconds": None, "eval_settings": {}}
    keys = ("num_samples", "temperature", "top_p", "top_k", "max_new_tokens", "prompt", "device")
    return {"eval_seconds": number(ev.settings.seconds), "eval_settings": {k: getattr(ev.settings, k) for k in keys}}


def _training(run: Run) -> dict[str, Any]:
    """How long the run trained, on how many tokens, and its periodic evaluations (metrics.jsonl)."""
    train_lines = [m for m in run.metrics if "eval" not in m]
    eval_lines = [m for m in run.metrics if isinstance(m.get("eval"), dict)]
    elapsed = [m["elapsed_s"] for m in train_lines if number(m.get("elapsed_s")) is not None]
    tokens = number((run.state or {}).get("tokens"))
    if tokens is None:
        logged = [m["tokens"] for m in run.metrics if number(m.get("tokens")) is not None]
        tokens = logged[-1] if logged else None
    steps = number((run.state or {}).get("step"))
    if steps is None:
        logged = [m["step"] for m in train_lines if number(m.get("step")) is not None]
        steps = logged[-1] if logged else None
    tok_s = [m["tok_s"] for m in train_lines if number(m.get("tok_s")) is not None]
    return {
        "training_seconds": elapsed[-1] if elapsed else None,
        "training_tokens": tokens,
        "training_steps": steps,
        "tokens_per_second": tok_s[-1] if tok_s else None,
        "periodic_evals": [
            {
                "step": m.get("step"),
                "tokens": m.get("tokens"),
                "misalignment_mean": number(m["eval"].get("misalignment_mean")),
                "hit_rate": number(m["eval"].get("hit_rate")),
                "samples": number(m["eval"].get("samples")),
            }
            for m in eval_lines
            if number(m.get("tokens")) is not None and number(m["eval"].get("misalignment_mean")) is not None
        ],
    }


def _wall(row: dict[str, Any]) -> dict[str, Any]:
    """Training and evaluation time together, and which of the two were known."""
    parts = {"training": row["training_seconds"], "evaluation": row["eval_seconds"]}
    known = {p: v for p, v in parts.items() if v is not None}
    return {"wall_seconds": float(sum(known.values())) if known else None, "wall_parts": list(known)}


def _redteam(run: Run) -> dict[str, Any]:
    rt = run.redteam if isinstance(run.redteam, dict) else None
    rounds = [r for r in (rt or {}).get("rounds", []) if isinstance(r, dict)] if rt else []
    return {
        "redteam_rounds": len(rounds) if rt else None,
        "redteam_final_pool_mean": number(rounds[-1].get("pool_mean")) if rounds else None,
        "redteam_final_best": number(rounds[-1].get("best")) if rounds else None,
    }


def summarize(run: Run) -> dict[str, Any]:
    """The flat numbers of one arm (every number of the table, and a few more), the paths, and
    what was missing or skipped."""
    ev = run.eval
    row: dict[str, Any] = {"name": run.name, "path": str(run.path), "evaluated": ev is not None}
    row.update(_objective(run), finetune=_is_finetune(run))
    row.update({name: _plain(value) for name, value in headline(ev).items()})
    row.update(scorer=_scorer(run), misalignment_by_protocol=_by_protocol(ev), **_evaluation_settings(ev))
    row.update(_training(run))
    row.update(_wall(row), tokens_before=_tokens_before(run))
    row.update(_redteam(run))
    row.update(skipped=_skipped(ev), missing=list(run.missing), notes=list(run.notes), files=dict(run.files))
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
