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
from phf.study.report.seeds import Estimate

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


def trained(run: Path) -> bool:
    return (run / "trainer_state.json").exists() and (run / "model.safetensors").exists()


def train(run: Path, objective: str, overrides: list[str], seed: int, steps: list[int], args) -> None:
    if trained(run):
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
    out = Path(args.out).resolve()  # the runs are made with cwd=ROOT: name them from where we are
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            objective, overrides = ARMS[arm]
            run = out / f"seed{seed}" / arm
            if args.no_train and not trained(run):
                print(f"# seed{seed}/{arm}: not trained, left out (--no-train)", flush=True)
                continue
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


def over_seeds(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """Per (arm, tokens): MLE/arm per protocol as the geometric mean and 95% t-interval over seeds,
    and the tag metrics and LM losses as means over seeds."""
    out: dict[tuple[str, int], dict] = {}
    mle = {(r["seed"], r["tokens"]): r for r in rows if r["arm"] == "mle"}
    for r in ratios(rows):
        cell = out.setdefault((r["arm"], r["tokens"]), {"rows": []})
        cell["rows"].append(r)
    for (_, tokens), cell in out.items():
        rs = cell.pop("rows")
        cell["seeds"] = [r["seed"] for r in rs]
        cell["ratio"] = {p: Estimate({r["seed"]: r["ratio"][p] for r in rs}, log=True) for p in PROTOCOLS}
        for key in ("control_auroc", "tag_auroc", "lm_loss"):
            values = [r[key] for r in rs if r[key] is not None]
            cell[key] = sum(values) / len(values) if values else None
        cell["mle_lm_loss"] = sum(mle[(s, tokens)]["lm_loss"] for s in cell["seeds"]) / len(rs)
    return out


def summary(rows: list[dict]) -> str:
    """The table over seeds: per arm and budget, each seed's MLE/arm and their geometric mean [95% CI]."""
    lines = [
        "| arm | tokens | paper: per seed | paper: mean [95% CI] | emit-good: mean [95% CI] | "
        "recondition: mean [95% CI] | control AUROC | tag AUROC | LM loss (MLE) |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def est(e: Estimate) -> str:
        return f"{e.mean:.2f}x [{e.ci95[0]:.2f}x, {e.ci95[1]:.2f}x]" if e.mean and e.ci95 else "-"

    for (arm, tokens), c in sorted(over_seeds(rows).items()):
        per_seed = ", ".join(f"{v:.2f}x" for _, v in sorted(c["ratio"]["paper"].per_seed.items()))
        tags = [f"{c[k]:.2f}" if c[k] is not None else "-" for k in ("control_auroc", "tag_auroc")]
        lines.append(
            f"| {arm} | {tokens / 1e6:.0f}M | {per_seed} | "
            + " | ".join([est(c["ratio"][p]) for p in PROTOCOLS] + tags)
            + f" | {c['lm_loss']:.3f} ({c['mle_lm_loss']:.3f}) |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = over_seeds(rows)
    arms = sorted({arm for arm, _ in cells})
    # Two protocols (the paper's and emit-good) get a panel each; recondition is in the table.
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for i, arm in enumerate(arms):
        xs = sorted(tokens for a, tokens in cells if a == arm)
        at = np.array(xs) / 1e6 * 1.04 ** (i - (len(arms) - 1) / 2)  # arms side by side, not on top
        for ax, protocol in zip(axes[:2], ("paper", "emit-good")):
            estimates = [cells[(arm, x)]["ratio"][protocol] for x in xs]
            means = np.array([e.mean for e in estimates])
            # The 95% t-interval over seeds, where there are two or more; else the point alone.
            low = np.array([e.mean - e.ci95[0] if e.ci95 else 0.0 for e in estimates])
            high = np.array([e.ci95[1] - e.mean if e.ci95 else 0.0 for e in estimates])
            ax.errorbar(at, means, yerr=[low, high], marker="o", capsize=3, label=arm)
        if ARMS[arm][0] == "conditional":
            for ax, key in ((axes[2], "control_auroc"), (axes[3], "tag_auroc")):
                ax.plot(at, [cells[(arm, x)][key] for x in xs], marker="o", label=arm)
    for ax, protocol in zip(axes[:2], ("paper", "emit-good")):
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_yscale("log", base=2)
        ax.set_ylabel(f"MLE / arm misalignment, {protocol} protocol")
    axes[2].set_ylabel("control-token AUROC")
    axes[3].set_ylabel("tag prediction AUROC")
    points = sorted({r["tokens"] / 1e6 for r in rows})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(points, [f"{p:.0f}" for p in points])
        ax.set_xlabel("training tokens (M)")
        ax.legend(fontsize=7)
    fig.suptitle(
        "toxicity, tiny preset: MLE / arm over training tokens, geometric mean and 95% CI over seeds "
        f"{sorted({r['seed'] for r in rows})}"
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
    p.add_argument("--no-train", action="store_true", help="only the runs already trained (evaluating what is not)")
    args = p.parse_args()
    if args.arms[0] != "mle":
        p.error("the first arm must be mle: it is the others' baseline and KL reference")
    started = time.perf_counter()
    rows = measure(args)
    out = Path(args.out)
    (out / "curve.json").write_text(json.dumps({"args": vars(args) | {"plot": str(args.plot)}, "rows": rows}, indent=1))
    print(table(rows))
    if len(args.seeds) > 1:
        print(summary(rows))
    if args.plot:
        plot(rows, args.plot)
    print(f"RESULT token_curve: {len(rows)} checkpoints in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
