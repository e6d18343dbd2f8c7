"""Corpus scoring: documents -> lossless segments -> scores -> Parquet shards in the paper's schema.

Layout of an output directory::

    plan.json                         what is being scored and how it is cut into shards
    data/train-00003-of-00012.parquet one shard: texts, scores, avg_score, num_sents, meta, doc_index
    shards/00003.json                 the shard's counts, issues and timing; written *after* its Parquet
    manifest.json                     the whole run, written once every shard is done
    issues.jsonl                      every reported record or scorer error, with its location

A shard is a fixed range of input records, so any process (``--num-proc``), any job of an array
(``--shard i/N``) or any Ray actor (``--engine ray``, phf.data.ray_scoring) can score it alone, and
a shard whose ``shards/*.json`` exists is never redone: killing a run loses at most the shards in
flight, and rerunning neither duplicates nor loses a document.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from phf._version import __version__
from phf.data.readers import SCORED_ISSUES, JsonlSource, Record, open_source
from phf.data.scoring import get_scorer, hit_threshold
from phf.data.scoring.base import Scorer
from phf.data.segment import get_segmenter
from phf.errors import PhfError
from phf.io.atomic import atomic_path, write_text_atomic
from phf.io.integrity import damage, file_record, remove_stale_temps
from phf.io.run_lock import LOCK_FILE, RunLock

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

SCHEMA_COLUMNS = ["texts", "scores", "avg_score", "num_sents", "meta", "doc_index"]
ENGINES = ("local", "ray")  # where the shards run: this machine's processes, or a Ray cluster
ISSUE_EXAMPLES = 20  # per kind, in the manifest; the full list is in issues.jsonl
# What each shard marker counts, summed into the manifest.
SHARD_COUNTS = (
    "documents_read",
    "documents_scored",
    "documents_skipped",
    "segments",
    "segments_misaligned",
    "characters",
)


class ScoringError(PhfError, RuntimeError):
    """A problem that stops a scoring run (bad arguments, a mismatched output dir, --strict)."""


@dataclass(frozen=True)
class Job:
    """Everything a worker needs, picklable for spawned processes."""

    input: str
    text_field: str
    split: str
    scorer: str
    scorer_options: dict
    out: str
    shard_size: int
    num_shards: int
    num_records: int
    strict: bool
    batch_docs: int
    offsets: tuple[int, ...] | None = None  # byte offset of each shard's first record (plain JSONL)
    hit_threshold: float | None = None  # --hit-threshold; None: the scorer's (phf.data.scoring.hit_threshold)


def auto_shard_size(num_records: int) -> int:
    """About 64 shards for small corpora (enough to keep every process busy), at most 1000
    documents per shard for large ones. A function of the corpus alone, never of --num-proc, so
    every job of an array and every resumed run agree on the layout."""
    return min(1000, max(16, math.ceil(num_records / 64)))


def parse_shard(spec: str | None) -> tuple[int, int]:
    if not spec:
        return 0, 1
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ScoringError(f"--shard {spec!r} must look like i/N, e.g. 3/16") from None
    if count < 1 or not 0 <= index < count:
        raise ScoringError(f"--shard {spec!r}: need 0 <= i < N")
    return index, count


def _shard_parquet(out: Path, shard: int, num_shards: int) -> Path:
    # HF's split naming, so `datasets.load_dataset(out)` finds a "train" split with no arguments.
    return out / "data" / f"train-{shard:05d}-of-{num_shards:05d}.parquet"


def _shard_marker(out: Path, shard: int) -> Path:
    return out / "shards" / f"{shard:05d}.json"


def _shard_done(out: Path, shard: int) -> bool:
    """Whether the shard has its marker and its Parquet file is the one the marker describes.
    A damaged shard (cut short, garbled, written by a phf that recorded no checksum) is scored
    again, with a warning."""
    marker = _shard_marker(out, shard)
    if not marker.exists():
        return False
    try:
        stats = json.loads(marker.read_text())
        problem = damage(out / stats["file"], stats.get("parquet"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"its marker {marker.name} is unreadable ({type(exc).__name__})"
    if problem:
        warnings.warn(f"{out}: shard {shard}: {problem}; scoring it again", stacklevel=3)
    return problem is None


# ---------------------------------------------------------------------------------------------
# Scoring one shard (runs in a worker process or in the main one)

_WORKER_SCORER: Scorer | None = None


def _init_worker(job: Job, counter: Synchronized[int]) -> None:
    global _WORKER_SCORER, _WORKER_COUNTER
    _WORKER_SCORER = get_scorer(job.scorer, **job.scorer_options)
    _WORKER_COUNTER = counter


_WORKER_COUNTER: Synchronized[int] | None = None


def _worker_run(args: tuple[Job, int]) -> dict:
    job, shard = args
    counter, scorer = _WORKER_COUNTER, _WORKER_SCORER
    # Both are set by _init_worker, the initializer of every pool process that runs this.
    assert counter is not None and scorer is not None

    def advance(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    return score_shard(job, shard, scorer, advance)


def _score_batch(scorer: Scorer, batch: list[tuple[Record, list[str]]], errors: list[dict]) -> list[list[float]]:
    """Scores for each document's segments; a failing segment gets NaN and an error entry.

    The whole batch is tried first (fast path). On an exception the batch is retried document by
    document, then segment by segment, so one bad segment costs only its own score.
    """
    segments = [segs for _, segs in batch]
    try:
        return scorer.score_documents(segments)
    except Exception:
        pass
    out = []
    for record, segs in batch:
        try:
            out.append(scorer.score_documents([segs])[0])
            continue
        except Exception:
            pass
        doc_scores = []
        for i, segment in enumerate(segs):
            try:
                doc_scores.append(float(scorer.score([segment])[0]))
            except Exception as exc:
                doc_scores.append(float("nan"))
                errors.append(
                    {
                        "location": record.location,
                        "segment": i,
                        "kind": "scorer_error",
                        "detail": f"{type(exc).__name__}: {exc}"[:500],
                    }
                )
        out.append(doc_scores)
    return out


@dataclass
class _ShardRows:
    """One shard's scored documents in the output schema, and what its records and scorer reported."""

    threshold: float  # a segment scoring above it counts as misaligned
    columns: dict[str, list] = field(default_factory=lambda: {name: [] for name in SCHEMA_COLUMNS})
    issues: list[dict] = field(default_factory=list)  # bad input records
    errors: list[dict] = field(default_factory=list)  # segments the scorer failed on (scored NaN)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, record: Record, segs: list[str], scores: list[float]) -> None:
        """One scored document: its row, and its share of the counts."""
        finite = [s for s in scores if not math.isnan(s)]
        self.columns["texts"].append(segs)
        self.columns["scores"].append(scores)
        self.columns["avg_score"].append(float(np.mean(finite)) if finite else float("nan"))
        self.columns["num_sents"].append(len(segs))
        self.columns["meta"].append(json.dumps(record.meta, ensure_ascii=False, sort_keys=True))
        self.columns["doc_index"].append(record.index)
        self.counts["documents_scored"] += 1
        self.counts["segments"] += len(segs)
        self.counts["characters"] += sum(map(len, segs))
        self.counts["segments_misaligned"] += sum(s > self.threshold for s in scores)

    def table(self):
        """The rows as an Arrow table, typed as the schema says (an empty shard keeps its types)."""
        import pyarrow as pa

        return pa.table(
            {
                "texts": pa.array(self.columns["texts"], pa.list_(pa.string())),
                "scores": pa.array(self.columns["scores"], pa.list_(pa.float64())),
                "avg_score": pa.array(self.columns["avg_score"], pa.float64()),
                "num_sents": pa.array(self.columns["num_sents"], pa.int64()),
                "meta": pa.array(self.columns["meta"], pa.string()),
                "doc_index": pa.array(self.columns["doc_index"], pa.int64()),
            }
        )


