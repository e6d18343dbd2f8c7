"""What the report's figures show, as plain data (no matplotlib here): the Pareto plot's panels,
points and frontier, the over-tokens series with their mean and 95% interval over seeds, and the
geometry that places the Pareto plot's labels. :mod:`~phf.study.report.plots` draws them."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from phf.config import OBJECTIVE_NAMES
from phf.study.report.seeds import mean_curve

Box = tuple[float, float, float, float]  # a display-space box: x0, y0, x1, y1


# --- the Pareto plot ------------------------------------------------------------------------------
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


def frontier_steps(front: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The corners of the frontier's step line (drawn ``steps-post``): across at the old height, then down."""
    steps = list(front[:1])
    for (_, y0), (x1, y1) in pairwise(front):
        steps += [(x1, y0), (x1, y1)]
    return steps


@dataclass
class ParetoPoint:
    row: dict  # the arm's row (its name and the style it is drawn in)
    x: float  # the capability cost, or the arm's position on a categorical axis
    y: float  # misalignment
    yerr: tuple[float, float] | None  # the 95% interval as (below, above) the mean; None: no interval


@dataclass
class ParetoPanel:
    key: str | None  # the row key of the x axis; None: a categorical axis, one position per arm
    xlabel: str
    title: str
    points: list[ParetoPoint]
    frontier: list[int] | None = None  # indices of the points on the frontier (None: not computed)
    steps: list[tuple[float, float]] = field(default_factory=list)  # its step line (two points or more)


@dataclass
class ParetoData:
    panels: list[ParetoPanel]
    log_y: bool  # misalignment spans more than a factor 12: a log axis
    categorical: bool  # no arm has KL or LM loss: misalignment by arm


def _reference_label(rows: list[dict]) -> str:
    refs = {r["kl_reference"] for r in rows if r.get("kl") is not None and r.get("kl_reference")}
    names = set()
    for ref in refs:
        base = Path(ref).name
        names.add("MLE" if base.lower() == "mle" else base)
    return names.pop() if len(names) == 1 else "reference"


def use_log(values: Sequence[float | None]) -> bool:
    """A log axis for positive values spanning more than a factor 12."""
    present = [v for v in values if v is not None]
    return bool(present) and min(present) > 0 and max(present) / min(present) > 12


def _pareto_point(row: dict, x: float, log: bool) -> ParetoPoint:
    y = float(row["misalignment_mean"])
    ci = row.get("misalignment_ci95")
    yerr = None
    if ci:
        lo, hi = float(ci[0]), float(ci[1])
        if log and lo <= 0:  # a log axis cannot reach 0: the bar ends a decade below the mean
            lo = y / 10
        yerr = (max(y - lo, 0.0), max(hi - y, 0.0))
    return ParetoPoint(row, x, y, yerr)


def pareto_data(rows: list[dict]) -> ParetoData | None:
    """The Pareto plot's panels: misalignment against KL and against held-out LM loss (the arms that
    have each), with each panel's frontier; by arm when no arm has either. None: nothing to plot."""
    points = [r for r in rows if r.get("misalignment_mean") is not None]
    if not points:
        return None
    axes: list[tuple[str | None, str, str]] = []  # (row key of the x axis or None: by arm, label, title)
    if any(r.get("kl") is not None for r in points):
        axes.append(("kl", f"KL({_reference_label(points)} \u2016 model), nats per sample", "(a) capability cost: KL"))
    if any(r.get("lm_loss") is not None for r in points):
        axes.append(("lm_loss", "held-out LM loss, nats per token", "(b) capability cost: held-out LM loss"))
    if len(axes) == 1:
        axes = [(k, xl, t.replace("(a) ", "").replace("(b) ", "")) for k, xl, t in axes]
    categorical = not axes
    if categorical:
        axes = [(None, "arm", "misalignment by arm (no arm has KL or LM loss)")]
    log = use_log([r["misalignment_mean"] for r in points])
    panels = []
    for key, xlabel, title in axes:
        chosen = [r for r in points if key is None or r.get(key) is not None]
        panel = ParetoPanel(key, xlabel, title, [])
        panel.points = [_pareto_point(r, float(i) if key is None else float(r[key]), log) for i, r in enumerate(chosen)]
        if key is not None and len(chosen) >= 2:
            panel.frontier = _frontier_indices([(p.x, p.y) for p in panel.points])
            if len(panel.frontier) >= 2:
                panel.steps = frontier_steps([(panel.points[i].x, panel.points[i].y) for i in panel.frontier])
        panels.append(panel)
    return ParetoData(panels, log, categorical)


