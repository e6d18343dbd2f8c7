"""``phf report``: compare evaluated runs in one table, a Pareto plot and sample tables.

:func:`build_report` reads run directories (``eval.json``, ``phf.json``, ``metrics.jsonl``,
``trainer_state.json``, ``samples.jsonl``, ``redteam.json``; any may be missing) and writes into
one output directory:

- ``results.json``: every number of the table per arm (keyed by arm name), the paths read, and
  what was missing;
- ``report.md`` and a self-contained ``report.html`` (CSS inline, figures as base64 PNG data URIs,
  model outputs HTML-escaped: they may contain markup);
- ``pareto.png``/``.svg`` (misalignment against KL and held-out LM loss, with the Pareto frontier),
  ``misalignment_over_tokens.png``/``.svg`` (the periodic evaluations logged during training, mean
  and 95% CI over seeds), ``capability.png``/``.svg`` (LM loss and KL per arm over seeds), when any
  run was red-teamed ``redteam.png``/``.svg``, and when a study has finetuning arms
  ``finetune.png``/``.svg`` (the paper's Fig. 6);
- the paper's claims checked against these numbers (:mod:`~phf.study.report.claims`), in
  results.json and both documents.

Everything but the date in the header is deterministic: same inputs, same bytes.

In the order they run: :mod:`~phf.study.report.runs` reads the runs and sums each up in a row,
:mod:`~phf.study.report.table` formats the rows' numbers and compares the arms,
:mod:`~phf.study.report.plots` draws the figures, :mod:`~phf.study.report.pages` writes the two
documents.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phf.errors import PhfError
from phf.io.atomic import write_text_atomic
from phf.io.integrity import remove_stale_temps
from phf.study.report.claims import compute_claims
from phf.study.report.pages import Page, write_html, write_markdown
from phf.study.report.plots import (
    OBJECTIVE_STYLES,
    figure_captions,
    pareto_frontier,
    plot_capability,
    plot_finetune,
    plot_over_tokens,
    plot_pareto,
    plot_redteam,
)
from phf.study.report.runs import (
    Run,
    arm_names,
    number,
    pick_samples,
    read_run,
    redteam_curves,
    scorer_facts,
    summarize,
)
from phf.study.report.table import header_facts, missing_lines, ratios

__all__ = ["OBJECTIVE_STYLES", "arm_names", "build_report", "pareto_frontier"]


class ReportError(PhfError, ValueError):
    """The report cannot be written from what it was given; the message names the path."""


# A directory holding any of these is a run (trained, being trained, or an evaluated model).
RUN_FILES = ("phf.json", "eval.json", "metrics.jsonl")


def _default_title(rows: list[dict]) -> str:
    tasks = scorer_facts(rows, "name")
    return f"phf report: {', '.join(tasks)}" if tasks else "phf report"


def _check_runs(run_dirs: Sequence[str | Path]) -> None:
    """Every path must hold a run; a typo should fail here, not show up as an empty arm."""
    for path in map(Path, run_dirs):
        if not any((path / name).is_file() for name in RUN_FILES):
            what = "does not exist" if not path.exists() else "holds no run"
            raise ReportError(
                f"{path} {what} (no {', '.join(RUN_FILES)}); give run directories of phf train or phf eval"
            )


def _names(run_dirs: Sequence[str | Path], names: Sequence[str] | None) -> list[str]:
    """The arm names given (one per run, unique), else the directories' (arm_names)."""
    if names is None:
        return arm_names(run_dirs)
    names = [str(n) for n in names]
    if len(names) != len(run_dirs):
        raise ValueError(f"{len(names)} names for {len(run_dirs)} run directories")
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique: {names}")
    return names


def _draw_figures(runs: list[Run], rows: list[dict], out: Path, title: str) -> dict[str, Any]:
    """Every figure by name, in the order results.json lists them; None where no arm has its numbers."""
    figures: dict[str, Any] = {}
    figures["pareto"] = plot_pareto(rows, out, title)
    figures["misalignment_over_tokens"] = plot_over_tokens(rows, out, title)
    curves = {r.name: c for r in runs if (c := redteam_curves(r))}
    figures["redteam"] = plot_redteam(rows, curves, out, title) if curves else None
    figures["capability"] = plot_capability(rows, out, title)
    figures["finetune"] = plot_finetune(rows, out, title)
    return figures


def _samples_shown(runs: list[Run]) -> dict[str, list[dict]]:
    """The samples each arm shows in the documents (pick_samples), their scores as plain numbers."""
    return {
        r.name: [
            {"which": s["which"], "score": number(s.get("score")), "judge": number(s.get("judge")), "text": s["text"]}
            for s in pick_samples(r.samples)
        ]
        for r in runs
    }


def _not_drawn(figures: dict[str, Any]) -> dict[str, str]:
    """Why each figure that was not drawn is missing."""
    reasons = {"redteam": "no run has redteam.json", "finetune": "no finetune-<objective> arm beside its objective"}
    return {k: reasons.get(k, "no arm has the numbers it needs") for k, v in figures.items() if not v}


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    title: str | None = None,
    names: Sequence[str] | None = None,
    missing_ok: bool = False,
) -> dict:
    """Compare runs: write results.json, report.md, report.html and the figures into ``out``.

    ``names`` overrides the arm names (default: each directory's name, or ``parent/name`` where two
    runs share one). A path that does not exist or holds no run is an error unless ``missing_ok``
    (a study reports arms that have not run yet); runs without eval.json are listed as not
    evaluated, and a file missing from a run is noted, never fatal. Returns what results.json holds.
    """
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("build_report needs at least one run directory")
    if not missing_ok:
        _check_runs(run_dirs)
    names = _names(run_dirs, names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # what a report killed mid-write left
    runs = [read_run(p, n) for p, n in zip(run_dirs, names)]
    rows = [summarize(r) for r in runs]
    for row in rows:
        row["ratio_vs_mle"] = None
    base, sentences = ratios(rows)
    title = title or _default_title(rows)
    date = datetime.date.today().isoformat()

    figures = _draw_figures(runs, rows, out, title)
    claims = compute_claims(rows)
    captions = figure_captions(figures, rows)
    samples = _samples_shown(runs)
    missing = missing_lines(rows)
    facts = header_facts(rows)
    page = Page(title, date, facts, rows, sentences, figures, captions, samples, missing, claims)
    write_markdown(out / "report.md", page)
    write_html(out / "report.html", out, page)

    files = ["results.json", "report.md", "report.html"] + [f for fig in figures.values() if fig for f in fig["files"]]
    results = {
        "title": title,
        "date": date,
        "out": str(out),
        "runs": [str(Path(p)) for p in run_dirs],
        "baseline": base["name"] if base else None,
        "ratios_vs_mle": sentences,
        "scorers": facts["scorers"],
        "samples": facts["samples"],
        "arms": {r["name"]: {**r, "samples_shown": samples[r["name"]]} for r in rows},
        "claims": claims,
        "figures": {k: v for k, v in figures.items() if v},
        "figures_not_drawn": _not_drawn(figures),
        "missing": missing,
        "files": {f: str(out / f) for f in files},
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results
