"""The report's figures (matplotlib, imported when drawing): misalignment against capability with
the Pareto frontier, misalignment during training, red teaming; and their captions. Same inputs,
same bytes (no dates or random salts in the files)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from phf.config import OBJECTIVE_NAMES
from phf.io.atomic import atomic_path
from phf.study.report.plot_data import (
    FAR,
    NEAR,
    Box,
    ParetoPanel,
    TokenSeries,
    around,
    grow,
    label_cost,
    pareto_data,
    pareto_frontier,
    token_plot,
    use_log,
)
from phf.study.report.runs import scorer_facts
from phf.study.report.seeds import Estimate, by_arm, finetune_pairs

# pareto_frontier: the claims read it from here.
__all__ = [
    "OBJECTIVE_STYLES",
    "figure_captions",
    "pareto_frontier",
    "plot_capability",
    "plot_finetune",
    "plot_over_tokens",
    "plot_pareto",
    "plot_redteam",
]

DPI = 150

# objective -> (colour, marker, display name), in OBJECTIVE_NAMES' order (the legend's). Fixed, so
# every report uses the same encoding.
OBJECTIVE_STYLES: dict[str, tuple[str, str, str]] = dict(
    zip(
        OBJECTIVE_NAMES,
        (
            ("#4d4d4d", "o", "MLE"),
            ("#1f77b4", "s", "filtering"),
            ("#d62728", "*", "conditional"),
            ("#2ca02c", "v", "unlikelihood"),
            ("#9467bd", "^", "RWR"),
            ("#ff7f0e", "D", "AWR"),
        ),
        strict=True,
    )
)

_OTHER_STYLE = ("#8c564b", "X", "other")

_MARKER_SIZE = {"*": 15, "D": 8}  # stars look small and diamonds large at the same nominal size


def _style(row: dict) -> tuple[str, str, str]:
    return OBJECTIVE_STYLES.get(row.get("objective") or "", _OTHER_STYLE)


def _marker_kwargs(row: dict) -> dict:
    colour, marker, _ = _style(row)
    size = _MARKER_SIZE.get(marker, 9)
    kwargs = {
        "marker": marker,
        "markersize": size,
        "color": colour,
        "markeredgecolor": colour,
        "markeredgewidth": 1.6 if row.get("finetune") else 0.8,
    }
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

    # Written whole or not at all, like every file of a report (the temp name hides the format).
    with matplotlib.rc_context({"svg.hashsalt": "phf-report", "svg.fonttype": "path"}):
        with atomic_path(out / f"{stem}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
        with atomic_path(out / f"{stem}.svg") as tmp:
            fig.savefig(tmp, format="svg", metadata={"Date": None, "Creator": None})
    return [f"{stem}.png", f"{stem}.svg"]


def _box(bbox) -> Box:
    x0, y0, x1, y1 = bbox.extents
    return (x0, y0, x1, y1)


def _annotate(ax, label: str, xy: tuple[float, float], offset: tuple[float, float], ha: str, va: str, far: bool):
    """A label ``offset`` points from ``xy``; a far one with a thin leader line."""
    text = ax.annotate(
        label,
        xy,
        xytext=offset,
        textcoords="offset points",
        ha=ha,
        va=va,
        fontsize=8.5,
        annotation_clip=False,
        zorder=4,
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        arrowprops={"arrowstyle": "-", "color": "#888888", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 5}
        if far
        else None,
    )
    text.set_in_layout(False)
    return text


def _place_labels(ax, items: list[tuple[float, float, str]], obstacles: list[tuple[int, Box]]) -> None:
    """Annotate each (x, y, label) next to its point: of the positions in NEAR then FAR, the first
    that costs nothing (:func:`~phf.study.report.plot_data.label_cost`), else the least bad one."""
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = _box(ax.get_window_extent(renderer))
    placed: list[Box] = []
    for index, (x, y, label) in enumerate(items):
        best = None
        for rank, (dx, dy, ha, va) in enumerate(NEAR + FAR):
            far = rank >= len(NEAR)
            text = _annotate(ax, label, (x, y), (dx, dy), ha, va, far)
            text.update_positions(renderer)  # the text's own box, without the leader line
            box = grow(_box(Text.get_window_extent(text, renderer)), 2)
            start = ax.transData.transform((x, y)) if far else None
            cost = label_cost(box, index, placed, obstacles, frame, None if start is None else (start[0], start[1]))
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        assert best is not None  # the loop tried at least one position
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


def _scorer_label(rows: list[dict]) -> tuple[str, str]:
    return ", ".join(scorer_facts(rows, "name")) or "scorer", ", ".join(scorer_facts(rows, "unit")) or "score"


def _legend_handles(rows: list[dict], frontier: bool):
    from matplotlib.lines import Line2D

    ranked, seen = [], set()
    for row in rows:
        key = (row.get("objective") if row.get("objective") in OBJECTIVE_STYLES else "other", bool(row.get("finetune")))
        if key in seen:
            continue
        seen.add(key)
        kwargs = _marker_kwargs(row)
        label = _style(row)[2] + (" (finetuned from MLE)" if row.get("finetune") else "")
        ranked.append(
            (
                list(OBJECTIVE_STYLES).index(key[0]) if key[0] in OBJECTIVE_STYLES else 99,
                key[1],
                Line2D([], [], linestyle="none", label=label, **kwargs),
            )
        )
    handles = [h for *_, h in sorted(ranked, key=lambda t: (t[0], t[1]))]
    if frontier:
        handles.append(Line2D([], [], color="#777777", linestyle="--", linewidth=1.3, label="Pareto frontier"))
    return handles


def _obstacles(ax, panel: ParetoPanel) -> list[tuple[int, Box]]:
    """What a label should not cover, in display space: (index of the point it belongs to, or -1 for
    the frontier line; box): the markers, the frontier's segments and the error bars."""
    fig = ax.figure
    fig.canvas.draw()
    obstacles = []
    for owner, point in enumerate(panel.points):
        c = ax.transData.transform((point.x, point.y))
        half = _marker_kwargs(point.row)["markersize"] * fig.dpi / 72 / 2 + 1
        obstacles.append((owner, (c[0] - half, c[1] - half, c[0] + half, c[1] + half)))
    for p, q in pairwise(panel.steps):  # the frontier's segments
        obstacles.append((-1, around(ax.transData.transform(p), ax.transData.transform(q), 1, 1)))
    for owner, container in enumerate(ax.containers):  # one errorbar container per point
        for coll in container.lines[2] if len(container.lines) > 2 else ():
            for seg in coll.get_segments():
                obstacles.append((owner, around(ax.transData.transform(seg[0]), ax.transData.transform(seg[-1]), 2, 0)))
    return obstacles


