"""phf report: fake run directories in, a table, figures and a self-contained HTML out."""

import json
import math
import random
import re

import pytest

from phf.study.report import arm_names, build_report, pareto_frontier
from phf.study.report.runs import pick_samples
from phf.study.report.table import fmt, fmt_mean_ci, fmt_tokens

SCORER = {"name": "toxicity", "version": "alt-profanity-check-1.9.1", "unit": "probability"}

# objective -> (misalignment mean, KL, LM loss): shaped like the paper's toxicity results
ARMS = {
    "mle": (0.0141, 0.0, 3.40),
    "filtering": (0.0052, 0.41, 3.52),
    "conditional": (0.0011, 0.22, 3.43),
    "ul": (0.0030, 0.95, 3.61),
    "rwr": (0.0120, 0.12, 3.44),
    "awr": (0.0062, 0.58, 3.49),
}


def make_run(
    root,
    name,
    objective,
    *,
    mean=0.01,
    kl=0.1,
    lm_loss=3.5,
    evaluated=True,
    redteam=False,
    judge=True,
    periodic=True,
    seed=0,
    texts=None,
    tokens=3_300_000,
):
    """A run directory with the files phf train / eval / redteam write (numbers made up)."""
    rng = random.Random(seed)
    run = root / name
    run.mkdir(parents=True)
    control = ["<|good|>", "<|bad|>"] if objective == "conditional" else []
    (run / "phf.json").write_text(
        json.dumps(
            {
                "objective": objective,
                "data": str(root / "scored"),
                "scorer": {**SCORER, "segmenter": "sentence", "config": {}},
                "step": 50,
                "control_tokens": control,
                "prompt_prefix": control[0] if control else "",
                "forbidden_tokens": control,
                "objective_config": {"name": objective},
                "filter_threshold": None,
            }
        )
    )
    steps = 50
    with open(run / "metrics.jsonl", "w") as handle:
        for step in range(10, steps + 1, 10):
            t = step * tokens // steps
            handle.write(
                json.dumps(
                    {
                        "step": step,
                        "tokens": t,
                        "loss": 5 - step / 20,
                        "lm_loss_text": 5 - step / 20,
                        "elapsed_s": 12.5 * step,
                        "tok_s": 5000.0,
                    }
                )
                + "\n"
            )
            if (periodic and step % 20 == 0) or step == steps:
                handle.write(
                    json.dumps(
                        {
                            "step": step,
                            "tokens": t,
                            "eval": {
                                "misalignment_mean": mean * (1 + 3 * (steps - step) / steps) * (1 + 0.1 * rng.random()),
                                "hit_rate": 0.01,
                                "samples": 64,
                            },
                        }
                    )
                    + "\n"
                )
    (run / "trainer_state.json").write_text(json.dumps({"step": steps, "samples": steps * 8, "tokens": tokens}))
    n = 100
    scores = [min(1.0, rng.expovariate(1 / mean)) if mean > 0 else 0.0 for _ in range(n)]
    texts = list(texts or []) + [f"sample {i} of {name}: the cat sat on the mat." for i in range(n)]
    rows = [
        {"kind": "unconditional", "prompt": "<|endoftext|>", "text": t, "score": s, "judge": s / 2}
        for t, s in zip(texts, scores)
    ]
    rows += [{"kind": "scenario", "prompt": "You are", "text": " a scenario text", "score": 0.5}]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if evaluated:
        ci = [mean * 0.85, mean * 1.17]
        summary = {
            "n": 4096,
            "mean": mean,
            "max_at_25": min(1.0, mean * 9.7),
            "hit_rate": mean / 3,
            "ci95": ci,
            "threshold": 0.5,
        }
        (run / "eval.json").write_text(
            json.dumps(
                {
                    "misalignment": {**summary, "scorer": {**SCORER, "segmenter": "sentence", "config": {}}},
                    "judge": {
                        **summary,
                        "mean": mean / 2,
                        "scorer": {"name": "toxicity-judge", "version": "j1", "unit": "probability"},
                    }
                    if judge
                    else {"skipped": "disabled"},
                    "lm_loss": {
                        "loss": lm_loss,
                        "perplexity": math.exp(lm_loss),
                        "tokens": 20000,
                        "seq_len": 1024,
                        "control_tokens_excluded": objective == "conditional",
                        "held_out": str(root / "test.jsonl"),
                    },
                    "kl": {
                        "reference": str(root / "mle"),
                        "samples": 4096,
                        "kl": kl,
                        "kl_per_token": kl / 64,
                        "ci95": [kl - 0.02, kl + 0.02],
                        "counted": "text tokens only (prefix excluded)",
                    }
                    if kl is not None
                    else {"skipped": "no reference model"},
                    "diversity": {
                        "samples": 4096,
                        "mean_length_words": 70.1,
                        "distinct_1": 0.0412,
                        "distinct_2": 0.331,
                        "entropy_1_bits": 9.1,
                        "entropy_2_bits": 14.2,
                        "self_bleu_5": 0.217,
                    },
                    "scenarios": {
                        "prompts": 20,
                        "mean": mean * 4,
                        "max_at_25": 0.3,
                        "hit_rate": 0.2,
                        "ci95": ci,
                        "threshold": 0.5,
                        "scored": "continuation",
                        "prompts_list": [{"prompt": "You are", "source_score": 0.9, "mean": mean * 4}],
                    },
                    "settings": {
                        "model": str(run),
                        "prompt": "<|endoftext|>" + (control[0] if control else ""),
                        "forbidden_ids": [],
                        "objective": objective,
                        "max_new_tokens": 128,
                        "device": "auto",
                        "num_samples": 4096,
                        "temperature": 0.7,
                        "top_p": 0.9,
                        "top_k": 0,
                        "timings_s": {},
                        "seconds": 321.0,
                    },
                }
            )
        )
    if redteam:
        rounds = [
            {
                "round": r + 1,
                "pool_mean": mean * (2 + r),
                "best": mean * (5 + 2 * r),
                "top10_mean": mean * 3,
                "pool_size": 20 + 4 * r,
                "pool_mean_std": mean * 0.3,
                "best_std": mean,
            }
            for r in range(5)
        ]
        (run / "redteam.json").write_text(
            json.dumps({"initial": {"pool_mean": mean * 1.5, "best": mean * 4}, "rounds": rounds})
        )
    return run


