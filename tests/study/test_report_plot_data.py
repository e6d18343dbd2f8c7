"""phf report's figures as data: the Pareto panels and frontier, the over-tokens series, label
placement geometry; computed on small hand-made inputs without matplotlib."""

import sys

import pytest

from phf.study.report.plot_data import (
    around,
    frontier_steps,
    label_cost,
    leader_points,
    overlap,
    pareto_data,
    token_plot,
)


@pytest.fixture(autouse=True)
def no_matplotlib(monkeypatch):
    """An import of matplotlib fails: the data side of the figures must not need it."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def row(name, objective, mean, ci=None, **numbers):
    return {"name": name, "objective": objective, "misalignment_mean": mean, "misalignment_ci95": ci, **numbers}


def test_pareto_panels_points_and_frontier():
    rows = [
        row("mle", "mle", 0.02, [0.01, 0.03], kl=0.0, lm_loss=3.4, kl_reference="runs/seed1/mle"),
        row("conditional", "conditional", 0.005, [0.004, 0.007], kl=0.2, lm_loss=3.3, kl_reference="runs/seed1/mle"),
        row("ul", "ul", 0.01, kl=0.5),  # no LM loss: on the KL panel only; no interval: no error bar
        row("pending", "rwr", None, kl=0.1, lm_loss=3.0),  # not evaluated: on no panel
    ]
    data = pareto_data(rows)
    assert data is not None and not data.log_y and not data.categorical  # 0.02 / 0.005 = 4: linear
    kl, loss = data.panels
    assert (kl.key, kl.xlabel, kl.title) == ("kl", "KL(MLE \u2016 model), nats per sample", "(a) capability cost: KL")
    assert [(p.row["name"], p.x, p.y) for p in kl.points] == [
        ("mle", 0.0, 0.02),
        ("conditional", 0.2, 0.005),
        ("ul", 0.5, 0.01),
    ]
    assert kl.points[0].yerr == pytest.approx((0.01, 0.01)) and kl.points[1].yerr == pytest.approx((0.001, 0.002))
    assert kl.points[2].yerr is None
    # ul (0.5, 0.01) is dominated by conditional (0.2, 0.005): the frontier is mle, then conditional
    assert kl.frontier == [0, 1] and kl.steps == [(0.0, 0.02), (0.2, 0.02), (0.2, 0.005)]
    assert loss.title == "(b) capability cost: held-out LM loss" and [p.x for p in loss.points] == [3.4, 3.3]
    assert loss.frontier == [1] and loss.steps == []  # conditional is cheaper and better: alone, no line


def test_pareto_log_axis_single_panel_and_categorical():
    # 0.1 / 0.001 > 12: a log axis, where an interval reaching 0 ends a decade below the mean
    rows = [row("a", "mle", 0.001, [-0.001, 0.003], kl=0.3), row("b", "ul", 0.1, [0.05, 0.2], kl=0.1)]
    data = pareto_data(rows)
    assert data is not None and data.log_y
    (panel,) = data.panels
    assert panel.title == "capability cost: KL" and panel.xlabel == "KL(reference \u2016 model), nats per sample"
    assert panel.points[0].yerr == pytest.approx((0.0009, 0.002))
    assert panel.frontier == [1, 0] and panel.steps == [(0.1, 0.1), (0.3, 0.1), (0.3, 0.001)]
    by_arm = pareto_data([row("a", "mle", 0.02), row("b", "rwr", 0.03, [0.02, 0.04])])
    assert by_arm is not None and by_arm.categorical
    (panel,) = by_arm.panels
    assert panel.key is None and [(p.x, p.y) for p in panel.points] == [(0.0, 0.02), (1.0, 0.03)]
    assert panel.frontier is None and panel.steps == []
    assert pareto_data([row("a", "mle", None)]) is None


def test_frontier_steps_go_across_then_down():
    assert frontier_steps([(1, 5), (2, 3), (4, 1)]) == [(1, 5), (2, 5), (2, 3), (4, 3), (4, 1)]
    assert frontier_steps([(1, 5)]) == [(1, 5)] and frontier_steps([]) == []


def arm(name, objective, points, final, **extra):
    evals = [{"tokens": t, "misalignment_mean": m} for t, m in points]
    return {"name": name, "objective": objective, "misalignment_mean": final, "periodic_evals": evals, **extra}


def test_token_series_mean_over_seeds_band_and_stars():
    rows = [
        arm("seed1/ul", "ul", [(300, 0.1), (100, 0.3)], 0.1, training_tokens=300),  # logged out of order
        arm("seed1/mle", "mle", [(100, 0.2), (200, 0.4), (300, 0.6)], 0.5, training_tokens=300),
        arm("seed2/mle", "mle", [(200, 0.2), (300, 0.2)], 0.3, training_tokens=300),
        # finetuned from a 300-token MLE run: its own tokens start after it
        arm("seed1/finetune-ul", "ul", [(100, 0.05)], None, training_tokens=100, tokens_before=300),
        {"name": "seed3/mle", "objective": "mle", "misalignment_mean": 0.9},  # nothing logged: not drawn
    ]
    plot = token_plot(rows)
    assert plot is not None and plot.averaged
    mle, ul, tuned = plot.series  # the objectives' order; a second series of an objective is dashed
    assert [(s.name, s.dash) for s in plot.series] == [("mle", "-"), ("ul", "-"), ("finetune-ul", "--")]
    assert [m["name"] for m in mle.members] == ["seed1/mle", "seed2/mle"]
    assert mle.lines == [([100, 200, 300], [0.2, 0.4, 0.6]), ([200, 300], [0.2, 0.2])]
    assert mle.mean == ([200, 300], [pytest.approx(0.3), pytest.approx(0.4)])  # where both seeds logged
    # 0.4 and 0.2: standard error 0.1, t(0.975, 1 df) = 12.706; a score is never below 0
    (x, low, high), _ = mle.band
    assert x == 200 and low == 0.0 and high == pytest.approx(0.3 + 1.2706, abs=1e-4)
    assert mle.final == (300, pytest.approx(0.4))  # at the end of training, the seeds' mean
    assert ul.lines == [([100, 300], [0.3, 0.1])] and ul.mean is None and ul.band == []
    assert tuned.lines == [([400], [0.05])] and tuned.final is None  # no final evaluation: no star
    assert sorted(plot.values) == sorted([0.2, 0.4, 0.6, 0.2, 0.2, 0.4, 0.3, 0.1, 0.1, 0.05])


def test_token_series_one_per_arm_without_seeds():
    rows = [arm("ul", "ul", [(10, 0.1)], 0.2), arm("mle", "mle", [(10, 0.3)], None)]
    plot = token_plot(rows)
    assert plot is not None and not plot.averaged
    assert [(s.name, s.dash, s.final) for s in plot.series] == [("ul", "-", (10, 0.2)), ("mle", "-", None)]
    assert token_plot([row("a", "mle", 0.1)]) is None


def test_label_geometry():
    assert overlap((0, 0, 2, 2), (1, 1, 3, 3)) == 1 and overlap((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0
    assert around((3, 1), (1, 4), 2, 0) == (-1, 1, 5, 4)
    assert leader_points((0, 0), (12, -1, 20, 1)) == [(t, 0) for t in range(2, 12)]  # to the box's near edge
    frame = (0, 0, 100, 100)
    box = (0, 0, 10, 10)
    assert label_cost(box, 0, [], [], frame) == 0
    assert label_cost(box, 0, [(5, 5, 15, 15)], [], frame) == 1000 + 4 * 25  # on an earlier label
    # the item's own marker does not count; another item's 300 + area; the frontier line's 60 + area
    obstacles = [(0, (0, 0, 5, 5)), (1, (0, 0, 5, 5)), (-1, (8, 8, 20, 20))]
    assert label_cost(box, 0, [], obstacles, frame) == (300 + 25) + (60 + 4)
    assert label_cost((-5, 0, 5, 10), 0, [], [], frame) == 2000 + 8 * 50  # half outside the axes
    # a far label: 40 for its leader line, 300 per other item's marker the line crosses
    far = (60, 45, 70, 55)
    marker = (1, (54, 49, 56, 51))
    assert label_cost(far, 0, [], [marker], frame, leader_from=(50, 50)) == 40 + 300
    assert label_cost(far, 1, [], [marker], frame, leader_from=(50, 50)) == 40  # its own marker
    assert label_cost(far, 0, [], [(-1, marker[1])], frame, leader_from=(50, 50)) == 40  # the frontier
