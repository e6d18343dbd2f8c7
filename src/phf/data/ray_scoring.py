"""``--engine ray`` for ``phf score``: the shards of a corpus scored on a Ray cluster.

Scoring keeps the local engine's unit of work and commit protocol (phf.data.score_corpus): a shard is a
fixed range of input records, committed by ``shards/NNNNN.json`` once its Parquet file is in place.
Ray Data maps the shards still to do over a pool of actors that each build the scorer once and run
``score_shard``, which reads the shard's records with phf.data.readers. So bad records and their
locations, the schema, resume, the manifest and issues.jsonl are the local engine's, byte for byte.
Ray's actor fault tolerance reruns a shard whose worker died; the marker makes that rerun (or a
rerun of the whole command after the driver died) neither lose nor duplicate a document.

Ray itself (connecting, the shared-filesystem requirement) is phf.io.ray's.
"""

from __future__ import annotations

import json

from phf.data.score_corpus import Job, ScoringError, score_shard
from phf.data.scoring import get_scorer
from phf.data.scoring.base import Scorer
from phf.io.ray import connected


def _wants_gpu(scorer: Scorer) -> bool:
    # hf, detoxify and the judge take device=cuda; inside the actor Ray makes its GPU "cuda".
    return str(getattr(scorer, "device", "cpu")).startswith("cuda")


class _ShardScorer:
    """A Ray Data actor: builds the scorer once, then scores whole shards (one per call)."""

    def __init__(self, job: Job):
        self.job = job
        self.scorer = get_scorer(job.scorer, **job.scorer_options)

    def __call__(self, batch: dict) -> dict:
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
        pool = ray.data.ActorPoolStrategy(
            min_size=1,
            max_size=len(shards),
            initial_size=max(1, min(fits, len(shards))),
            max_tasks_in_flight_per_actor=1,
        )
        scored = dataset.map_batches(
            _ShardScorer,
            fn_constructor_kwargs={"job": job},
            batch_size=1,
            compute=pool,
            num_cpus=1,
            num_gpus=1 if gpu else 0,
        )
        done = []
        for row in scored.iter_rows():
            if row["error"]:
                raise ScoringError(row["error"])
            stats = json.loads(row["stats"])
            advance(stats["documents_read"])
            done.append(stats)
    return done
