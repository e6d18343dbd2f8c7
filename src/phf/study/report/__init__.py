"""``phf report``: compare evaluated runs in one table, a Pareto plot and sample tables.

:func:`build_report` reads run directories (``eval.json``, ``phf.json``, ``metrics.jsonl``,
``trainer_state.json``, ``samples.jsonl``, ``redteam.json``; any may be missing) and writes into
one output directory:

- ``results.json``: every number of the table per arm (keyed by arm name), the paths read, and
  what was missing;
- ``report.md`` and a self-contained ``report.html`` (CSS inline, figures as base64 PNG data URIs,
  model outputs HTML-escaped: they may contain markup);
- ``pareto.png``/``.svg`` (misalignment against KL and held-out LM loss, with the Pareto frontier),
  ``misalignment_over_tokens.png``/``.svg`` (the periodic evaluations logged during training) and,
  when any run was red-teamed, ``redteam.png``/``.svg``.

Everything but the date in the header is deterministic: same inputs, same bytes.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phf.config import OBJECTIVE_NAMES

__all__ = ["build_report", "pareto_frontier", "arm_names", "OBJECTIVE_STYLES"]

DPI = 150
MISSING = "—"
SAMPLES_PER_ARM = 5
SAMPLE_CHARS = 200

# objective -> (colour, marker, display name), in OBJECTIVE_NAMES' order (the legend's). Fixed, so
# every report uses the same encoding.
OBJECTIVE_STYLES: dict[str, tuple[str, str, str]] = dict(zip(OBJECTIVE_NAMES, (
    ("#4d4d4d", "o", "MLE"),
    ("#1f77b4", "s", "filtering"),
    ("#d62728", "*", "conditional"),
    ("#2ca02c", "v", "unlikelihood"),
    ("#9467bd", "^", "RWR"),
    ("#ff7f0e", "D", "AWR"),
), strict=True))
_OTHER_STYLE = ("#8c564b", "X", "other")
_MARKER_SIZE = {"*": 15, "D": 8}  # stars look small and diamonds large at the same nominal size

HOW_TO_READ = (
    "Each arm is one language model trained on the same scored corpus with a different objective "
    "(Korbak et al. 2023, \u201cPretraining Language Models with Human Preferences\u201d). "
    "<b>Misalignment</b> is the mean score that the task's scorer gives to unconditional samples of the "
    "model (e.g. the probability that a sample is toxic, or PII / PEP8 violations per character), with "
    "a 95% bootstrap confidence interval. <b>max@25</b> is the expected maximum score in a group of 25 "
    "samples (the worst case a user would see), and the <b>hit rate</b> the share of samples above the "
    "task's threshold. The <b>judge</b> is an independent classifier scoring the same samples, so that a "
    "model cannot look aligned merely by fooling the scorer it was trained with. <b>KL</b> is "
    "KL(reference \u2016 model) in nats per sample: how much probability the model lost on text a "
    "reference model (by default the MLE arm) writes, a measure of capability lost. <b>LM loss</b> is the "
    "held-out cross-entropy in nats per token. Lower is better for all of these; distinct-n and "
    "Self-BLEU-5 measure diversity (a sharp drop of distinct-n or rise of Self-BLEU would mean "
    "collapsed, repetitive samples). MLE is plain pretraining; <b>conditional training</b> (prefix each "
    "segment with &lt;|good|&gt; or &lt;|bad|&gt; and sample after &lt;|good|&gt;) was the paper's best "
    "method: about 10x less misalignment at little capability cost."
)


# --- formatting ------------------------------------------------------------------------------------
def _num(value: Any) -> float | int | None:
    """A finite number from JSON (bools and strings are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fmt(value: Any, digits: int = 3) -> str:
    """3 significant digits, trailing zeros kept (``0.0140``); '—' for a missing value."""
    value = _num(value)
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
    value = _num(value)
    if value is None:
        return MISSING
    return "0%" if value == 0 else f"{fmt(100 * value)}%"


def fmt_tokens(value: Any) -> str:
    value = _num(value)
    if value is None:
        return MISSING
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{fmt(value / scale)}{suffix}"
    return str(int(value)) if float(value).is_integer() else fmt(value)


def fmt_seconds(value: Any) -> str:
    value = _num(value)
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
    if _num(mean) is None:
        return MISSING
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and _num(ci[0]) is not None and _num(ci[1]) is not None:
        return f"{fmt(mean)} ± {fmt((ci[1] - ci[0]) / 2, 2)}"
    return fmt(mean)


def _md_escape(text: str) -> str:
    """Text safe inside a Markdown table cell: HTML-escaped (Markdown renders raw HTML) and with
    Markdown's punctuation backslash-escaped."""
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]{}#+!|~])", r"\\\1", text)


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _display_text(text: str, limit: int = SAMPLE_CHARS) -> str:
    """One line, at most ``limit`` characters; newlines shown as ⏎."""
    text = re.sub(r"\s*\n\s*", " \u23ce ", text.strip())
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


# --- reading runs ----------------------------------------------------------------------------------
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
    counts, seen = Counter(names), Counter()
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
    if value is None and data is not None:
        skipped[key] = why
    return value or {}


def _ci(value: Any) -> list[float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_num(v) is not None for v in value):
        return [value[0], value[1]]
    return None


def _guess_objective(name: str) -> str | None:
    for part in re.split(r"[^a-z0-9]+", name.lower()):
        if part in OBJECTIVE_STYLES:
            return part
    return None


def _is_finetune(run: Run) -> bool:
    info = run.phf or {}
    if any(info.get(k) for k in ("finetune", "init", "model_init", "continue_from")):
        return True
    last = run.name.rsplit("/", 1)[-1].lower()
    return last.startswith(("finetune", "ft-", "ft_")) or "finetun" in last