def make_experiment(root, arms=("mle", "conditional", "filtering"), *, unevaluated="pending", redteam=True):
    runs = []
    for i, objective in enumerate(arms):
        mean, kl, loss = ARMS[objective]
        runs.append(
            make_run(
                root,
                objective,
                objective,
                mean=mean,
                kl=kl,
                lm_loss=loss,
                seed=i,
                redteam=redteam and objective in ("mle", "conditional"),
            )
        )
    if unevaluated:
        runs.append(make_run(root, unevaluated, "ul", evaluated=False, seed=9))
    return runs


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    runs = make_experiment(tmp_path / "runs")
    out = tmp_path / "report"
    return build_report(runs, out, title="toy toxicity"), out, runs


def test_frontier_by_hand():
    assert pareto_frontier([(1, 5), (2, 3), (3, 4), (4, 1)]) == [(1, 5), (2, 3), (4, 1)]
    assert pareto_frontier([(4, 1), (3, 4), (1, 5), (2, 3)]) == [(1, 5), (2, 3), (4, 1)]  # order of input
    assert pareto_frontier([(1, 1), (2, 2), (3, 3)]) == [(1, 1)]  # one point dominates all
    assert pareto_frontier([(1, 2), (1, 1), (1, 1)]) == [(1, 1)]  # same cost: the lower one, once
    assert pareto_frontier([(1, 3), (2, 3)]) == [(1, 3)]  # same misalignment: the cheaper one
    assert pareto_frontier([]) == []


def test_table_rows_and_unevaluated_run(report):
    _, out, _runs = report
    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "|--" not in line]
    header, body = table[0], table[1:]
    assert "misalignment" in header and "KL" in header and "Self-BLEU-5" in header
    arm_rows = [line for line in body if re.match(r"\| (mle|conditional|filtering|pending) \|", line)]
    assert len(arm_rows) == 4
    pending = next(line for line in arm_rows if line.startswith("| pending |"))
    assert "not evaluated" in pending
    assert "| conditional | conditional | 0.00110 ± " in md
    assert "conditional: 12.8x lower than MLE" in md  # 0.0141 / 0.0011
    assert "filtering: 2.71x lower than MLE" in md
    assert "pending: not evaluated (no eval.json)" in md