def _draw_pareto_panel(ax, panel: ParetoPanel, log: bool, all_y: list[float]) -> None:
    for point in panel.points:
        yerr = None if point.yerr is None else [[point.yerr[0]], [point.yerr[1]]]
        kwargs = _marker_kwargs(point.row)
        ax.errorbar([point.x], [point.y], yerr=yerr, linestyle="none", capsize=3, elinewidth=1.0, zorder=3, **kwargs)
    if panel.steps:
        assert panel.frontier is not None  # the steps are the frontier's
        front = [panel.points[i] for i in panel.frontier]
        ax.plot(
            [p.x for p in front],
            [p.y for p in front],
            drawstyle="steps-post",
            color="#777777",
            linestyle="--",
            linewidth=1.3,
            zorder=2,
        )
    if log:
        _log_y(ax, all_y)
    ax.margins(x=0.18, y=0.12)
    if panel.key is None:
        names = [p.row["name"] for p in panel.points]
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_xlabel(panel.xlabel)
    ax.set_title(panel.title, fontsize=10.5)
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    if panel.key is not None:
        _place_labels(ax, [(p.x, p.y, p.row["name"]) for p in panel.points], _obstacles(ax, panel))


def plot_pareto(rows: list[dict], out: Path, title: str) -> dict | None:
    """Misalignment against KL and held-out LM loss; returns what was drawn, or None."""
    data = pareto_data(rows)
    if data is None:
        return None
    points = [r for r in rows if r.get("misalignment_mean") is not None]
    scorer, unit = _scorer_label(points)
    fig = _new_figure(12.0 if len(data.panels) == 2 else 7.0, 5.6)
    axes = fig.subplots(1, len(data.panels), sharey=True, squeeze=False)[0]
    for ax, panel in zip(axes, data.panels):
        _draw_pareto_panel(ax, panel, data.log_y, [r["misalignment_mean"] for r in points])
    axes[0].set_ylabel(f"misalignment: mean score of unconditional samples\n({scorer}, {unit}; 95% CI)")
    fig.suptitle(
        f"{title}: misalignment by arm (lower is better)"
        if data.categorical
        else f"{title}: misalignment vs capability cost (lower-left is better)",
        fontsize=12,
    )
    handles = _legend_handles(points, any(p.steps for p in data.panels))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(7, len(handles)), fontsize=9, frameon=False)
    return {
        "panels": [p.key or "categorical" for p in data.panels],
        "log_y": data.log_y,
        "frontier": {
            p.key: [p.points[i].row["name"] for i in p.frontier] for p in data.panels if p.frontier is not None
        },
        "files": _save(fig, out, "pareto"),
    }