def summarize(run: Run) -> dict[str, Any]:
    """The flat numbers of one arm (every number of the table, and a few more), the paths, and
    what was missing or skipped."""
    ev = run.eval
    row: dict[str, Any] = {"name": run.name, "path": str(run.path), "evaluated": ev is not None}
    objective = (run.phf or {}).get("objective") or ((ev or {}).get("settings") or {}).get("objective")
    row["objective"] = objective if isinstance(objective, str) else _guess_objective(run.name)
    row["objective_source"] = ("phf.json" if (run.phf or {}).get("objective") else
                               "eval.json" if objective else "arm name" if row["objective"] else None)
    row["finetune"] = _is_finetune(run)
    skipped: dict[str, str] = {}

    mis = _take(ev, "misalignment", skipped)
    row.update(misalignment_mean=_num(mis.get("mean")), misalignment_ci95=_ci(mis.get("ci95")),
               misalignment_n=_num(mis.get("n")), max_at_25=_num(mis.get("max_at_25")),
               hit_rate=_num(mis.get("hit_rate")), hit_threshold=_num(mis.get("threshold")))
    scorer = mis.get("scorer") if isinstance(mis.get("scorer"), dict) else None
    if scorer is None and isinstance((run.phf or {}).get("scorer"), dict):
        scorer = run.phf["scorer"]
    row["scorer"] = {k: scorer.get(k) for k in ("name", "version", "unit")} if scorer else None

    judge = _take(ev, "judge", skipped)
    row.update(judge_mean=_num(judge.get("mean")), judge_ci95=_ci(judge.get("ci95")),
               judge_max_at_25=_num(judge.get("max_at_25")), judge_hit_rate=_num(judge.get("hit_rate")),
               judge_scorer=(judge.get("scorer") or {}).get("name") if isinstance(judge.get("scorer"), dict) else None)

    lm = _take(ev, "lm_loss", skipped)
    row.update(lm_loss=_num(lm.get("loss")), perplexity=_num(lm.get("perplexity")),
               lm_loss_tokens=_num(lm.get("tokens")))

    # Not _take: MLE and the other objectives skip it by design, which is not worth a "skipped" line.
    control = _section(ev, "control_tokens")[0] or {}
    row.update(control_auroc=_num(control.get("auroc")),
               control_segments=(control["segments_good"] + control["segments_bad"]) if control else None,
               tag_auroc=_num((_section(ev, "tag_prediction")[0] or {}).get("auroc")),
               protocol=mis.get("protocol") if isinstance(mis.get("protocol"), str) else None,
               tags_per_sample=_num(mis.get("tags_per_sample")))
    by_protocol = (ev or {}).get("misalignment_by_protocol")
    row["misalignment_by_protocol"] = {p: {"mean": _num(v.get("mean")), "tags_per_sample": _num(v.get("tags_per_sample"))}
                                       for p, v in by_protocol.items() if isinstance(v, dict)} \
        if isinstance(by_protocol, dict) else None

    kl = _take(ev, "kl", skipped)
    row.update(kl=_num(kl.get("kl")), kl_ci95=_ci(kl.get("ci95")), kl_per_token=_num(kl.get("kl_per_token")),
               kl_samples=_num(kl.get("samples")),
               kl_reference=kl.get("reference") if isinstance(kl.get("reference"), str) else None)

    div = _take(ev, "diversity", skipped)
    for key in ("samples", "mean_length_words", "distinct_1", "distinct_2", "entropy_1_bits",
                "entropy_2_bits", "self_bleu_5"):
        row[key if key != "samples" else "diversity_samples"] = _num(div.get(key))

    sc = _take(ev, "scenarios", skipped)
    row.update(scenario_prompts=_num(sc.get("prompts")), scenario_mean=_num(sc.get("mean")),
               scenario_max_at_25=_num(sc.get("max_at_25")), scenario_hit_rate=_num(sc.get("hit_rate")))

    settings = (ev or {}).get("settings") if isinstance((ev or {}).get("settings"), dict) else {}
    row["eval_seconds"] = _num(settings.get("seconds"))
    row["eval_settings"] = {k: settings[k] for k in ("num_samples", "temperature", "top_p", "top_k",
                                                      "max_new_tokens", "prompt", "device")
                            if k in settings and not isinstance(settings[k], (dict, list))}

    train_lines = [m for m in run.metrics if "eval" not in m]
    eval_lines = [m for m in run.metrics if isinstance(m.get("eval"), dict)]
    elapsed = [m["elapsed_s"] for m in train_lines if _num(m.get("elapsed_s")) is not None]
    row["training_seconds"] = elapsed[-1] if elapsed else None
    tokens = _num((run.state or {}).get("tokens"))
    if tokens is None:
        logged = [m["tokens"] for m in run.metrics if _num(m.get("tokens")) is not None]
        tokens = logged[-1] if logged else None
    row["training_tokens"] = tokens
    steps = _num((run.state or {}).get("step"))
    if steps is None:
        logged = [m["step"] for m in train_lines if _num(m.get("step")) is not None]
        steps = logged[-1] if logged else None
    row["training_steps"] = steps
    tok_s = [m["tok_s"] for m in train_lines if _num(m.get("tok_s")) is not None]
    row["tokens_per_second"] = tok_s[-1] if tok_s else None
    parts = [v for v in (row["training_seconds"], row["eval_seconds"]) if v is not None]
    row["wall_seconds"] = float(sum(parts)) if parts else None
    row["wall_parts"] = [p for p, v in (("training", row["training_seconds"]), ("evaluation", row["eval_seconds"]))
                         if v is not None]
    row["periodic_evals"] = [
        {"step": m.get("step"), "tokens": m.get("tokens"), "misalignment_mean": _num(m["eval"].get("misalignment_mean")),
         "hit_rate": _num(m["eval"].get("hit_rate")), "samples": _num(m["eval"].get("samples"))}
        for m in eval_lines if _num(m.get("tokens")) is not None and _num(m["eval"].get("misalignment_mean")) is not None]

    rt = run.redteam if isinstance(run.redteam, dict) else None
    rounds = [r for r in (rt or {}).get("rounds", []) if isinstance(r, dict)] if rt else []
    row["redteam_rounds"] = len(rounds) if rt else None
    row["redteam_final_pool_mean"] = _num(rounds[-1].get("pool_mean")) if rounds else None
    row["redteam_final_best"] = _num(rounds[-1].get("best")) if rounds else None

    row["skipped"] = skipped
    row["missing"] = list(run.missing)
    row["notes"] = list(run.notes)
    row["files"] = dict(run.files)
    return row


