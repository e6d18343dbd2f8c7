"""How far the data lets each objective go: the scorer's mean on document openings, all documents
against the documents an objective keeps or tags ``<|good|>``.

A model that learnt its training distribution exactly would sample document openings like these.
MLE's ideal is every document; filtering's, the documents it keeps; conditional training's under
``<|good|>``, the documents its labels tag good (for segment labels: whose first segment is good,
as the ``<|good|>`` prompt asks, or every segment of the opening, as the protocols that forbid
``<|bad|>`` ask). The ratio of the two means is
the MLE/arm misalignment such an ideal model would reach, the ceiling a real model is measured
against; it separates "the labels select little" (a low ceiling) from "the model does not realise
what the labels select" (a high ceiling, a low measured ratio). Beside each selection, the same
openings with their words shuffled across the selection's documents: a bag-of-words scorer's
reading of text with the selection's vocabulary and no coherence, which is what a small model's
samples are closer to.

    python bench/label_ceiling.py --scored runs/curve/scored64
    python bench/label_ceiling.py --scored runs/paper/toxicity/toxicity/scored --segment 0.0185 --filtering 0.076

Thresholds are scores (``0.0185``) or percentiles (``p25``), resolved as phf resolves
``percentile=25``: over segment scores for segment labels, over segments' document-mean scores for
document labels, over documents' ``avg_score`` for filtering. Prints one row per selection and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from phf.data.score_corpus import scored_document_segments
from phf.data.scoring import get_scorer, hit_threshold


def load(scored: Path) -> list[dict]:
    docs = [{"texts": texts, "scores": scores} for texts, scores in scored_document_segments(scored)]
    if not docs:
        raise SystemExit(f"{scored} holds no scored documents: pass a `phf score` output directory")
    return docs


def resolve(spec: str, values: np.ndarray) -> float:
    return float(np.nanpercentile(values, float(spec[1:]))) if spec.startswith("p") else float(spec)


def in_opening(texts: list[str], chars: int) -> int:
    """How many segments start within the first ``chars`` characters."""
    starts = np.cumsum([0] + [len(t) for t in texts[:-1]])
    return int(np.sum(starts < chars))


def selections(
    docs: list[dict], segment: list[str], document: list[str], filtering: list[str], chars: int
) -> dict[str, np.ndarray]:
    scores = [np.asarray(d["scores"], dtype=np.float64) for d in docs]
    opening = [in_opening(d["texts"], chars) for d in docs]
    every_segment = np.concatenate(scores)
    doc_mean = np.array([np.nanmean(s) if len(s) else np.nan for s in scores])
    # Document labels' percentiles are over segments (each segment carries its document's mean).
    per_segment_mean = np.concatenate([np.full(len(s), m) for s, m in zip(scores, doc_mean)])
    out = {"all documents (MLE)": np.ones(len(docs), dtype=bool)}
    for spec in segment:
        t = resolve(spec, every_segment)
        out[f"segment <= {spec} ({t:.4g}): first segment good"] = np.array([len(s) > 0 and s[0] <= t for s in scores])
        out[f"segment <= {spec} ({t:.4g}): every segment of the opening good"] = np.array(
            [len(s) > 0 and bool(np.all(s[:n] <= t)) for s, n in zip(scores, opening)]
        )
    for spec in document:
        t = resolve(spec, per_segment_mean)
        out[f"document mean <= {spec} ({t:.4g}): good documents"] = doc_mean <= t
    for spec in filtering:  # filtering's percentiles are over documents
        t = resolve(spec, doc_mean)
        out[f"filtering, avg_score <= {spec} ({t:.4g}): kept documents"] = doc_mean <= t
    return out


def shuffled(openings: list[str], seed: int = 0) -> list[str]:
    """Each opening's words drawn at random from all the openings' words (lengths kept)."""
    rng = np.random.default_rng(seed)
    words = np.array([w for t in openings for w in t.split()], dtype=object)
    if len(words) == 0:
        return list(openings)
    return [" ".join(rng.choice(words, size=len(t.split()))) for t in openings]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scored", type=Path, required=True, help="a `phf score` output directory")
    p.add_argument("--scorer", default="toxicity", help="the task's scorer (the evaluation's)")
    p.add_argument("--segment", nargs="*", default=["p25", "0.5"], help="segment-label thresholds")
    p.add_argument("--document", nargs="*", default=["p25"], help="document-mean-label thresholds")
    p.add_argument("--filtering", nargs="*", default=[], help="filtering thresholds (percentiles over documents)")
    p.add_argument(
        "--chars",
        type=int,
        default=500,
        help="opening length: 128 sampled tokens of the tiny preset's BPE are about this many characters",
    )
    p.add_argument("--out", type=Path, default=Path("runs/label-ceiling.json"))
    args = p.parse_args()
    started = time.perf_counter()
    docs = load(args.scored)
    scorer = get_scorer(args.scorer)
    openings = ["".join(d["texts"])[: args.chars] for d in docs]
    score = np.asarray(scorer.score(openings), dtype=np.float64)
    hit = hit_threshold(scorer)
    base = float(np.nanmean(score))
    rows = {}
    print(f"{len(docs)} documents of {args.scored}; openings of {args.chars} characters scored by {args.scorer}")
    print(f"| selection | documents | mean score | hit rate (> {hit}) | ideal MLE/arm | words shuffled |")
    print("|:--|--:|--:|--:|--:|--:|")
    for name, keep in selections(docs, args.segment, args.document, args.filtering, args.chars).items():
        mean = float(np.nanmean(score[keep]))
        salad = float(np.nanmean(scorer.score(shuffled([t for t, k in zip(openings, keep) if k]))))
        rows[name] = {
            "documents": float(keep.mean()),
            "mean": mean,
            "hit_rate": float(np.mean(score[keep] > hit)),
            "ratio": base / mean if mean > 0 else None,  # None: the selection holds no violation at all
            "shuffled_mean": salad,
        }
        r = rows[name]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "unbounded (mean 0)"
        print(f"| {name} | {r['documents']:.1%} | {mean:.4g} | {r['hit_rate']:.3f} | {ratio} | {salad:.4g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    print(f"RESULT label_ceiling: {len(rows)} selections in {time.perf_counter() - started:.0f} s; {args.out}")


if __name__ == "__main__":
    main()
