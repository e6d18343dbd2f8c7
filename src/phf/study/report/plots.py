"""The report's figures (matplotlib, imported when drawing): misalignment against capability with
the Pareto frontier, misalignment during training, red teaming; and their captions. Same inputs,
same bytes (no dates or random salts in the files)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from phf.config import OBJECTIVE_NAMES
from phf.io.atomic import atomic_path
from phf.study.report.runs import scorer_facts
from phf.study.report.seeds import Estimate, by_arm, finetune_pairs, mean_curve

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
    return [(points[i][0], points[i][1]) for i in _frontier_indices(points)]


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


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _grow(box, pad: float):
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(box.x0 - pad, box.y0 - pad, box.x1 + pad, box.y1 + pad)


# Label positions tried around a point (offset in points, alignment): close ones first, then
# farther ones drawn with a thin leader line.
_NEAR = [
    (8, 4, "left", "bottom"),
    (8, -4, "left", "top"),
    (-8, 4, "right", "bottom"),
    (-8, -4, "right", "top"),
    (0, 11, "center", "bottom"),
    (0, -11, "center", "top"),
    (11, 0, "left", "center"),
    (-11, 0, "right", "center"),
]

_FAR = [
    (d * dx, d * dy, ha, va)
    for d in (2.4, 4.0)
    for dx, dy, ha, va in [
        (8, 8, "left", "bottom"),
        (8, -8, "left", "top"),
        (-8, 8, "right", "bottom"),
        (-8, -8, "right", "top"),
        (0, 10, "center", "bottom"),
        (0, -10, "center", "top"),
        (11, 0, "left", "center"),
        (-11, 0, "right", "center"),
    ]
]


def _place_labels(
    ax, items: list[tuple[float, float, str]], obstacles: list[tuple[int, Any]], fontsize: float = 8.5
) -> None:
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
            text = ax.annotate(
                label,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=fontsize,
                annotation_clip=False,
                zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                arrowprops={"arrowstyle": "-", "color": "#888888", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 5}
                if far
                else None,
            )
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
                along = [
                    (start[0] + (end[0] - start[0]) * t / 12, start[1] + (end[1] - start[1]) * t / 12)
                    for t in range(2, 12)
                ]
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


def _use_log(values: Sequence[float]) -> bool:
    values = [v for v in values if v is not None]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 12


def _scorer_label(rows: list[dict]) -> tuple[str, str]:
    return ", ".join(scorer_facts(rows, "name")) or "scorer", ", ".join(scorer_facts(rows, "unit")) or "score"


def _reference_label(rows: list[dict]) -> str:
    refs = {r["kl_reference"] for r in rows if r.get("kl") is not None and r.get("kl_reference")}
    names = set()
    for ref in refs:
        base = Path(ref).name
        names.add("MLE" if base.lower() == "mle" else base)
    return names.pop() if len(names) == 1 else "reference"


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


def plot_pareto(rows: list[dict], out: Path, title: str) -> dict | None:
    """Misalignment against KL and held-out LM loss; returns what was drawn, or None."""
    from matplotlib.transforms import Bbox

    points = [r for r in rows if r.get("misalignment_mean") is not None]
    if not points:
        return None
    scorer, unit = _scorer_label(points)
    panels: list[tuple[str | None, str, str]] = []  # (row key of the x axis or None: by arm, label, title)
    if any(r.get("kl") is not None for r in points):
        panels.append(
            ("kl", f"KL({_reference_label(points)} \u2016 model), nats per sample", "(a) capability cost: KL")
        )
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
    drawn: dict[str, Any] = {"panels": [], "log_y": log, "frontier": {}}
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
            ax.errorbar(
                [x], [y], yerr=yerr, linestyle="none", capsize=3, elinewidth=1.0, zorder=3, **_marker_kwargs(row)
            )
            xy.append((x, y))
            items.append((x, y, row["name"]))
        if key is not None and len(xy) >= 2:
            idx = _frontier_indices(xy)
            front = [xy[i] for i in idx]
            drawn["frontier"][key] = [chosen[i]["name"] for i in idx]
            if len(front) >= 2:
                ax.plot(
                    [p[0] for p in front],
                    [p[1] for p in front],
                    drawstyle="steps-post",
                    color="#777777",
                    linestyle="--",
                    linewidth=1.3,
                    zorder=2,
                )
                any_frontier = True
                steps = [front[0]]
                for (_, y0), (x1, y1) in pairwise(front):
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
            for p, q in pairwise(steps):  # the frontier's segments
                (x0, y0), (x1, y1) = ax.transData.transform(p), ax.transData.transform(q)
                obstacles.append(
                    (-1, Bbox.from_extents(min(x0, x1) - 1, min(y0, y1) - 1, max(x0, x1) + 1, max(y0, y1) + 1))
                )
            for owner, container in enumerate(ax.containers):  # one errorbar container per arm
                for coll in container.lines[2] if len(container.lines) > 2 else ():
                    for seg in coll.get_segments():
                        (x0, y0), (x1, y1) = ax.transData.transform(seg[0]), ax.transData.transform(seg[-1])
                        obstacles.append(
                            (owner, Bbox.from_extents(min(x0, x1) - 2, min(y0, y1), max(x0, x1) + 2, max(y0, y1)))
                        )
        if key is not None:
            _place_labels(ax, items, obstacles)
    axes[0].set_ylabel(f"misalignment: mean score of unconditional samples\n({scorer}, {unit}; 95% CI)")
    fig.suptitle(
        f"{title}: misalignment by arm (lower is better)"
        if categorical
        else f"{title}: misalignment vs capability cost (lower-left is better)",
        fontsize=12,
    )
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


def _offset(row: dict) -> int:
    """Where a run's own token count starts on the study's axis (a finetuning arm: after its base run)."""
    return int(row.get("tokens_before") or 0)


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
        series = dict(sorted(series.items(), key=lambda kv: order.get(kv[1][0].get("objective") or "", len(order))))
    for name, members in series.items():
        row = members[0]
        colour = _style(row)[0]
        style = dashes[used[row.get("objective")] % len(dashes)]
        used[row.get("objective")] += 1
        kw = _marker_kwargs(row)
        kw["markersize"] = kw["markersize"] * 0.6
        for member in members:
            evals = sorted(member["periodic_evals"], key=lambda e: e["tokens"])
            xs, ys = [e["tokens"] + _offset(member) for e in evals], [e["misalignment_mean"] for e in evals]
            values += ys
            if len(members) > 1:
                ax.plot(xs, ys, linestyle=style, linewidth=0.8, color=colour, alpha=0.3)
            else:
                ax.plot(xs, ys, linestyle=style, linewidth=1.6, label=name if averaged else member["name"], **kw)
        if len(members) > 1:
            xs, ys, cis = mean_curve(
                [{e["tokens"] + _offset(m): e["misalignment_mean"] for e in m["periodic_evals"]} for m in members]
            )
            ax.plot(xs, ys, linestyle=style, linewidth=2.0, label=f"{name} (mean of {len(members)} seeds)", **kw)
            band = [(x, ci) for x, ci in zip(xs, cis) if ci is not None]
            if band:
                ax.fill_between(
                    [x for x, _ in band],
                    [max(0.0, c[0]) for _, c in band],  # a score is never negative, however wide the interval
                    [c[1] for _, c in band],
                    color=colour,
                    alpha=0.12,
                    lw=0,
                )
        finals = [m["misalignment_mean"] for m in members if m.get("misalignment_mean") is not None]
        if finals:
            end = max((m.get("training_tokens") or m["periodic_evals"][-1]["tokens"]) + _offset(m) for m in members)
            final = sum(finals) / len(finals)
            values.append(final)
            ax.plot(
                [end],
                [final],
                linestyle="none",
                marker="*",
                markersize=17,
                markerfacecolor=colour,
                markeredgecolor="black",
                markeredgewidth=1.0,
                zorder=5,
            )
    if _use_log(values):
        _log_y(ax, values)
    _token_axis(ax)
    ax.set_xlim(left=0)
    ax.set_xlabel("training tokens")
    scorer, unit = _scorer_label(rows)
    ax.set_ylabel(f"misalignment: mean score of unconditional samples\n({scorer}, {unit})")
    what = (
        "mean over seeds, band: 95% CI;\nfaint: each seed; stars: final evaluation, mean over seeds"
        if averaged
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
        "arms": [r["name"] for r in arms],
        "series": {k: [m["name"] for m in v] for k, v in series.items()},
        "averaged_over_seeds": averaged,
        "log_y": _use_log(values),
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
