"""Scoring throughput on the embedded corpora.

Prints, per scorer: segments/s when phf scores whole batches of documents, segments/s of the
authors' per-text loop (one scorer call per segment) on a sample, and the ratio of the two; then
the 1 -> 2 process speed-up of `phf score`; with ``--ray``, the time of ``--engine ray`` (a local
Ray instance with one actor per CPU) against ``--num-proc`` with as many processes: the Ray engine's
overhead on one machine. Then the PII scorer old vs new on one core (issue 27): scrubadub's
``Scrubber.iter_filth`` on one segment at a time, every detector (what `phf score --scorer pii` did
before the gates) against the gated, batched path, interleaved chunk by chunk so that a noisy
machine slows both alike, with every segment's filth compared (type, span, text); with spaCy
installed, the same for ``names=True``. Ends with ``RESULT <json>`` holding every figure.

    python bench/scoring.py [--max-mb 1.0] [--loop-sample 2000] [--pii-segments 0] [--names-segments 1000] [--ray]

Figures are ratios measured in one run on one machine; absolute numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from phf.data.corpora.build import build_corpus
from phf.data.score_corpus import score_corpus
from phf.data.scoring import get_scorer
from phf.data.scoring.pii import PIIScorer, filth_key
from phf.data.segment import get_segmenter

# scorer -> the embedded corpus it is benchmarked on
SCORER_CORPUS = {"toxicity": "toxicity", "toxicity-judge": "toxicity", "pii": "pii", "pep8": "pep8"}


def load_documents(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]


def time_batched(scorer, documents: list[list[str]], batch_docs: int = 64) -> float:
    started = time.perf_counter()
    for i in range(0, len(documents), batch_docs):
        scorer.score_documents(documents[i : i + batch_docs])
    return time.perf_counter() - started


def time_per_segment(scorer, segments: list[str]) -> float:
    started = time.perf_counter()
    for segment in segments:
        scorer.score([segment])
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-mb", type=float, default=1.0, help="size of each corpus (default 1 MB)")
    parser.add_argument("--loop-sample", type=int, default=2000, help="segments timed in the per-text loop")
    parser.add_argument("--workdir", default=None, help="keep corpora here (default: a temp dir)")
    parser.add_argument("--ray", action="store_true", help="also time --engine ray against --num-proc (needs phf[ray])")
    parser.add_argument("--pii-only", action="store_true", help="only the PII old-vs-new section")
    parser.add_argument("--pii-segments", type=int, default=0, help="PII segments timed old vs new (0: all)")
    parser.add_argument("--names-segments", type=int, default=1000, help="the same with names=True (0: skip)")
    parser.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy model for names=True")
    args = parser.parse_args()
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        corpora = {}
        for task in ["pii"] if args.pii_only else sorted(set(SCORER_CORPUS.values())):
            out = root / f"corpus-{task}"
            if not (out / "manifest.json").exists():
                build_corpus(task, out, max_mb=args.max_mb, progress=False)
            corpora[task] = out / "train.jsonl"

        if not args.pii_only:
            print(f"{'scorer':<16}{'segments':>10}{'batched seg/s':>15}{'per-text seg/s':>16}{'speed-up':>10}")
            for name, task in SCORER_CORPUS.items():
                scorer = get_scorer(name)
                segment = get_segmenter(scorer.segmenter)
                documents = [segment(text) for text in load_documents(corpora[task])]
                scorer.score_documents(documents[:2])  # load models outside the timing
                n_segments = sum(map(len, documents))
                batched = n_segments / time_batched(scorer, documents)
                sample = [s for doc in documents for s in doc]
                random.Random(0).shuffle(sample)
                sample = sample[: args.loop_sample]
                per_text = len(sample) / time_per_segment(scorer, sample)
                result[f"seg_s.{name}.batched"] = round(batched, 1)
                result[f"seg_s.{name}.per_text"] = round(per_text, 1)
                result[f"ratio.{name}.batched_vs_per_text"] = round(batched / per_text, 2)
                print(f"{name:<16}{n_segments:>10}{batched:>15.0f}{per_text:>16.0f}{batched / per_text:>9.1f}x")

            cpus = os.cpu_count() or 1
            print(f"\nphf score, 1 vs 2 processes ({cpus} CPUs here; includes process start-up and Parquet writing)")
            for name in ("pii", "toxicity"):
                seconds = {}
                for procs in (1, 2):
                    out = root / f"scored-{name}-{procs}"
                    started = time.perf_counter()
                    manifest = score_corpus(
                        str(corpora[SCORER_CORPUS[name]]),
                        str(out),
                        name,
                        num_proc=procs,
                        overwrite=True,
                        progress=False,
                    )
                    seconds[procs] = time.perf_counter() - started
                speedup = seconds[1] / seconds[2]
                result[f"seconds.score.{name}.1proc"] = round(seconds[1], 2)
                result[f"seconds.score.{name}.2proc"] = round(seconds[2], 2)
                result[f"ratio.score.{name}.2proc_vs_1proc"] = round(speedup, 2)
                print(
                    f"{name:<16}{manifest['counts']['segments']:>8} segments  1 proc {seconds[1]:6.2f}s  "
                    f"2 procs {seconds[2]:6.2f}s  speed-up {speedup:.2f}x"
                )
            if args.ray:
                result.update(time_ray_engine(corpora, root, cpus))
        pii_segments = [s for text in load_documents(corpora["pii"]) for s in get_segmenter("sentence")(text)]
        print("\nPII scorer on one core: scrubadub per segment (old) vs gated batches (new), interleaved")
        result.update(time_pii_old_vs_new("pii", PIIScorer(), pii_segments, args.pii_segments))
        if args.names_segments:
            try:
                names = PIIScorer(names=True, spacy_model=args.spacy_model)
                names.scrubber  # noqa: B018 - loads spaCy here, outside the timing
            except (ImportError, ValueError, OSError) as exc:
                print(f"pii names=True   skipped: {exc}")
            else:
                result.update(time_pii_old_vs_new("pii_names", names, pii_segments, args.names_segments))
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


def _outcome(find) -> list | str:
    """Filth keys, or the name of the error (scrubadub's FilthMergeError on some pyap spans)."""
    try:
        return [filth_key(f) for f in find()]
    except Exception as exc:  # any error, as long as both paths raise the same one
        return type(exc).__name__


def time_pii_old_vs_new(
    label: str, scorer: PIIScorer, segments: list[str], limit: int, chunk: int = 256
) -> dict[str, float]:
    """Seconds of the old and the new path on the same chunks, alternating which goes first, and
    the number of segments whose filth differs (must be 0)."""
    sample = list(segments)
    random.Random(0).shuffle(sample)
    sample = sample[: limit or None]
    scorer.filth(sample[:8])  # imports and models outside the timing
    scorer.reference_filth(sample[0])
    seconds = {"old": 0.0, "new": 0.0}
    differ = 0
    for n, start in enumerate(range(0, len(sample), chunk)):
        texts = sample[start : start + chunk]
        outcomes = {}
        for path in ("old", "new") if n % 2 == 0 else ("new", "old"):
            began = time.perf_counter()
            if path == "old":
                outcomes[path] = [_outcome(lambda t=t: scorer.reference_filth(t)) for t in texts]
            else:
                try:
                    outcomes[path] = [[filth_key(f) for f in found] for found in scorer.filth(texts)]
                except Exception:  # one error fails the whole batch: find it one text at a time
                    outcomes[path] = [_outcome(lambda t=t: scorer.filth([t])[0]) for t in texts]
            seconds[path] += time.perf_counter() - began
        differ += sum(old != new for old, new in zip(outcomes["old"], outcomes["new"]))
    old, new = len(sample) / seconds["old"], len(sample) / seconds["new"]
    print(
        f"{label:<16}{len(sample):>8} segments  old {old:8.0f} seg/s  new {new:8.0f} seg/s  "
        f"speed-up {new / old:.1f}x  segments that differ: {differ}"
    )
    return {
        f"seg_s.{label}.old_per_core": round(old, 1),
        f"seg_s.{label}.new_per_core": round(new, 1),
        f"ratio.{label}.new_vs_old": round(new / old, 2),
        f"segments.{label}.compared": len(sample),
        f"segments.{label}.differ": differ,
    }


def time_ray_engine(corpora: dict[str, Path], root: Path, cpus: int) -> dict[str, float]:
    """`phf score --engine ray` against `--num-proc <cpus>` on the same corpus and shards.

    The Ray instance is started once, outside the timings (on a cluster it is up before any job),
    and its start-up is reported on its own."""
    from phf.io.ray import connected

    result = {}
    started = time.perf_counter()
    with connected():
        result["seconds.ray.startup"] = round(time.perf_counter() - started, 2)
        print(
            f"\nphf score --engine ray vs --num-proc {cpus} (local Ray instance started in "
            f"{result['seconds.ray.startup']:.1f}s, not counted)"
        )
        for name in ("pii", "toxicity"):
            seconds = {}
            for engine in ("local", "ray"):
                out = root / f"scored-{name}-{engine}"
                began = time.perf_counter()
                manifest = score_corpus(
                    str(corpora[SCORER_CORPUS[name]]),
                    str(out),
                    name,
                    num_proc=cpus,
                    overwrite=True,
                    progress=False,
                    engine=engine,
                )
                seconds[engine] = time.perf_counter() - began
            shards = len(manifest["shards"])
            per_shard = (seconds["ray"] - seconds["local"]) / shards
            result[f"seconds.score.{name}.ray_baseline_{cpus}proc"] = round(seconds["local"], 2)
            result[f"seconds.score.{name}.ray"] = round(seconds["ray"], 2)
            result[f"ratio.score.{name}.ray_vs_{cpus}proc"] = round(seconds["ray"] / seconds["local"], 2)
            result[f"seconds.score.{name}.ray_overhead_per_shard"] = round(per_shard, 3)
            print(
                f"{name:<16}{manifest['counts']['segments']:>8} segments  {cpus} procs {seconds['local']:6.2f}s  "
                f"ray {seconds['ray']:6.2f}s  ({seconds['ray'] / seconds['local']:.2f}x the time; "
                f"{per_shard * 1000:+.0f} ms per shard over {shards} shards)"
            )
    return result


if __name__ == "__main__":
    sys.exit(main())
