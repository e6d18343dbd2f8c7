"""How far a control tag reaches: does a conditional model's ``<|bad|>`` / ``<|good|>`` prefix still
change its predictions N tokens later?

For held-out-like documents of a scored corpus (the last shards), labelled bad or good by their
mean segment score, each document's first tokens are scored twice, after ``EOS <|bad|>`` and after
``EOS <|good|>`` and with no other tag, as the paper's protocol samples (tags forbidden after the
prompt). Printed: the mean of log p(x_t | bad) - log p(x_t | good) over documents, by position t.
A model that uses its tags shows a positive difference on bad documents and a negative one on
good documents all along; one whose tag effect fades shows it only on the first tokens, and then
its samples are MLE's after their opening, whatever the tag.

    python bench/tag_reach.py runs/token-curve/seed43/conditional-docmean \
        --scored runs/curve/scored64 --threshold 0.02812
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

BUCKETS = [(1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 126)]


def documents(scored: Path, shards: int) -> list[dict]:
    files = sorted((scored / "data").glob("*.parquet"))[-shards:]
    if not files:
        raise SystemExit(f"{scored} holds no data/*.parquet: pass a `phf score` output directory")
    return [r for f in files for r in pq.read_table(f, columns=["texts", "scores"]).to_pylist() if r["scores"]]


@torch.no_grad()
def differences(model, tok, docs: list[dict], length: int) -> list[np.ndarray]:
    """Per document: log p(x_t | EOS <|bad|> x_<t) - log p(x_t | EOS <|good|> x_<t), t = 1..length."""
    good, bad = tok.convert_tokens_to_ids("<|good|>"), tok.convert_tokens_to_ids("<|bad|>")
    out = []
    for d in docs:
        ids = tok("".join(d["texts"]))["input_ids"][:length]
        if len(ids) < 8:
            continue
        target = torch.tensor(ids)[:, None]
        logp = []
        for tag in (bad, good):
            logits = model(torch.tensor([[tok.eos_token_id, tag, *ids]])).logits[0, 1:-1].float()
            logp.append(logits.log_softmax(-1).gather(1, target)[:, 0].numpy())
        out.append(logp[0] - logp[1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a conditional run (an HF directory with <|good|> and <|bad|>)")
    p.add_argument("--scored", type=Path, required=True, help="a `phf score` output directory")
    p.add_argument("--threshold", type=float, required=True, help="a document is bad above this mean score")
    p.add_argument("--documents", type=int, default=150, help="documents per label")
    p.add_argument("--shards", type=int, default=4, help="the corpus's last shards to draw them from")
    p.add_argument("--out", type=Path, help="write the table (JSON)")
    args = p.parse_args()
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.run)
    model = AutoModelForCausalLM.from_pretrained(args.run).eval()
    docs = documents(args.scored, args.shards)
    rng = np.random.default_rng(0)
    table = {}
    print(f"{args.run}: mean log p(x_t | bad) - log p(x_t | good), nats, by token position t")
    print("| documents | n | " + " | ".join(f"t {lo}-{hi}" for lo, hi in BUCKETS) + " |")
    print("|:--|--:|" + "--:|" * len(BUCKETS))
    for label, bad in (("bad", True), ("good", False)):
        chosen = [d for d in docs if (np.nanmean(d["scores"]) > args.threshold) == bad]
        picked = [chosen[i] for i in rng.choice(len(chosen), size=min(args.documents, len(chosen)), replace=False)]
        diffs = differences(model, tok, picked, BUCKETS[-1][1])
        row = {}
        for lo, hi in BUCKETS:
            values = [v for d in diffs for v in d[lo - 1 : hi]]
            row[f"{lo}-{hi}"] = float(np.mean(values)) if values else None
        table[label] = {"documents": len(diffs), "by_position": row}
        cells = " | ".join(f"{v:+.3f}" if v is not None else "-" for v in row.values())
        print(f"| {label} | {len(diffs)} | {cells} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"run": str(args.run), "threshold": args.threshold, **table}, indent=1))
    print(f"RESULT tag_reach: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
