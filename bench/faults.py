"""Fault campaign: SIGKILL ``phf experiment`` and ``phf score --num-proc 2`` at random moments, rerun
after each kill, and check that what is finally written equals an uninterrupted run's.

    python bench/faults.py                  # 20 kills of each command (the figures in docs/reliability.md)
    python bench/faults.py --kills 4        # the size tests/test_faults.py runs

A tiny study (pep8: a corpus cut from this machine's standard library, so no network; the tiny
GPT-2 preset shrunk to seconds; two objectives; checkpoints every 2 steps) is first run without
interruption: its duration D bounds the kill moments, drawn from a seeded RNG in (0, D). The clock
of ``phf experiment`` starts at its first stage line, not at its launch: on a loaded machine the
rerun's imports alone can outlast the unloaded D, and every kill would land before any work. Each kill
hits the whole process group (what a scheduler or the OOM killer's cgroup does), then the command
is rerun. A rerun that finishes is compared with the uninterrupted run and the campaign starts
again in a fresh directory; so every kill is followed by a full recovery check. Compared:
results.json (all but timings), every run's metrics.jsonl (no step lost or logged twice; equal
losses), the scored Parquet row for row, and no temp file or lock left behind. The stage a kill
hit is read from the progress lines and the files present at that moment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Figures that read the clock, not results: they differ between any two runs.
TIMING_KEYS = {
    "elapsed_s",
    "tok_s",
    "mfu",
    "seconds",
    "timing",
    "created",
    "build_seconds",
    "tokens_per_second",
    "wall_seconds",
    "samples_per_second",
    "time",
    "date",  # the report's date stamp: two runs either side of midnight differ (seen in CI, 2026-12-07)
}
SCORE_DOCS, SHARD_SIZE = 4000, 50


def _is_timing(key: str) -> bool:
    """A wall-clock figure (``eval_seconds``, ``timings_s``, ...): never equal across runs."""
    return key in TIMING_KEYS or key.endswith(("_seconds", "_s"))


WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "far",
    "away",
    "home",
    "under",
    "red",
    "blue",
    "sky",
    "and",
    "sea",
]


def study_config(root: Path, objectives: list[str]) -> Path:
    study = {
        "name": "fault campaign",
        "tasks": ["pep8"],
        "objectives": objectives,
        "seeds": [0],
        "preset": str(ROOT / "configs" / "tiny"),
        "overrides": [
            "data.tokenizer.vocab_size=300",
            "data.seq_len=64",
            "model.config={n_layer: 1, n_head: 2, n_embd: 32}",
            "training.max_steps=6",
            "training.batch_size=8",
            "training.micro_batch_size=8",
            "training.save_every=2",
            "training.log_every=1",
            "training.mixed_precision=no",
            "logging.progress=false",
        ],
        "corpus": {"max_mb": 0.05, "num_proc": 2},
        "eval": {
            "num_samples": 16,
            "kl_samples": 4,
            "max_new_tokens": 8,
            "scenario_prompts": 2,
            "scenario_samples": 2,
            "batch_size": 16,
            "every": 3,
            "every_samples": 4,
        },
    }
    path = root / "study.yaml"
    path.write_text(json.dumps(study))  # JSON is YAML
    return path


def score_input(root: Path, docs: int = SCORE_DOCS) -> Path:
    rng = random.Random(0)
    path = root / "docs.jsonl"
    with open(path, "w") as handle:
        for _ in range(docs):
            text = " ".join(
                " ".join(rng.choices(WORDS, k=rng.randint(4, 12))).capitalize() + "." for _ in range(rng.randint(1, 5))
            )
            handle.write(json.dumps({"text": text}) + "\n")
    return path


class Command:
    """One command of the campaign: how to run it in a directory and read its stage and results.
    ``started(log)`` tells when its work began (the kill clock starts then); None: at launch."""

    def __init__(self, name: str, argv, stage, results, started=None):
        self.name, self.argv, self.stage, self.results, self.started = name, argv, stage, results, started


def experiment_command(root: Path, objectives: list[str]) -> Command:
    study = study_config(root, objectives)

    def argv(out: Path) -> list[str]:
        return ["experiment", str(study), f"out={out}"]

    def stage(out: Path, log: str) -> str:
        lines = [line for line in log.splitlines() if line.startswith("[")]
        if not lines:
            return "startup"
        last = lines[-1].split(" (")[0]  # "[2/5] pep8 seed 0 mle: training (0.1 min so far)"
        if last.endswith("corpus and scores"):
            return "scoring" if (out / "pep8" / "scored" / "plan.json").exists() else "corpus"
        if last.endswith("training"):
            return "checkpointing" if list(out.glob("pep8/seed0/*/checkpoints/.tmp-step-*")) else "training"
        arms = [out / "pep8" / "seed0" / arm for arm in objectives]
        return "report" if all((a / "eval.json").exists() for a in arms) else "evaluation"

    def results(out: Path) -> dict:
        runs = {str(p.parent.relative_to(out)): metrics(p) for p in sorted(out.glob("pep8/seed0/*/metrics.jsonl"))}
        return {"results.json": strip(json.loads((out / "results.json").read_text())), "metrics": runs}

    def started(log: str) -> bool:
        return any(line.startswith("[") for line in log.splitlines())

    return Command("phf experiment", argv, stage, results, started)


def score_command(root: Path) -> Command:
    source = score_input(root)

    def argv(out: Path) -> list[str]:
        return [
            "score",
            "--input",
            str(source),
            "--out",
            str(out),
            "--scorer",
            "pep8",
            "--num-proc",
            "2",
            "--shard-size",
            str(SHARD_SIZE),
            "--quiet",
        ]

    def stage(out: Path, log: str) -> str:
        # Before this run wrote anything it was starting up (imports, workers loading the scorer).
        started = out.with_name(out.name + ".log").stat().st_ctime
        if not any(p.stat().st_mtime > started for p in out.rglob("*")) if out.exists() else True:
            return "startup"
        done = len(list((out / "shards").glob("*.json")))
        return "scoring" if done < SCORE_DOCS // SHARD_SIZE else "manifest"

    def results(out: Path) -> dict:
        import pyarrow.parquet as pq

        rows = [row for file in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(file).to_pylist()]
        return {"rows": rows, "manifest": strip(json.loads((out / "manifest.json").read_text()))}

    return Command("phf score --num-proc 2", argv, stage, results)


def metrics(path: Path) -> list[dict]:
    """metrics.jsonl without timings; raises if a step is logged twice."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [(line["step"], "eval" in line) for line in lines]
    if len(keys) != len(set(keys)):
        raise AssertionError(f"{path}: a step is logged twice: {keys}")
    return [strip(line) for line in lines]