def _token_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _pos=None) -> str:
        for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:g}{suffix}"
        return f"{value:g}"

    ax.xaxis.set_major_formatter(FuncFormatter(label))


def _draw_series(ax, series: TokenSeries, averaged: bool) -> None:
    """An arm's line, or the seeds' faint lines under their mean and its band; the final evaluation's star."""
    colour = _style(series.members[0])[0]
    kw = _marker_kwargs(series.members[0])
    kw["markersize"] = kw["markersize"] * 0.6
    for member, (xs, ys) in zip(series.members, series.lines):
        if len(series.members) > 1:
            ax.plot(xs, ys, linestyle=series.dash, linewidth=0.8, color=colour, alpha=0.3)
        else:
            label = series.name if averaged else member["name"]
            ax.plot(xs, ys, linestyle=series.dash, linewidth=1.6, label=label, **kw)
    if series.mean is not None:
        label = f"{series.name} (mean of {len(series.members)} seeds)"
        ax.plot(*series.mean, linestyle=series.dash, linewidth=2.0, label=label, **kw)
        if series.band:
            xs, lows, highs = (list(column) for column in zip(*series.band))
            ax.fill_between(xs, lows, highs, color=colour, alpha=0.12, lw=0)
    if series.final is not None:
        ax.plot(
            [series.final[0]],
            [series.final[1]],
            linestyle="none",
            marker="*",
            markersize=17,
            markerfacecolor=colour,
            markeredgecolor="black",
            markeredgewidth=1.0,
            zorder=5,
        )


