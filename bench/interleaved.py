"""Each objective's step time relative to MLE, measured by interleaving them in one process.

``bench/train.py`` times each objective in its own process, one after another, so a shared machine
whose speed drifts (another tenant, CPU frequency, a hypervisor) shifts one objective's figure and
not another's: on this project's 2-core VM its ratios move by ±5-10% between runs. Here one process
builds a Trainer per objective on the same synthetic scored corpus (``bench/train.py``'s), then
runs ``--block`` optimizer steps of each in turn, ``--rounds`` times, and compares the median block
of each: drift hits all objectives alike. It measures speed only (no memory: one process holds
every model), on CPU or on one GPU. Ends with one ``RESULT <json>`` line.

    python bench/interleaved.py                          # tiny preset on CPU, all six objectives
    python bench/interleaved.py --objectives mle,ul,mle:training.logprob_keep_softmax_mb=0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as bench  # bench/train.py: its corpus, configs and objective list


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset",
        choices=sorted(bench.PRESETS),
        default=None,
        help="model/data preset (default: tiny on CPU, gpt2-small on CUDA)",
    )
    parser.add_argument(
        "--objectives",
        default=",".join(bench.OBJECTIVE_NAMES),
        help="comma-separated, MLE first is the reference; OBJECTIVE:key=value adds overrides",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a phf config override for every objective; repeatable",
    )
    parser.add_argument("--block", type=int, default=10, help="optimizer steps per timed block (default 10)")
    parser.add_argument("--rounds", type=int, default=10, help="blocks per objective (default 10)")
    parser.add_argument("--workdir", default=None, help="keep corpus and runs here (default: a temp dir)")
    args = parser.parse_args()

    import torch

    from phf.training.trainer import Trainer

    runs = bench.parse_runs(parser, args.objectives)
    if args.block < 1 or args.rounds < 1:
        parser.error("--block and --rounds must be >= 1")
    cuda = torch.cuda.is_available()
    preset = args.preset or ("gpt2-small" if cuda else "tiny")
    warmup = 3
    with tempfile.TemporaryDirectory(prefix="phf-bench-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        os.environ["PHF_CACHE"] = str(work / "cache")
        spec = {
            "workdir": str(work),
            "preset_file": str(bench.PRESETS[preset]),
            "warmup": warmup,
            "steps": args.block * args.rounds,
            "compile": False,
            "set": args.set,
        }
        bench.check_overrides(parser, spec, runs)
        spec.update(bench.prepare_data(spec))
        trainers = {run: Trainer(bench.phf_config(spec, run)) for run in runs}
        config = next(iter(trainers.values())).config
        tokens = args.block * config.training.batch_size * config.data.seq_len
        print(
            f"interleaved objective benchmark: preset {preset} on "
            f"{torch.cuda.get_device_name(0) if cuda else f'cpu ({torch.get_num_threads()} threads)'}; "
            f"{len(runs)} trainers in one process, {args.rounds} rounds of {args.block} steps each",
            flush=True,
        )
        device = next(iter(trainers.values())).accelerator.device
        for trainer in trainers.values():
            trainer.model.train()
            bench.run_steps(trainer, 0, warmup)
        blocks: dict[str, list[float]] = {run: [] for run in runs}
        for round_ in range(args.rounds):
            for run, trainer in trainers.items():
                first = warmup + round_ * args.block
                bench._sync(device)
                started = time.perf_counter()
                bench.run_steps(trainer, first, args.block)
                bench._sync(device)
                blocks[run].append(time.perf_counter() - started)

    reference = runs[0]
    figures: dict[str, object] = {"device": str(device), "preset": preset, "block": args.block, "rounds": args.rounds}
    width = max(22, *(len(r) + 2 for r in runs))
    print(f"\n{'run':<{width}}{'tok/s (median block)':>22}{'vs ' + reference:>12}{'spread':>10}")
    for run in runs:
        median = statistics.median(blocks[run])
        ratio = statistics.median(blocks[reference]) / median
        spread = (max(blocks[run]) - min(blocks[run])) / median  # how much this machine drifted
        figures[f"tok_s.{run}"] = round(tokens / median, 1)
        if run != reference:
            figures[f"ratio.{run}_vs_{reference}"] = round(ratio, 4)
        print(f"{run:<{width}}{tokens / median:>22,.0f}{ratio:>12.3f}{100 * spread:>9.0f}%")
    print("spread: (slowest - fastest block) / median block, per run: the drift the interleaving cancels")
    print("RESULT " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