def strip(value):
    """``value`` without its timing entries (and paths of the directory it was written in)."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not _is_timing(k) and k not in ("path", "phf_version")}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def leftovers(*dirs: Path) -> list[str]:
    """Temp files, temp dirs and lock files: hidden names phf writes only while it works."""
    return sorted(str(p) for d in dirs if d.exists() for p in d.rglob(".*"))


def run(command: Command, out: Path, env: dict, kill_after: float | None) -> tuple[bool, str, float, float]:
    """Run the command; with ``kill_after``, SIGKILL its process group that long after its work began
    (``Command.started``). Returns (killed, stage, seconds, seconds until its work began)."""
    log_path = out.with_name(out.name + ".log")
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "phf.cli", *command.argv(out)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        work_began = started
        if command.started is not None:
            while proc.poll() is None and not command.started(log_path.read_text()):
                time.sleep(0.05)
            work_began = time.perf_counter()
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            stage = command.stage(out, log_path.read_text())  # what the files say just before the kill
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, stage, time.perf_counter() - started, work_began - started
    if proc.returncode != 0:
        raise RuntimeError(f"{command.name} failed (exit {proc.returncode}):\n{log_path.read_text()[-3000:]}")
    return False, "finished", time.perf_counter() - started, work_began - started


def campaign(command: Command, root: Path, kills: int, seed: int) -> dict:
    """Kill ``command`` ``kills`` times; returns the figures. Every run uses the same paths (paths are
    part of what runs record), emptied after each check."""
    out, cache = root / "run", root / "cache"
    env = {**os.environ, "PHF_CACHE": str(cache)}
    _, _, total, startup = run(command, out, env, None)
    duration = total - startup  # the span the kill moments are drawn from, counted from the work's start
    reference = command.results(out)
    rng = random.Random(seed)
    stages: Counter = Counter()
    checked, started = 0, time.perf_counter()
    while sum(stages.values()) < kills or checked == 0:
        shutil.rmtree(out)
        shutil.rmtree(cache, ignore_errors=True)
        finished = False
        while not finished:
            moment = rng.uniform(0, duration) if sum(stages.values()) < kills else None
            killed, stage, _, _ = run(command, out, env, moment)
            if killed:
                stages[stage] += 1
                print(
                    f"  {command.name}: kill {sum(stages.values())} at {moment:.1f} s ({stage})",
                    file=sys.stderr,
                    flush=True,
                )
            finished = not killed
        difference = first_difference(command.results(out), reference)
        if difference:
            raise AssertionError(f"{command.name}: after {sum(stages.values())} kills, {difference}")
        left = leftovers(out, cache)
        if left:
            raise AssertionError(f"{command.name}: left behind {left}")
        checked += 1
    return {
        "command": command.name,
        "uninterrupted_seconds": round(duration, 1),
        "kills": sum(stages.values()),
        "kills_by_stage": dict(stages),
        "recoveries_checked": checked,
        "mismatches": 0,
        "leftovers": 0,
        "campaign_seconds": round(time.perf_counter() - started, 1),
    }


def first_difference(got, expected, where: str = "") -> str | None:
    if isinstance(got, dict) and isinstance(expected, dict):
        for key in sorted(set(got) | set(expected)):
            found = first_difference(got.get(key), expected.get(key), f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(got, list) and isinstance(expected, list) and len(got) == len(expected):
        return next(
            (d for i, (a, b) in enumerate(zip(got, expected)) if (d := first_difference(a, b, f"{where}[{i}]"))), None
        )
    return None if got == expected else f"{where}: {str(got)[:200]} != uninterrupted {str(expected)[:200]}"


def table(figures: dict) -> str:
    rows = [
        f"{figures['command']}: {figures['kills']} kills survived, {figures['recoveries_checked']} recoveries "
        f"equal to the uninterrupted run ({figures['uninterrupted_seconds']} s), 0 temp files left, "
        f"{figures['campaign_seconds']} s",
        "  stage            kills survived",
    ]
    rows += [f"  {stage:<16} {count}" for stage, count in sorted(figures["kills_by_stage"].items())]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per command (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["experiment", "score"], default=None)
    parser.add_argument("--objectives", default="mle,conditional", help="the study's arms (default mle,conditional)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="phf-faults-") as tmp:
        commands = {
            "experiment": lambda root: experiment_command(root, args.objectives.split(",")),
            "score": score_command,
        }
        for name, make in commands.items():
            if args.only in (None, name):
                root = Path(tmp) / name
                root.mkdir()
                figures = campaign(make(root), root, args.kills, args.seed)
                print(table(figures), flush=True)
                results.append(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
