"""Find a conditional-training configuration that works at the tiny preset's scale, by measurement.

Every candidate is a set of overrides of ``configs/tiny/toxicity/conditional.yaml`` (labels,
thresholds, margin; the token budget stays the preset's unless a candidate says so, and then its
MLE baseline gets the same budget). Each is trained on every search seed, evaluated under every
sampling protocol, and compared with the MLE run of the same seed and budget. The selection rule is
fixed here, before any figure exists:

  among candidates whose control-token AUROC >= 0.8 and held-out LM loss <= 1.02 x MLE's on every
  seed, take the (candidate, protocol) with the largest *smallest* misalignment ratio
  (MLE / candidate) over the seeds.

With ``--confirm-seeds`` the chosen candidate is then run, unchanged, on new seeds beside MLE and
the four other objectives (their presets), and the targets are checked there.

    python bench/conditional_search.py --workers 2                       # CPU: hours
    python bench/conditional_search.py --workers 12 --confirm-seeds 45 46 47   # one GPU: minutes

Arms run as ``phf train`` / ``phf eval`` subprocesses, ``--workers`` at a time (on one GPU they
share it). Finished arms (eval.json present) are skipped, so a rerun continues. Prints one line per
arm and the tables; writes ``<out>/search.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from phf.evaluation.results import EvalResults, headline

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ("paper", "emit-good", "recondition")
PRESET = "configs/tiny/toxicity"
TWO_M = ["training.max_steps=1000"]  # 2M tokens at the preset's 16 x 128 per step

# name -> (objective, overrides, budget). The preset's threshold 0.0185 is the 25th percentile of
# the demo corpus's segment scores; 0.5 is the scorer's hit threshold (a segment it calls toxic).
CANDIDATES = {
    "p25": ("conditional", [], "1M"),
    "p5": ("conditional", ["objective.threshold=null", "objective.percentile=5"], "1M"),
    "p25-every4": ("conditional", ["objective.tag_every=4"], "1M"),
    "p25-every8": ("conditional", ["objective.tag_every=8"], "1M"),
    "p5-every4": ("conditional", ["objective.threshold=null", "objective.percentile=5", "objective.tag_every=4"], "1M"),
    "p25-margin-every4": ("conditional", ["objective.bad_threshold=0.5", "objective.tag_every=4"], "1M"),
    "docmean-p25-every4": (
        "conditional",
        [
            "objective.threshold=null",
            "objective.percentile=25",
            "objective.labels=document-mean",
            "objective.tag_every=4",
        ],
        "1M",
    ),
    "p25-every2": ("conditional", ["objective.tag_every=2"], "1M"),
}
BASELINES = {"1M": [], "2M": TWO_M}
OTHERS = ("filtering", "ul", "rwr", "awr")


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:5])} ... failed (exit {proc.returncode}); see {log}")


def arm(out: Path, seed: int, name: str, objective: str, overrides: list[str], args) -> dict:
    """Train and evaluate one arm (skipping what is done); its row of figures."""
    run = out / f"seed{seed}" / name
    run.parent.mkdir(parents=True, exist_ok=True)
    log = run.parent / f"{name}.log"
    started = time.perf_counter()
    if not (run / "model.safetensors").exists():
        _run(
            [
                sys.executable,
                "-m",
                "phf.cli",
                "train",
                f"{PRESET}/{objective}.yaml",
                f"output_dir={run}",
                f"data.path={args.scored}",
                f"training.seed={seed}",
                "logging.progress=false",
                "training.save_every=100000",
                f"training.mixed_precision={args.precision}",
                *args.set,
                *overrides,
                *(["--resume"] if (run / "checkpoints").exists() else []),
            ],
            log,
        )
    if not (run / "eval.json").exists():
        _run(
            [
                sys.executable,
                "-m",
                "phf.cli",
                "eval",
                str(run),
                "--seed",
                str(seed),
                "--quiet",
                "--no-scenarios",
                "--num-samples",
                str(args.num_samples),
                "--kl-samples",
                str(args.kl_samples),
                *(["--no-judge"] if args.no_judge else []),
                "--compare-protocols",
                *PROTOCOLS,
            ],
            log,
        )
    result = EvalResults.from_file(run / "eval.json")
    by = result.misalignment_by_protocol or {"-": result.misalignment}
    numbers = headline(result)
    row = {
        "seed": seed,
        "name": name,
        "objective": objective,
        "misalignment": {p: v.mean for p, v in by.items()},
        "tags_per_sample": {p: v.tags_per_sample for p, v in by.items()},
        **{k: numbers[k] for k in ("lm_loss", "kl", "control_auroc", "tag_auroc")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def run_arms(out: Path, jobs: list[tuple[int, str, str, list[str]]], args) -> list[dict]:
    """MLE arms first (the others' KL reference), then the rest, ``--workers`` at a time. A failed
    arm is reported and left out (its log says why); the others go on."""

    def attempt(job):
        try:
            return arm(out, *job, args)
        except RuntimeError as exc:
            print(f"FAILED seed{job[0]} {job[1]}: {exc}", flush=True)
            return None

    rows = []
    with ThreadPoolExecutor(args.workers) as pool:
        for wave in ([j for j in jobs if j[2] == "mle"], [j for j in jobs if j[2] != "mle"]):
            rows += [r for r in pool.map(attempt, wave) if r is not None]
    return rows


def ratios(rows: list[dict], name: str, protocol: str) -> dict[int, float]:
    """MLE / candidate misalignment per seed (MLE of the same seed and budget)."""
    out = {}
    for r in rows:
        if r["name"] != name:
            continue
        mle = next(m for m in rows if m["seed"] == r["seed"] and m["name"] == _baseline_name(r["name"]))
        mine = r["misalignment"].get(protocol, r["misalignment"].get("-"))
        out[r["seed"]] = mle["misalignment"]["-"] / max(mine, 1e-9)
    return out


def _baseline_name(name: str) -> str:
    """The MLE arm with the same token budget (arms of another budget than 1M are named NAME@BUDGET)."""
    budget = CANDIDATES[name][2] if name in CANDIDATES else name.rsplit("@", 1)[-1] if "@" in name else "1M"
    return "mle" if budget == "1M" else f"mle@{budget}"


def lm_ok(rows: list[dict], name: str) -> dict[int, float]:
    out = {}
    for r in rows:
        if r["name"] == name:
            mle = next(m for m in rows if m["seed"] == r["seed"] and m["name"] == _baseline_name(name))
            out[r["seed"]] = r["lm_loss"] / mle["lm_loss"]
    return out


def select(rows: list[dict], candidates: list[str]) -> tuple[str, str, list[dict]]:
    table = []
    for name in candidates:
        aurocs = [r["control_auroc"] for r in rows if r["name"] == name]
        lm = lm_ok(rows, name)
        if not aurocs:
            continue
        for protocol in PROTOCOLS:
            rat = ratios(rows, name, protocol)
            table.append(
                {
                    "candidate": name,
                    "protocol": protocol,
                    "min_ratio": min(rat.values()),
                    "ratios": rat,
                    "min_auroc": min(aurocs),
                    "max_lm_ratio": max(lm.values()),
                    "eligible": min(aurocs) >= 0.8 and max(lm.values()) <= 1.02,
                }
            )
    eligible = [t for t in table if t["eligible"]] or table  # none eligible: report the best anyway
    best = max(eligible, key=lambda t: t["min_ratio"])
    return best["candidate"], best["protocol"], table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scored", default="runs/demo/toxicity/scored", help="the demo's scored toxicity corpus")
    p.add_argument("--out", default="runs/conditional-search")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--confirm-seeds", type=int, nargs="*", default=[])
    p.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--kl-samples", type=int, default=128)
    p.add_argument("--no-judge", action="store_true")
    p.add_argument("--precision", default="auto", help="training.mixed_precision (no: fp32 everywhere)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every arm (smoke tests)")
    args = p.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    budgets = {CANDIDATES[c][2] for c in args.candidates}
    jobs = [(s, "mle" if b == "1M" else f"mle@{b}", "mle", BASELINES[b]) for s in args.seeds for b in sorted(budgets)]
    jobs += [(s, c, CANDIDATES[c][0], CANDIDATES[c][1]) for s in args.seeds for c in args.candidates]
    rows = run_arms(out, jobs, args)
    chosen, protocol, table = select(rows, args.candidates)
    print("\ncandidate            protocol     min ratio  ratios per seed           min AUROC  max LM ratio")
    for t in sorted(table, key=lambda t: -t["min_ratio"]):
        print(
            f"{t['candidate']:20s} {t['protocol']:12s} {t['min_ratio']:9.2f}  "
            f"{', '.join(f'{s}: {v:.2f}' for s, v in t['ratios'].items()):25s} {t['min_auroc']:9.3f}  "
            f"{t['max_lm_ratio']:.4f}{'' if t['eligible'] else '  (not eligible)'}"
        )
    print(f"\nchosen: {chosen} with the {protocol} protocol")
    summary = {"rows": rows, "table": table, "chosen": chosen, "protocol": protocol}
    if args.confirm_seeds:
        objective, overrides, budget = CANDIDATES[chosen]
        budget_overrides = BASELINES[budget]
        confirm = [(s, "mle", "mle", budget_overrides) for s in args.confirm_seeds]
        confirm += [(s, chosen, objective, overrides) for s in args.confirm_seeds]
        confirm += [
            (s, f"{o}@{budget}" if budget != "1M" else o, o, budget_overrides)
            for s in args.confirm_seeds
            for o in OTHERS
        ]
        crows = run_arms(out, confirm, args)
        mle = {r["seed"]: r for r in crows if r["objective"] == "mle"}
        print(f"\nconfirmation on seeds {args.confirm_seeds} (each against its own MLE run):")
        for r in crows:
            if r["objective"] == "mle":
                continue
            base = mle[r["seed"]]
            rat = {p: base["misalignment"]["-"] / max(v, 1e-9) for p, v in r["misalignment"].items()}
            print(
                f"seed{r['seed']} {r['name']:22s} ratio "
                + ", ".join(f"{p} {v:.2f}x" for p, v in rat.items())
                + f"  LM {r['lm_loss'] / base['lm_loss']:.4f}x  AUROC {r['control_auroc']}"
            )
        summary["confirmation"] = crows
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "search.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{summary['seconds']:.0f} s; {out / 'search.json'}")


if __name__ == "__main__":
    main()
