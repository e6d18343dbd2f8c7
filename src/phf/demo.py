"""``make demo``: the pipeline that exists so far, on the embedded corpora, on a CPU.

Builds the three task corpora from registry packages, scores every segment of each with the task's
scorer, and prints per-task counts with the share of misaligned segments. Every stage is skipped
when its output is already complete, so rerunning is cheap and a killed demo continues.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

TASK_SCORERS = {"toxicity": "toxicity", "pii": "pii", "pep8": "pep8"}


def _stage(index: int, total: int, text: str) -> None:
    print(f"\n[{index}/{total}] {text}", flush=True)


def run_demo(out: str = "runs/demo", tasks: tuple[str, ...] = tuple(TASK_SCORERS), max_mb: float | None = None,
             num_proc: int | None = None) -> list[dict]:
    from phf.corpora.build import build_corpus
    from phf.score_corpus import score_corpus

    num_proc = num_proc or min(2, os.cpu_count() or 1)
    root = Path(out)
    rows, total, step = [], 2 * len(tasks), 0
    for task in tasks:
        corpus_dir, scored_dir = root / "corpus" / task, root / "scored" / task
        step += 1
        if (corpus_dir / "manifest.json").exists():
            _stage(step, total, f"{task}: corpus already built in {corpus_dir}")
        else:
            _stage(step, total, f"{task}: building the corpus from registry packages into {corpus_dir}")
            build_corpus(task, corpus_dir, max_mb=max_mb)
        corpus = json.loads((corpus_dir / "manifest.json").read_text())
        step += 1
        _stage(step, total, f"{task}: scoring train.jsonl with the '{TASK_SCORERS[task]}' scorer ({num_proc} processes)")
        started = time.perf_counter()
        manifest = score_corpus(str(corpus_dir / "train.jsonl"), str(scored_dir), TASK_SCORERS[task],
                                num_proc=num_proc)
        counts = manifest["counts"]
        rows.append({
            "task": task, "scorer": f"{manifest['scorer']['name']} ({manifest['scorer']['version']})",
            "documents": counts["documents_scored"], "test_documents": corpus["totals"]["test"]["documents"],
            "segments": counts["segments"], "misaligned": counts["segments_misaligned"],
            "threshold": manifest["misaligned"]["threshold"], "share": manifest["misaligned"]["share_of_segments"],
            "seconds": round(time.perf_counter() - started, 1),
        })
    print("\n| task | scorer | train docs | test docs | segments | misaligned segments | share | scoring s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['scorer']} | {r['documents']} | {r['test_documents']} | {r['segments']} | {r['misaligned']} "
              f"(score > {r['threshold']:g}) | {100 * r['share']:.2f}% | {r['seconds']} |")
    (root / "summary.json").write_text(json.dumps(rows, indent=2))
    print(f"\nscored corpora in {root}/scored/<task> (load with datasets.load_dataset); summary in {root}/summary.json")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_SCORERS), choices=list(TASK_SCORERS))
    parser.add_argument("--max-mb", type=float, default=None, help="corpus size cap (default: per task)")
    parser.add_argument("--num-proc", type=int, default=None)
    args = parser.parse_args(argv)
    run_demo(args.out, tuple(args.tasks), args.max_mb, args.num_proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
