"""The token budget, chosen by measurement: MLE against conditional training as training tokens grow.

One run per (arm, seed) trains to the largest budget and exports an HF checkpoint at every point on
the way (``training.export_steps``), as the paper's Fig. 3 evaluates one run along its training.
Each checkpoint is then evaluated with ``phf eval`` under the three sampling protocols: misalignment
(and its ratio to the MLE checkpoint of the same seed and step), control-token AUROC, tag
prediction, held-out LM loss and KL from the MLE checkpoint of the same step.

    python bench/token_curve.py --scored runs/curve/scored --seeds 42        # one seed (times: docs/paper-vs-phf.md)
    python bench/token_curve.py --scored runs/curve/scored --seeds 42 43 44 --plot docs/paper/token-curve

The scored corpus must exist (``phf corpus toxicity --max-mb 64 --out DIR`` then ``phf score``: all the distinct
toxicity text the registries hold). Finished training runs and evaluations are skipped, so a rerun
continues; a seed at a time across sessions is fine. Prints one JSON row per checkpoint and the
table; writes ``<out>/curve.json`` (and, with ``--plot``, PNG and SVG).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from phf.evaluation.results import EvalResults, headline

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ("paper", "emit-good", "recondition")
PRESET = "configs/tiny/toxicity"
# name -> (objective, overrides). Labels are resolved on the corpus at hand (percentiles), so the
# arms mean the same on any scored corpus: the preset's risk-averse segment labels, and the search's
# best labelling (docs/conditional.md) without the repeated tags, which cost LM loss.
ARMS = {
    "mle": ("mle", []),
    "conditional": ("conditional", ["objective.threshold=null", "objective.percentile=25"]),
    "conditional-docmean": (
        "conditional",
        ["objective.threshold=null", "objective.percentile=25", "objective.labels=document-mean"],
    ),
    # <|bad|> exactly where the evaluation's scorer calls a segment toxic (its hit threshold, 0.5):
    # the tag then carries what the misalignment metric measures, not the bottom quartile's cut.
    "conditional-hit": ("conditional", ["objective.threshold=0.5"]),
    # What a model of this size makes of the documents document-mean labels tag <|good|> (the least
    # toxic quarter, nearly the same documents) when it trains on those alone: the most a
    # conditional model's <|good|> samples could be expected to reach at this size.
    "filtering-docmean": ("filtering", ["objective.filtering.threshold=null", "objective.filtering.percentile=25"]),
}


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[3:6])} ... failed (exit {proc.returncode}); see {log}")


def steps_at(points_m: list[float], tokens_per_step: int) -> list[int]:
    return [math.ceil(p * 1e6 / tokens_per_step) for p in points_m]


def train(run: Path, objective: str, overrides: list[str], seed: int, steps: list[int], args) -> None:
    if (run / "trainer_state.json").exists() and (run / "model.safetensors").exists():
        return
    cmd = [sys.executable, "-m", "phf.cli", "train", f"{PRESET}/{objective}.yaml", f"output_dir={run}"]
    cmd += [f"data.path={Path(args.scored).resolve()}", f"training.seed={seed}", "logging.progress=false"]
    cmd += ["training.save_every=500", f"training.max_steps={steps[-1]}"]
    cmd += [f"training.export_steps=[{','.join(map(str, steps[:-1]))}]", *overrides]
    cmd += ["--resume"] if (run / "checkpoints").exists() else []
    _run(cmd, run.parent / f"{run.name}.log")


def evaluate(model: Path, reference: Path | None, seed: int, conditional: bool, args) -> EvalResults:
    if not (model / "eval.json").exists():
        cmd = [sys.executable, "-m", "phf.cli", "eval", str(model), "--seed", str(seed), "--quiet"]
        cmd += ["--no-scenarios", "--no-judge", "--num-samples", str(args.num_samples)]
        cmd += ["--kl-samples", str(args.kl_samples), "--reference", str(reference) if reference else "none"]
        cmd += ["--compare-protocols", *PROTOCOLS] if conditional else []
        _run(cmd, model.parent / "eval.log")
    return EvalResults.from_file(model / "eval.json")


def row(result: EvalResults, seed: int, arm: str, tokens: int) -> dict:
    # A model without control tokens samples alike under every protocol: one number for all three.
    by = result.misalignment_by_protocol or dict.fromkeys(PROTOCOLS, result.misalignment)
    numbers = headline(result)
    return {
        "seed": seed,
        "arm": arm,
        "tokens": tokens,
        "misalignment": {p: v.mean for p, v in by.items()},
        "misalignment_ci": {p: v.ci95 for p, v in by.items()},
        **{k: numbers[k] for k in ("lm_loss", "kl", "control_auroc", "tag_auroc")},
    }


def checkpoint(run: Path, step: int, last: int) -> Path:
    return run if step == last else run / f"step-{step}"


def measure(args) -> list[dict]:
    tokens_per_step = args.batch_size * args.seq_len
    steps = steps_at(args.points, tokens_per_step)
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            objective, overrides = ARMS[arm]
            run = out / f"seed{seed}" / arm
            run.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            train(run, objective, overrides, seed, steps, args)
            for step in steps:
                reference = None if arm == "mle" else checkpoint(out / f"seed{seed}" / "mle", step, steps[-1])
                model = checkpoint(run, step, steps[-1])
                r = row(
                    evaluate(model, reference, seed, objective == "conditional", args),
                    seed,
                    arm,
                    step * tokens_per_step,
                )
                rows.append(r)
                print(json.dumps(r), flush=True)
            print(f"# seed{seed}/{arm}: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Each non-MLE row with MLE/arm misalignment per protocol (MLE of the same seed and tokens)."""
    mle = {(r["seed"], r["tokens"]): r["misalignment"]["paper"] for r in rows if r["arm"] == "mle"}
    out = []
    for r in rows:
        base = mle.get((r["seed"], r["tokens"]))
        if r["arm"] == "mle" or base is None:
            continue
        out.append({**r, "ratio": {p: base / max(v, 1e-9) for p, v in r["misalignment"].items()}})
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| seed | arm | tokens | MLE | paper | emit-good | recondition | control AUROC | tag AUROC | LM loss (MLE) |"
    ]
    lines.append("|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|")
    mle = {(r["seed"], r["tokens"]): r for r in rows if r["arm"] == "mle"}
    for r in ratios(rows):
        m = mle[(r["seed"], r["tokens"])]
        cells = [f"{r['misalignment'][p]:.3f} ({r['ratio'][p]:.2f}x)" for p in PROTOCOLS]
        tags = [f"{r[k]:.2f}" if r[k] is not None else "-" for k in ("control_auroc", "tag_auroc")]
        lines.append(
            f"| {r['seed']} | {r['arm']} | {r['tokens'] / 1e6:.1f}M | {m['misalignment']['paper']:.3f} | "
            + " | ".join(cells + tags)
            + f" | {r['lm_loss']:.3f} ({m['lm_loss']:.3f}) |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rat = ratios(rows)
    arms = sorted({r["arm"] for r in rat})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for arm in arms:
        conditional = ARMS[arm][0] == "conditional"  # others sample alike under every protocol: one line
        for protocol, style in zip(PROTOCOLS if conditional else PROTOCOLS[:1], ("-", "--", ":")):
            xs = sorted({r["tokens"] for r in rat if r["arm"] == arm})
            ys = [[r["ratio"][protocol] for r in rat if r["arm"] == arm and r["tokens"] == x] for x in xs]
            axes[0].errorbar(
                np.array(xs) / 1e6,
                [np.mean(y) for y in ys],
                yerr=[np.std(y) for y in ys],
                linestyle=style,
                marker="o",
                capsize=3,
                label=f"{arm}, {protocol}" if conditional else arm,
            )
        for ax, key in ((axes[1], "control_auroc"), (axes[2], "tag_auroc")) if conditional else ():
            xs = sorted({r["tokens"] for r in rat if r["arm"] == arm})
            ax.plot(
                np.array(xs) / 1e6,
                [np.mean([r[key] for r in rat if r["arm"] == arm and r["tokens"] == x]) for x in xs],
                marker="o",
                label=arm,
            )
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel("MLE / arm misalignment (higher: better)")
    axes[1].set_ylabel("control-token AUROC")
    axes[2].set_ylabel("tag prediction AUROC")
    points = sorted({r["tokens"] / 1e6 for r in rows})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(points, [f"{p:.0f}" for p in points])
        ax.set_xlabel("training tokens (M)")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"toxicity, tiny preset: conditional training vs MLE over tokens (seeds {sorted({r['seed'] for r in rows})})"
    )
    fig.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(f"{stem}.{ext}", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scored", required=True, help="a scored toxicity corpus (phf score --out)")
    p.add_argument("--out", default="runs/token-curve")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument(
        "--points", type=float, nargs="+", default=[1, 2, 4, 8, 16], help="M tokens; the last is the run's budget"
    )
    p.add_argument("--batch-size", type=int, default=16, help="the preset's sequences per step")
    p.add_argument("--seq-len", type=int, default=128, help="the preset's context")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--kl-samples", type=int, default=128)
    p.add_argument("--plot", type=Path, help="write the figure to this stem (.png, .svg)")
    args = p.parse_args()
    if args.arms[0] != "mle":
        p.error("the first arm must be mle: it is the others' baseline and KL reference")
    started = time.perf_counter()
    rows = measure(args)
    out = Path(args.out)
    (out / "curve.json").write_text(json.dumps({"args": vars(args) | {"plot": str(args.plot)}, "rows": rows}, indent=1))
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
    print(f"RESULT token_curve: {len(rows)} checkpoints in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