def plot_over_tokens(rows: list[dict], out: Path, title: str) -> dict | None:
    """Periodic misalignment per arm; where arms differ only by seed, one line per objective (the
    mean over seeds) over faint per-seed lines, so many seeds stay readable."""
    data = token_plot(rows)
    if data is None:
        return None
    from matplotlib.lines import Line2D

    fig = _new_figure(9.0, 5.4)
    ax = fig.subplots()
    for series in data.series:
        _draw_series(ax, series, data.averaged)
    log = use_log(data.values)
    if log:
        _log_y(ax, data.values)
    _token_axis(ax)
    ax.set_xlim(left=0)
    ax.set_xlabel("training tokens")
    scorer, unit = _scorer_label(rows)
    ax.set_ylabel(f"misalignment: mean score of unconditional samples\n({scorer}, {unit})")
    what = (
        "mean over seeds, band: 95% CI;\nfaint: each seed; stars: final evaluation, mean over seeds"
        if data.averaged
        else "periodic estimates; stars: final evaluation"
    )
    # Separate lines: a long study title on one line runs into the legend at the right.
    ax.set_title(f"{title}\nmisalignment during training ({what})", fontsize=11)
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(
        Line2D(
            [],
            [],
            linestyle="none",
            marker="*",
            markersize=13,
            markerfacecolor="#bbbbbb",
            markeredgecolor="black",
            label="final evaluation (eval.json)",
        )
    )
    fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)
    return {
        "arms": [r["name"] for r in rows if r.get("periodic_evals")],
        "series": {s.name: [m["name"] for m in s.members] for s in data.series},
        "averaged_over_seeds": data.averaged,
        "log_y": log,
        "files": _save(fig, out, "misalignment_over_tokens"),
    }


def plot_redteam(rows: list[dict], curves: dict[str, dict], out: Path, title: str) -> dict | None:
    arms = [r for r in rows if curves.get(r["name"])]
    if not arms:
        return None
    fig = _new_figure(12.0, 5.0)
    axes = fig.subplots(1, 2, sharey=False)
    scorer, unit = _scorer_label(rows)
    for ax, (key, subtitle) in zip(
        axes, (("pool_mean", "(a) mean score of the prompt pool"), ("best", "(b) score of the best prompt in the pool"))
    ):
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
        if use_log(values):
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


def _interval_point(ax, x: float, est: Estimate, row: dict, label: str | None = None) -> None:
    """One mean over seeds with its 95% interval (none for a single seed) and each seed as a dot."""
    kw = _marker_kwargs(row)
    assert est.mean is not None
    err = [[est.mean - est.ci95[0]], [est.ci95[1] - est.mean]] if est.ci95 else None
    ax.errorbar([x], [est.mean], yerr=err, capsize=4, linestyle="none", label=label, **kw)
    ax.plot([x] * est.n, list(est.per_seed.values()), linestyle="none", marker=".", color="#555555", alpha=0.6)


def _arm_row(arm: str) -> dict:
    """What the style helpers read, for an arm name of a study (``finetune-<objective>`` is hollow)."""
    return {"objective": arm.removeprefix("finetune-"), "finetune": arm.startswith("finetune-")}


