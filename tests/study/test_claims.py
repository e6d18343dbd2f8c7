"""The paper's claims table: computed from the report's rows (results.json), with intervals over
seeds, and verdicts that follow the numbers."""

import json

import pytest
from tests.study.test_report import ARMS, make_run

from phf.cli import main
from phf.study.report import build_report
from phf.study.report.claims import compute_claims
from phf.study.report.over_seeds import over_seeds_rows
from phf.study.report.seeds import FAILS, HOLDS, INCONCLUSIVE, Estimate, grid
from phf.study.report.table import fmt

# The paper's toxicity results (test_report.ARMS: conditional ~13x below MLE at +0.9% LM loss), plus
# an MLE-then-finetune arm that ends less aligned than conditional training from scratch.
PAPER_LIKE = {**ARMS, "finetune-conditional": (0.002, 0.30, 3.45)}


def study(root, numbers=PAPER_LIKE, seeds=(42, 43, 44), task="toxicity"):
    runs = []
    for seed in seeds:
        for arm, (mean, kl, loss) in numbers.items():
            jitter = 1 + 0.02 * (seed - 43)  # seeds differ a little, so intervals are finite
            run = make_run(
                root / task / f"seed{seed}",
                arm,
                arm.removeprefix("finetune-"),
                mean=mean * jitter,
                kl=kl * jitter,
                lm_loss=loss * jitter,
                seed=seed,
                redteam=True,
            )
            runs.append(run)
    return runs


def by_id(claims):
    return {(c["id"], c["claim"]): c for c in claims}


def test_estimate_is_a_t_interval_over_seeds():
    est = Estimate({1: 1.0, 2: 3.0})  # mean 2, sd 1.414, se 1, t(0.975, 1) = 12.706
    assert est.mean == 2.0 and est.ci95 == pytest.approx([2 - 12.706, 2 + 12.706], abs=1e-3)
    assert est.side(-20, above=True) == HOLDS and est.side(20, above=True) == FAILS
    assert est.side(0, above=True) == INCONCLUSIVE
    assert Estimate({1: 5.0}).side(0, above=True) == INCONCLUSIVE  # one seed: no interval, no verdict
    ratio = Estimate({1: 2.0, 2: 8.0}, log=True)
    assert ratio.mean == pytest.approx(4.0)  # the geometric mean of ratios


def test_claims_come_from_results_json_and_follow_the_numbers(tmp_path):
    out = tmp_path / "report"
    result = build_report(study(tmp_path / "runs"), out, title="paper-like")
    assert (grid(result["arms"].values()).keys()) == {"toxicity"}
    claims = {c["id"]: c for c in result["claims"]}
    assert claims["1"]["verdict"] == HOLDS and claims["1"]["phf"]["mean"] == pytest.approx(0.0141 / 0.0011, rel=1e-3)
    assert claims["1"]["paper"].startswith("12.8x") and claims["1"]["phf"]["n"] == 3
    assert claims["2"]["verdict"] == HOLDS  # conditional is on the frontier in every seed
    assert claims["4a"]["verdict"] == HOLDS and claims["4b"]["verdict"] == HOLDS  # UL: strong cut, worst LM loss
    assert claims["6"]["verdict"] == HOLDS  # +0.9% LM loss
    assert claims["8"]["verdict"] == HOLDS  # finetuned 0.002 vs 0.0011 from scratch
    assert claims["5"]["verdict"] == HOLDS  # make_run's red team scales with misalignment
    for stem in ("capability", "finetune"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and stem in result["figures"]
    page = (out / "report.md").read_text()
    assert "## The paper's claims at this scale" in page and "| 1 | toxicity |" in page
    assert "claims" in (out / "report.html").read_text()
    # Per objective over seeds: the same per-seed ratios, their geometric mean and interval.
    per_objective = {r[1]: r for r in over_seeds_rows(list(result["arms"].values()))}
    assert per_objective["conditional"][3] == ", ".join([f"{fmt(0.0141 / 0.0011)}x"] * 3)
    assert per_objective["conditional"][4].startswith(f"{fmt(0.0141 / 0.0011)}x [")
    assert per_objective["finetune-conditional"][4].startswith(f"{fmt(0.0141 / 0.002)}x [")
    assert "## Per objective, over seeds" in page and "Per objective, over seeds" in (out / "report.html").read_text()

    # The table is computed from results.json: edit a number there and the verdict changes.
    data = json.loads((out / "results.json").read_text())
    for name, row in data["arms"].items():
        if name.endswith("/conditional"):
            row["misalignment_mean"] = 0.05  # now worse than MLE on every seed
            row["lm_loss"] = 4.0
    (tmp_path / "edited.json").write_text(json.dumps(data))
    edited = {c["id"]: c for c in compute_claims(list(data["arms"].values()))}
    assert edited["1"]["verdict"] == FAILS and edited["6"]["verdict"] == FAILS
    assert edited["2"]["verdict"] == FAILS and edited["8"]["verdict"] == FAILS


def test_one_seed_is_inconclusive_and_phf_claims_prints_markdown(tmp_path, capsys):
    result = build_report(study(tmp_path / "runs", seeds=(42,), task="pii"), tmp_path / "report")
    claims = {c["id"]: c for c in result["claims"]}
    assert claims["1"]["verdict"] == INCONCLUSIVE and claims["1"]["phf"]["ci95"] is None
    assert claims["3"]["task"] == "pii"  # filtering's KL: the paper's claim on PII and PEP8 only
    assert "soft weight" in claims["4a"]["detail"]  # why the paper saw UL barely cut PII: a defect phf fixes
    assert "Per objective, over seeds" not in (tmp_path / "report" / "report.md").read_text()  # no interval
    assert main(["claims", str(tmp_path / "report" / "results.json")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| # | task |") and "| 1 | pii |" in printed and INCONCLUSIVE in printed
    assert main(["claims", str(tmp_path / "report" / "report.md")]) == 2  # not JSON: one line, exit 2
    assert "report.md is not JSON" in capsys.readouterr().err
