"""The training loop: plain PyTorch on ``accelerate``, read top to bottom in :meth:`Trainer._train`
(each step, then what is due after it) and :meth:`Trainer._step` (one optimizer step).

Each optimizer step takes a fixed slice of the global sample sequence (``phf.data.stream``): rank r of W
takes its share, split into gradient-accumulation micro-batches. Losses are sums over target
tokens divided by the *global* number of target tokens of the step, and each rank's loss is
multiplied by W to undo DDP's gradient averaging, so neither accumulation nor data parallelism
changes the update. The data position is the step number, so a checkpoint (model, optimizer,
scheduler, RNG, step) resumes on exactly the batch an uninterrupted run would have seen.

Around the loop: ``checkpoint`` (save, latest, load, prune, export), ``metrics`` (metrics.jsonl,
trackers, progress bar, MFU) and ``hardware`` (host tuning, mixed precision).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from phf.config import TrainConfig, to_yaml
from phf.data.stream import collate, step_sample_indices
from phf.io.integrity import remove_stale_temps
from phf.io.run_lock import RunLock
from phf.training import hardware, parallel
from phf.training.checkpoint import CheckpointManager, saved_checkpoints
from phf.training.data import Prefetch, build_data, corpus_manifest
from phf.training.errors import TrainingError
from phf.training.logprobs import lm_target_logprobs
from phf.training.metrics import METRICS_FILE, QueuedMetrics, RunLog, flops_per_token, trackers
from phf.training.objectives import LossInputs, ValueHead, build_objective


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


def _accelerator(config: TrainConfig):
    """accelerate's ``Accelerator`` for a run (mixed precision as the hardware allows, trackers), seeded."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    run_dir = Path(config.output_dir)
    precision = hardware.mixed_precision(config.training.mixed_precision)
    hardware.forget_other_precision(precision)
    # cpu=True on a machine without CUDA is what makes torchrun/accelerate launch use gloo (MULTI_CPU).
    # The scheduler steps once per optimizer step (accelerate would step it once per process).
    accelerator = Accelerator(
        mixed_precision=precision,
        cpu=not torch.cuda.is_available(),
        step_scheduler_with_optimizer=False,
        log_with=trackers(config.logging) or None,
        project_config=ProjectConfiguration(str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    if accelerator.device.type == "cpu":
        hardware.keep_freed_memory()
    set_seed(config.training.seed)
    return accelerator


class _Due(NamedTuple):
    """What the loop does once a step is complete (``any(due)``: whether it reads the step's metrics)."""

    log: bool
    evaluate: bool
    save: bool
    export: bool


class Trainer:
    """One training run (``phf train``): data, model and optimiser from a config; trains, checkpoints, resumes."""

    def __init__(
        self, config: TrainConfig, *, resume: bool = False, evaluate: Callable[[Trainer, int], dict] | None = None
    ):
        self.config, self.evaluate = config, evaluate
        self.run_dir = Path(config.output_dir)
        self.accelerator = acc = _accelerator(config)
        self.fsdp = config.training.parallelism == "fsdp" and acc.num_processes > 1  # one process: nothing to shard
        self.checkpoints = CheckpointManager(config, acc, fsdp=self.fsdp)
        # Held by the main process until training ends; checked before the run directory is read.
        self._lock = RunLock(self.run_dir, "phf train").acquire() if acc.is_main_process else None
        try:
            self.resume_from = self._check_run_dir(resume)
            base_tokenizer = self._build_data()
            self._build_optimizer(self._build_model(base_tokenizer))
            self.step = 0
            if self.resume_from is not None:
                self.step = self.checkpoints.load(self.resume_from, self.model, self.optimizer)
            prefetch = config.data.prefetch if config.data.prefetch is not None else acc.device.type != "cpu"
            self._prefetch = Prefetch(self._micro_batches, pin=acc.device.type == "cuda") if prefetch else None
            self._num_tokens: torch.Tensor | None = None  # targets per step, all ranks (_step)
            self._unread: QueuedMetrics | None = None  # the last queued step's metrics, if not read yet
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let another process use the run directory (``train`` does this when it ends)."""
        if self._lock is not None:
            self._lock.release()

    # --- set-up -------------------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> Path | None:
        """The checkpoint to resume from (None: start at step 0); a run in the way needs ``resume``."""
        has_state = bool(saved_checkpoints(self.run_dir)) or (self.run_dir / METRICS_FILE).exists()
        if has_state and not resume:
            raise TrainingError(
                f"{self.run_dir} already holds a run: pass --resume to continue it, or choose a new output_dir"
            )
        resume_from = self.checkpoints.latest() if has_state else None
        if has_state and resume_from is None:
            warnings.warn(f"{self.run_dir} has no intact checkpoint: training starts again from step 0", stacklevel=2)
        if self._lock is not None:  # this process owns the directory: any temp file is a killed run's
            self.checkpoints.remove_unfinished()
            remove_stale_temps(self.run_dir)  # e.g. a metrics.jsonl rewrite cut short
        return resume_from

    def _build_data(self):
        """The objective and what it trains on (:func:`phf.training.data.build_data`); returns the
        base tokenizer (the corpus's, without control tokens)."""
        cfg = self.config
        manifest = corpus_manifest(Path(cfg.data.path))
        self.objective = build_objective(cfg.objective)
        data = build_data(cfg, self.accelerator, manifest)
        self.tokenizer, self.store, self.stream = data.tokenizer, data.store, data.stream
        self.control_tokens, self.conditional = data.control_tokens, data.conditional
        self.filter_threshold = data.filter_threshold
        self.scorer = manifest["scorer"]
        # The corpus's threshold (maybe set by `phf score --hit-threshold`): evaluation's default.
        self.hit_threshold = manifest.get("misaligned", {}).get("threshold")
        return data.base_tokenizer

    def _build_model(self, base_tokenizer) -> PolicyModel:
        """The policy: the LM (``self.lm``) and AWR's value head; also the LM's FLOPs per token."""
        cfg, acc = self.config, self.accelerator
        lm = self._language_model(base_tokenizer)
        value_head = ValueHead(lm.config.hidden_size) if self.objective.needs_value_head else None
        self.lm = lm
        # bf16 autocast on a CPU: attention in fp32 where that is faster (short sequences; phf.training.model).
        fp32_attention = (
            acc.device.type == "cpu"
            and acc.mixed_precision == "bf16"
            and cfg.data.seq_len < cfg.training.cpu_fp32_attention_below
        )
        self.flops_per_token = flops_per_token(lm, cfg.data.seq_len)
        return PolicyModel(
            lm, value_head, cfg.training.logprob_chunk_tokens, cfg.training.logprob_keep_softmax_mb, fp32_attention
        )

    def _language_model(self, base_tokenizer):
        """``model.init`` loaded (with rows for the control tokens it lacks), or a new LM from ``model``."""
        from phf.training.model import add_token_rows, build_model, check_vocab, library_bars, load_model

        cfg, tokenizer = self.config, self.tokenizer
        if cfg.model.init:
            with library_bars(cfg.logging.progress):
                lm = load_model(cfg.model.init, cfg.model.attn_implementation, cfg.model.dropout)
            check_vocab(lm, base_tokenizer, f"model.init {cfg.model.init}")
            known_rows = len(base_tokenizer)
            new_ids = [tokenizer.convert_tokens_to_ids(t) for t in self.control_tokens]
            new_ids = [i for i in new_ids if i >= known_rows]
            generator = torch.Generator().manual_seed(cfg.training.seed)
            add_token_rows(lm, tokenizer, new_ids, known_rows, cfg.model.pad_vocab_multiple, generator=generator)
        else:
            lm = build_model(cfg.model, len(tokenizer), cfg.data.seq_len, tokenizer.eos_token_id)
        if lm.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise TrainingError(
                f"the model's vocabulary ({lm.get_input_embeddings().weight.shape[0]}) is smaller "
                f"than the tokenizer's ({len(tokenizer)})"
            )
        return lm

    def _build_optimizer(self, model: PolicyModel) -> None:
        """Accumulation steps, optimizer and schedule; ``self.model``: ``model`` prepared by accelerate
        (DDP) or sharded first (FSDP), then compiled if asked."""
        t, acc = self.config.training, self.accelerator
        world = acc.num_processes
        if t.batch_size % (t.micro_batch_size * world):
            raise TrainingError(
                f"training.batch_size {t.batch_size} is not a multiple of micro_batch_size "
                f"{t.micro_batch_size} x {world} processes"
            )
        self.accum = t.batch_size // (t.micro_batch_size * world)
        self.total_steps = total_steps(self.config)
        if not self.fsdp:
            optimizer = make_optimizer(model, t, acc.device)
            scheduler = make_schedule(optimizer, t, self.total_steps)
            self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        else:
            # Sharded before the optimizer is built, so its state is sharded too; accelerate then
            # keeps only the scheduler and RNG (its DDP wrapping and optimizer state saving would not fit).
            parallel.shard(model.to(acc.device), self.lm)
            self.model, self.optimizer = model, make_optimizer(model, t, acc.device)
            self.scheduler = acc.prepare(make_schedule(self.optimizer, t, self.total_steps))
        if t.compile:
            self.model = torch.compile(self.model)

    # --- the loop -----------------------------------------------------------------------------
    def train(self) -> dict:
        """Train to the last step; returns the last logged metrics (on other ranks: {})."""
        try:
            return self._train()
        finally:
            self.release()

    def _due(self, done: int) -> _Due:
        """What the loop does once ``done`` steps are complete (a checkpoint never follows an
        unchecked loss: a step any of these follow has its metrics read as soon as it is queued)."""
        t, last = self.config.training, done == self.total_steps
        return _Due(
            log=done % t.log_every == 0 or last,
            evaluate=bool(self.evaluate is not None and t.eval_every and done % t.eval_every == 0),
            save=done % t.save_every == 0 or last,
            export=done in t.export_steps and not last,
        )

    def _train(self) -> dict:
        """The loop: a step (:meth:`_step`), then as due after it: log its metrics, evaluate
        (main process), save a resumable checkpoint, export an HF copy. Ends with the HF checkpoint."""
        acc = self.accelerator
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(self.config))
        last: dict = {}
        self.model.train()
        with RunLog(
            self.config, acc, step=self.step, total_steps=self.total_steps, flops_per_token=self.flops_per_token
        ) as log:
            while self.step < self.total_steps:
                due = self._due(self.step + 1)
                metrics = self._step(self.step, read=any(due))
                self.step += 1
                if due.log:
                    assert metrics is not None  # read=True above: this step's metrics were read
                    last = log.write(self.step, self.scheduler.get_last_lr()[0], metrics)
                log.advance()
                if due.evaluate and acc.is_main_process and self.evaluate is not None:
                    log.write_eval(self.step, self.evaluate(self, self.step))
                if due.save:
                    self.checkpoints.save(self.step, self.model, self.optimizer)
                if due.export:
                    self.save_final(self.run_dir / f"step-{self.step}")
        if self._prefetch is not None:
            self._prefetch.close()
        self.save_final()
        return last if acc.is_main_process else {}

    def _step(self, step: int, *, read: bool = True) -> dict[str, float] | None:
        """One optimizer step, top to bottom: fetch its micro-batches; forward, loss and backward
        on each (gradients accumulate, and are exchanged across ranks in the last one's backward);
        clip; update; then read metrics.

        Only a read waits for the device. The step reads the metrics of the step queued before it,
        if still unread, and with ``read`` its own (returned; else None: they wait for the next
        call). So a step that leaves its metrics unread returns as soon as its kernels are queued,
        and the host queues step s+1 while the device runs step s. A NaN loss raises when its step is
        read, at the latest one step later; ``train`` reads every step it logs, evaluates or saves
        after (:meth:`_due`), so no checkpoint holds one."""
        acc, device, t = self.accelerator, self.accelerator.device, self.config.training
        batches = self._next_batches(step)  # fetch
        # Every target counts (packed blocks have no padding); the sum is still reduced across ranks
        # so that masks, if a transform ever adds them, keep the normalisation global. Steps have one
        # shape, so it is built once: copying a host number to a GPU waits for the queued kernels.
        if self._num_tokens is None:
            local = sum(b["labels"].numel() for b in batches)
            self._num_tokens = acc.reduce(torch.tensor(float(local), device=device), reduction="sum")
        totals: dict[str, torch.Tensor] = {}
        for k, batch in enumerate(batches):
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            with self._gradient_sync(k == len(batches) - 1):  # forward, loss, backward: gradients add up
                with acc.autocast():
                    logp, values = self.model(batch["input_ids"], batch["labels"])
                inputs = LossInputs(
                    logp=logp,
                    scores=batch["scores"],
                    mask=torch.ones_like(batch["labels"], dtype=torch.bool),
                    values=values.float() if values is not None else None,
                    num_tokens=self._num_tokens,
                )
                loss, metrics = self.objective(inputs)
                acc.backward(loss * acc.num_processes)  # x W: DDP averages gradients over ranks
            text = ~batch["is_control"]
            nll_text = (-logp.detach().float() * text).sum()
            for name, value in {"loss": loss, **metrics, "nll_text_sum": nll_text, "text_tokens": text.sum()}.items():
                totals[name] = totals.get(name, 0) + value.detach().float()
        # clip, update
        clip = parallel.clip_grad_norm if self.fsdp else acc.clip_grad_norm_
        grad_norm = (
            clip(self.model.parameters(), t.grad_clip)
            if t.grad_clip > 0
            else torch.full((), float("nan"), device=device)
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        queued = QueuedMetrics.summed(step, totals, grad_norm, acc)
        # The step's kernels are all queued: the next step's batches are built now, on the prefetch
        # thread, while this thread waits in a read with the GIL released. Started at the top of the
        # step, the build (milliseconds of Python and numpy) competed for the GIL with this thread
        # launching the first kernels into the queue the last read had emptied, and slowed the
        # objectives whose build is longest (conditional; docs/benchmarks.md).
        if self._prefetch is not None and step + 1 < self.total_steps:
            self._prefetch.start(step + 1)
        previous, self._unread = self._unread, None if read else queued
        if previous is not None:
            previous.read()  # waits for the previous step only: this one keeps the device busy
        return queued.read() if read else None

    def _next_batches(self, step: int) -> list[dict]:
        """This step's micro-batches: prefetched during the last step, or built now."""
        if self._prefetch is None:
            return self._micro_batches(step)
        return self._prefetch.get(step)

    def _micro_batches(self, step: int) -> list[dict]:
        t = self.config.training
        indices = step_sample_indices(
            step, t.batch_size, t.micro_batch_size, self.accum, self.accelerator.process_index
        )
        return [collate([self.stream[i] for i in micro]) for micro in indices]

    def _gradient_sync(self, sync: bool) -> AbstractContextManager:
        """Ranks exchange gradients in this backward only if ``sync`` (a step's last micro-batch)."""
        if self.fsdp:
            return parallel.gradient_sync(self.model, sync)
        return nullcontext() if sync else self.accelerator.no_sync(self.model)

    # --- the final checkpoint -----------------------------------------------------------------
    def save_final(self, out: Path | None = None) -> None:
        """The HF checkpoint (+ phf.json, trainer_state.json, config.yaml) in ``out`` (default: the
        run directory). A copy at an intermediate step can start a finetuning run that continues
        the stream from there (``model.init`` + ``data.continue_from``). Every rank calls it."""
        from phf.training.run_info import ConditionalInfo, RunInfo

        policy = self.accelerator.unwrap_model(self.model)
        policy = getattr(policy, "_orig_mod", policy)
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
        self.checkpoints.export(Path(out or self.run_dir), self.step, policy, self.tokenizer, info)


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute where it names a local file or directory (a hub name stays as given)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def train(config: TrainConfig, *, resume: bool = False, evaluate=None) -> dict:
    """Train as configured; returns the last logged metrics."""
    return Trainer(config, resume=resume, evaluate=evaluate).train()
