"""How many documents a training batch draws from, with the sequences read in stream order and
within shuffle windows (``data.shuffle_window``).

PackedStream shuffles documents, then packs them into ``seq_len`` blocks; a batch of consecutive
blocks is a contiguous piece of that stream, so where documents are long it comes from one or two of
them. Prints, per window size, the median number of distinct documents per batch and the share of
batches drawn from a single document (docs/paper-vs-phf.md, "Batches from one document").

    python bench/batch_mix.py --scored runs/paper/pii/pii/scored --tokenizer runs/paper/pii/pii/seed42/mle
"""

from __future__ import annotations

import argparse

import numpy as np
from transformers import AutoTokenizer

from phf.data.stream import PackedStream, long_document_share
from phf.data.token_store import build_token_store


def documents_per_batch(stream: PackedStream, batch: int, batches: int) -> np.ndarray:
    """Distinct documents in each of the first ``batches`` batches."""
    return np.array(
        [
            len({int(d) for i in range(b * batch, (b + 1) * batch) for d in stream.sample_documents(i)})
            for b in range(batches)
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scored", required=True, help="a scored corpus directory (phf score --out)")
    p.add_argument("--tokenizer", required=True, help="a run directory or tokenizer the corpus is tokenized with")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (the tiny preset: 128)")
    p.add_argument("--batch", type=int, default=16, help="sequences per optimizer step (the tiny preset: 16)")
    p.add_argument("--windows", type=int, nargs="+", default=[1, 64, 512], help="data.shuffle_window values")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()

    store = build_token_store(args.scored, AutoTokenizer.from_pretrained(args.tokenizer), progress=False)
    lengths = np.diff(np.asarray(store.doc_offsets))
    batch_tokens = args.seq_len * args.batch
    print(
        f"{args.scored}: {len(lengths)} documents, {int(lengths.sum()):,} tokens, median document "
        f"{np.median(lengths):.0f} tokens, {long_document_share(store, batch_tokens):.0%} "
        f"of tokens in documents longer than a batch ({batch_tokens} tokens)"
    )
    print("| shuffle_window | documents per batch (median) | batches from one document |")
    print("|--:|--:|--:|")
    for window in args.windows:
        stream = PackedStream(store, args.seq_len, 0, seed=args.seed, shuffle_window=window)
        counts = documents_per_batch(stream, args.batch, stream.blocks_in_epoch(0) // args.batch)
        print(f"| {window} | {np.median(counts):.0f} | {np.mean(counts == 1):.1%} |")


if __name__ == "__main__":
    main()
