"""The training loop: one screen of plain PyTorch on ``accelerate``.

Each optimizer step takes a fixed slice of the global sample sequence (``phf.data.stream``): rank r of W
takes its share, split into gradient-accumulation micro-batches. Losses are sums over target
tokens divided by the *global* number of target tokens of the step, and each rank's loss is
multiplied by W to undo DDP's gradient averaging, so neither accumulation nor data parallelism
changes the update. The data position is the step number, so a checkpoint (model, optimizer,
scheduler, RNG, step) resumes on exactly the batch an uninterrupted run would have seen.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from phf._version import __version__
from phf.config import TrainConfig, to_yaml
from phf.data.stream import Conditional, Filtering, PackedStream, bucket_edges, collate, step_sample_indices
from phf.errors import PhfError
from phf.io.atomic import write_text_atomic
from phf.io.integrity import directory_damage, directory_records, remove_stale_temps
from phf.io.run_lock import RunLock
from phf.training import parallel
from phf.training.logprobs import lm_target_logprobs
from phf.training.objectives import LossInputs, ValueHead, build_objective

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
# Bumped when a checkpoint's layout changes; a checkpoint of another format is refused, not guessed at.
# 1: trainer_state.json records phf's version and every file's size and sha256.
CHECKPOINT_FORMAT = 1

# Peak dense bf16 FLOP/s by device name, for MFU. Unknown devices (and CPUs) report no MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


class TrainingError(PhfError, RuntimeError):
    """Training cannot go on (NaN loss, a run directory in the way); the message says what to do."""


class PolicyModel(nn.Module):
    """The LM plus, for AWR, a value head; forward returns target log-probs (and values).

    Log-probs come from the final hidden states and the output embedding in chunks
    (``phf.training.logprobs``), so full-vocabulary fp32 logits never exist. ``fp32_attention``: attention
    computed in fp32 (``phf.training.model.sdpa_in_fp32``).
    """

    def __init__(
        self, lm, value_head: ValueHead | None, chunk_tokens: int, keep_softmax_mb: float, fp32_attention: bool = False
    ):
        super().__init__()
        self.lm, self.value_head = lm, value_head
        self.chunk_tokens, self.keep_softmax_mb = chunk_tokens, keep_softmax_mb
        self.fp32_attention = fp32_attention

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        logp, hidden = lm_target_logprobs(
            self.lm,
            input_ids,
            labels,
            chunk_tokens=self.chunk_tokens,
            keep_softmax_mb=self.keep_softmax_mb,
            fp32_attention=self.fp32_attention,
        )
        values = self.value_head(hidden) if self.value_head is not None else None
        return logp, values


def keep_freed_memory() -> bool:
    """Let glibc reuse freed memory for large CPU tensors instead of mapping fresh pages each time.

    Blocks above glibc's mmap threshold (at most 32 MB by default) are mmapped on allocation and
    unmapped on free, so every step's (tokens x vocabulary) logits, softmax and gradient buffers
    fault in fresh zeroed pages (a large share of a small model's CPU step; docs/benchmarks.md).
    Raising the mmap and trim thresholds keeps such blocks in the heap for reuse: the effect of
    running with jemalloc or tcmalloc, which CPU training guides recommend, without preloading a
    library. Process-wide, glibc only; returns whether it applied (elsewhere it does nothing).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


class _QueuedMetrics:
    """One queued step's metrics (a 1-D tensor), readable without waiting for later steps.

    On CUDA the values are copied into pinned host memory right behind the step's kernels and an
    event marks the copy: reading them waits for that event, where a plain ``.tolist()`` issued
    after the next step was queued would wait for the next step too (one stream, in order)."""

    def __init__(self, step: int, names: list[str], values: torch.Tensor):
        self.step, self.names = step, names
        self._done = None
        if values.device.type == "cuda":
            values = values.to("cpu", non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
        self._values = values

    def values(self) -> list[float]:
        if self._done is not None:
            self._done.synchronize()
        return self._values.tolist()


class _Prefetch:
    """Builds step s+1's micro-batches on one background thread while step s runs on the device.

    The stream is a pure function of the sample index, so prefetched batches are exactly the ones
    the step would have built itself. Batches are pinned on CUDA so the host-to-device copies in
    ``_step`` (``non_blocking=True``) overlap with compute. Only this thread touches the stream once
    training runs; a step that was not prefetched (the first, after a resume) is built in place.
    ``_step`` starts the next build once it has queued all its kernels (see ``Trainer._step``).
    """

    def __init__(self, build: Callable[[int], list[dict]], *, pin: bool):
        self.build, self.pin = build, pin
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phf-data")
        self.pending: tuple[int, Future] | None = None

    def _load(self, step: int) -> list[dict]:
        batches = self.build(step)
        return [{k: v.pin_memory() for k, v in b.items()} for b in batches] if self.pin else batches

    def get(self, step: int) -> list[dict]:
        pending, self.pending = self.pending, None
        if pending is not None:
            batches = pending[1].result()  # also: never build on two threads at once
            if pending[0] == step:
                return batches
        return self._load(step)

    def start(self, step: int) -> None:
        if self.pending is None:
            self.pending = (step, self.pool.submit(self._load, step))

    def close(self) -> None:
        self.pending = None
        self.pool.shutdown(wait=True, cancel_futures=True)


def total_steps(config: TrainConfig) -> int:
    """Optimizer steps a training config runs for: training.max_steps, else its token budget."""
    t = config.training
    if t.max_steps is not None:
        return t.max_steps
    if t.num_tokens is None:
        raise TrainingError("set training.num_tokens or training.max_steps")
    return math.ceil(t.num_tokens / (t.batch_size * config.data.seq_len))


def make_schedule(optimizer, cfg, total_steps: int):
    warmup = max(1, round(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        decay = 1 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: nn.Module, cfg, device: torch.device):
    # No weight decay on biases, norms and other 1-D parameters (nanoGPT, GPT-2 practice).
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel exists for CUDA and CPU tensors, and is faster than the foreach one on both.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=device.type in ("cuda", "cpu"))


def flops_per_token(model, seq_len: int) -> float:
    """6N for the parameter matmuls plus attention (PaLM's estimate), for MFU."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    layers = getattr(cfg, "num_hidden_layers", 0)
    hidden = getattr(cfg, "hidden_size", 0)
    return 6 * n + 12 * layers * hidden * seq_len


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), where bf16
    autocast is a speed-up; elsewhere it is emulated and slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch API: may vanish
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def _mixed_precision(choice: str) -> str:
    """``auto``: bf16 where the hardware computes it natively (a GPU that has it; on a CPU-only
    machine, a CPU with bf16 matrix instructions, where it trains faster to the same loss), else fp32."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def _forget_other_precision(precision: str) -> None:
    """accelerate keeps one state per process and refuses a second ``Accelerator`` with another mixed
    precision, so a notebook or script training one run in bf16 and the next in fp32 would fail.
    Dropping that state's precision part (not the process group's) lets the new one take over."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision:
        AcceleratorState._reset_state()


def _trackers(cfg) -> list[str]:
    """TensorBoard / W&B through accelerate's trackers, checked up front: a missing package is an
    error before training, not a surprise at the first log line."""
    import importlib.util

    wanted = [(cfg.tensorboard, "tensorboard", "tensorboard"), (cfg.wandb, "wandb", "wandb")]
    for asked, name, package in wanted:
        if asked and importlib.util.find_spec(package) is None:
            raise TrainingError(f"logging.{name}=true needs the {package} package: pip install {package}")
    return [name for asked, name, _ in wanted if asked]


def _scalars(values: dict, prefix: str = "") -> dict:
    """Flatten a nested dict to the scalar entries trackers accept."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            out[f"{prefix}{key}"] = value
    return out


def _checkpoint_dirs(run: Path) -> list[Path]:
    root = run / CHECKPOINTS
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).exists()] if root.exists() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _usable_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint that is intact; damaged newer ones are skipped with a warning."""
    for checkpoint in reversed(_checkpoint_dirs(run)):
        problem: str | None
        try:
            state = json.loads((checkpoint / STATE_FILE).read_text())
            int(state["step"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f"{STATE_FILE} is unreadable ({type(exc).__name__})"
        else:
            if state.get("format") != CHECKPOINT_FORMAT:
                raise TrainingError(
                    f"{checkpoint} was written by phf {state.get('phf_version', '0.1.0 or older')} "
                    f"(checkpoint format {state.get('format')}), this phf {__version__} reads "
                    f"format {CHECKPOINT_FORMAT}: resume it with that version or choose a new output_dir"
                )
            problem = directory_damage(checkpoint, state.get("files", {}))
            if problem is None:
                return checkpoint
        warnings.warn(
            f"skipping damaged checkpoint {checkpoint}: {problem}; resuming from an earlier one", stacklevel=2
        )
    return None


def _last_logged(path: Path, key: str) -> float:
    """The last value of ``key`` in metrics.jsonl (0 if none)."""
    if not path.exists():
        return 0.0
    values = [json.loads(line).get(key) for line in path.read_text().splitlines() if line.strip()]
    return next((float(v) for v in reversed(values) if v is not None), 0.0)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines a killed run wrote after its last checkpoint: they are about to be redone.
    So is a line cut short by a full disk. Rewritten atomically: a failure keeps the old file."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return math.inf


class Trainer:
    """One training run (``phf train``): data, model and optimiser from a config; trains, checkpoints, resumes."""

    def __init__(
        self, config: TrainConfig, *, resume: bool = False, evaluate: Callable[[Trainer, int], dict] | None = None
    ):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.config, self.evaluate = config, evaluate
        self.run_dir = Path(config.output_dir)
        # cpu=True on a machine without CUDA is what makes torchrun/accelerate launch use gloo (MULTI_CPU).
        # The scheduler steps once per optimizer step (accelerate would step it once per process).
        precision = _mixed_precision(config.training.mixed_precision)
        _forget_other_precision(precision)
        self.accelerator = Accelerator(
            mixed_precision=precision,
            cpu=not torch.cuda.is_available(),
            step_scheduler_with_optimizer=False,
            log_with=_trackers(config.logging) or None,
            project_config=ProjectConfiguration(str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
        )
        from accelerate.utils import set_seed

        if self.accelerator.device.type == "cpu":
            keep_freed_memory()
        set_seed(config.training.seed)
        # Held by the main process until training ends; checked before the run directory is read.
        self._lock = RunLock(self.run_dir, "phf train").acquire() if self.accelerator.is_main_process else None
        try:
            self._check_run_dir(resume)
            self._build()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let another process use the run directory (``train`` does this when it ends)."""
        if self._lock is not None:
            self._lock.release()

    # --- set-up -------------------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> None:
        has_state = bool(_checkpoint_dirs(self.run_dir)) or (self.run_dir / "metrics.jsonl").exists()
        if has_state and not resume:
            raise TrainingError(
                f"{self.run_dir} already holds a run: pass --resume to continue it, or choose a new output_dir"
            )
        self.resume_from = _usable_checkpoint(self.run_dir) if has_state else None
        if has_state and self.resume_from is None:
            warnings.warn(f"{self.run_dir} has no intact checkpoint: training starts again from step 0", stacklevel=2)
        if self._lock is not None:  # this process owns the directory: any temp checkpoint is a killed run's
            for stale in (self.run_dir / CHECKPOINTS).glob(".tmp-step-*"):
                shutil.rmtree(stale)
            remove_stale_temps(self.run_dir)  # e.g. a metrics.jsonl rewrite cut short

    def _build(self) -> None:
        from phf.data.token_store import build_token_store
        from phf.data.tokenizer import add_control_tokens, load_tokenizer
        from phf.training.model import add_token_rows, build_model, check_vocab, library_bars, load_model

        cfg, acc = self.config, self.accelerator
        data_path = Path(cfg.data.path)
        if not (data_path / "manifest.json").exists():
            raise TrainingError(
                f"data.path {str(data_path)!r} is not a scored corpus (no manifest.json); make one with `phf score`"
            )
        manifest = json.loads((data_path / "manifest.json").read_text())
        if not manifest.get("counts", {}).get("documents_scored"):  # written by a phf that allowed empty corpora
            raise TrainingError(
                f"data.path {str(data_path)!r} holds no scored document (see its manifest.json's issues); "
                "score a corpus with documents in it"
            )
        objective_name = cfg.objective.name
        self.objective = build_objective(cfg.objective)

        # The corpus is tokenized with the base tokenizer (no control tokens), so every objective
        # trains on the same token store and literal "<|good|>" in a document stays plain text.
        tokenizer_spec = cfg.model.init or cfg.data.tokenizer.name
        texts = texts_key = None
        if tokenizer_spec == "bpe":
            from phf.data.score_corpus import scored_documents
            from phf.data.token_store import corpus_fingerprint

            texts = scored_documents(data_path)
            texts_key = "corpus:" + corpus_fingerprint(manifest)
        with acc.main_process_first():
            # Keyed on the corpus fingerprint: a cached tokenizer needs no pass over the documents.
            base_tokenizer = load_tokenizer(
                tokenizer_spec, texts=texts, vocab_size=cfg.data.tokenizer.vocab_size, texts_key=texts_key
            )
            self.store = build_token_store(data_path, base_tokenizer, progress=acc.is_main_process)
        tokenizer = copy.deepcopy(base_tokenizer)
        known_rows = len(tokenizer)

        filtering = conditional = None
        control_tokens: list[str] = []
        if objective_name == "filtering":
            filtering = Filtering(**asdict(cfg.objective.filtering))
        if objective_name == "conditional":
            o = cfg.objective.conditional
            threshold = bad_threshold = edges = None
            if o.buckets:
                control_tokens = [f"<|bucket{k}|>" for k in range(o.buckets)]
                edges = bucket_edges(self.store, o.buckets, o.labels)
            else:
                control_tokens = [o.good_token, o.bad_token]
                threshold, bad_threshold = self._conditional_thresholds()
            ids = add_control_tokens(tokenizer, control_tokens)
            conditional = Conditional(
                tuple(ids),
                threshold=threshold or 0.0,
                drop_prob=o.drop_prob,
                edges=edges,
                bad_threshold=bad_threshold,
                labels=o.labels,
                tag_every=o.tag_every,
            )
        self.tokenizer, self.control_tokens, self.conditional = tokenizer, control_tokens, conditional
        self.scorer = manifest["scorer"]
        # The corpus's threshold (maybe set by `phf score --hit-threshold`): evaluation's default.
        self.hit_threshold = manifest.get("misaligned", {}).get("threshold")

        start_doc = 0
        if cfg.data.continue_from:
            start_doc = self._continuation_start(Path(cfg.data.continue_from), base_tokenizer)
        self.stream = PackedStream(
            self.store,
            cfg.data.seq_len,
            tokenizer.eos_token_id,
            seed=cfg.training.seed,
            shuffle=cfg.data.shuffle,
            filtering=filtering,
            conditional=conditional,
            start_doc=start_doc,
        )
        self.filter_threshold = filtering.resolved_threshold(self.store) if filtering else None

        if cfg.model.init:
            with library_bars(cfg.logging.progress):
                lm = load_model(cfg.model.init, cfg.model.attn_implementation, cfg.model.dropout)
            check_vocab(lm, base_tokenizer, f"model.init {cfg.model.init}")
            new_ids = [tokenizer.convert_tokens_to_ids(t) for t in control_tokens]
            new_ids = [i for i in new_ids if i >= known_rows]
            add_token_rows(
                lm,
                tokenizer,
                new_ids,
                known_rows,
                cfg.model.pad_vocab_multiple,
                generator=torch.Generator().manual_seed(cfg.training.seed),
            )
        else:
            lm = build_model(cfg.model, len(tokenizer), cfg.data.seq_len, tokenizer.eos_token_id)
        if lm.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise TrainingError(
                f"the model's vocabulary ({lm.get_input_embeddings().weight.shape[0]}) is smaller "
                f"than the tokenizer's ({len(tokenizer)})"
            )
        value_head = ValueHead(lm.config.hidden_size) if self.objective.needs_value_head else None
        self.lm = lm
        # bf16 autocast on a CPU: attention in fp32 where that is faster (short sequences; phf.training.model).
        fp32_attention = (
            acc.device.type == "cpu"
            and acc.mixed_precision == "bf16"
            and cfg.data.seq_len < cfg.training.cpu_fp32_attention_below
        )
        model = PolicyModel(
            lm, value_head, cfg.training.logprob_chunk_tokens, cfg.training.logprob_keep_softmax_mb, fp32_attention
        )
        self.flops_per_token = flops_per_token(lm, cfg.data.seq_len)

        t = cfg.training
        world = acc.num_processes
        if t.batch_size % (t.micro_batch_size * world):
            raise TrainingError(
                f"training.batch_size {t.batch_size} is not a multiple of micro_batch_size "
                f"{t.micro_batch_size} x {world} processes"
            )
        self.accum = t.batch_size // (t.micro_batch_size * world)
        self.total_steps = total_steps(cfg)
        self.fsdp = t.parallelism == "fsdp" and world > 1  # one process: nothing to shard
        if not self.fsdp:
            optimizer = make_optimizer(model, t, acc.device)
            scheduler = make_schedule(optimizer, t, self.total_steps)
            self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        else:
            # Sharded before the optimizer is built, so its state is sharded too; accelerate then
            # keeps only the scheduler and RNG (its DDP wrapping and optimizer state saving would not fit).
            parallel.shard(model.to(acc.device), lm)
            self.model, self.optimizer = model, make_optimizer(model, t, acc.device)
            self.scheduler = acc.prepare(make_schedule(self.optimizer, t, self.total_steps))
        if t.compile:
            self.model = torch.compile(self.model)
        self.step = 0
        if self.resume_from is not None:
            acc.load_state(str(self.resume_from))
            if self.fsdp:
                parallel.load_sharded(model, self.optimizer, self.resume_from)
            self.step = json.loads((self.resume_from / STATE_FILE).read_text())["step"]
        prefetch = cfg.data.prefetch if cfg.data.prefetch is not None else acc.device.type != "cpu"
        self._prefetch = _Prefetch(self._micro_batches, pin=acc.device.type == "cuda") if prefetch else None
        self._num_tokens: torch.Tensor | None = None  # targets per step, all ranks (_step)
        self._unread: _QueuedMetrics | None = None  # the last queued step's metrics, if not read yet

    def _conditional_thresholds(self) -> tuple[float, float | None]:
        """(threshold, bad_threshold) of conditional training, percentiles resolved on this corpus's
        label scores (recorded in phf.json, so evaluation labels held-out text the same way)."""
        from phf.data.stream import store_label_scores

        o = self.config.objective.conditional
        # `is not None`, not truth: percentile 0 is a threshold too.
        by_percentile = o.percentile is not None or o.bad_percentile is not None
        scores = store_label_scores(self.store, o.labels) if by_percentile else np.empty(0)
        threshold = float(np.nanpercentile(scores, o.percentile)) if o.percentile is not None else o.threshold
        bad = float(np.nanpercentile(scores, o.bad_percentile)) if o.bad_percentile is not None else o.bad_threshold
        if threshold is None:
            raise TrainingError(
                "conditional training needs objective.threshold or objective.percentile (or objective.buckets)"
            )
        if bad is not None and bad < threshold:
            raise TrainingError(
                f"the bad threshold ({bad:.4g}) is below the good one ({threshold:.4g}): "
                "raise objective.bad_percentile / bad_threshold"
            )
        return threshold, bad

    def _continuation_start(self, base_run: Path, base_tokenizer) -> int:
        """Where the base run's stream stopped, as a position in the shared document order."""
        from phf.config import load_config

        base = load_config([str(base_run / "config.yaml")])
        states = _checkpoint_dirs(base_run)
        state_file = (
            base_run / STATE_FILE if (base_run / STATE_FILE).exists() else (states[-1] / STATE_FILE if states else None)
        )
        if state_file is None:
            raise TrainingError(f"data.continue_from {str(base_run)!r} has no trainer state")
        if base.training.seed != self.config.training.seed or base.data.seq_len != self.config.data.seq_len:
            raise TrainingError("data.continue_from: the base run must use the same training.seed and data.seq_len")
        consumed = json.loads(state_file.read_text())["samples"]
        base_filter = Filtering(**asdict(base.objective.filtering)) if base.objective.name == "filtering" else None
        base_stream = PackedStream(
            self.store,
            base.data.seq_len,
            base_tokenizer.eos_token_id,
            seed=base.training.seed,
            shuffle=base.data.shuffle,
            filtering=base_filter,
        )
        return base_stream.position_to_doc(consumed)

    # --- the loop -----------------------------------------------------------------------------
    def _micro_batches(self, step: int) -> list[dict]:
        t = self.config.training
        indices = step_sample_indices(
            step, t.batch_size, t.micro_batch_size, self.accum, self.accelerator.process_index
        )
        return [collate([self.stream[i] for i in micro]) for micro in indices]

    def _next_batches(self, step: int) -> list[dict]:
        """This step's micro-batches: prefetched during the last step, or built now."""
        if self._prefetch is None:
            return self._micro_batches(step)
        return self._prefetch.get(step)

    def _step(self, step: int, *, read: bool = True) -> dict[str, float] | None:
        """Queue one optimizer step; then read the metrics of the step queued before it, if still
        unread, and with ``read`` this step's too (returned; else None and they wait for the next
        call). Only a read waits for the device: a step that leaves its metrics unread returns as
        soon as its kernels are queued, so the host queues step s+1 while the device runs step s.
        A NaN loss raises when its step is read, at the latest one step later; ``train`` reads
        every step it logs, evaluates or saves (:meth:`_read_after`), so no checkpoint holds one."""
        acc, device = self.accelerator, self.accelerator.device
        batches = self._next_batches(step)
        # Every target counts (packed blocks have no padding); the sum is still reduced across ranks
        # so that masks, if a transform ever adds them, keep the normalisation global. Steps have one
        # shape, so it is built once: copying a host number to a GPU waits for the queued kernels.
        if self._num_tokens is None:
            local = sum(b["labels"].numel() for b in batches)
            self._num_tokens = acc.reduce(torch.tensor(float(local), device=device), reduction="sum")
        num_tokens = self._num_tokens
        totals: dict[str, torch.Tensor] = {}
        for k, batch in enumerate(batches):
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            sync = k == len(batches) - 1
            context: AbstractContextManager
            if self.fsdp:
                context = parallel.gradient_sync(self.model, sync)
            else:
                context = acc.no_sync(self.model) if not sync else _nullcontext()
            with context:
                with acc.autocast():
                    logp, values = self.model(batch["input_ids"], batch["labels"])
                inputs = LossInputs(
                    logp=logp,
                    scores=batch["scores"],
                    mask=torch.ones_like(batch["labels"], dtype=torch.bool),
                    values=values.float() if values is not None else None,
                    num_tokens=num_tokens,
                )
                loss, metrics = self.objective(inputs)
                acc.backward(loss * acc.num_processes)
            for name, value in {"loss": loss.detach(), **metrics}.items():
                totals[name] = totals.get(name, 0) + value.detach().float()
            text = ~batch["is_control"]
            totals["nll_text_sum"] = totals.get("nll_text_sum", 0) + (-logp.detach().float() * text).sum()
            totals["text_tokens"] = totals.get("text_tokens", 0) + text.sum().float()
        clip = parallel.clip_grad_norm if self.fsdp else acc.clip_grad_norm_
        grad_norm = (
            clip(self.model.parameters(), self.config.training.grad_clip)
            if self.config.training.grad_clip > 0
            else torch.full((), float("nan"), device=device)
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        names = sorted(totals)
        reduced = acc.reduce(torch.stack([totals[n] for n in names]).to(device), reduction="sum")
        queued = _QueuedMetrics(step, names, torch.cat([reduced, grad_norm.reshape(1).to(reduced)]))
        # The step's kernels are all queued: the next step's batches are built now, on the prefetch
        # thread, while this thread waits in a read with the GIL released. Started at the top of the
        # step, the build (milliseconds of Python and numpy) competed for the GIL with this thread
        # launching the first kernels into the queue the last read had emptied, and slowed the
        # objectives whose build is longest (conditional; docs/benchmarks.md).
        if self._prefetch is not None and step + 1 < self.total_steps:
            self._prefetch.start(step + 1)
        previous, self._unread = self._unread, None if read else queued
        if previous is not None:
            self._read(previous)  # waits for the previous step only: this one keeps the device busy
        return self._read(queued) if read else None

    def _read(self, queued: _QueuedMetrics) -> dict[str, float]:
        values = queued.values()
        out = dict(zip(queued.names, values))
        out["lm_loss_text"] = out.pop("nll_text_sum") / max(out.pop("text_tokens"), 1.0)
        out["grad_norm"] = values[-1]
        if not math.isfinite(out["loss"]):
            raise TrainingError(
                f"loss is {out['loss']} at step {queued.step + 1}; no checkpoint was written for it. "
                "Lower training.lr, check the scores in data.path, or resume from the last checkpoint"
            )
        return out

    def _due(self, done: int) -> dict[str, bool]:
        """What ``train`` does once ``done`` steps are complete (evaluation on the main process only)."""
        t, last = self.config.training, done == self.total_steps
        return {
            "log": done % t.log_every == 0 or last,
            "evaluate": bool(self.evaluate is not None and t.eval_every and done % t.eval_every == 0),
            "save": done % t.save_every == 0 or last,
            "export": done in t.export_steps and not last,
        }

    def _read_after(self, step: int) -> bool:
        """Whether ``train`` needs step ``step``'s metrics as soon as it is queued: it logs,
        evaluates or saves after it (a checkpoint must never follow an unchecked loss)."""
        return any(self._due(step + 1).values())

    def train(self) -> dict:
        try:
            return self._train()
        finally:
            self.release()

    def _train(self) -> dict:
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        t = cfg.training
        metrics_path = self.run_dir / "metrics.jsonl"
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
            _truncate_metrics(metrics_path, self.step)
        tokens_per_step = t.batch_size * cfg.data.seq_len
        peak = peak_flops(acc.device)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            desc=f"train {cfg.objective.name}",
            disable=not (acc.is_main_process and cfg.logging.progress),
        )
        last: dict = {}
        window_start, window_steps = time.perf_counter(), 0
        # Wall time of this run, carried over a resume so reports show the whole cost.
        elapsed_before = _last_logged(metrics_path, "elapsed_s") if acc.is_main_process else 0.0
        started = time.perf_counter()
        self.model.train()
        if acc.log_with:
            acc.init_trackers(
                cfg.logging.wandb_project,
                config=_scalars(asdict(cfg)),
                init_kwargs={"wandb": {"name": self.run_dir.name}} if cfg.logging.wandb else None,
            )
        with open(metrics_path, "a", encoding="utf-8") if acc.is_main_process else _nullcontext() as log:
            while self.step < self.total_steps:
                due = self._due(self.step + 1)
                metrics = self._step(self.step, read=any(due.values()))
                self.step += 1
                window_steps += 1
                if due["log"]:
                    assert metrics is not None  # read=True above: this step's metrics were read
                    elapsed = time.perf_counter() - window_start
                    tok_s = window_steps * tokens_per_step / elapsed
                    last = {
                        "step": self.step,
                        "tokens": self.step * tokens_per_step,
                        "samples": self.step * t.batch_size,
                        "elapsed_s": round(elapsed_before + time.perf_counter() - started, 3),
                        "lr": self.scheduler.get_last_lr()[0],
                        **metrics,
                        "tok_s": tok_s,
                        "mfu": tok_s * self.flops_per_token / (peak * acc.num_processes) if peak else None,
                    }
                    if log is not None:
                        log.write(json.dumps(last) + "\n")
                        log.flush()
                    if acc.trackers:
                        acc.log({k: v for k, v in last.items() if isinstance(v, (int, float))}, step=self.step)
                    postfix = {"loss": f"{metrics['loss']:.3f}", "tok_s": f"{tok_s:,.0f}"}
                    if last["mfu"]:
                        postfix["mfu"] = f"{100 * last['mfu']:.1f}%"
                    bar.set_postfix(postfix)
                    window_start, window_steps = time.perf_counter(), 0
                bar.update(1)
                if due["evaluate"] and acc.is_main_process and self.evaluate is not None:
                    result = self.evaluate(self, self.step)
                    if log is not None and result:
                        log.write(
                            json.dumps({"step": self.step, "tokens": self.step * tokens_per_step, "eval": result})
                            + "\n"
                        )
                if due["save"]:
                    self.save_state()
                if due["export"]:
                    self.save_final(self.run_dir / f"step-{self.step}")
        bar.close()
        if self._prefetch is not None:
            self._prefetch.close()
        if acc.trackers:
            acc.end_training()
        self.save_final()
        return last if acc.is_main_process else {}

    # --- saving -------------------------------------------------------------------------------
    def save_state(self) -> None:
        """Atomic resumable checkpoint: written to a temp dir, renamed once complete."""
        acc = self.accelerator
        root = self.run_dir / CHECKPOINTS
        final, tmp = root / f"step-{self.step:07d}", root / f".tmp-step-{self.step:07d}"
        try:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            # safetensors drops the tied lm_head copy and accelerate warns each time; loading re-ties it
            # (the resume test checks the losses), so the warning is noise.
            logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
            acc.save_state(str(tmp))
            if self.fsdp:
                parallel.save_sharded(self.model, self.optimizer, tmp)
            acc.wait_for_everyone()
            if acc.is_main_process:
                # The state file is the commit point and records every file, so a damaged checkpoint
                # is recognised before it is loaded (_usable_checkpoint).
                state = {
                    "step": self.step,
                    "samples": self.step * self.config.training.batch_size,
                    "tokens": self.step * self.config.training.batch_size * self.config.data.seq_len,
                    "format": CHECKPOINT_FORMAT,
                    "phf_version": __version__,
                    "files": directory_records(tmp),
                }
                (tmp / STATE_FILE).write_text(json.dumps(state))
        # A full disk or a read-only mount (torch.save reports a failed write as a RuntimeError): keep
        # the last checkpoint, and say so.
        except (OSError, RuntimeError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            last = _checkpoint_dirs(self.run_dir)
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise TrainingError(
                f"cannot write checkpoint step {self.step} to {root}: {reason}; "
                f"the last checkpoint ({last[-1].name if last else 'none'}) is intact: "
                "free space and rerun with --resume"
            ) from exc
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in _checkpoint_dirs(self.run_dir)[: -self.config.training.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def save_final(self, out: Path | None = None) -> None:
        """The HF checkpoint (+ phf.json, trainer_state.json, config.yaml) in ``out`` (default: the
        run directory). A copy at an intermediate step can start a finetuning run that continues
        the stream from there (``model.init`` + ``data.continue_from``)."""
        from phf.training.model import save_checkpoint
        from phf.training.run_info import ConditionalInfo, RunInfo

        acc = self.accelerator
        acc.wait_for_everyone()
        policy = acc.unwrap_model(self.model)
        policy = getattr(policy, "_orig_mod", policy)
        # Under FSDP every rank takes part in gathering the full state dict onto rank 0.
        full = parallel.full_state_dict(policy) if self.fsdp else None
        if not acc.is_main_process:
            return
        o = self.config.objective
        prefix = self.control_tokens[0] if self.control_tokens else ""
        # Where control tokens precede every line (code), the aligned token may follow any newline
        # in a sample, so only the misaligned ones are forbidden (the paper's PEP8 setting).
        per_line = self.scorer.get("segmenter") == "line"
        c = self.conditional
        info = RunInfo(
            objective=o.name,
            # Absolute paths: phf eval finds the corpus (and its held-out split) from any directory.
            data=_absolute(self.config.data.path),
            scorer=self.scorer,
            hit_threshold=self.hit_threshold,
            step=self.step,
            control_tokens=self.control_tokens,
            prompt_prefix=prefix,
            forbidden_tokens=self.control_tokens[1:] if per_line else self.control_tokens,
            # How control tokens were chosen, so evaluation can present held-out text the same way.
            conditional=None if c is None else ConditionalInfo.of(c),
            objective_config=asdict(o),
            filter_threshold=self.filter_threshold,
            init=_absolute(self.config.model.init),
            continue_from=_absolute(self.config.data.continue_from),
            mixed_precision=self.accelerator.mixed_precision,  # what `auto` resolved to on this machine
            cpu_fp32_attention=policy.fp32_attention,  # bf16 on a CPU, attention in fp32
        )
        out = Path(out or self.run_dir)
        lm_state = head_state = None
        if full is not None:
            lm_state = {k.removeprefix("lm."): v for k, v in full.items() if k.startswith("lm.")}
            for name in parallel.tied_copies(policy.lm):  # as save_pretrained drops them from its own
                lm_state.pop(name, None)
            head_state = {k.removeprefix("value_head."): v for k, v in full.items() if k.startswith("value_head.")}
        save_checkpoint(policy.lm, self.tokenizer, out, phf_info=info, state_dict=lm_state)
        if policy.value_head is not None:
            torch.save(head_state or policy.value_head.state_dict(), out / "value_head.pt")
        if out != self.run_dir:
            (out / "config.yaml").write_text(to_yaml(self.config))
        (out / STATE_FILE).write_text(
            json.dumps(
                {
                    "step": self.step,
                    "samples": self.step * self.config.training.batch_size,
                    "tokens": self.step * self.config.training.batch_size * self.config.data.seq_len,
                }
            )
        )


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute where it names a local file or directory (a hub name stays as given)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def train(config: TrainConfig, *, resume: bool = False, evaluate=None) -> dict:
    """Train as configured; returns the last logged metrics."""
    return Trainer(config, resume=resume, evaluate=evaluate).train()