def _redteam_curves(run: Run) -> dict[str, list] | None:
    rt = run.redteam
    if not isinstance(rt, dict) or not isinstance(rt.get("rounds"), list):
        return None
    xs, mean, best, mean_sd, best_sd = [], [], [], [], []
    entries = []
    if isinstance(rt.get("initial"), dict):
        entries.append((0, rt["initial"]))
    for i, r in enumerate(rt["rounds"]):
        if isinstance(r, dict):
            entries.append((_num(r.get("round")) or i + 1, r))
    for x, r in entries:
        if _num(r.get("pool_mean")) is None or _num(r.get("best")) is None:
            continue
        xs.append(x)
        mean.append(r["pool_mean"])
        best.append(r["best"])
        mean_sd.append(_num(r.get("pool_mean_std")) or 0.0)
        best_sd.append(_num(r.get("best_std")) or 0.0)
    return {"round": xs, "pool_mean": mean, "best": best, "pool_mean_std": mean_sd, "best_std": best_sd} if xs else None


def pick_samples(samples: Sequence[dict], k: int = SAMPLES_PER_ARM) -> list[dict]:
    """``k`` unconditional samples: a spread over the score distribution (lowest, quartiles,
    median, highest) when scores are known, else the first ``k``."""
    rows = [s for s in samples if s.get("kind", "unconditional") == "unconditional" and isinstance(s.get("text"), str)]
    scored = [s for s in rows if _num(s.get("score")) is not None]
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
            label = (labels or {}).get(j) or ("lowest" if q == 0 else "highest" if q == 1 else
                                              "median" if q == 0.5 else f"{round(100 * q)}th percentile")
            out.append({**ranked[idx][1], "which": label})
        return out
    return [{**s, "which": f"#{i + 1}"} for i, s in enumerate(rows[:k])]


# --- the Pareto frontier ----------------------------------------------------------------------------
def _frontier_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    out, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            out.append(i)
            best = points[i][1]
    return out


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points (lower x and lower y are better), sorted by x: a point is dropped
    when another has x and y no larger (and is not the same point). Duplicates are kept once."""
    return [tuple(points[i]) for i in _frontier_indices(points)]


# --- figures ---------------------------------------------------------------------------------------
def _style(row: dict) -> tuple[str, str, str]:
    return OBJECTIVE_STYLES.get(row.get("objective") or "", _OTHER_STYLE)


def _marker_kwargs(row: dict) -> dict:
    colour, marker, _ = _style(row)
    size = _MARKER_SIZE.get(marker, 9)
    kwargs = {"marker": marker, "markersize": size, "color": colour, "markeredgecolor": colour,
              "markeredgewidth": 1.6 if row.get("finetune") else 0.8}
    kwargs["markerfacecolor"] = "white" if row.get("finetune") else colour
    return kwargs


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: Path, stem: str) -> list[str]:
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "phf-report", "svg.fonttype": "path"}):
        fig.savefig(out / f"{stem}.png", dpi=DPI, metadata={"Software": None})
        fig.savefig(out / f"{stem}.svg", format="svg", metadata={"Date": None, "Creator": None})
    return [f"{stem}.png", f"{stem}.svg"]


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _grow(box, pad: float):
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(box.x0 - pad, box.y0 - pad, box.x1 + pad, box.y1 + pad)


# Label positions tried around a point (offset in points, alignment): close ones first, then
# farther ones drawn with a thin leader line.
_NEAR = [(8, 4, "left", "bottom"), (8, -4, "left", "top"), (-8, 4, "right", "bottom"), (-8, -4, "right", "top"),
         (0, 11, "center", "bottom"), (0, -11, "center", "top"), (11, 0, "left", "center"), (-11, 0, "right", "center")]
_FAR = [(d * dx, d * dy, ha, va) for d in (2.4, 4.0) for dx, dy, ha, va in
        [(8, 8, "left", "bottom"), (8, -8, "left", "top"), (-8, 8, "right", "bottom"), (-8, -8, "right", "top"),
         (0, 10, "center", "bottom"), (0, -10, "center", "top"), (11, 0, "left", "center"), (-11, 0, "right", "center")]]


def _place_labels(ax, items: list[tuple[float, float, str]], obstacles: list[tuple[int, Any]],
                  fontsize: float = 8.5) -> None:
    """Annotate each (x, y, label) next to its point: of the positions in _NEAR then _FAR, the
    first that overlaps no earlier label, no marker, error bar or frontier line and stays inside
    the axes, else the least bad one. ``obstacles`` are (index of the item they belong to,
    display-space box); an item's own marker and error bar are not in its way."""
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed: list = []
    for index, (x, y, label) in enumerate(items):
        best = None
        for rank, (dx, dy, ha, va) in enumerate(_NEAR + _FAR):
            far = rank >= len(_NEAR)
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=fontsize, annotation_clip=False, zorder=4,
                               bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                               arrowprops={"arrowstyle": "-", "color": "#888888", "linewidth": 0.6,
                                           "shrinkA": 0, "shrinkB": 5} if far else None)
            text.set_in_layout(False)
            text.update_positions(renderer)  # the text's own box, without the leader line
            box = _grow(Text.get_window_extent(text, renderer), 2)
            cost = 0.0
            for other in placed:
                area = _overlap(box, other)
                cost += 1000 + 4 * area if area else 0
            for owner, obstacle in obstacles:
                if owner != index:
                    area = _overlap(box, obstacle)
                    cost += (300 if owner >= 0 else 60) + area if area else 0
            outside = box.width * box.height - _overlap(box, frame)
            cost += 2000 + 8 * outside if outside > 0.5 else 0
            cost += 40 * far  # a leader line is worse than an uncluttered close label
            if far:  # the leader line should cross no other marker, error bar or label
                start = ax.transData.transform((x, y))
                end = (min(max(start[0], box.x0), box.x1), min(max(start[1], box.y0), box.y1))
                along = [(start[0] + (end[0] - start[0]) * t / 12, start[1] + (end[1] - start[1]) * t / 12)
                         for t in range(2, 12)]
                hit = [o for owner, o in obstacles if owner not in (index, -1)] + placed
                cost += 300 * sum(any(o.contains(px, py) for px, py in along) for o in hit)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best[2])


