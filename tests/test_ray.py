"""--engine ray on a local Ray instance (2 CPUs, one per module): the same output as the local
engine, a killed driver's rerun redoes nothing finished, a worker killed mid-shard loses nothing,
and a study's arms run as Ray tasks."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.data.test_score_corpus import USER, corpus_texts, kill_and_rerun, rows, write_jsonl
from tests.study.test_experiment import snapshot, write_study

import phf.study.experiment
from phf.data.score_corpus import ScoringError, score_corpus
from phf.study import run_experiment

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'phf[ray]' (make test installs it)")

ROOT = Path(__file__).resolve().parent.parent
# Ray Data warns about its own deprecated settings when it builds a context: not phf's to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance shared by this module's tests; yields its address for other drivers."""
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level="WARNING"
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def without_timing(manifest):
    return {k: v for k, v in manifest.items() if k not in ("created", "timing")} | {
        "shards": [{k: v for k, v in s.items() if k != "seconds"} for s in manifest["shards"]]
    }


def test_ray_engine_writes_what_the_local_engine_writes(tmp_path, cluster):
    bad = [b'{"text": broken\n', b'{"text": 5}\n', b"\n", '{"text": "caf\xe9 latin-1. Yes."}\n'.encode("latin-1")]
    src = write_jsonl(tmp_path / "in.jsonl", corpus_texts(30) + ["You are an idiot. Go away."], bad)
    local = score_corpus(str(src), str(tmp_path / "local"), "toxicity", shard_size=5, progress=False)
    on_ray = score_corpus(str(src), str(tmp_path / "ray"), "toxicity", shard_size=5, progress=False, engine="ray")
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    assert len(rows(tmp_path / "ray")) == 32 and on_ray["counts"]["documents_skipped"] == 3
    assert without_timing(on_ray) == without_timing(local)
    assert (tmp_path / "ray" / "issues.jsonl").read_text() == (tmp_path / "local" / "issues.jsonl").read_text()
    for marker in (tmp_path / "ray" / "shards").glob("*.json"):
        stats = json.loads(marker.read_text())
        assert stats["pid"] != os.getpid(), "scored in a Ray worker, not in the driver"
    with pytest.raises(ScoringError, match=rf"{src}:32: malformed_json"):
        score_corpus(
            str(src), str(tmp_path / "strict"), "toxicity", shard_size=5, strict=True, progress=False, engine="ray"
        )


def test_a_killed_driver_is_rerun_without_redoing_finished_shards(tmp_path, cluster):
    kill_and_rerun(tmp_path, "--engine", "ray", "--ray-address", cluster, timeout=120)


def test_a_worker_killed_mid_shard_is_retried_and_loses_nothing(tmp_path, cluster):
    src = write_jsonl(tmp_path / "in.jsonl", corpus_texts(24))
    flag = tmp_path / "killed"
    manifest = score_corpus(
        str(src),
        str(tmp_path / "ray"),
        f"{USER}:DiesOnce",
        {"flag": str(flag)},
        shard_size=6,
        batch_docs=2,
        progress=False,
        engine="ray",
    )
    assert flag.exists(), "a worker was killed"
    score_corpus(str(src), str(tmp_path / "local"), f"{USER}:length_score", shard_size=6, progress=False)
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    assert manifest["counts"]["documents_scored"] == 24 and manifest["counts"]["scorer_errors"] == 0
    assert not list((tmp_path / "ray" / "data").glob(".*")), "no partial Parquet left behind"


def test_a_study_runs_its_arms_as_ray_tasks_and_reruns_do_nothing_new(tmp_path, cluster, scored, monkeypatch):
    study = write_study(tmp_path, scored, objectives=["mle"], finetune={"enabled": True, "objectives": ["conditional"]})

    def not_here(*args):
        raise AssertionError("an arm ran in the driver, not in a Ray task")

    monkeypatch.setattr(phf.study.experiment, "run_arm", not_here)  # Ray workers import their own phf.study
    run_experiment(str(study), engine="ray")
    out = tmp_path / "study"
    assert set(json.loads((out / "results.json").read_text())["arms"]) == {"mle", "finetune-conditional"}
    base = out / "toxicity" / "seed0"
    assert f"init: {base / 'mle' / 'step-2'}" in (base / "finetune-conditional" / "config.yaml").read_text()
    before = snapshot(out)
    run_experiment(str(study), engine="ray")
    assert snapshot(out) == {
        **before,
        **{k: v for k, v in snapshot(out).items() if k.endswith(("study.yaml", "results.json"))},
    }


@pytest.mark.gpu
def test_a_gpu_scorer_gets_one_gpu_per_actor_and_arms_ask_for_one(tmp_path, cluster):
    from phf.study.ray_arms import _arm_resources

    assert ray.cluster_resources().get("GPU", 0) >= 1
    src = write_jsonl(tmp_path / "in.jsonl", corpus_texts(24))
    manifest = score_corpus(
        str(src), str(tmp_path / "gpu"), f"{USER}:CudaLengthScore", shard_size=6, progress=False, engine="ray"
    )
    score_corpus(str(src), str(tmp_path / "local"), f"{USER}:length_score", shard_size=6, progress=False)
    assert manifest["counts"]["scorer_errors"] == 0, manifest["issues"]["examples"]
    assert rows(tmp_path / "gpu") == rows(tmp_path / "local")
    assert _arm_resources(ray) == {"num_gpus": 1, "num_cpus": 1}


def test_an_address_where_nothing_listens_fails_in_seconds_naming_it(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = write_jsonl(tmp_path / "in.jsonl", corpus_texts(10))
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "phf.cli", "score", "--input", str(source), "--out", str(tmp_path / "out"),
         "--scorer", "pep8", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"phf score: error: --ray-address 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port} (Connection refused)"
    ]
    assert time.perf_counter() - started < 60  # ray.init alone retried for minutes
    assert not (tmp_path / "out" / "data").exists()
