"""training.parallelism=fsdp: two CPU processes (gloo) with FSDP2, against one process.

torch 2.13's ``fully_shard`` runs on CPU tensors over gloo, so sharding, the losses, sharded
resumable checkpoints and the gathered final checkpoint are all tested here; only the GPU memory
saving itself needs a GPU (docs/scaling.md). Each torchrun launch costs ~20-40 s on 2 cores, so
the default run launches once (AWR: value head; conditional: control-token rows); the other
objectives, torch.compile and resume-after-kill are marked slow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.fsdp_worker import DIE_AFTER, STEPS
from tests.helpers.training import losses, train_tiny

from phf.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
# Same global batch, same data; sums of fp32 reduce-scattered gradients may round differently.
TOLERANCE = 1e-5


def torchrun(root: Path, data: Path, mode: str, objectives: list[str], port: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += [str(ROOT / "tests" / "helpers" / "fsdp_worker.py"), str(root), str(data), mode, *objectives]
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def single(tmp_path: Path, scored: Path, objective: str) -> list[float]:
    out = train_tiny(
        tmp_path / f"single-{objective}", scored, objective, steps=STEPS, **{"training.micro_batch_size": 2}
    )
    return losses(out)


def check_run(tmp_path: Path, scored: Path, root: Path, objective: str) -> None:
    # Each rank holds only its dim-0 slice of every parameter: together exactly the whole.
    ranks = [json.loads((root / f"shards-{objective}-{r}.json").read_text()) for r in range(2)]
    for name, (local, total) in ranks[0].items():
        assert local >= 0, f"{name} is not sharded"
        assert local + ranks[1][name][0] == total, name
        if total > 1:
            assert (local < total and ranks[1][name][0] < total) or name.startswith("value_head"), name
    assert ranks[0]["lm.transformer.wte.weight"][0] == ranks[0]["lm.transformer.wte.weight"][1] // 2
    assert "lm.lm_head.weight" not in ranks[0], "tied: one parameter, in one FSDP unit"
    assert losses(root / objective) == pytest.approx(single(tmp_path, scored, objective), rel=TOLERANCE, abs=1e-6)
    # The final checkpoint is a plain HF directory: transformers alone loads it, with the tie kept.
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    def keys(run: Path) -> set[str]:
        with safe_open(str(run / "model.safetensors"), "pt") as f:
            return set(f.keys())

    assert keys(root / objective) == keys(tmp_path / f"single-{objective}"), "no tied copy saved twice"
    model = AutoModelForCausalLM.from_pretrained(root / objective)
    assert model.lm_head.weight is model.transformer.wte.weight
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / f"single-{objective}")
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-4, name


def launch(tmp_path: Path, scored: Path, objectives: list[str], port: int, *extra: str) -> Path:
    root = tmp_path / "fsdp"
    done = torchrun(root, scored, "run", [*objectives, *extra], port)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_fsdp_shards_each_rank_and_matches_one_process(tmp_path, scored):
    root = launch(tmp_path, scored, ["awr", "conditional"], 29591)
    for objective in ("awr", "conditional"):
        check_run(tmp_path, scored, root, objective)
    assert (root / "awr" / "value_head.pt").exists()
    assert any((root / "awr" / "checkpoints").glob("step-*/sharded/*.distcp")), "resumable checkpoints are sharded"


@pytest.mark.slow
def test_fsdp_other_objectives_match_one_process(tmp_path, scored):
    objectives = ["mle", "filtering", "ul", "rwr"]
    root = launch(tmp_path, scored, objectives, 29592)
    for objective in objectives:
        check_run(tmp_path, scored, root, objective)


@pytest.mark.slow
def test_fsdp_compiled_matches_one_process(tmp_path, scored):
    root = launch(tmp_path, scored, ["mle"], 29595, "training.compile=true")
    expected = single(tmp_path, scored, "mle")
    assert losses(root / "mle") == pytest.approx(expected, rel=1e-4, abs=1e-5)  # inductor may order sums differently


@pytest.mark.slow
def test_fsdp_resume_after_a_kill_gives_the_uninterrupted_losses(tmp_path, scored):
    root = tmp_path / "killed"
    died = torchrun(root, scored, "die", ["awr"], 29593)
    assert died.returncode != 0
    assert [p.name for p in (root / "awr" / "checkpoints").glob("step-*")] == [f"step-{DIE_AFTER:07d}"]
    assert not (root / "awr" / "model.safetensors").exists(), "killed mid-run"
    resumed = torchrun(root, scored, "resume", ["awr"], 29594)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (root / "awr" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    assert losses(root / "awr") == pytest.approx(single(tmp_path, scored, "awr"), rel=TOLERANCE, abs=1e-6)


def test_fsdp_settings_that_cannot_work_are_refused(tmp_path, scored):
    base = [f"output_dir={tmp_path}", f"data.path={scored}", "training.max_steps=1"]
    with pytest.raises(ConfigError, match="parallelism"):
        load_config([], [*base, "training.parallelism=zero3"])
    with pytest.raises(ConfigError, match="bf16 or no"):
        load_config([], [*base, "training.parallelism=fsdp", "training.mixed_precision=fp16"])
    with pytest.raises(ConfigError, match="eval_every"):
        load_config([], [*base, "training.parallelism=fsdp", "training.eval_every=10"])


def test_fsdp_in_one_process_trains_as_ddp(tmp_path, scored):
    """Nothing to shard with one process: the same run as without it."""
    a = train_tiny(tmp_path / "a", scored, "mle", steps=2)
    b = train_tiny(tmp_path / "b", scored, "mle", steps=2, **{"training.parallelism": "fsdp"})
    assert losses(a) == losses(b)