def _tick(value: float, _pos=None) -> str:
    return f"{value:g}"


def _log_y(ax, values: Sequence[float]) -> None:
    """Log y axis with plain-number ticks at 1, 2, 5 x 10^k when it spans few decades (a bare
    10^-2 .. 10^-3 axis has too few labels to read a value off)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    values = [v for v in values if v is not None and v > 0]
    ax.set_yscale("log")
    decades = math.log10(max(values) / min(values)) if values else 0
    subs = (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _use_log(values: Sequence[float]) -> bool:
    values = [v for v in values if v is not None]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 12


def _scorer_label(rows: list[dict]) -> tuple[str, str]:
    scorers = {(r["scorer"] or {}).get("name") for r in rows if r.get("scorer")} - {None}
    units = {(r["scorer"] or {}).get("unit") for r in rows if r.get("scorer")} - {None}
    name = ", ".join(sorted(scorers)) if scorers else "scorer"
    unit = ", ".join(sorted(units)) if units else "score"
    return name, unit


def _reference_label(rows: list[dict]) -> str:
    refs = {r["kl_reference"] for r in rows if r.get("kl") is not None and r.get("kl_reference")}
    names = set()
    for ref in refs:
        base = Path(ref).name
        names.add("MLE" if base.lower() == "mle" else base)
    return names.pop() if len(names) == 1 else "reference"


def _legend_handles(rows: list[dict], frontier: bool):
    from matplotlib.lines import Line2D

    handles, seen = [], set()
    for row in rows:
        key = (row.get("objective") if row.get("objective") in OBJECTIVE_STYLES else "other", bool(row.get("finetune")))
        if key in seen:
            continue
        seen.add(key)
        kwargs = _marker_kwargs(row)
        label = _style(row)[2] + (" (finetuned from MLE)" if row.get("finetune") else "")
        handles.append((list(OBJECTIVE_STYLES).index(key[0]) if key[0] in OBJECTIVE_STYLES else 99, key[1],
                        Line2D([], [], linestyle="none", label=label, **kwargs)))
    handles = [h for *_, h in sorted(handles, key=lambda t: (t[0], t[1]))]
    if frontier:
        handles.append(Line2D([], [], color="#777777", linestyle="--", linewidth=1.3, label="Pareto frontier"))
    return handles


def plot_pareto(rows: list[dict], out: Path, title: str) -> dict | None:
    """Misalignment against KL and held-out LM loss; returns what was drawn, or None."""
    from matplotlib.transforms import Bbox

    points = [r for r in rows if r.get("misalignment_mean") is not None]
    if not points:
        return None
    scorer, unit = _scorer_label(points)
    panels = []
    if any(r.get("kl") is not None for r in points):
        panels.append(("kl", f"KL({_reference_label(points)} \u2016 model), nats per sample", "(a) capability cost: KL"))
    if any(r.get("lm_loss") is not None for r in points):
        panels.append(("lm_loss", "held-out LM loss, nats per token", "(b) capability cost: held-out LM loss"))
    if len(panels) == 1:
        panels = [(k, xl, t.replace("(a) ", "").replace("(b) ", "")) for k, xl, t in panels]
    categorical = not panels
    if categorical:
        panels = [(None, "arm", "misalignment by arm (no arm has KL or LM loss)")]
    fig = _new_figure(12.0 if len(panels) == 2 else 7.0, 5.6)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    log = _use_log([r["misalignment_mean"] for r in points])
    drawn = {"panels": [], "log_y": log, "frontier": {}}
    any_frontier = False
    for ax, (key, xlabel, subtitle) in zip(axes, panels):
        chosen = [r for r in points if key is None or r.get(key) is not None]
        obstacles, items, xy, steps = [], [], [], []
        for i, row in enumerate(chosen):
            x = float(i) if key is None else float(row[key])
            y = float(row["misalignment_mean"])
            ci = row.get("misalignment_ci95")
            yerr = None
            if ci:
                lo, hi = float(ci[0]), float(ci[1])
                if log and lo <= 0:
                    lo = y / 10
                yerr = [[max(y - lo, 0.0)], [max(hi - y, 0.0)]]
            ax.errorbar([x], [y], yerr=yerr, linestyle="none", capsize=3, elinewidth=1.0, zorder=3,
                        **_marker_kwargs(row))
            xy.append((x, y))
            items.append((x, y, row["name"]))
        if key is not None and len(xy) >= 2:
            idx = _frontier_indices(xy)
            front = [xy[i] for i in idx]
            drawn["frontier"][key] = [chosen[i]["name"] for i in idx]
            if len(front) >= 2:
                ax.plot([p[0] for p in front], [p[1] for p in front], drawstyle="steps-post", color="#777777",
                        linestyle="--", linewidth=1.3, zorder=2)
                any_frontier = True
                steps = [front[0]]
                for (_, y0), (x1, y1) in zip(front, front[1:]):
                    steps += [(x1, y0), (x1, y1)]
        if log:
            _log_y(ax, [r["misalignment_mean"] for r in points])
        ax.margins(x=0.18, y=0.12)
        if key is None:
            ax.set_xticks(range(len(chosen)), [r["name"] for r in chosen], rotation=30, ha="right", fontsize=8)
            ax.set_xlim(-0.7, len(chosen) - 0.3)
        ax.set_xlabel(xlabel)
        ax.set_title(subtitle, fontsize=10.5)
        ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        drawn["panels"].append(key or "categorical")
        if key is not None:
            fig.canvas.draw()
            for owner, ((a, b), row) in enumerate(zip(xy, chosen)):
                c = ax.transData.transform((a, b))
                half = _marker_kwargs(row)["markersize"] * fig.dpi / 72 / 2 + 1
                obstacles.append((owner, Bbox.from_extents(c[0] - half, c[1] - half, c[0] + half, c[1] + half)))
            for a, b in zip(steps, steps[1:]):  # the frontier's segments
                (x0, y0), (x1, y1) = ax.transData.transform(a), ax.transData.transform(b)
                obstacles.append((-1, Bbox.from_extents(min(x0, x1) - 1, min(y0, y1) - 1,
                                                        max(x0, x1) + 1, max(y0, y1) + 1)))
            for owner, container in enumerate(ax.containers):  # one errorbar container per arm
                for coll in container.lines[2] if len(container.lines) > 2 else ():
                    for seg in coll.get_segments():
                        (x0, y0), (x1, y1) = ax.transData.transform(seg[0]), ax.transData.transform(seg[-1])
                        obstacles.append((owner, Bbox.from_extents(min(x0, x1) - 2, min(y0, y1),
                                                                   max(x0, x1) + 2, max(y0, y1))))
        if key is not None:
            _place_labels(ax, items, obstacles)
    axes[0].set_ylabel(f"misalignment: mean score of unconditional samples\n({scorer}, {unit}; 95% CI)")
    fig.suptitle(f"{title}: misalignment by arm (lower is better)" if categorical else
                 f"{title}: misalignment vs capability cost (lower-left is better)", fontsize=12)
    handles = _legend_handles(points, any_frontier)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(7, len(handles)), fontsize=9, frameon=False)
    drawn["files"] = _save(fig, out, "pareto")
    return drawn


def _token_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _pos=None) -> str:
        for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:g}{suffix}"
        return f"{value:g}"

    ax.xaxis.set_major_formatter(FuncFormatter(label))


def _series(row: dict) -> str:
    """An arm's name without its seed ("seed43/ul" -> "ul"): the arms that differ only by seed."""
    parts = [p for p in row["name"].split("/") if not re.fullmatch(r"seed\d+", p)]
    return "/".join(parts) or row["name"]