def _record_issue(record: Record, strict: bool) -> dict:
    """The issues.jsonl entry of a bad input record; under --strict, the error that stops the run."""
    if strict:
        raise ScoringError(f"{record.location}: {record.issue}: {record.detail} (--strict)")
    return {
        "location": record.location,
        "kind": record.issue,
        "detail": record.detail,
        "action": "scored" if record.issue in SCORED_ISSUES else "skipped",
    }


def _score_records(records: Iterable[Record], scorer: Scorer, job: Job, advance: Callable[[int], None]) -> _ShardRows:
    """Segment the records and score them, ``job.batch_docs`` documents per scorer call (batching
    is where scorers get their speed); a record with an issue that leaves no usable text is skipped."""
    segment = get_segmenter(scorer.segmenter)
    rows = _ShardRows(hit_threshold(scorer, job.hit_threshold))
    batch: list[tuple[Record, list[str]]] = []

    def flush() -> None:
        for (record, segs), scores in zip(batch, _score_batch(scorer, batch, rows.errors)):
            rows.add(record, segs, scores)
        advance(len(batch))
        batch.clear()

    for record in records:
        rows.counts["documents_read"] += 1
        if record.issue is not None:
            rows.issues.append(_record_issue(record, job.strict))
            if record.issue not in SCORED_ISSUES:
                rows.counts["documents_skipped"] += 1
                advance(1)
                continue
        assert record.text is not None  # readers leave the text out only of records they mark skipped
        batch.append((record, segment(record.text)))
        if len(batch) >= job.batch_docs:
            flush()
    if batch:
        flush()
    return rows


