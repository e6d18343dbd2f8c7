"""Cost of building training blocks: microseconds per packed sample, per transform and document length.

The training stream (``phf.data.stream.PackedStream``) builds every block on demand from the token store.
On a GPU the next step's blocks are built on a background thread while the current step runs; that
thread shares the GIL with the thread launching kernels, so what matters is how much CPU time a
step's blocks take. This times ``stream[i]`` for MLE (plain packing) and conditional training
(control tokens before each segment, some dropped) on synthetic stores whose documents have
log-normal lengths (median 100, 1,000, 5,000 tokens) and a segment every ~25 tokens, with GPT-2's
vocabulary and 1,024-token blocks, and prints the CPU time one 64 x 1024-token step's blocks take.

    python bench/stream.py
    python bench/stream.py --seq-len 128 --samples 2000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from phf.data.stream import Conditional, PackedStream

VOCAB, EOS, GOOD, BAD = 50257, 50256, 50257, 50258


def synthetic_store(median_tokens: int, total_tokens: int, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    lengths = np.maximum(5, rng.lognormal(np.log(median_tokens), 1.0, total_tokens // median_tokens).astype(np.int64))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    seg_start = rng.random(n) < 1 / 25
    seg_start[offsets[:-1]] = True  # every document starts a segment
    return SimpleNamespace(
        doc_offsets=offsets,
        tokens=rng.integers(0, VOCAB, n).astype(np.uint16),
        scores=rng.random(n).astype(np.float32),
        seg_start=seg_start.astype(np.uint8),
        doc_avg_score=rng.random(len(lengths)),
    )


def time_samples(stream: PackedStream, samples: int) -> float:
    """Median of 5 passes of ``samples`` consecutive blocks, in seconds per block."""
    stream[0]  # the epoch layout (a permutation of all documents) is built once, untimed
    passes = []
    for p in range(5):
        started = time.perf_counter()
        for i in range(1 + p * samples, 1 + (p + 1) * samples):
            stream[i]
        passes.append((time.perf_counter() - started) / samples)
    return float(np.median(passes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=200, help="blocks per timed pass (5 passes)")
    parser.add_argument("--batch", type=int, default=64, help="samples per step, for the per-step figure")
    args = parser.parse_args()
    if args.seq_len < 1 or args.samples < 1 or args.batch < 1:
        parser.error("--seq-len, --samples and --batch must be >= 1")

    transforms = {"mle": None, "conditional": Conditional((GOOD, BAD), threshold=0.5, drop_prob=0.01)}
    figures: dict[str, float] = {"seq_len": args.seq_len, "batch": args.batch}
    print(f"block building, {args.seq_len}-token blocks ({args.batch} per step), one thread")
    print(f"{'median document':>16}{'transform':>13}{'us/block':>10}{'ms/step':>9}")
    for median in (100, 1000, 5000):
        store = synthetic_store(median, max(20 * median, 6 * args.seq_len * args.samples))
        for name, conditional in transforms.items():
            stream = PackedStream(store, args.seq_len, EOS, seed=0, conditional=conditional)
            seconds = time_samples(stream, args.samples)
            figures[f"us_per_block.{name}.doc{median}"] = round(seconds * 1e6, 1)
            print(f"{median:>10} tokens{name:>13}{seconds * 1e6:>10.0f}{seconds * args.batch * 1e3:>9.2f}")
    print("RESULT " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