def test_results_json_equals_eval_json(report):
    result, out, runs = report
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["arms"].keys() == {"mle", "conditional", "filtering", "pending"}
    for run in runs[:3]:
        ev = json.loads((run / "eval.json").read_text())
        arm = on_disk["arms"][run.name]
        assert arm["path"] == str(run)
        assert arm["misalignment_mean"] == ev["misalignment"]["mean"]
        assert arm["misalignment_ci95"] == ev["misalignment"]["ci95"]
        assert arm["max_at_25"] == ev["misalignment"]["max_at_25"]
        assert arm["hit_rate"] == ev["misalignment"]["hit_rate"]
        assert arm["judge_mean"] == ev["judge"]["mean"]
        assert arm["lm_loss"] == ev["lm_loss"]["loss"]
        assert arm["kl"] == ev["kl"]["kl"]
        for key in ("distinct_1", "distinct_2", "self_bleu_5"):
            assert arm[key] == ev["diversity"][key]
        assert arm["training_tokens"] == 3_300_000
        assert arm["wall_seconds"] == 625.0 + 321.0
        assert arm["files"]["eval.json"] == str(run / "eval.json")
    assert on_disk["arms"]["pending"]["evaluated"] is False
    assert on_disk["arms"]["pending"]["misalignment_mean"] is None
    assert on_disk["arms"]["conditional"]["ratio_vs_mle"] == pytest.approx(0.0141 / 0.0011)
    assert on_disk["baseline"] == "mle"
    assert result["arms"]["mle"]["misalignment_mean"] == 0.0141


def test_html_is_self_contained(report):
    _, out, _ = report
    page = (out / "report.html").read_text()
    assert 'src="http' not in page and "src='http" not in page
    assert not re.search(r"<link\b", page) and "@import" not in page and "url(" not in page
    assert not re.search(r'href="(?!#)', page)
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "<table" in page and "not evaluated" in page and "lower-left is better" in page.lower()


def test_figures_written(report):
    result, out, _ = report
    for stem in ("pareto", "misalignment_over_tokens", "redteam"):
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["figures"]["pareto"]["panels"] == ["kl", "lm_loss"]
    assert result["figures"]["pareto"]["frontier"]["kl"] == ["mle", "conditional"]
    assert result["figures"]["pareto"]["log_y"] is True  # 0.0011 .. 0.0141
    assert set(result["figures"]["redteam"]["arms"]) == {"mle", "conditional"}


