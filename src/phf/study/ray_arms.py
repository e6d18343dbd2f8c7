"""``--engine ray`` for ``phf experiment``: a study's arms run as Ray tasks.

Each arm (train, eval, red team) is one Ray task: one GPU per arm when the cluster has GPUs, else a
whole node's CPUs (a CPU training run uses every core). Every other arm of a seed takes its mle
arm's result as an argument, so Ray starts it only after the MLE run exists: that run is their KL
reference (and the finetune arms' starting point). The scoring before the arms runs on Ray too
(phf.data.ray_scoring); Ray itself (connecting, the shared-filesystem requirement) is phf.io.ray's.
"""

from __future__ import annotations

import os
from typing import Any

from phf.io.ray import connected
from phf.study.experiment import Arm, ExperimentError, StudyConfig, arm_label, run_arm


def _arm_resources(ray) -> dict:
    if ray.cluster_resources().get("GPU", 0) > 0:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": max(node["Resources"].get("CPU", 1) for node in ray.nodes() if node["Alive"])}


def _run_arm_task(cwd: str, study: StudyConfig, arm: Arm, arms: list[Arm], after=None) -> str:
    """One arm in a Ray worker; ``after`` (the mle arm's result) only orders the tasks."""
    os.chdir(cwd)  # the study's relative paths (preset, out) name the same shared directory everywhere
    run_arm(study, arm, arms)
    return str(arm.run_dir)


def run_arms(study: StudyConfig, arms_run: list[Arm], arms: list[Arm], address: str | None = None) -> None:
    """Run ``arms_run`` as Ray tasks and wait for all of them; finished stages are skipped inside."""
    with connected(address) as ray:
        task = ray.remote(_run_arm_task).options(**_arm_resources(ray))
        cwd = os.getcwd()
        labels: dict[Any, str] = {}  # Ray object ref -> arm
        mle: dict[tuple[str, int], Any] = {}  # (task, seed) -> the ref of its MLE arm
        for arm in sorted(arms_run, key=lambda a: a.name != "mle"):  # each mle before the arms that wait for it
            after = mle.get((arm.task, arm.seed)) if arm.name != "mle" else None
            ref = task.remote(cwd, study, arm, arms, after)
            labels[ref] = arm_label(arm)
            if arm.name == "mle":
                mle[(arm.task, arm.seed)] = ref
        pending = list(labels)
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise ExperimentError(f"arm {labels[ref]} failed on Ray: {exc}") from None
            print(f"[ray] arm {labels[ref]} done ({len(labels) - len(pending)}/{len(labels)})", flush=True)