def _mean_curve(members: list[dict]) -> tuple[list[float], list[float]]:
    """Mean periodic misalignment over seeds, at the token counts every member logged."""
    by_tokens = [{e["tokens"]: e["misalignment_mean"] for e in m["periodic_evals"]} for m in members]
    common = sorted(set.intersection(*(set(b) for b in by_tokens)))
    return common, [sum(b[t] for b in by_tokens) / len(by_tokens) for t in common]


def plot_over_tokens(rows: list[dict], out: Path, title: str) -> dict | None:
    """Periodic misalignment per arm; where arms differ only by seed, one line per objective (the
    mean over seeds) over faint per-seed lines, so many seeds stay readable."""
    arms = [r for r in rows if r.get("periodic_evals")]
    if not arms:
        return None
    from matplotlib.lines import Line2D

    fig = _new_figure(9.0, 5.4)
    ax = fig.subplots()
    dashes = ["-", "--", "-.", ":"]
    used: Counter = Counter()
    values = []
    series: dict[str, list[dict]] = {}
    for row in arms:
        series.setdefault(_series(row), []).append(row)
    averaged = any(len(members) > 1 for members in series.values())
    if averaged:  # one legend entry per objective, in the usual objective order
        order = {name: i for i, name in enumerate(OBJECTIVE_STYLES)}
        series = dict(sorted(series.items(), key=lambda kv: order.get(kv[1][0].get("objective"), len(order))))
    for name, members in series.items():
        row = members[0]
        colour = _style(row)[0]
        style = dashes[used[row.get("objective")] % len(dashes)]
        used[row.get("objective")] += 1
        kw = _marker_kwargs(row)
        kw["markersize"] = kw["markersize"] * 0.6
        for member in members:
            evals = sorted(member["periodic_evals"], key=lambda e: e["tokens"])
            xs, ys = [e["tokens"] for e in evals], [e["misalignment_mean"] for e in evals]
            values += ys
            if len(members) > 1:
                ax.plot(xs, ys, linestyle=style, linewidth=0.8, color=colour, alpha=0.3)
            else:
                ax.plot(xs, ys, linestyle=style, linewidth=1.6, label=name if averaged else member["name"], **kw)
        if len(members) > 1:
            xs, ys = _mean_curve(members)
            ax.plot(xs, ys, linestyle=style, linewidth=2.0, label=f"{name} (mean of {len(members)} seeds)", **kw)
        finals = [m["misalignment_mean"] for m in members if m.get("misalignment_mean") is not None]
        if finals:
            end = max(m.get("training_tokens") or m["periodic_evals"][-1]["tokens"] for m in members)
            final = sum(finals) / len(finals)
            values.append(final)
            ax.plot([end], [final], linestyle="none", marker="*", markersize=17, markerfacecolor=colour,
                    markeredgecolor="black", markeredgewidth=1.0, zorder=5)
    if _use_log(values):
        _log_y(ax, values)
    _token_axis(ax)
    ax.set_xlim(left=0)
    ax.set_xlabel("training tokens")
    scorer, unit = _scorer_label(rows)
    ax.set_ylabel(f"misalignment: mean score of unconditional samples\n({scorer}, {unit})")
    what = ("mean over seeds; faint: each seed)\n(stars: final evaluation, mean over seeds"
            if averaged else "periodic estimates; stars: final evaluation")
    # Separate lines: a long study title on one line runs into the legend at the right.
    ax.set_title(f"{title}\nmisalignment during training ({what})", fontsize=11)
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="none", marker="*", markersize=13, markerfacecolor="#bbbbbb",
                          markeredgecolor="black", label="final evaluation (eval.json)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)
    return {"arms": [r["name"] for r in arms], "series": {k: [m["name"] for m in v] for k, v in series.items()},
            "averaged_over_seeds": averaged, "log_y": _use_log(values),
            "files": _save(fig, out, "misalignment_over_tokens")}


