"""The run log: ``metrics.jsonl`` (always, written by the main process), TensorBoard / W&B through
accelerate's trackers (when asked), the progress bar, throughput and MFU; and a step's metrics,
queued on the device until the loop reads them."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO

import torch

from phf.config import TrainConfig
from phf.io.atomic import write_text_atomic
from phf.training.errors import TrainingError
from phf.training.hardware import peak_flops

METRICS_FILE = "metrics.jsonl"


class QueuedMetrics:
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

    @classmethod
    def summed(cls, step: int, totals: dict[str, torch.Tensor], grad_norm: torch.Tensor, accelerator) -> QueuedMetrics:
        """A step's per-rank sums (over its micro-batches), summed over ranks, and its gradient norm."""
        names = sorted(totals)
        reduced = accelerator.reduce(torch.stack([totals[n] for n in names]).to(accelerator.device), reduction="sum")
        return cls(step, names, torch.cat([reduced, grad_norm.reshape(1).to(reduced)]))

    def values(self) -> list[float]:
        if self._done is not None:
            self._done.synchronize()
        return self._values.tolist()

    def read(self) -> dict[str, float]:
        """The step's metrics by name; a loss that is not finite stops training here."""
        values = self.values()
        out = dict(zip(self.names, values))
        out["lm_loss_text"] = out.pop("nll_text_sum") / max(out.pop("text_tokens"), 1.0)
        out["grad_norm"] = values[-1]
        if not math.isfinite(out["loss"]):
            raise TrainingError(
                f"loss is {out['loss']} at step {self.step + 1}; no checkpoint was written for it. "
                "Lower training.lr, check the scores in data.path, or resume from the last checkpoint"
            )
        return out


def flops_per_token(model, seq_len: int) -> float:
    """6N for the parameter matmuls plus attention (PaLM's estimate), for MFU."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    layers = getattr(cfg, "num_hidden_layers", 0)
    hidden = getattr(cfg, "hidden_size", 0)
    return 6 * n + 12 * layers * hidden * seq_len


def trackers(cfg) -> list[str]:
    """TensorBoard / W&B through accelerate's trackers, checked up front: a missing package is an
    error before training, not a surprise at the first log line."""
    import importlib.util

    wanted = [(cfg.tensorboard, "tensorboard", "tensorboard"), (cfg.wandb, "wandb", "wandb")]
    for asked, name, package in wanted:
        if asked and importlib.util.find_spec(package) is None:
            raise TrainingError(f"logging.{name}=true needs the {package} package: pip install {package}")
    return [name for asked, name, _ in wanted if asked]


class RunLog:
    """What a run reports while it trains, from step ``step`` on (after a resume: the checkpoint's).

    A context manager: entering truncates ``metrics.jsonl`` to the steps the checkpoint holds (a
    killed run's later lines are about to be redone) and opens it, starts the trackers and the
    progress bar; leaving closes them. Every step moves the bar (:meth:`advance`); the loop
    writes the steps it logs (:meth:`write`) and the periodic evaluations (:meth:`write_eval`)."""

    def __init__(self, config: TrainConfig, accelerator, *, step: int, total_steps: int, flops_per_token: float):
        self.config, self.accelerator, self.flops_per_token = config, accelerator, flops_per_token
        self.path = Path(config.output_dir) / METRICS_FILE
        self.step, self.total_steps = step, total_steps
        self.tokens_per_step = config.training.batch_size * config.data.seq_len
        self.peak = peak_flops(accelerator.device)
        self._file: IO[str] | None = None

    def __enter__(self) -> RunLog:
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            _truncate_metrics(self.path, self.step)
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            desc=f"train {cfg.objective.name}",
            disable=not (acc.is_main_process and cfg.logging.progress),
        )
        self._window = (time.perf_counter(), self.step)  # throughput since the last logged step
        # Wall time of this run, carried over a resume so reports show the whole cost.
        self._elapsed_before = _last_logged(self.path, "elapsed_s") if acc.is_main_process else 0.0
        self._started = time.perf_counter()
        if acc.log_with:
            acc.init_trackers(
                cfg.logging.wandb_project,
                config=_scalars(asdict(cfg)),
                init_kwargs={"wandb": {"name": Path(cfg.output_dir).name}} if cfg.logging.wandb else None,
            )
        if acc.is_main_process:
            self._file = open(self.path, "a", encoding="utf-8")  # closed in __exit__
        return self

    def write(self, step: int, lr: float, metrics: dict[str, float]) -> dict:
        """Log step ``step``'s metrics (with throughput and MFU since the last logged step); returns the record."""
        window_start, window_step = self._window
        tok_s = (step - window_step) * self.tokens_per_step / (time.perf_counter() - window_start)
        record = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "samples": step * self.config.training.batch_size,
            "elapsed_s": round(self._elapsed_before + time.perf_counter() - self._started, 3),
            "lr": lr,
            **metrics,
            "tok_s": tok_s,
            "mfu": tok_s * self.flops_per_token / (self.peak * self.accelerator.num_processes) if self.peak else None,
        }
        self._append(record)
        if self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)
        postfix = {"loss": f"{metrics['loss']:.3f}", "tok_s": f"{tok_s:,.0f}"}
        if record["mfu"]:
            postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
        self.bar.set_postfix(postfix)
        self._window = (time.perf_counter(), step)
        return record

    def write_eval(self, step: int, result: dict) -> None:
        """Log a periodic evaluation's result (nothing if empty)."""
        if result:
            self._append({"step": step, "tokens": step * self.tokens_per_step, "eval": result})

    def advance(self) -> None:
        """One more step done."""
        self.bar.update(1)

    def _append(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def __exit__(self, exc_type, *exc) -> None:
        if self._file is not None:
            self._file.close()
        self.bar.close()
        if exc_type is None and self.accelerator.trackers:
            self.accelerator.end_training()


def _scalars(values: dict, prefix: str = "") -> dict:
    """Flatten a nested dict to the scalar entries trackers accept."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            out[f"{prefix}{key}"] = value
    return out


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
