"""``--engine ray``: corpus scoring and studies spread over a Ray cluster.

Scoring keeps the local engine's unit of work and commit protocol (phf.data.score_corpus): a shard is a
fixed range of input records, committed by ``shards/NNNNN.json`` once its Parquet file is in place.
Ray Data maps the shards still to do over a pool of actors that each build the scorer once and run
``score_shard``, which reads the shard's records with phf.data.readers. So bad records and their
locations, the schema, resume, the manifest and issues.jsonl are the local engine's, byte for byte.
Ray's actor fault tolerance reruns a shard whose worker died; the marker makes that rerun (or a
rerun of the whole command after the driver died) neither lose nor duplicate a document.

A study runs each arm (train, eval, red team) as one Ray task: one GPU per arm when the cluster has
GPUs, else a whole node's CPUs (a CPU training run uses every core). Finetune arms take their mle
arm's result as an argument, so Ray starts them only after it.

Every node must see the same paths (input, ``--out``, the study directory: a shared filesystem)
and have phf and any user scorer module installed. Ray is imported lazily: phf works without it.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING

from phf.errors import PhfError

if TYPE_CHECKING:
    from phf.data.score_corpus import Job
    from phf.data.scoring.base import Scorer
    from phf.study import Arm, StudyConfig

# The local instance moves only shard statistics through its object store (workers write Parquet
# straight to --out), so it needs far less than Ray's default of 30% of memory.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


class RayEngineError(PhfError, RuntimeError):
    """Ray is not installed, or no Ray cluster answers at the address given."""


def require_ray():
    """The ``ray`` module, or a one-line error telling how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - ray without the [data] extra lacks it
    except ImportError:
        raise RayEngineError("--engine ray needs Ray: pip install 'phf[ray]'") from None
    return ray


@contextmanager
def connected(address: str | None = None):
    """Ray, connected to ``address`` or to a new local instance; a session the caller already
    opened with ``ray.init`` is reused and left open."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise RayEngineError(f"--ray-address {address}: no Ray cluster answers there ({exc})") from None
    else:
        # address="local": start our own instance even if `ray start` runs on this machine.
        ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def _wants_gpu(scorer: Scorer) -> bool:
    # hf, detoxify and the judge take device=cuda; inside the actor Ray makes its GPU "cuda".
    return str(getattr(scorer, "device", "cpu")).startswith("cuda")


class _ShardScorer:
    """A Ray Data actor: builds the scorer once, then scores whole shards (one per call)."""

    def __init__(self, job: Job):
        from phf.data.scoring import get_scorer

        self.job = job
        self.scorer = get_scorer(job.scorer, **job.scorer_options)

    def __call__(self, batch: dict) -> dict:
        from phf.data.score_corpus import ScoringError, score_shard

        stats, errors = [], []
        for shard in batch["shard"]:
            try:
                stats.append(json.dumps(score_shard(self.job, int(shard), self.scorer)))
                errors.append("")
            except ScoringError as exc:
                # Returned, not raised: Ray Data would replace the message with its own.
                stats.append("")
                errors.append(str(exc))
        return {"stats": stats, "error": errors}


def score_shards(job: Job, shards: list[int], scorer: Scorer, advance, address: str | None = None) -> list[dict]:
    """Score ``shards`` of ``job`` on Ray; returns each shard's statistics (its marker's content).

    ``advance(n)`` is called with the documents of every finished shard (the progress bar)."""
    from phf.data.score_corpus import ScoringError

    if not shards:
        return []
    with connected(address) as ray:
        ray.data.DataContext.get_current().enable_progress_bars = False  # phf's bar counts documents
        gpu = _wants_gpu(scorer)
        # One block per shard, one shard per call: a retry after a worker dies redoes one shard.
        dataset = ray.data.from_items([{"shard": i} for i in shards], override_num_blocks=len(shards))
        # As many actors as the cluster holds now (it may grow), each given one shard at a time: a
        # shard is seconds of work or more, so queueing one behind a busy actor costs more than the
        # dispatch latency it saves.
        fits = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1))
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=len(shards), initial_size=max(1, min(fits, len(shards))),
                                          max_tasks_in_flight_per_actor=1)
        scored = dataset.map_batches(_ShardScorer, fn_constructor_kwargs={"job": job}, batch_size=1, compute=pool,
                                     num_cpus=1, num_gpus=1 if gpu else 0)
        done = []
        for row in scored.iter_rows():
            if row["error"]:
                raise ScoringError(row["error"])
            stats = json.loads(row["stats"])
            advance(stats["documents_read"])
            done.append(stats)
    return done


# ---------------------------------------------------------------------------------------------
# Studies


def _arm_resources(ray) -> dict:
    if ray.cluster_resources().get("GPU", 0) > 0:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": max(node["Resources"].get("CPU", 1) for node in ray.nodes() if node["Alive"])}


def _run_arm_task(cwd: str, study: StudyConfig, arm: Arm, arms: list[Arm], after=None) -> str:
    """One arm in a Ray worker; ``after`` (the mle arm's result) only orders the tasks."""
    from phf.study import run_arm

    os.chdir(cwd)  # the study's relative paths (preset, out) name the same shared directory everywhere
    run_arm(study, arm, arms)
    return str(arm.run_dir)


def run_arms(study: StudyConfig, arms_run: list[Arm], arms: list[Arm], address: str | None = None) -> None:
    """Run ``arms_run`` as Ray tasks and wait for all of them; finished stages are skipped inside."""
    from phf.study import ExperimentError

    with connected(address) as ray:
        task = ray.remote(_run_arm_task).options(**_arm_resources(ray))
        cwd, labels, mle = os.getcwd(), {}, {}
        for arm in sorted(arms_run, key=lambda a: a.name.startswith("finetune-")):  # each mle before its finetunes
            after = mle.get((arm.task, arm.seed)) if arm.name.startswith("finetune-") else None
            ref = task.remote(cwd, study, arm, arms, after)
            labels[ref] = f"{arm.task}/seed{arm.seed}/{arm.name}"
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