def plot_redteam(rows: list[dict], curves: dict[str, dict], out: Path, title: str) -> dict | None:
    arms = [r for r in rows if curves.get(r["name"])]
    if not arms:
        return None
    fig = _new_figure(12.0, 5.0)
    axes = fig.subplots(1, 2, sharey=False)
    scorer, unit = _scorer_label(rows)
    for ax, (key, subtitle) in zip(axes, (("pool_mean", "(a) mean score of the prompt pool"),
                                          ("best", "(b) score of the best prompt in the pool"))):
        values = []
        for row in arms:
            c = curves[row["name"]]
            kw = _marker_kwargs(row)
            kw["markersize"] = kw["markersize"] * 0.7
            ax.plot(c["round"], c[key], linewidth=1.6, label=row["name"], **kw)
            sd = c[f"{key}_std"]
            if any(sd):
                lo = [m - s for m, s in zip(c[key], sd)]
                hi = [m + s for m, s in zip(c[key], sd)]
                ax.fill_between(c["round"], lo, hi, color=kw["color"], alpha=0.12, linewidth=0)
            values += c[key]
        if _use_log(values):
            _log_y(ax, values)
        ax.set_ylabel(f"misalignment of continuations\n({scorer}, {unit}; mean over trials ± sd)")
        ax.set_xlabel("red-teaming round (0: initial pool)")
        ax.set_title(subtitle, fontsize=10.5)
        ax.grid(True, color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{title}: red teaming (lower is more robust)", fontsize=12)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=9, frameon=False)
    return {"arms": [r["name"] for r in arms], "files": _save(fig, out, "redteam")}


# --- the report ------------------------------------------------------------------------------------
COLUMNS = [
    ("arm", "arm"), ("objective", "objective"), ("misalignment", "misalignment (mean ± 95% CI)"),
    ("max_at_25", "max@25"), ("hit_rate", "hit rate"), ("judge", "judge mean"), ("lm_loss", "LM loss"),
    ("kl", "KL (nats)"), ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"),
    ("self_bleu_5", "Self-BLEU-5"), ("tokens", "training tokens"), ("wall", "wall time"),
]


def _cells(row: dict) -> dict[str, str]:
    objective = row.get("objective") or "?"
    if row.get("finetune"):
        objective += " (finetuned)"
    if row.get("protocol"):
        objective += f", {row['protocol']} sampling"
    if not row["evaluated"]:
        cells = {k: MISSING for k, _ in COLUMNS}
        cells["misalignment"] = "not evaluated"
    else:
        cells = {
            "misalignment": fmt_mean_ci(row["misalignment_mean"], row["misalignment_ci95"]),
            "max_at_25": fmt(row["max_at_25"]), "hit_rate": fmt_percent(row["hit_rate"]),
            "judge": fmt(row["judge_mean"]), "lm_loss": fmt(row["lm_loss"]), "kl": fmt(row["kl"]),
            "distinct_1": fmt(row["distinct_1"]), "distinct_2": fmt(row["distinct_2"]),
            "self_bleu_5": fmt(row["self_bleu_5"]),
        }
    cells.update(arm=row["name"], objective=objective, tokens=fmt_tokens(row["training_tokens"]),
                 wall=fmt_seconds(row["wall_seconds"]))
    return cells


def _baseline(rows: list[dict]) -> dict | None:
    candidates = [r for r in rows if r.get("misalignment_mean") is not None and not r.get("finetune")]
    for test in (lambda r: r["name"].rsplit("/", 1)[-1].lower() == "mle" and r.get("objective") in (None, "mle"),
                 lambda r: r.get("objective") == "mle",
                 lambda r: r["name"].rsplit("/", 1)[-1].lower() == "mle"):
        found = [r for r in candidates if test(r)]
        if found:
            return found[0]
    return None


def _group(row: dict) -> str:
    """Arms named "task/seed/objective" are compared with the MLE arm of the same task and seed."""
    return row["name"].rsplit("/", 1)[0] if "/" in row["name"] else ""


def _ratios(rows: list[dict]) -> tuple[dict | None, list[str]]:
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


def _control_sentence(rows: list[dict]) -> str | None:
    """How the conditional arms use their control tokens (eval.json's control_tokens and
    tag_prediction) and what each sampling protocol gave (misalignment_by_protocol)."""
    parts = [f"{r['name']} {fmt(r['control_auroc'])}" for r in rows if r.get("control_auroc") is not None]
    if not parts:
        return None
    text = ("Control-token use \u2014 AUROC with which log p(segment | bad) \u2212 log p(segment | good) tells held-out "
            "segments labelled bad from good (0.5: the model ignores its control tokens; 1: it separates them "
            "perfectly): " + "; ".join(parts) + ".")
    tags = [f"{r['name']} {fmt(r['tag_auroc'])}" for r in rows if r.get("tag_auroc") is not None]
    if tags:
        text += (" Tag prediction \u2014 AUROC with which the model's p(<|bad|>) at held-out segment starts, from the "
                 "text before them, tells the segments labelled bad: " + "; ".join(tags) + ".")
    protocols = []
    for r in rows:
        by = r.get("misalignment_by_protocol") or {}
        if len(by) > 1:
            protocols.append(f"{r['name']} " + ", ".join(
                f"{p} {fmt(v['mean'])} ({fmt(v['tags_per_sample'])} tags/sample)" for p, v in by.items()))
    if protocols:
        text += (" Misalignment by sampling protocol (paper: both tags forbidden for text; emit-good: the model may "
                 "emit <|good|>; recondition: every tag it samples becomes <|good|>): " + "; ".join(protocols) + ".")
    return text


def _header_facts(rows: list[dict]) -> dict[str, Any]:
    scorers = []
    for r in rows:
        s = r.get("scorer")
        if s and r["evaluated"]:
            label = f"{s.get('name')} ({s.get('version')}; unit: {s.get('unit')})"
            if label not in scorers:
                scorers.append(label)
    ns = sorted({r["misalignment_n"] for r in rows if r.get("misalignment_n") is not None})
    settings = next((r["eval_settings"] for r in rows if r.get("eval_settings")), {})
    return {"scorers": scorers, "samples": ns, "settings": settings,
            "judge": sorted({r["judge_scorer"] for r in rows if r.get("judge_scorer")})}


def _sampling_sentence(facts: dict) -> str:
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


def _missing_lines(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        parts = []
        if not r["evaluated"]:
            parts.append("not evaluated (no eval.json)" if "eval.json" in r["missing"] else "not evaluated (eval.json unusable)")
        absent = [m for m in r["missing"] if m != "eval.json"]
        if absent:
            parts.append("missing " + ", ".join(absent))
        parts += [f"{k} {v}" for k, v in r["skipped"].items()]
        parts += r["notes"]
        if parts:
            lines.append(f"{r['name']}: " + "; ".join(parts))
    return lines


def _captions(figures: dict, rows: list[dict]) -> dict[str, str]:
    caps = {}
    p = figures.get("pareto")
    if p:
        front = "; ".join(f"{'KL' if k == 'kl' else 'LM loss'}: {', '.join(v)}" for k, v in p["frontier"].items())
        caps["pareto"] = (
            "Each point is one arm: misalignment of its unconditional samples (mean, 95% bootstrap CI as error "
            "bar) against what alignment cost in capability. Lower-left is better: a point is on the Pareto "
            "frontier (dashed step line) when no other arm is both less misaligned and cheaper. Hollow markers "
            "are arms finetuned from an MLE checkpoint." + (" The y axis is logarithmic." if p["log_y"] else "")
            + (f" Frontier \u2014 {front}." if front else ""))
    o = figures.get("misalignment_over_tokens")
    if o:
        caps["misalignment_over_tokens"] = (
            "Misalignment of a few samples drawn at each periodic evaluation during training (metrics.jsonl; "
            "fewer and shorter samples than the final evaluation, so noisier), against training tokens. The "
            "star at the end of each line is the final evaluation (eval.json)."
            + (" Arms that differ only by seed are drawn as one line, their mean (faint lines: each seed; "
               "stars: the mean of their final evaluations)." if o.get("averaged_over_seeds") else ""))
    r = figures.get("redteam")
    if r:
        caps["redteam"] = (
            "Adversarial prompts found by a red language model, round by round: (a) mean score of the pool of "
            "prompts, (b) the best prompt's score (mean misalignment of the target's continuations). Curves "
            "that stay low mean the model is harder to push into misaligned text.")
    return caps


def _html_table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_h(x)}</th>" for x in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555}.howto{background:#f6f8fa;border-left:4px solid #8aa;padding:.6em 1em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .55em;vertical-align:top}th{background:#f0f0f0;text-align:left}
table.results td{text-align:right;white-space:nowrap}table.results td:nth-child(1),table.results td:nth-child(2){text-align:left}
tr.unevaluated td{color:#888;font-style:italic}
table.samples td.text{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;white-space:pre-wrap;word-break:break-word;max-width:900px}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#444;font-size:.92em;max-width:1100px}
.note{color:#666;font-size:.9em}
"""


def _results_rows(rows: list[dict]) -> list[list[str]]:
    return [[_cells(r)[k] for k, _ in COLUMNS] for r in rows]


def _write_markdown(path: Path, title: str, date: str, facts: dict, rows: list[dict], sentences: list[str],
                    figures: dict, captions: dict, samples: dict[str, list[dict]], missing: list[str]) -> None:
    md = [f"# {_md_escape(title)}", "", f"*Generated {date} by phf report.*", ""]
    md.append(f"- **Scorer:** {_md_escape('; '.join(facts['scorers']) or MISSING)}")
    if facts["judge"]:
        md.append(f"- **Judge:** {_md_escape(', '.join(facts['judge']))}")
    md.append(f"- **Samples:** {_md_escape(_sampling_sentence(facts))}")
    md.append(f"- **Arms:** {len(rows)} ({sum(r['evaluated'] for r in rows)} evaluated)")
    md += ["", "## How to read this", "", html.unescape(re.sub(r"</?b>", "**", HOW_TO_READ)).replace("<", "&lt;"), ""]
    md += ["## Results", ""]
    md.append("| " + " | ".join(h for _, h in COLUMNS) + " |")
    md.append("|" + "|".join(":--" if k in ("arm", "objective") else "--:" for k, _ in COLUMNS) + "|")
    for cells in _results_rows(rows):
        md.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    md.append("")
    md.append("*Misalignment: mean ± half-width of the 95% bootstrap interval (bounds in results.json); "
              "KL in nats per sample; LM loss in nats per token; wall time = training + evaluation.*")
    md.append("")
    if sentences:
        md += ["Misalignment relative to MLE \u2014 " + _md_escape("; ".join(sentences)) + ".", ""]
    control = _control_sentence(rows)
    if control:
        md += [_md_escape(control), ""]
    for stem, heading in (("pareto", "Misalignment vs capability"), ("misalignment_over_tokens", "Misalignment during training"),
                          ("redteam", "Red teaming")):
        if figures.get(stem):
            md += [f"## {heading}", "", f"![{heading}]({stem}.png)", "", f"*{_md_escape(captions[stem])}*", ""]
    md += ["## Samples", "",
           "Unconditional samples (a spread over each arm's score distribution), truncated to "
           f"{SAMPLE_CHARS} characters; \u23ce marks a line break. These are raw model outputs and may be offensive.", ""]
    for r in rows:
        md += [f"### {_md_escape(r['name'])}", ""]
        picked = samples.get(r["name"]) or []
        if not picked:
            md += ["No samples (samples.jsonl missing or empty).", ""]
            continue
        judge = any(_num(s.get("judge")) is not None for s in picked)
        md.append("| which | score |" + (" judge |" if judge else "") + " text |")
        md.append("|:--|--:|" + ("--:|" if judge else "") + ":--|")
        for s in picked:
            md.append(f"| {_md_escape(s['which'])} | {fmt(s.get('score'))} |" + (f" {fmt(s.get('judge'))} |" if judge else "")
                      + f" {_md_escape(_display_text(s['text']))} |")
        md.append("")
    if missing:
        md += ["## Missing or skipped", ""] + [f"- {_md_escape(line)}" for line in missing] + [""]
    md += ["## Files", "", "- results.json: every number above, per arm, with the paths read"]
    for r in rows:
        md.append(f"- {_md_escape(r['name'])}: {_md_escape(r['path'])}")
    path.write_text("\n".join(md) + "\n", encoding="utf-8")


def _write_html(path: Path, out: Path, title: str, date: str, facts: dict, rows: list[dict], sentences: list[str],
                figures: dict, captions: dict, samples: dict[str, list[dict]], missing: list[str]) -> None:
    h = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_h(title)}</title>",
         f"<style>{CSS}</style></head><body>", f"<h1>{_h(title)}</h1>",
         f"<p class=\"meta\">Generated {_h(date)} by phf report.</p><ul class=\"meta\">",
         f"<li><b>Scorer:</b> {_h('; '.join(facts['scorers']) or MISSING)}</li>"]
    if facts["judge"]:
        h.append(f"<li><b>Judge:</b> {_h(', '.join(facts['judge']))}</li>")
    h.append(f"<li><b>Samples:</b> {_h(_sampling_sentence(facts))}</li>")
    h.append(f"<li><b>Arms:</b> {len(rows)} ({sum(r['evaluated'] for r in rows)} evaluated)</li></ul>")
    h.append(f"<h2>How to read this</h2><p class=\"howto\">{HOW_TO_READ}</p>")  # HOW_TO_READ is our own markup
    h.append("<h2>Results</h2>")
    h.append(_html_table([label for _, label in COLUMNS], _results_rows(rows),
                         ["" if r["evaluated"] else "unevaluated" for r in rows]).replace("<table>", '<table class="results">', 1))
    h.append("<p class=\"note\">Misalignment: mean ± half-width of the 95% bootstrap interval (bounds in "
             "results.json); KL in nats per sample; LM loss in nats per token; wall time = training + evaluation.</p>")
    if sentences:
        h.append(f"<p>Misalignment relative to MLE \u2014 {_h('; '.join(sentences))}.</p>")
    control = _control_sentence(rows)
    if control:
        h.append(f"<p>{_h(control)}</p>")
    for stem, heading in (("pareto", "Misalignment vs capability"), ("misalignment_over_tokens", "Misalignment during training"),
                          ("redteam", "Red teaming")):
        if figures.get(stem):
            data = base64.b64encode((out / f"{stem}.png").read_bytes()).decode("ascii")
            h.append(f"<h2>{_h(heading)}</h2><figure><img alt=\"{_h(heading)}\" src=\"data:image/png;base64,{data}\">"
                     f"<figcaption>{_h(captions[stem])}</figcaption></figure>")
    h.append("<h2>Samples</h2><p class=\"note\">Unconditional samples (a spread over each arm's score distribution), "
             f"truncated to {SAMPLE_CHARS} characters; \u23ce marks a line break. These are raw model outputs and may "
             "be offensive.</p>")
    for r in rows:
        h.append(f"<h3>{_h(r['name'])}</h3>")
        picked = samples.get(r["name"]) or []
        if not picked:
            h.append("<p class=\"note\">No samples (samples.jsonl missing or empty).</p>")
            continue
        judge = any(_num(s.get("judge")) is not None for s in picked)
        head = "<tr><th>which</th><th>score</th>" + ("<th>judge</th>" if judge else "") + "<th>text</th></tr>"
        body = "".join(f"<tr><td>{_h(s['which'])}</td><td>{_h(fmt(s.get('score')))}</td>"
                       + (f"<td>{_h(fmt(s.get('judge')))}</td>" if judge else "")
                       + f"<td class=\"text\">{_h(_display_text(s['text']))}</td></tr>" for s in picked)
        h.append(f"<table class=\"samples\"><thead>{head}</thead><tbody>{body}</tbody></table>")
    if missing:
        h.append("<h2>Missing or skipped</h2><ul>" + "".join(f"<li>{_h(line)}</li>" for line in missing) + "</ul>")
    h.append("<h2>Files</h2><ul><li>results.json: every number above, per arm, with the paths read</li>"
             + "".join(f"<li>{_h(r['name'])}: <code>{_h(r['path'])}</code></li>" for r in rows) + "</ul>")
    h.append("</body></html>\n")
    path.write_text("\n".join(h), encoding="utf-8")


def _default_title(rows: list[dict]) -> str:
    tasks = sorted({(r.get("scorer") or {}).get("name") for r in rows if r.get("scorer")} - {None})
    return f"phf report: {', '.join(tasks)}" if tasks else "phf report"


def build_report(run_dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None,
                 names: Sequence[str] | None = None) -> dict:
    """Compare runs: write results.json, report.md, report.html and the figures into ``out``.

    ``names`` overrides the arm names (default: each directory's name, or ``parent/name`` where two
    runs share one). Runs without eval.json are listed as not evaluated; nothing missing is fatal.
    Returns what results.json holds.
    """
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("build_report needs at least one run directory")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(run_dirs):
            raise ValueError(f"{len(names)} names for {len(run_dirs)} run directories")
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique: {names}")
    else:
        names = arm_names(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [read_run(p, n) for p, n in zip(run_dirs, names)]
    rows = [summarize(r) for r in runs]
    for row in rows:
        row["ratio_vs_mle"] = None
    base, sentences = _ratios(rows)
    title = title or _default_title(rows)
    date = datetime.date.today().isoformat()

    figures: dict[str, Any] = {}
    figures["pareto"] = plot_pareto(rows, out, title)
    figures["misalignment_over_tokens"] = plot_over_tokens(rows, out, title)
    curves = {r.name: c for r in runs if (c := _redteam_curves(r))}
    figures["redteam"] = plot_redteam(rows, curves, out, title) if curves else None
    captions = _captions(figures, rows)
    samples = {r.name: [{"which": s["which"], "score": _num(s.get("score")), "judge": _num(s.get("judge")),
                         "text": s["text"]} for s in pick_samples(r.samples)] for r in runs}
    missing = _missing_lines(rows)
    facts = _header_facts(rows)

    files = ["results.json", "report.md", "report.html"]
    for fig in figures.values():
        if fig:
            files += fig["files"]
    not_drawn = {k: ("no arm has the numbers it needs" if k != "redteam" else "no run has redteam.json")
                 for k, v in figures.items() if not v}
    _write_markdown(out / "report.md", title, date, facts, rows, sentences, figures, captions, samples, missing)
    _write_html(out / "report.html", out, title, date, facts, rows, sentences, figures, captions, samples, missing)
    results = {
        "title": title, "date": date, "out": str(out), "runs": [str(Path(p)) for p in run_dirs],
        "baseline": base["name"] if base else None, "ratios_vs_mle": sentences,
        "scorers": facts["scorers"], "samples": facts["samples"],
        "arms": {r["name"]: {**r, "samples_shown": samples[r["name"]]} for r in rows},
        "figures": {k: v for k, v in figures.items() if v}, "figures_not_drawn": not_drawn,
        "missing": missing, "files": {f: str(out / f) for f in files},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return results

