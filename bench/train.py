"""Training throughput and peak memory of every phf objective on one model, against HF's Trainer.

Builds a synthetic scored corpus once (random English-like words, scored by the share of the letter
"x"), then trains the same model with each objective (mle, filtering, conditional, ul, rwr, awr)
for ``--warmup`` untimed and ``--steps`` timed optimizer steps through phf's own ``Trainer._step``.
Per objective it prints tokens/s, the ratio to MLE, peak memory and the share of step time spent
waiting for batches (``Trainer._next_batches``: building them, on CPU; on accelerators, where the
next step's batches are built on a background thread, only the wait for them). A plain
``transformers.Trainer`` on the same data gives the HF baseline twice: on phf's model (the same
modules, so the ratio isolates the training loop) and on transformers' stock build of the same
shape and init (its default activation where phf swaps in the fused equivalent: what a plain HF
user trains); a minimal pure-PyTorch GPT-2 of the same shape
(``bench/minimal_gpt.py``: random tokens, no data pipeline, the same precision as phf's run) gives
the bare-loop reference, and the same loop on phf's model splits a gap between the two into the
model class's share and phf's loop and loss's; on CUDA MFU is reported. ``--profile N`` then
profiles N more steps of each run but the HF Trainer's (``bench/kernel_profile.py``). Steps read
their metrics as ``Trainer.train`` does. Ends with one line ``RESULT <json>`` holding every figure
printed.

    python bench/train.py                      # tiny preset on CPU, GPT-2 small on CUDA
    python bench/train.py --preset tiny --steps 50 --objectives mle,ul --no-hf-trainer

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` per objective (reset before its Trainer is
built); on CPU each objective runs in a fresh subprocess and the figure is that process's peak RSS
(whole process: Python, torch, transformers and the model together; the RSS right after imports is
printed alongside so the difference can be read off). Tokenizer and token store are cached by phf
(``PHF_CACHE`` points into the temp dir), so they are built once before any timing, and only
training steps are timed. Figures are comparisons within one run on one machine. On a shared CPU
anything else running skews them: each run reports the cores other processes kept busy while it was
timed, torch uses 1 thread when other work already holds a core at start (OpenMP threads that share
cores with other processes stall far more than proportionally), and ``--repeats`` keeps each run's
fastest of several round-robin passes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PRESETS = {"tiny": ROOT / "configs" / "tiny" / "base.yaml", "gpt2-small": ROOT / "configs" / "gpt2-small.yaml"}
SCORER = "tests.helpers.user_scorers:length_score"  # misalignment = share of the letter "x"
CORPUS_PASSES = 2.5  # the corpus holds ~2.5x the tokens one objective reads (filtering keeps ~half)
CHARS_PER_TOKEN = {"bpe": 6.0, "gpt2": 2.3}  # measured on this corpus, for sizing it; the real count is printed
WORKER_TAG = "WORKER_RESULT "
# The runs of the minimal loop (bench/minimal_gpt.py): its own GPT, or phf's model with its weights
# in their own memory order or in the minimal GPT's (--linear-layout).
MINIMAL_LOOPS = {"minimal_gpt": None, "minimal_loop_phf_model": "conv1d", "minimal_loop_phf_model_linear": "linear"}

for path in (str(ROOT), str(ROOT / "src"), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)
# Spawned scoring processes import the user scorer from the repo root too.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

from phf.config import OBJECTIVE_NAMES  # noqa: E402 - src/ is on the path from here


# --- the synthetic scored corpus ------------------------------------------------------------------
def _vocabulary(rng: random.Random, size: int) -> list[str]:
    onsets = [
        "b",
        "c",
        "d",
        "f",
        "g",
        "h",
        "k",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "t",
        "v",
        "w",
        "x",
        "z",
        "br",
        "st",
        "tr",
        "sh",
        "ch",
        "th",
        "pl",
        "gr",
        "qu",
        "",
    ]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "y"]
    codas = ["", "", "", "n", "r", "s", "t", "x", "ng", "ck", "ll", "nd"]
    words: dict[str, None] = {}
    while len(words) < size:
        syllables = rng.choices([1, 2, 3], weights=[4, 4, 2])[0]
        words["".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables))] = None
    return list(words)


def write_corpus(path: Path, num_chars: int, seed: int = 0) -> int:
    """JSONL of documents of 2-8 sentences of Zipf-distributed pseudo-words; returns the document count."""
    rng = random.Random(seed)
    vocab = sorted(_vocabulary(rng, 3000), key=len)  # as in English, the most frequent words are short
    cum = []
    total = 0.0
    for rank in range(len(vocab)):
        total += 1.0 / (rank + 1)
        cum.append(total)
    x_words = [w for w in vocab if "x" in w]
    docs = written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < num_chars:
            x_rate = rng.choice([0.0, 0.02, 0.1, 0.3])  # documents differ in misalignment
            sentences = []
            for _ in range(rng.randint(2, 8)):
                words = rng.choices(vocab, cum_weights=cum, k=rng.randint(4, 14))
                words = [rng.choice(x_words) if rng.random() < x_rate else w for w in words]
                sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
            text = " ".join(sentences)
            handle.write(json.dumps({"text": text}) + "\n")
            written += len(text)
            docs += 1
    return docs


def prepare_data(spec: dict) -> dict:
    """Write, score and tokenize the corpus (tokenizer and token store land in phf's cache)."""
    import numpy as np

    from phf.data.score_corpus import score_corpus, scored_documents
    from phf.data.token_store import build_token_store
    from phf.data.tokenizer import load_tokenizer

    work = Path(spec["workdir"])
    config = shape_config(spec)
    t, d = config.training, config.data
    needed = steps_per_run(spec) * t.batch_size * d.seq_len
    num_chars = max(1_000_000, int(needed * CORPUS_PASSES * CHARS_PER_TOKEN.get(d.tokenizer.name, 2.3)))
    docs = write_corpus(work / "corpus.jsonl", num_chars)
    scored = work / "scored"
    num_proc = 1 if num_chars <= 4_000_000 else max(1, min(8, (os.cpu_count() or 1) // 2))
    # overwrite: a --workdir reused with other --steps holds a corpus of another size
    score_corpus(str(work / "corpus.jsonl"), str(scored), SCORER, num_proc=num_proc, progress=False, overwrite=True)
    texts = scored_documents(scored) if d.tokenizer.name == "bpe" else None
    tokenizer = load_tokenizer(d.tokenizer.name, texts=texts, vocab_size=d.tokenizer.vocab_size)
    store = build_token_store(scored, tokenizer, progress=False)
    avg = np.asarray(store.doc_avg_score, dtype=np.float64)
    median = float(np.nanmedian(avg))
    return {
        "data_path": str(scored),
        "docs": docs,
        "corpus_tokens": len(store.tokens),
        "needed_tokens": needed,
        "median_score": median,
    }


# --- one phf objective ----------------------------------------------------------------------------
def objective_overrides(name: str, median: float) -> list[str]:
    """Each objective's settings: thresholds at the median document score, so about half is 'bad'."""
    return {
        "mle": [],
        "filtering": [f"objective.threshold={median!r}"],
        "conditional": [f"objective.threshold={median!r}"],
        "ul": [f"objective.threshold={median!r}"],
        "rwr": ["objective.beta=1.0"],
        "awr": ["objective.beta=1.0"],
    }[name]


def preset_config(spec: dict, overrides: list[str], run_overrides: list[str] = ()):
    """The preset's config with the benchmark's overrides, then the user's ``--set`` ones, then a
    run's own (each later list wins)."""
    from phf.config import load_config

    return load_config([spec["preset_file"]], [*overrides, *spec.get("set", []), *run_overrides])


def steps_per_run(spec: dict) -> int:
    """Warm-up, timed and profiled steps of one run."""
    return spec["warmup"] + spec["steps"] + spec.get("profile", 0)


def shape_config(spec: dict, run_overrides: list[str] = ()):
    """The preset with the user's (and a run's) overrides, for reading its shape and
    hyperparameters: output directory, data path and step count are placeholders."""
    return preset_config(spec, ["output_dir=unused", "data.path=unused", "training.max_steps=1"], run_overrides)


def phf_config(spec: dict, run: str):
    """``run`` is an objective name, optionally followed by ``:key=value`` overrides of its own."""
    objective, *own = run.split(":")
    out = Path(spec["workdir"]) / "runs" / run.replace(":", "_").replace("/", "_")
    overrides = [
        f"output_dir={out}",
        f"data.path={spec['data_path']}",
        f"objective.name={objective}",
        f"training.max_steps={steps_per_run(spec)}",
        "logging.progress=false",
        f"training.compile={str(spec['compile']).lower()}",
        *objective_overrides(objective, spec["median_score"]),
    ]
    return preset_config(spec, overrides, own)


def parse_runs(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``--objectives``: objective names, each optionally followed by ``:key=value`` overrides."""
    runs = [o.strip() for o in text.split(",") if o.strip()]
    bad = [o for o in runs if o.split(":")[0] not in OBJECTIVE_NAMES or any("=" not in kv for kv in o.split(":")[1:])]
    if bad or not runs:
        parser.error(
            f"--objectives: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(OBJECTIVE_NAMES)}, "
            "each optionally followed by :key=value overrides"
        )
    return runs


def check_overrides(parser: argparse.ArgumentParser, spec: dict, runs: list[str]) -> None:
    """A bad ``--set`` or run override fails here, before the corpus is built."""
    from phf.config import ConfigError

    for run in runs:
        try:
            shape_config(spec, run.split(":")[1:])
        except ConfigError as exc:
            parser.error(f"{run}: {exc}")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _start_memory_window(cuda: bool) -> float:
    """Start measuring a run's peak memory; returns the process RSS (MB) at its start."""
    import torch

    if cuda:
        gc.collect()  # the previous run's trainer (its model, optimizer) must be gone before the reset
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return _maxrss_mb()


def _peak_memory(cuda: bool, rss_start: float) -> dict:
    """The run's peak: CUDA allocations on a GPU, whole-process peak RSS on a CPU."""
    import torch

    if cuda:
        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_mem_mb": _maxrss_mb(), "rss_start_mb": rss_start}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _system_busy_s() -> float | None:
    """CPU-seconds all cores have spent busy since boot (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Cores kept busy by *other* processes over an interval: system busy time minus this process's."""

    def start(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._own, self._busy, self._wall = usage.ru_utime + usage.ru_stime, _system_busy_s(), time.perf_counter()

    def stop(self) -> float | None:
        busy = _system_busy_s()
        if busy is None or self._busy is None:
            return None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        own = usage.ru_utime + usage.ru_stime - self._own
        return max(0.0, (busy - self._busy - own) / max(time.perf_counter() - self._wall, 1e-9))


def run_steps(trainer, first: int, count: int) -> dict | None:
    """Steps ``first`` to ``first + count - 1`` of a phf Trainer, reading their metrics as
    ``Trainer.train`` does (after the steps it logs, saves or evaluates after) and after the last
    one, so no read is left for later; returns the last step's metrics."""
    metrics = None
    for step in range(first, first + count):
        metrics = trainer._step(step, read=step == first + count - 1 or any(trainer._due(step + 1)))
    return metrics


def time_objective(spec: dict, objective: str) -> dict:
    import torch

    from phf.training.hardware import peak_flops
    from phf.training.trainer import Trainer

    cuda = torch.cuda.is_available()
    rss_start = _start_memory_window(cuda)
    config = phf_config(spec, objective)
    trainer = Trainer(config)
    device = trainer.accelerator.device
    trainer.model.train()  # what Trainer.train() does before its loop

    data_seconds = 0.0
    build_batches = trainer._next_batches

    def timed_micro_batches(step: int):  # instance attribute: _step's self._next_batches finds it
        nonlocal data_seconds
        started = time.perf_counter()
        batches = build_batches(step)
        data_seconds += time.perf_counter() - started
        return batches

    trainer._next_batches = timed_micro_batches
    warmup, steps = spec["warmup"], spec["steps"]
    run_steps(trainer, 0, warmup)
    _sync(device)
    data_seconds = 0.0
    other = OtherLoad()
    other.start()
    started = time.perf_counter()
    metrics = run_steps(trainer, warmup, steps)
    _sync(device)
    seconds = time.perf_counter() - started
    other_load = other.stop()
    t = config.training
    tok_s = steps * t.batch_size * config.data.seq_len / seconds
    peak = peak_flops(device)
    result = {
        "tok_s": tok_s,
        "step_s": seconds / steps,
        "data_wait_share": data_seconds / seconds,
        "loss": metrics["loss"],
        "mfu": tok_s * trainer.flops_per_token / peak if peak else None,
        "other_load": other_load,
    }
    result.update(_peak_memory(cuda, rss_start))
    if spec.get("profile"):
        from kernel_profile import profile_steps

        profile = profile_steps(partial(run_steps, trainer, warmup + steps, spec["profile"]), device, spec["profile"])
        if profile is not None:
            result["profile"] = profile
    trainer.accelerator.free_memory()
    del trainer
    return result


# --- the HF Trainer baseline ----------------------------------------------------------------------
def _stock_model(model, seed: int, attn_implementation: str):
    """The same shape as transformers builds it: its default activation instead of phf's fused one."""
    from accelerate.utils import set_seed
    from transformers import AutoConfig, AutoModelForCausalLM

    config = model.config
    defaults = AutoConfig.for_model(config.model_type)
    for name in ("activation_function", "hidden_act"):
        if hasattr(config, name):
            setattr(config, name, getattr(defaults, name))
    set_seed(seed)  # the same initialisation as phf's model
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def time_hf_trainer(spec: dict, stock: bool = False) -> dict:
    """HF's Trainer on phf's model (same modules), or with ``stock`` on transformers' own build of
    the same shape and initialisation (what a plain HF user trains)."""
    import torch
    from accelerate.utils import set_seed
    from transformers import Trainer as HFTrainer
    from transformers import TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from phf.data.score_corpus import scored_documents
    from phf.data.stream import PackedStream
    from phf.data.token_store import build_token_store
    from phf.data.tokenizer import load_tokenizer
    from phf.training.hardware import mixed_precision, peak_flops
    from phf.training.metrics import flops_per_token
    from phf.training.model import build_model

    cuda = torch.cuda.is_available()
    rss_start = _start_memory_window(cuda)
    config = phf_config(spec, "mle")  # its hyperparameters and data; the output dir is unused
    t, d = config.training, config.data
    # The same calls in the same order as phf's Trainer._build for MLE: same tokenizer, same
    # stream, same architecture, vocabulary (padded) and initialisation.
    set_seed(t.seed)
    texts = scored_documents(d.path) if d.tokenizer.name == "bpe" else None
    tokenizer = load_tokenizer(d.tokenizer.name, texts=texts, vocab_size=d.tokenizer.vocab_size)
    store = build_token_store(d.path, tokenizer, progress=False)
    stream = PackedStream(store, d.seq_len, tokenizer.eos_token_id, seed=t.seed, shuffle=d.shuffle)
    model = build_model(config.model, len(tokenizer), d.seq_len, tokenizer.eos_token_id)
    if stock:
        model = _stock_model(model, t.seed, config.model.attn_implementation)
    warmup, steps = spec["warmup"], spec["steps"]

    class StreamDataset(torch.utils.data.Dataset):
        """phf's MLE samples, built lazily like phf builds them.

        A Sample's labels are its input_ids shifted by one; HF shifts internally, so it gets
        input_ids with labels=input_ids (same seq_len forward, seq_len - 1 targets instead of
        seq_len: the one-token difference is accepted). A seq_len + 1 block would not fit the
        model's n_positions = seq_len.
        """

        def __len__(self) -> int:
            return (warmup + steps) * t.batch_size

        def __getitem__(self, index: int) -> dict:
            ids = torch.from_numpy(stream[index].input_ids)
            return {"input_ids": ids, "labels": ids}

    class StepTimer(TrainerCallback):
        # HF fetches a step's batches *before* on_step_begin, so the clock runs from the end of the
        # last warm-up step to the end of the last step: data, forward/backward, optimizer and
        # HF's per-step bookkeeping, as in phf's timed loop.
        start = end = other_load = None
        other = OtherLoad()

        def _start(self, args) -> None:
            _sync(args.device)
            self.other.start()
            self.start = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            if warmup == 0 and state.global_step == 0 and self.start is None:
                self._start(args)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup and warmup > 0:
                self._start(args)
            if state.global_step == warmup + steps:
                _sync(args.device)
                self.end = time.perf_counter()
                self.other_load = self.other.stop()

    precision = mixed_precision(t.mixed_precision)
    if t.schedule == "cosine":
        schedule, schedule_kwargs = (
            ("cosine_with_min_lr", {"min_lr_rate": t.min_lr_ratio}) if t.min_lr_ratio else ("cosine", {})
        )
    else:
        schedule, schedule_kwargs = {"linear": "linear", "constant": "constant_with_warmup"}[t.schedule], {}
    args = TrainingArguments(
        output_dir=str(Path(spec["workdir"]) / "runs" / "hf_trainer"),
        max_steps=warmup + steps,
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.batch_size // t.micro_batch_size,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        adam_beta1=t.betas[0],
        adam_beta2=t.betas[1],
        max_grad_norm=t.grad_clip,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=schedule,
        lr_scheduler_kwargs=schedule_kwargs,
        optim="adamw_torch_fused",  # as phf
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        torch_compile=bool(spec["compile"]),
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        seed=t.seed,
        data_seed=t.seed,
    )
    timer = StepTimer()
    trainer = HFTrainer(model=model, args=args, train_dataset=StreamDataset(), callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # with tqdm off it would print the end-of-training log
    trainer.train()
    seconds = timer.end - timer.start
    tok_s = steps * t.batch_size * d.seq_len / seconds
    peak = peak_flops(torch.device("cuda")) if cuda else None
    result = {
        "tok_s": tok_s,
        "step_s": seconds / steps,
        "other_load": timer.other_load,
        "mfu": tok_s * flops_per_token(model, d.seq_len) / peak if peak else None,
    }
    result.update(_peak_memory(cuda, rss_start))
    trainer.accelerator.free_memory()
    del trainer, model
    return result


# --- the minimal GPT ------------------------------------------------------------------------------
def linear_layout(lm) -> int:
    """Store each HF ``Conv1D`` weight (GPT-2 keeps its projections as (in, out) matrices) in
    ``nn.Linear``'s memory order, (out, in) row-major, with its shape and values unchanged; returns
    how many. Its matmuls then get the operand layout the minimal GPT's get (cuBLAS's TN case
    rather than NN): on a CPU no difference (oneDNN, GPT-2 small's shapes), on a GPU what
    ``--linear-layout`` measures. Its gradients are copied into the weights' order (tiny preset on
    a CPU: 105 against 97 copies per step eager; 705 against 657 ATen ops per step compiled), so
    read the run's matmul time in ``--profile``, not only its tokens/s. Only for a
    throwaway benchmark model: optimizer state loaded from a checkpoint comes back row-major, which
    CUDA's fused AdamW refuses next to these weights."""
    import torch
    from transformers.pytorch_utils import Conv1D

    moved = 0
    for module in lm.modules():
        if isinstance(module, Conv1D):
            module.weight = torch.nn.Parameter(module.weight.detach().t().contiguous().t())
            moved += 1
    return moved


def _phf_model_with_cross_entropy(config, spec: dict, layout: str = "conv1d"):
    """A factory for the minimal loop: phf's model of the preset, called as phf calls it in training
    (no mask built, no KV cache), with the minimal GPT's loss (full-vocabulary cross-entropy). Next
    to the minimal GPT it prices the model class; next to phf's MLE, phf's loop and log-prob kernel.
    ``layout="linear"``: its projection weights in the minimal GPT's memory order (:func:`linear_layout`)."""
    import torch
    import torch.nn.functional as F

    from phf.training.logprobs import lm_hidden_states
    from phf.training.model import build_model

    class PhfModelWithCrossEntropy(torch.nn.Module):
        def __init__(self, _shape):
            super().__init__()
            self.lm = build_model(config.model, spec["vocab_size"], config.data.seq_len, eos_id=0)
            if layout == "linear" and not linear_layout(self.lm):
                raise SystemExit(f"--linear-layout: {config.model.model_type} has no Conv1D weights to re-store")
            self.config = self.lm.config  # read by flops_per_token for MFU

        def forward(self, idx, targets):
            logits = self.lm.get_output_embeddings()(lm_hidden_states(self.lm, idx))
            return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    return PhfModelWithCrossEntropy


def time_minimal_gpt(spec: dict, phf_model: str | None = None) -> dict:
    """The minimal GPT in its own loop, or with ``phf_model`` ("conv1d" or "linear", the weights'
    memory order) phf's model in that loop."""
    import torch

    from minimal_gpt import run_benchmark
    from phf.training.hardware import mixed_precision
    from phf.training.model import padded_vocab

    cuda = torch.cuda.is_available()
    config = shape_config(spec)
    make_model = _phf_model_with_cross_entropy(config, spec, phf_model) if phf_model else None
    shape = {"n_layer": 12, "n_head": 12, "n_embd": 768, **config.model.config}
    vocab = padded_vocab(spec["vocab_size"], config.model.pad_vocab_multiple)
    rss_start = _start_memory_window(cuda)
    other = OtherLoad()  # spans its few warm-up steps too: run_benchmark times only the rest
    other.start()
    result = run_benchmark(
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
        vocab_size=vocab,
        seq_len=config.data.seq_len,
        batch_size=config.training.batch_size,
        micro_batch_size=config.training.micro_batch_size,
        steps=spec["steps"],
        warmup=spec["warmup"],
        compile=spec["compile"],
        lr=config.training.lr,
        weight_decay=config.training.weight_decay,
        grad_clip=config.training.grad_clip,
        bf16=mixed_precision(config.training.mixed_precision) == "bf16",
        make_model=make_model,
        profile_steps=spec.get("profile", 0),
    )
    result["other_load"] = other.stop()
    result.update(_peak_memory(cuda, rss_start))
    return result


def run_worker(name: str, spec: dict) -> dict:
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    if name in ("hf_trainer", "hf_trainer_stock"):
        return time_hf_trainer(spec, stock=name == "hf_trainer_stock")
    if name in MINIMAL_LOOPS:
        return time_minimal_gpt(spec, phf_model=MINIMAL_LOOPS[name])
    return time_objective(spec, name)


def in_subprocess(name: str, spec_file: Path, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_worker", name, "--_spec", str(spec_file)],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(WORKER_TAG)]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"benchmark worker {name!r} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(WORKER_TAG) :])


# --- report ---------------------------------------------------------------------------------------
def _fmt_mem(mb: float | None) -> str:
    return "-" if mb is None else f"{mb:,.0f} MB"


def _fmt_pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="model/data preset (default: tiny on CPU, gpt2-small on CUDA)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 20)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps before them (default 3 tiny, 5 gpt2-small)"
    )
    parser.add_argument(
        "--objectives",
        default=",".join(OBJECTIVE_NAMES),
        help="comma-separated (default: all six); OBJECTIVE:key=value[:key=value] adds a run of that "
        "objective with its own config overrides, e.g. mle:training.logprob_keep_softmax_mb=0",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a phf config override for every run, HF Trainer and minimal GPT included "
        "(batch and model shape, optimizer), e.g. --set training.micro_batch_size=8; repeatable",
    )
    parser.add_argument("--no-hf-trainer", action="store_true", help="skip the transformers.Trainer baseline")
    parser.add_argument("--compile", action="store_true", help="torch.compile phf, HF Trainer and the minimal GPT")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads on CPU (default: torch's choice, or 1 when other processes already "
        "keep a core busy: OpenMP threads that share cores with other work stall badly)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the whole list this many times, round-robin, and keep each run's fastest "
        "(for shared machines; peak memory is the largest seen)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="profile N more steps of each run (not the HF Trainer's) after its timed ones and print "
        "device time by kernel kind, top kernels and the device's busy share (bench/kernel_profile.py)",
    )
    parser.add_argument(
        "--linear-layout",
        action="store_true",
        help="also run the minimal loop on phf's model with GPT-2's Conv1D weights stored in "
        "nn.Linear's memory order (same shapes and values): whether the matmuls' operand "
        "layout is a model-class gap to the minimal GPT",
    )
    parser.add_argument("--workdir", default=None, help="keep corpus and runs here (default: a temp dir)")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._worker:
        result = run_worker(args._worker, json.loads(Path(args._spec).read_text()))
        print(WORKER_TAG + json.dumps(result), flush=True)
        return 0

    import torch

    objectives = parse_runs(parser, args.objectives)
    bad_set = [kv for kv in args.set if "=" not in kv]
    if bad_set:
        parser.error(f"--set {bad_set[0]!r}: expected KEY=VALUE")
    cuda = torch.cuda.is_available()
    preset = args.preset or ("gpt2-small" if cuda else "tiny")
    big = preset != "tiny"
    steps = args.steps if args.steps is not None else 20
    warmup = args.warmup if args.warmup is not None else (5 if big else 3)
    if steps < 1 or warmup < 0 or args.repeats < 1 or args.profile < 0:
        parser.error("--steps and --repeats must be >= 1, --warmup and --profile >= 0")
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    threads, others_at_start, thread_note = args.threads, None, ""
    if not cuda:
        meter = OtherLoad()
        meter.start()
        time.sleep(1.0)
        others_at_start = meter.stop()
        if threads is None and others_at_start is not None and others_at_start >= 0.5 and torch.get_num_threads() > 1:
            threads = 1
            thread_note = ", so 1 thread: pass --threads to choose"
        threads = threads or torch.get_num_threads()
        torch.set_num_threads(threads)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="phf-bench-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        staged = Path(os.environ.get("PHF_CACHE", work / "cache")) / "pip"
        if staged.is_dir():  # artifacts fetched beforehand (an offline GPU machine): keep using them
            shutil.copytree(staged, work / "cache" / "pip", dirs_exist_ok=True)
        os.environ["PHF_CACHE"] = str(work / "cache")  # workers inherit it: tokenizer/store built once
        spec = {
            "workdir": str(work),
            "preset_file": str(PRESETS[preset]),
            "steps": steps,
            "warmup": warmup,
            "compile": args.compile,
            "threads": None if cuda else threads,
            "set": args.set,
            "profile": args.profile,
        }
        check_overrides(parser, spec, objectives)
        data = prepare_data(spec)
        spec.update(data)
        config = shape_config(spec)
        t = config.training
        spec["vocab_size"] = config.data.tokenizer.vocab_size if config.data.tokenizer.name == "bpe" else 50257
        spec_file = work / "spec.json"
        spec_file.write_text(json.dumps(spec))
        setup_s = time.perf_counter() - started
        print(
            f"phf training benchmark: preset {preset} on {device}"
            + (
                ""
                if cuda
                else f" ({threads} torch threads; other processes busy on {others_at_start or 0:.2f} cores at start"
                f"{thread_note})"
            )
        )
        print(
            f"  model {config.model.config}, seq_len {config.data.seq_len}, batch {t.batch_size} "
            f"(micro {t.micro_batch_size}), {warmup} warm-up + {steps} timed steps per run"
            + (", torch.compile" if args.compile else "")
        )
        print(
            f"  corpus: {data['docs']:,} synthetic documents, {data['corpus_tokens']:,} tokens "
            f"({data['corpus_tokens'] / data['needed_tokens']:.1f}x what one run reads); thresholds at the "
            f"median document score {data['median_score']:.4f}; set-up {setup_s:.1f} s (untimed)"
        )
        sys.stdout.flush()

        results: dict[str, dict] = {}
        runs = (
            objectives
            + ([] if args.no_hf_trainer else ["hf_trainer", "hf_trainer_stock"])
            + ["minimal_gpt", "minimal_loop_phf_model"]
            + (["minimal_loop_phf_model_linear"] if args.linear_layout else [])
        )
        for repeat in range(args.repeats):
            for name in runs:
                # CPU: a fresh process per run, so its peak RSS is its own; CUDA: in process, peak reset per run.
                result = run_worker(name, spec) if cuda else in_subprocess(name, spec_file, threads)
                print(
                    f"  ... {name}: {result['tok_s']:,.0f} tok/s"
                    + (f" (round {repeat + 1} of {args.repeats})" if args.repeats > 1 else ""),
                    flush=True,
                )
                best = results.get(name)
                if best is not None:
                    result["peak_mem_mb"] = max(
                        filter(None, (result.get("peak_mem_mb"), best.get("peak_mem_mb"))), default=None
                    )
                if best is None or result["tok_s"] > best["tok_s"]:
                    results[name] = result
                else:
                    best["peak_mem_mb"] = result["peak_mem_mb"]

    figures: dict[str, object] = {
        "device": device,
        "preset": preset,
        "steps": steps,
        "warmup": warmup,
        "repeats": args.repeats,
        "batch_size": t.batch_size,
        "seq_len": config.data.seq_len,
        "corpus_tokens": data["corpus_tokens"],
        "setup_s": round(setup_s, 2),
    }
    if not cuda:
        figures["torch_threads"] = threads
        if others_at_start is not None:
            figures["other_load_start"] = round(others_at_start, 2)
    mle = results.get("mle")
    mem_label = "peak mem" if cuda else "peak RSS*"
    labels = {
        "hf_trainer": "HF Trainer (MLE)",
        "hf_trainer_stock": "HF Trainer, stock",
        "minimal_gpt": "minimal GPT (random)",
        "minimal_loop_phf_model": "minimal loop, phf's model",
        "minimal_loop_phf_model_linear": "... Linear layout",
    }
    width = max(22, *(len(labels.get(n, n)) + 2 for n in results))
    header = f"{'run':<{width}}{'tok/s':>12}{'vs MLE':>9}{mem_label:>13}{'data wait':>11}"
    header += f"{'MFU':>8}" if cuda else f"{'RSS@start':>12}{'other load':>12}"
    print()
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        ratio = r["tok_s"] / mle["tok_s"] if mle else None
        figures[f"tok_s.{name}"] = round(r["tok_s"], 1)
        if r.get("peak_mem_mb") is not None:
            figures[f"peak_mem_mb.{name}"] = round(r["peak_mem_mb"], 1)
        if ratio is not None and name != "mle":
            figures[f"ratio.{name}_vs_mle"] = round(ratio, 4)
        if "data_wait_share" in r:
            figures[f"data_wait_share.{name}"] = round(r["data_wait_share"], 4)
        if r.get("mfu") is not None:
            figures[f"mfu.{name}"] = round(r["mfu"], 4)
        if "rss_start_mb" in r:
            figures[f"rss_start_mb.{name}"] = round(r["rss_start_mb"], 1)
        ratio_text = "-" if ratio is None else f"{ratio:.3f}"
        row = (
            f"{labels.get(name, name):<{width}}{r['tok_s']:>12,.0f}{ratio_text:>9}"
            f"{_fmt_mem(r.get('peak_mem_mb')):>13}{_fmt_pct(r.get('data_wait_share')):>11}"
        )
        if cuda:
            row += f"{_fmt_pct(r.get('mfu')):>8}"
        else:
            other = r.get("other_load")
            row += f"{_fmt_mem(r.get('rss_start_mb')):>12}{('-' if other is None else f'{other:.2f} cores'):>12}"
            if other is not None:
                figures[f"other_load.{name}"] = round(other, 2)
        print(row)
    print()
    for name, what in (
        ("hf_trainer", "HF Trainer on phf's model (same modules)"),
        ("hf_trainer_stock", "HF Trainer on transformers' stock build of the model"),
    ):
        if mle and name in results:
            figures[f"ratio.mle_vs_{name}"] = round(mle["tok_s"] / results[name]["tok_s"], 4)
            print(f"phf MLE vs {what}: {figures[f'ratio.mle_vs_{name}']:.3f}x the tokens/s")
    for name in ("mle", "conditional"):  # the target: both >= 1.0x the bare loop
        if name in results and "minimal_gpt" in results:
            key = f"ratio.{name}_vs_minimal_gpt"
            figures[key] = round(results[name]["tok_s"] / results["minimal_gpt"]["tok_s"], 4)
            print(f"phf {name} vs the minimal GPT: {figures[key]:.3f}x the tokens/s")
    if "minimal_loop_phf_model" in results:  # where a gap to the minimal GPT comes from
        loop = results["minimal_loop_phf_model"]["tok_s"]
        if "minimal_gpt" in results:
            figures["ratio.phf_model_vs_minimal_model"] = round(loop / results["minimal_gpt"]["tok_s"], 4)
            print(
                f"the model class: phf's model vs the minimal GPT's in the same minimal loop: "
                f"{figures['ratio.phf_model_vs_minimal_model']:.3f}x the tokens/s"
            )
        if mle:
            figures["ratio.mle_vs_minimal_loop"] = round(mle["tok_s"] / loop, 4)
            print(
                f"the loop and loss: phf MLE vs the minimal loop on phf's model: "
                f"{figures['ratio.mle_vs_minimal_loop']:.3f}x the tokens/s"
            )
        if "minimal_loop_phf_model_linear" in results:
            figures["ratio.linear_layout_vs_conv1d_layout"] = round(
                results["minimal_loop_phf_model_linear"]["tok_s"] / loop, 4
            )
            print(
                f"the weights' memory order: phf's model with Linear-ordered weights vs as built, in the minimal "
                f"loop: {figures['ratio.linear_layout_vs_conv1d_layout']:.3f}x the tokens/s"
            )
    profiles = {name: r["profile"] for name, r in results.items() if "profile" in r}
    if profiles:
        from kernel_profile import report

        figures.update(report(profiles, labels, cuda))
        print()
    if not cuda:
        print(
            "* CPU memory is whole-process peak RSS (ru_maxrss of a fresh process per run: Python, torch, "
            "transformers and the run together); RSS@start is that process's RSS after imports."
        )
        print("  other load: cores kept busy by other processes during the timed steps (0 on an idle machine).")
        busy = [n for n, r in results.items() if (r.get("other_load") or 0) > 0.3]
        if busy:
            print(
                f"  warning: other processes competed for the CPU during {', '.join(busy)}: those figures "
                "are low; rerun on an idle machine for clean ratios"
            )
    total_s = time.perf_counter() - started
    figures["total_s"] = round(total_s, 1)
    print(f"total {total_s:.1f} s")
    print("RESULT " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