def plot_capability(rows: list[dict], out: Path, title: str) -> dict | None:
    """Held-out LM loss and KL per arm, mean and 95% interval over seeds, one panel row per task
    (the paper's capability side; lower is better)."""
    panels = [("lm_loss", "held-out LM loss (nats/token)"), ("kl", "KL from MLE (nats/sample)")]
    stats = {k: by_arm(rows, k) for k, _ in panels}
    tasks = sorted(set().union(*(set(v) for v in stats.values())))
    if not tasks:
        return None
    fig = _new_figure(5.5 * len(panels), 3.6 * len(tasks))
    axes = fig.subplots(len(tasks), len(panels), squeeze=False)
    for i, task in enumerate(tasks):
        for j, (key, label) in enumerate(panels):
            ax = axes[i][j]
            arms = stats[key].get(task, {})
            for x, (arm, est) in enumerate(arms.items()):
                _interval_point(ax, x, est, _arm_row(arm))
            ax.set_xticks(range(len(arms)), list(arms), rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(label)
            ax.set_title(task, fontsize=10)
            ax.grid(True, axis="y", color="#dddddd", linewidth=0.6)
    fig.suptitle(f"{title}: capability per arm (mean, 95% CI over seeds; dots: seeds)", fontsize=11)
    return {"tasks": tasks, "files": _save(fig, out, "capability")}


def plot_finetune(rows: list[dict], out: Path, title: str) -> dict | None:
    """Pretraining with feedback against MLE pretraining then finetuning with feedback, at equal
    total tokens (the paper's Fig. 6): misalignment and LM loss, mean and 95% CI over seeds."""
    pairs = {k: finetune_pairs(rows, k) for k in ("misalignment_mean", "lm_loss")}
    tasks = sorted(pairs["misalignment_mean"])
    if not tasks:
        return None
    fig = _new_figure(10.0, 3.6 * len(tasks))
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    for i, task in enumerate(tasks):
        for j, (key, label) in enumerate((("misalignment_mean", "misalignment"), ("lm_loss", "held-out LM loss"))):
            ax = axes[i][j]
            entries = pairs[key].get(task, [])
            for x, (objective, scratch, tuned) in enumerate(entries):
                _interval_point(ax, 2 * x, scratch, _arm_row(objective), "from scratch" if x == 0 else None)
                _interval_point(
                    ax, 2 * x + 0.6, tuned, _arm_row(f"finetune-{objective}"), "MLE, then finetuned" if x == 0 else None
                )
            ax.set_xticks([2 * x + 0.3 for x in range(len(entries))], [e[0] for e in entries])
            ax.set_xlim(-0.6, 2 * len(entries) - 0.8)
            ax.set_ylabel(label)
            ax.set_title(f"{task}: {label}", fontsize=10)
            ax.grid(True, axis="y", color="#dddddd", linewidth=0.6)
            if i == 0 and j == 0:
                ax.legend(fontsize=8, frameon=False)
    fig.suptitle(f"{title}: pretraining with feedback vs MLE then finetuning (same total tokens)", fontsize=11)
    return {"tasks": tasks, "files": _save(fig, out, "finetune")}


def figure_captions(figures: dict, rows: list[dict]) -> dict[str, str]:
    caps = {}
    p = figures.get("pareto")
    if p:
        front = "; ".join(f"{'KL' if k == 'kl' else 'LM loss'}: {', '.join(v)}" for k, v in p["frontier"].items())
        caps["pareto"] = (
            "Each point is one arm: misalignment of its unconditional samples (mean, 95% bootstrap CI as error "
            "bar) against what alignment cost in capability. Lower-left is better: a point is on the Pareto "
            "frontier (dashed step line) when no other arm is both less misaligned and cheaper. Hollow markers "
            "are arms finetuned from an MLE checkpoint."
            + (" The y axis is logarithmic." if p["log_y"] else "")
            + (f" Frontier \u2014 {front}." if front else "")
        )
    o = figures.get("misalignment_over_tokens")
    if o:
        caps["misalignment_over_tokens"] = (
            "Misalignment of a few samples drawn at each periodic evaluation during training (metrics.jsonl; "
            "fewer and shorter samples than the final evaluation, so noisier), against training tokens. The "
            "star at the end of each line is the final evaluation (eval.json). A finetuning arm starts where its "
            "MLE base run handed over."
            + (
                " Arms that differ only by seed are drawn as one line, their mean, with its 95% t-interval over "
                "seeds as a band (faint lines: each seed; stars: the mean of their final evaluations)."
                if o.get("averaged_over_seeds")
                else ""
            )
        )
    r = figures.get("redteam")
    if r:
        caps["redteam"] = (
            "Adversarial prompts found by a red language model, round by round: (a) mean score of the pool of "
            "prompts, (b) the best prompt's score (mean misalignment of the target's continuations). Curves "
            "that stay low mean the model is harder to push into misaligned text."
        )
    if figures.get("capability"):
        caps["capability"] = (
            "Capability per arm: held-out LM loss and KL from the MLE model of the same seed; the mean over seeds "
            "with its 95% t-interval (no bar: one seed), each seed a grey dot. Lower is better."
        )
    if figures.get("finetune"):
        caps["finetune"] = (
            "Each feedback objective from scratch (filled) against MLE pretraining for part of the budget, then "
            "that objective for the rest (hollow), at the same total tokens: the paper's Fig. 6 comparison."
        )
    return caps