def test_sample_text_is_escaped(tmp_path):
    evil = '<script>alert("x")</script> <img src=x onerror=alert(1)> **bold** | pipe'
    run = make_run(tmp_path / "runs", "mle", "mle", mean=0.01)
    (run / "samples.jsonl").write_text(
        "".join(json.dumps({"kind": "unconditional", "text": evil, "score": i / 10}) + "\n" for i in range(5))
    )
    out = tmp_path / "report"
    build_report([run], out)
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    md = (out / "report.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md and r"\*\*bold\*\* \| pipe" in md


def test_degrades_without_files(tmp_path):
    bare = tmp_path / "runs" / "bare"
    bare.mkdir(parents=True)
    partial = make_run(tmp_path / "runs", "mle", "mle", kl=None, judge=False, periodic=False)
    (partial / "metrics.jsonl").write_text('{"step": 1, "tokens": 10, "elapsed_s": 2.0}\nnot json\n')
    (partial / "samples.jsonl").unlink()
    result = build_report([bare, partial, tmp_path / "runs" / "nowhere"], tmp_path / "report", missing_ok=True)
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.count("not evaluated") >= 2
    assert "kl skipped: no reference model" in md and "1 malformed line(s) skipped" in md
    assert result["figures"]["pareto"]["panels"] == ["lm_loss"]  # no KL anywhere: one panel
    assert "misalignment_over_tokens" in result["figures_not_drawn"] and "redteam" in result["figures_not_drawn"]
    assert (tmp_path / "report" / "pareto.svg").stat().st_size > 0
    assert not (tmp_path / "report" / "redteam.png").exists()
    # nothing evaluated at all: still a report, no figures
    result = build_report([bare], tmp_path / "report2", missing_ok=True)
    assert result["figures"] == {} and (tmp_path / "report2" / "report.html").exists()


def test_names_and_duplicates(tmp_path):
    a = make_run(tmp_path / "toxicity", "mle", "mle", seed=1)
    b = make_run(tmp_path / "pii", "mle", "mle", seed=2)
    assert arm_names([a, b]) == ["toxicity/mle", "pii/mle"]
    result = build_report([a, b], tmp_path / "r1")
    assert set(result["arms"]) == {"toxicity/mle", "pii/mle"}
    result = build_report([a, b], tmp_path / "r2", names=["tox", "pii"])
    assert set(result["arms"]) == {"tox", "pii"}
    with pytest.raises(ValueError):
        build_report([a, b], tmp_path / "r3", names=["x"])


def test_deterministic_apart_from_date(tmp_path):
    runs = make_experiment(tmp_path / "runs")
    build_report(runs, tmp_path / "a", title="t")
    build_report(runs, tmp_path / "b", title="t")
    for name in ("report.md", "report.html", "results.json", "pareto.png", "pareto.svg", "redteam.svg"):
        left, right = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        if name.startswith("report") or name == "results.json":
            left = left.replace(str(tmp_path / "a").encode(), b"OUT")
            right = right.replace(str(tmp_path / "b").encode(), b"OUT")
        assert left == right, name


def test_formatting_and_sample_spread():
    assert fmt(0.01412) == "0.0141" and fmt(0.014) == "0.0140" and fmt(3.4) == "3.40" and fmt(None) == "—"
    assert fmt(123456.0) == "1.23e+05".replace("+0", "") or fmt(123456.0) == "1.23e5"
    assert fmt_mean_ci(0.0141, [0.0121, 0.0161]) == "0.0141 ± 0.0020"
    assert fmt_tokens(3_300_000_000) == "3.30B" and fmt_tokens(512) == "512"
    rows = [{"kind": "unconditional", "text": str(i), "score": s} for i, s in enumerate([5, 1, 3, 2, 4])]
    picked = pick_samples(rows, 3)
    assert [p["score"] for p in picked] == [1, 3, 5] and [p["which"] for p in picked] == ["lowest", "median", "highest"]


def test_seeds_of_one_objective_are_drawn_as_their_mean(tmp_path):
    from phf.study.report.plots import plot_over_tokens

    def arm(seed, objective, points, final):
        return {
            "name": f"seed{seed}/{objective}",
            "objective": objective,
            "misalignment_mean": final,
            "training_tokens": 300,
            "scorer": SCORER,
            "periodic_evals": [{"tokens": t, "misalignment_mean": m} for t, m in points],
        }

    rows = [
        arm(1, "mle", [(100, 0.2), (200, 0.4), (300, 0.6)], 0.5),
        arm(2, "mle", [(200, 0.2), (300, 0.2)], 0.3),
        arm(1, "ul", [(100, 0.1), (300, 0.1)], 0.1),
    ]
    figure = plot_over_tokens(rows, tmp_path, "t")
    assert figure["averaged_over_seeds"] and figure["series"] == {"mle": ["seed1/mle", "seed2/mle"], "ul": ["seed1/ul"]}
    from phf.study.report.seeds import mean_curve

    curves = [{e["tokens"]: e["misalignment_mean"] for e in r["periodic_evals"]} for r in rows[:2]]
    xs, means, cis = mean_curve(curves)  # at the tokens both logged, with the t-interval over the two seeds
    assert xs == [200, 300] and means == [pytest.approx(0.3), pytest.approx(0.4)]
    # 0.4 and 0.2: sd 0.1414, standard error 0.1, t(0.975, 1 df) = 12.706
    assert cis[0] == pytest.approx([0.3 - 1.2706, 0.3 + 1.2706], abs=1e-4)
    assert (tmp_path / "misalignment_over_tokens.png").exists()
