"""A study's arms in parallel processes on this machine: one per GPU, or each on a share of the cores.

Each arm runs as ``phf experiment STUDY --only TASK/seedS/ARM`` in its own process (its output in
``<out>/logs/``), so a crash in one arm names its log and leaves the others' finished work in place.
An arm starts once its seed's ``mle`` arm has finished: the MLE run is every other arm's KL
reference and the finetune arms' starting point, so evaluating before it exists would silently
drop KL. On CPU, ``--workers N`` splits the cores phf may use into N equal shares, pins each
worker process to one share and sets its thread count to the share's size: small models gain more
from N one-thread processes than from one process with N threads (``make paper``: two workers on
two cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from phf.study.experiment import Arm, ExperimentError, StudyConfig, arm_finished, arm_label

POLL_S = 1.0


@dataclass
class Slot:
    """Where one arm process runs: a GPU, or a share of this machine's cores."""

    label: str
    env: dict[str, str]
    cores: list[int] | None = None  # pin the process to these cores (Linux)


def gpu_devices(study: StudyConfig) -> list[str]:
    """The study's ``devices``, else every visible GPU."""
    if study.devices:
        return list(study.devices)
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def gpu_slots(devices: list[str]) -> list[Slot]:
    return [Slot(device, {"CUDA_VISIBLE_DEVICES": device.split(":")[-1]}) for device in devices]


def usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_slots(workers: int, cores: list[int] | None = None) -> list[Slot]:
    """``workers`` equal shares of ``cores`` (default: the cores this process may use), in order."""
    cores = usable_cores() if cores is None else cores
    if not 1 <= workers <= len(cores):
        raise ExperimentError(
            f"--workers {workers}: choose 1 to {len(cores)} (one worker needs at least one of the "
            f"{len(cores)} cores phf may use here)"
        )
    size, extra = divmod(len(cores), workers)
    slots, start = [], 0
    for i in range(workers):
        share = cores[start : start + size + (i < extra)]
        start += len(share)
        threads = str(len(share))
        label = f"core {share[0]}" if len(share) == 1 else f"cores {share[0]}-{share[-1]}"
        # No GPU for a CPU worker, even where one is visible but the study runs on CPU workers.
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": ""}
        slots.append(Slot(label, env, share))
    return slots


def _pin(cores: list[int] | None):
    if cores is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, cores)


def _start(study_path: str, overrides: list[str], arm: Arm, slot: Slot, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "phf.cli", "experiment", study_path, *overrides]
    cmd += [f"--only={arm_label(arm)}", "--no-report", "--quiet"]  # bars of several processes garble one terminal
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        return subprocess.Popen(
            cmd,
            env={**os.environ, **slot.env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin(slot.cores),
        )


def run_parallel(
    study: StudyConfig, study_path: str, overrides: list[str], arms: list[Arm], slots: list[Slot], out: Path
) -> None:
    """Run the unfinished ``arms``, at most one per slot at a time; raise naming every arm that failed.

    After a failure no new arm starts; the running ones finish (their work is kept for a rerun).
    """
    queue = sorted((a for a in arms if not arm_finished(study, a)), key=lambda a: a.name != "mle")
    total, finished = len(queue), 0
    failed: list[str] = []
    running: dict[subprocess.Popen, tuple[Arm, Slot, float, Path]] = {}
    durations: list[float] = []
    started = time.perf_counter()

    def waits_for_mle(arm: Arm) -> bool:
        mles = [a for a in queue + [entry[0] for entry in running.values()] if a.name == "mle"]
        return arm.name != "mle" and any((a.task, a.seed) == (arm.task, arm.seed) for a in mles)

    where = ", ".join(s.label for s in slots)
    print(f"\n{total} arm(s) to run, {len(slots)} at a time ({where}); their output in {out / 'logs'}", flush=True)
    free = list(slots)
    try:
        while queue or running:
            while not failed and free and (ready := [a for a in queue if not waits_for_mle(a)]):
                arm, slot = ready[0], free.pop(0)
                queue.remove(arm)
                log = out / "logs" / f"{arm_label(arm).replace('/', '-')}.log"
                running[_start(study_path, overrides, arm, slot, log)] = (arm, slot, time.perf_counter(), log)
                print(f"[{arm_label(arm)}] started on {slot.label}", flush=True)
            if failed and not running:
                break
            time.sleep(POLL_S)
            for proc in [p for p in running if p.poll() is not None]:
                arm, slot, began, log = running.pop(proc)
                free.append(slot)
                if proc.returncode:
                    failed.append(f"{arm_label(arm)} (exit {proc.returncode}; see {log})")
                    print(f"[{arm_label(arm)}] FAILED (exit {proc.returncode}); see {log}", flush=True)
                    continue
                finished += 1
                durations.append(time.perf_counter() - began)
                left = (total - finished) * (sum(durations) / len(durations)) / len(slots)
                print(
                    f"[{arm_label(arm)}] done in {durations[-1] / 60:.1f} min ({finished}/{total}; "
                    f"{(time.perf_counter() - started) / 60:.1f} min so far, about {left / 60:.0f} min left)",
                    flush=True,
                )
    finally:
        for proc in running:  # an interrupt of this process: its workers stop with it
            proc.terminate()
    if failed:
        skipped = f"; {len(queue)} arm(s) not started (rerun to continue)" if queue else ""
        raise ExperimentError(f"{len(failed)} arm(s) failed: {'; '.join(failed)}{skipped}")