# --- label placement (display coordinates, in pixels) ---------------------------------------------
def overlap(a: Box, b: Box) -> float:
    """The area two boxes share."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def grow(box: Box, pad: float) -> Box:
    return (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)


def around(p: tuple[float, float], q: tuple[float, float], pad_x: float, pad_y: float) -> Box:
    """The box around the segment p-q, widened by ``pad_x`` and heightened by ``pad_y`` each side."""
    return (min(p[0], q[0]) - pad_x, min(p[1], q[1]) - pad_y, max(p[0], q[0]) + pad_x, max(p[1], q[1]) + pad_y)


def _contains(box: Box, x: float, y: float) -> bool:
    return (box[0] <= x <= box[2] or box[0] >= x >= box[2]) and (box[1] <= y <= box[3] or box[1] >= y >= box[3])


def leader_points(start: tuple[float, float], box: Box) -> list[tuple[float, float]]:
    """Points along a leader line from ``start`` (the labelled point) to the nearest point of the
    label's box, its ends left out (they touch the point's own marker and the label)."""
    end = (min(max(start[0], box[0]), box[2]), min(max(start[1], box[1]), box[3]))
    return [(start[0] + (end[0] - start[0]) * t / 12, start[1] + (end[1] - start[1]) * t / 12) for t in range(2, 12)]


# Label positions tried around a point (offset in points, alignment): close ones first, then
# farther ones drawn with a thin leader line.
NEAR = [
    (8, 4, "left", "bottom"),
    (8, -4, "left", "top"),
    (-8, 4, "right", "bottom"),
    (-8, -4, "right", "top"),
    (0, 11, "center", "bottom"),
    (0, -11, "center", "top"),
    (11, 0, "left", "center"),
    (-11, 0, "right", "center"),
]

FAR = [
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


def label_cost(
    box: Box,
    index: int,
    placed: list[Box],
    obstacles: list[tuple[int, Box]],
    frame: Box,
    leader_from: tuple[float, float] | None = None,
) -> float:
    """How bad a label of item ``index`` in ``box`` is (0: fine): overlapping an earlier label
    (``placed``), a marker or error bar (``obstacles``: (index of the item they belong to, or -1 for
    the frontier line; box); an item's own are not in its way) or sticking out of the axes
    (``frame``); and, for a far label drawn with a leader line from ``leader_from``, the line and
    what it crosses."""
    cost = 0.0
    for other in placed:
        area = overlap(box, other)
        cost += 1000 + 4 * area if area else 0
    for owner, obstacle in obstacles:
        if owner != index:
            area = overlap(box, obstacle)
            cost += (300 if owner >= 0 else 60) + area if area else 0
    outside = (box[2] - box[0]) * (box[3] - box[1]) - overlap(box, frame)
    cost += 2000 + 8 * outside if outside > 0.5 else 0
    far = leader_from is not None
    cost += 40 * far  # a leader line is worse than an uncluttered close label
    if leader_from is not None:  # the leader line should cross no other marker, error bar or label
        along = leader_points(leader_from, box)
        hit = [o for owner, o in obstacles if owner not in (index, -1)] + placed
        cost += 300 * sum(any(_contains(o, px, py) for px, py in along) for o in hit)
    return cost


# --- misalignment over training tokens ------------------------------------------------------------
DASHES = ["-", "--", "-.", ":"]


def _series_name(row: dict) -> str:
    """An arm's name without its seed ("seed43/ul" -> "ul"): the arms that differ only by seed."""
    parts = [p for p in row["name"].split("/") if not re.fullmatch(r"seed\d+", p)]
    return "/".join(parts) or row["name"]


def _offset(row: dict) -> int:
    """Where a run's own token count starts on the study's axis (a finetuning arm: after its base run)."""
    return int(row.get("tokens_before") or 0)


@dataclass
class TokenSeries:
    """One legend entry of the over-tokens plot: an arm, or the arms that differ only by seed."""

    name: str
    members: list[dict]  # the arms' rows; the first one's objective styles the series
    dash: str  # line style: objectives drawn more than once cycle through DASHES
    lines: list[tuple[list[float], list[float]]]  # per member (tokens, misalignment), by tokens
    mean: tuple[list[float], list[float]] | None = None  # several members: the mean over seeds
    band: list[tuple[float, float, float]] = field(default_factory=list)  # (tokens, low, high): its 95% CI
    final: tuple[float, float] | None = None  # (tokens, mean of the final evaluations): the star


@dataclass
class TokenPlot:
    series: list[TokenSeries]
    averaged: bool  # some arms differ only by seed: one series per objective, their mean
    values: list[float]  # every misalignment drawn (whether a log axis is needed)


def _token_series(name: str, members: list[dict], dash: str) -> TokenSeries:
    series = TokenSeries(name, members, dash, [])
    for member in members:
        evals = sorted(member["periodic_evals"], key=lambda e: e["tokens"])
        series.lines.append(([e["tokens"] + _offset(member) for e in evals], [e["misalignment_mean"] for e in evals]))
    if len(members) > 1:
        xs, ys, cis = mean_curve(
            [{e["tokens"] + _offset(m): e["misalignment_mean"] for e in m["periodic_evals"]} for m in members]
        )
        series.mean = (xs, ys)
        # A score is never negative, however wide the interval.
        series.band = [(x, max(0.0, ci[0]), ci[1]) for x, ci in zip(xs, cis) if ci is not None]
    finals = [m["misalignment_mean"] for m in members if m.get("misalignment_mean") is not None]
    if finals:
        end = max((m.get("training_tokens") or m["periodic_evals"][-1]["tokens"]) + _offset(m) for m in members)
        series.final = (end, sum(finals) / len(finals))
    return series


def token_plot(rows: list[dict]) -> TokenPlot | None:
    """Periodic misalignment per arm (None: no arm logged any); where arms differ only by seed, one
    series per objective, in the objectives' order, with the mean over seeds and its 95% interval."""
    arms = [r for r in rows if r.get("periodic_evals")]
    if not arms:
        return None
    groups: dict[str, list[dict]] = {}
    for row in arms:
        groups.setdefault(_series_name(row), []).append(row)
    averaged = any(len(members) > 1 for members in groups.values())
    if averaged:  # one legend entry per objective, in the usual objective order
        order = {name: i for i, name in enumerate(OBJECTIVE_NAMES)}
        groups = dict(sorted(groups.items(), key=lambda kv: order.get(kv[1][0].get("objective") or "", len(order))))
    used: Counter = Counter()
    series, values = [], []
    for name, members in groups.items():
        objective = members[0].get("objective")
        series.append(_token_series(name, members, DASHES[used[objective] % len(DASHES)]))
        used[objective] += 1
        values += [y for _, ys in series[-1].lines for y in ys]
        if series[-1].final is not None:
            values.append(series[-1].final[1])
    return TokenPlot(series, averaged, values)
