"""A run's checkpoints: resumable ones under ``checkpoints/step-NNNNNNN`` and exported HF ones.

The loop sees five methods of :class:`CheckpointManager` (torchtitan's shape): ``save`` (atomic:
written to ``.tmp-step-NNNNNNN``, renamed once ``trainer_state.json``, the commit point, is in),
``latest`` (the newest intact one), ``load``, ``prune`` (all but the newest
``training.keep_checkpoints``) and ``export`` (a plain HF directory that samples without phf).

A resumable checkpoint holds accelerate's state (model, optimizer, scheduler, RNG; under FSDP the
sharded model and optimizer in ``sharded/``) and ``trainer_state.json``: the step, samples and
tokens done, the checkpoint format, phf's version, and every file's size and sha256, so a damaged
checkpoint is recognised before it is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from phf._version import __version__
from phf.config import TrainConfig, to_yaml
from phf.io.integrity import directory_damage, directory_records
from phf.training import parallel
from phf.training.errors import TrainingError

if TYPE_CHECKING:
    from phf.training.run_info import RunInfo

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
# Bumped when a checkpoint's layout changes; a checkpoint of another format is refused, not guessed at.
# 1: trainer_state.json records phf's version and every file's size and sha256.
CHECKPOINT_FORMAT = 1


def saved_checkpoints(run_dir: Path) -> list[Path]:
    """A run's complete resumable checkpoints (those with a state file), oldest first."""
    root = run_dir / CHECKPOINTS
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).exists()] if root.exists() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that is intact; damaged newer ones are skipped with a warning."""
    for checkpoint in reversed(saved_checkpoints(run_dir)):
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


class CheckpointManager:
    """Saves, finds, loads, prunes and exports the checkpoints of the run ``config`` describes."""

    def __init__(self, config: TrainConfig, accelerator, *, fsdp: bool):
        self.config, self.accelerator, self.fsdp = config, accelerator, fsdp
        self.run_dir = Path(config.output_dir)
        self.root = self.run_dir / CHECKPOINTS

    def _progress(self, step: int) -> dict[str, int]:
        """Steps, samples and tokens done after ``step`` steps (the head of every trainer_state.json)."""
        t = self.config.training
        return {"step": step, "samples": step * t.batch_size, "tokens": step * t.batch_size * self.config.data.seq_len}

    def latest(self) -> Path | None:
        """The checkpoint to resume from: the newest intact one (see :func:`latest_checkpoint`)."""
        return latest_checkpoint(self.run_dir)

    def save(self, step: int, model, optimizer) -> None:
        """A resumable checkpoint of step ``step``, atomically; then :meth:`prune`. Every rank calls it."""
        acc = self.accelerator
        final, tmp = self.root / f"step-{step:07d}", self.root / f".tmp-step-{step:07d}"
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
                parallel.save_sharded(model, optimizer, tmp)
            acc.wait_for_everyone()
            if acc.is_main_process:
                state = {
                    **self._progress(step),
                    "format": CHECKPOINT_FORMAT,
                    "phf_version": __version__,
                    "files": directory_records(tmp),
                }
                (tmp / STATE_FILE).write_text(json.dumps(state))
        # A full disk or a read-only mount (torch.save reports a failed write as a RuntimeError): keep
        # the last checkpoint, and say so.
        except (OSError, RuntimeError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            last = saved_checkpoints(self.run_dir)
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise TrainingError(
                f"cannot write checkpoint step {step} to {self.root}: {reason}; "
                f"the last checkpoint ({last[-1].name if last else 'none'}) is intact: "
                "free space and rerun with --resume"
            ) from exc
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self.prune()
        acc.wait_for_everyone()

    def load(self, checkpoint: Path, model, optimizer) -> int:
        """Restore model, optimizer, scheduler and RNG from ``checkpoint``; returns its step."""
        self.accelerator.load_state(str(checkpoint))
        if self.fsdp:
            parallel.load_sharded(model, optimizer, checkpoint)
        return json.loads((checkpoint / STATE_FILE).read_text())["step"]

    def prune(self) -> None:
        """Delete all but the newest ``training.keep_checkpoints`` checkpoints (main process)."""
        for old in saved_checkpoints(self.run_dir)[: -self.config.training.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def remove_unfinished(self) -> None:
        """Delete checkpoints a killed run left half-written (only the process that owns the run may)."""
        for stale in self.root.glob(".tmp-step-*"):
            shutil.rmtree(stale)

    def export(self, out: Path, step: int, policy, tokenizer, info: RunInfo) -> None:
        """The HF checkpoint of ``policy`` (+ value_head.pt, phf.json from ``info``, trainer_state.json
        and, outside the run directory, config.yaml) in ``out``. Every rank calls it: under FSDP all
        take part in gathering the full state dict onto the main process, which writes."""
        from phf.training.model import save_checkpoint

        self.accelerator.wait_for_everyone()
        full = parallel.full_state_dict(policy) if self.fsdp else None
        if not self.accelerator.is_main_process:
            return
        lm_state = head_state = None
        if full is not None:
            lm_state = {k.removeprefix("lm."): v for k, v in full.items() if k.startswith("lm.")}
            for name in parallel.tied_copies(policy.lm):  # as save_pretrained drops them from its own
                lm_state.pop(name, None)
            head_state = {k.removeprefix("value_head."): v for k, v in full.items() if k.startswith("value_head.")}
        save_checkpoint(policy.lm, tokenizer, out, phf_info=info, state_dict=lm_state)
        if policy.value_head is not None:
            torch.save(head_state or policy.value_head.state_dict(), out / "value_head.pt")
        if out != self.run_dir:
            (out / "config.yaml").write_text(to_yaml(self.config))
        (out / STATE_FILE).write_text(json.dumps(self._progress(step)))