def score_shard(job: Job, shard: int, scorer: Scorer, advance=lambda n: None) -> dict:
    """Score one shard of the input and commit it (Parquet, then its marker); returns its stats."""
    import pyarrow.parquet as pq

    started = time.perf_counter()
    out = Path(job.out)
    source = open_source(job.input, job.text_field, job.split)
    start, stop = shard * job.shard_size, min((shard + 1) * job.shard_size, job.num_records)
    records = source.records(start, stop, job.offsets[shard]) if job.offsets else source.records(start, stop)
    rows = _score_records(records, scorer, job, advance)
    if rows.counts["documents_read"] != stop - start:
        raise ScoringError(
            f"shard {shard}: read {rows.counts['documents_read']} records, expected {stop - start}; "
            f"did {job.input} change while scoring?"
        )
    if job.strict and rows.errors:
        first = rows.errors[0]
        raise ScoringError(f"{first['location']}: segment {first['segment']}: {first['detail']} (--strict)")

    target = _shard_parquet(out, shard, job.num_shards)
    with atomic_path(target) as tmp:
        pq.write_table(rows.table(), tmp, compression="zstd")
    stats = {
        "shard": shard,
        "records": [start, stop],
        "file": str(target.relative_to(out)),
        "parquet": file_record(target),  # checked before the shard counts as done (_shard_done)
        **{k: rows.counts[k] for k in SHARD_COUNTS},
        "scorer_errors": len(rows.errors),
        "issues": rows.issues + rows.errors,
        "seconds": time.perf_counter() - started,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    # The marker is the commit point: written only once the Parquet shard is complete.
    write_text_atomic(_shard_marker(out, shard), json.dumps(stats))
    return stats


# ---------------------------------------------------------------------------------------------
# The run


def _plan(job: Job, scorer: Scorer, fingerprint: str) -> dict:
    local = Path(job.input)
    return {
        # Absolute, so that the held-out split beside it is found from any working directory; a
        # Hugging Face dataset name stays as given.
        "input": str(local.resolve()) if local.exists() else job.input,
        "input_fingerprint": fingerprint,
        "text_field": job.text_field,
        "split": job.split,
        "scorer": scorer.describe(),
        "hit_threshold": hit_threshold(scorer, job.hit_threshold),
        "num_records": job.num_records,
        "shard_size": job.shard_size,
        "num_shards": job.num_shards,
    }


def _check_or_write_plan(out: Path, plan: dict, overwrite: bool) -> None:
    path = out / "plan.json"
    if path.exists() and not overwrite:
        existing = json.loads(path.read_text())
        different = [k for k in plan if k != "input" and existing.get(k) != plan[k]]
        if different:
            raise ScoringError(
                f"{out} holds a scoring run with a different {', '.join(different)}; "
                "use another --out, or --overwrite to start over"
            )
        return
    if overwrite and out.exists():
        for sub in ("data", "shards"):
            for file in (out / sub).glob("*") if (out / sub).exists() else []:
                file.unlink()
        for name in ("manifest.json", "issues.jsonl"):
            (out / name).unlink(missing_ok=True)
    elif out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ScoringError(f"{out} is not empty and holds no scoring run; choose an empty or new --out")
    write_text_atomic(path, json.dumps(plan, indent=2))


def _remove_stale_temps(out: Path) -> None:
    for directory in (out, out / "data", out / "shards"):
        remove_stale_temps(directory)


def _why_empty(plan: dict, total: dict, by_kind: Counter[str], examples: dict[str, list]) -> str:
    if not plan["num_records"]:
        return f"{plan['input']} holds no record"
    why = f"{total['documents_read']} records read, {total['documents_skipped']} skipped"
    if by_kind:
        kind, count = by_kind.most_common(1)[0]
        first = examples[kind][0]
        why += f"; most common issue: {kind} ({count}x, e.g. {first['location']}: {first['detail']})"
        if kind == "missing_text":
            why += f"; the text is read from the field {plan['text_field']!r} (--text-field)"
    return why


def _finish(out: Path, plan: dict, wall: float, done_now: list[dict]) -> dict:
    """Aggregate the shard markers into manifest.json and issues.jsonl."""
    # Again at the end: a worker killed with an earlier run may still have been dying at the start.
    _remove_stale_temps(out)
    shards = [json.loads(_shard_marker(out, i).read_text()) for i in range(plan["num_shards"])]
    covered = sum(s["records"][1] - s["records"][0] for s in shards)
    read = sum(s["documents_read"] for s in shards)
    if covered != plan["num_records"] or read != plan["num_records"]:
        raise ScoringError(f"{out}: shards cover {covered} and read {read} of {plan['num_records']} records")
    issues = [issue for s in shards for issue in s["issues"]]
    by_kind = Counter(issue["kind"] for issue in issues)
    examples: dict[str, list] = {}
    for issue in issues:
        if len(examples.setdefault(issue["kind"], [])) < ISSUE_EXAMPLES:
            examples[issue["kind"]].append(issue)
    total = {k: sum(s[k] for s in shards) for k in (*SHARD_COUNTS, "scorer_errors")}
    if not total["documents_scored"]:
        # No manifest: a corpus with nothing in it would only fail later, in training, far from its cause.
        raise ScoringError(f"{out}: no document scored ({_why_empty(plan, total, by_kind, examples)})")
    threshold = plan["hit_threshold"]
    work_seconds = sum(s["seconds"] for s in shards)
    segments_now = sum(s["segments"] for s in done_now)
    manifest = {
        "phf_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": {
            "path": plan["input"],
            "fingerprint": plan["input_fingerprint"],
            "text_field": plan["text_field"],
            "split": plan["split"],
            "records": plan["num_records"],
        },
        "scorer": plan["scorer"],
        "schema": SCHEMA_COLUMNS,
        "counts": total,
        # The paper's hit rule (> 0.5 for classifiers, > 0 for counts; phf.data.scoring.hit_threshold).
        "misaligned": {
            "threshold": threshold,
            "share_of_segments": total["segments_misaligned"] / total["segments"] if total["segments"] else None,
        },
        "issues": {"total": len(issues), "by_kind": dict(sorted(by_kind.items())), "examples": examples},
        "timing": {
            "worker_seconds": round(work_seconds, 3),
            "segments_per_worker_second": round(total["segments"] / work_seconds, 1) if work_seconds else None,
            "last_invocation_wall_seconds": round(wall, 3),
            "last_invocation_segments_per_second": round(segments_now / wall, 1) if wall and segments_now else None,
        },
        "shards": [
            {k: s[k] for k in ("shard", "file", "parquet", "records", "documents_scored", "segments", "seconds")}
            for s in shards
        ],
    }
    with atomic_path(out / "issues.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for issue in issues:
            handle.write(json.dumps(issue, ensure_ascii=False) + "\n")
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _check_arguments(
    num_proc: int, shard_size: int | None, batch_docs: int, engine: str, ray_address: str | None
) -> None:
    """Fail on a bad argument, or on Ray missing or unreachable, before any output is written."""
    if num_proc < 1 or (shard_size is not None and shard_size < 1) or batch_docs < 1:
        raise ScoringError("--num-proc, --shard-size and --batch-docs must be >= 1")
    if engine not in ENGINES:
        raise ScoringError(f"--engine {engine!r}: choose {' or '.join(ENGINES)}")
    if engine == "ray":
        from phf.io.ray import check_reachable, require_ray

        require_ray()
        if ray_address:
            check_reachable(ray_address)


def score_corpus(
    input: str,
    out: str,
    scorer: str = "toxicity",
    scorer_options: dict | None = None,
    *,
    text_field: str = "text",
    split: str = "train",
    num_proc: int = 1,
    shard: str | None = None,
    shard_size: int | None = None,
    batch_docs: int = 64,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    hit_threshold: float | None = None,
) -> dict:
    """Score every segment of a corpus; see the module docstring for the output layout.

    ``engine="ray"`` scores the shards on a Ray cluster (``ray_address``, else a local instance)
    instead of ``num_proc`` local processes; the output is the same (phf.data.ray_scoring).
    ``hit_threshold`` overrides the scorer's misalignment threshold in the counts and the manifest.
    Returns the manifest once every shard is done, else a status dict for this job's shards.
    """
    _check_arguments(num_proc, shard_size, batch_docs, engine, ray_address)
    job_index, job_count = parse_shard(shard)
    scorer_options = dict(scorer_options or {})
    scorer_obj = get_scorer(scorer, **scorer_options)  # validates name and options before any work
    try:
        source = open_source(input, text_field, split)
    except (ValueError, FileNotFoundError) as exc:
        raise ScoringError(str(exc)) from exc
    num_records = len(source)
    if shard_size is None and (Path(out) / "plan.json").exists() and not overwrite:
        shard_size = json.loads((Path(out) / "plan.json").read_text())["shard_size"]  # resume its layout
    shard_size = shard_size or auto_shard_size(num_records)
    job = Job(
        input=str(input),
        text_field=text_field,
        split=split,
        scorer=scorer,
        scorer_options=scorer_options,
        out=str(out),
        shard_size=shard_size,
        num_shards=max(1, math.ceil(num_records / shard_size)),
        num_records=num_records,
        strict=strict,
        batch_docs=batch_docs,
        hit_threshold=hit_threshold,
    )
    out_path = Path(out)
    plan = _plan(job, scorer_obj, source.fingerprint())
    # One process per output directory, or per job of an array: jobs of one array share it.
    lock_name = LOCK_FILE if job_count == 1 else f".phf-shards-{job_index}-of-{job_count}.lock"
    with RunLock(out_path, "phf score", name=lock_name):
        _remove_stale_temps(out_path)
        return _score_shards(
            job, scorer_obj, source, plan, overwrite, job_index, job_count, num_proc, progress, engine, ray_address
        )


def _score_shards(
    job: Job,
    scorer_obj: Scorer,
    source,
    plan: dict,
    overwrite: bool,
    job_index: int,
    job_count: int,
    num_proc: int,
    progress: bool,
    engine: str,
    ray_address: str | None,
) -> dict:
    from tqdm.auto import tqdm

    out_path, shard_size, num_records = Path(job.out), job.shard_size, job.num_records
    _check_or_write_plan(out_path, plan, overwrite)

    mine = [i for i in range(job.num_shards) if i % job_count == job_index]
    todo = [i for i in mine if not _shard_done(out_path, i)]
    if not todo and (out_path / "manifest.json").exists():
        return json.loads((out_path / "manifest.json").read_text())  # finished before: nothing to redo
    if todo and isinstance(source, JsonlSource):
        offsets = source.line_offsets([i * shard_size for i in range(job.num_shards)])
        job = dataclasses.replace(job, offsets=tuple(offsets) if offsets else None)
    todo_docs = sum(min((i + 1) * shard_size, num_records) - i * shard_size for i in todo)
    started = time.perf_counter()
    done_now: list[dict] = []
    bar = tqdm(total=todo_docs, unit="doc", desc=f"scoring ({job.scorer})", disable=not progress, smoothing=0.1)
    try:
        if engine == "ray":
            from phf.data.ray_scoring import score_shards

            done_now = score_shards(job, todo, scorer_obj, bar.update, address=ray_address)
        elif num_proc == 1 or len(todo) <= 1:
            done_now = [score_shard(job, i, scorer_obj, bar.update) for i in todo]
        else:
            done_now = _score_in_processes(job, todo, num_proc, bar)
    finally:
        bar.close()
    wall = time.perf_counter() - started

    if all(_shard_marker(out_path, i).exists() for i in range(job.num_shards)):
        return _finish(out_path, plan, wall, done_now)
    missing = [i for i in range(job.num_shards) if not _shard_marker(out_path, i).exists()]
    return {
        "complete": False,
        "shards_done_now": [s["shard"] for s in done_now],
        "shards_missing": missing,
        "num_shards": job.num_shards,
    }


def _score_in_processes(job: Job, todo: list[int], num_proc: int, bar) -> list[dict]:
    """Score the ``todo`` shards in a pool of spawned processes, each with its own scorer; the
    progress bar follows a shared count of documents done."""
    ctx = mp.get_context("spawn")  # fork would copy torch/sklearn thread pools in a bad state
    counter = ctx.Value("q", 0)
    with ctx.Pool(min(num_proc, len(todo)), initializer=_init_worker, initargs=(job, counter)) as pool:
        pending = pool.map_async(_worker_run, [(job, i) for i in todo], chunksize=1)
        while not pending.ready():
            pending.wait(0.25)
            if counter.value > bar.n:
                bar.update(counter.value - bar.n)
        done_now = pending.get()
        bar.update(counter.value - bar.n)
    return done_now


def _scored_rows(path: str | os.PathLike, columns: list[str]):
    """Yield each scored document's ``columns`` as a tuple of lists, reading the shards in order."""
    import pyarrow.parquet as pq

    for file in sorted((Path(path) / "data").glob("train-*.parquet")):
        for batch in pq.ParquetFile(file).iter_batches(columns=columns, batch_size=1024):
            yield from zip(*(batch.column(name).to_pylist() for name in columns))


def scored_documents(path: str | os.PathLike):
    """Yield each scored document's full text ("".join(texts)), reading the shards in order."""
    for (texts,) in _scored_rows(path, ["texts"]):
        yield "".join(texts)


def scored_document_segments(path: str | os.PathLike):
    """Yield ``(segments, scores)`` of each scored document, shards in order."""
    yield from _scored_rows(path, ["texts", "scores"])


def scored_segments(path: str | os.PathLike):
    """Yield ``(segment, score)`` for every segment of every scored document, shards in order."""
    for texts, scores in scored_document_segments(path):
        yield from zip(texts, scores)


def load_scored(path: str | os.PathLike):
    """A scored corpus as a ``datasets.Dataset`` (meta decoded lazily by the caller)."""
    import datasets

    path = Path(path)
    if not (path / "manifest.json").exists():
        raise FileNotFoundError(f"{path} is not a finished scored corpus (no manifest.json)")
    files = sorted(str(p) for p in (path / "data").glob("train-*.parquet"))
    return datasets.load_dataset("parquet", data_files=files, split="train")
