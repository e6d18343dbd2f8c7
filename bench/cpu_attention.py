"""CPU attention in bf16 against fp32, by sequence length: where ``training.cpu_fp32_attention_below`` belongs.

Under bf16 autocast on a CPU, phf computes attention in fp32 for sequences shorter than
``training.cpu_fp32_attention_below`` (default 512), because torch's CPU flash-attention kernel is
slower in bf16 there (``phf.training.model.sdpa_in_fp32``). This times forward + backward of causal
``scaled_dot_product_attention`` on the same number of tokens per call at each sequence length, in
both dtypes, with q/k/v laid out as a transformers model produces them, and prints the shortest
length from which bf16 is at least as fast: the value to set on this CPU. The end-to-end effect on
training: ``python bench/interleaved.py --objectives mle,mle:training.cpu_fp32_attention_below=0``.

    python bench/cpu_attention.py
    python bench/cpu_attention.py --heads 12 --head-dim 64 --tokens 8192
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def fwd_bwd_ms(batch: int, heads: int, seq_len: int, head_dim: int, dtype: torch.dtype, repeats: int) -> float:
    """Median wall time of one forward + backward, in ms."""
    g = torch.Generator().manual_seed(0)
    # (batch, seq, heads, dim) storage viewed as (batch, heads, seq, dim): what a split qkv projection gives.
    qkv = [torch.randn(batch, seq_len, heads, head_dim, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]
    times = []
    for i in range(repeats + 2):  # two warm-up calls
        q, k, v = (t.transpose(1, 2) for t in qkv)
        started = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(torch.ones_like(out))
        if i >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32, help="the tiny preset's (n_embd 128 / 4 heads)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per call (batch = tokens / length)")
    parser.add_argument("--lengths", default="64,128,256,512,1024")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    try:
        lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--lengths {args.lengths!r}: comma-separated integers expected")
    if not lengths or min(lengths) < 1 or min(args.heads, args.head_dim, args.tokens, args.repeats) < 1:
        parser.error("--lengths, --heads, --head-dim, --tokens and --repeats must be >= 1")

    print(
        f"causal attention forward + backward on CPU ({torch.get_num_threads()} threads), {args.heads} heads "
        f"of {args.head_dim}, {args.tokens:,} tokens per call"
    )
    print(f"{'length':>7}{'batch':>7}{'bf16 ms':>10}{'fp32 ms':>10}{'bf16/fp32':>11}")
    figures: dict[str, object] = {
        "heads": args.heads,
        "head_dim": args.head_dim,
        "tokens": args.tokens,
        "threads": torch.get_num_threads(),
    }
    crossover = None
    for length in lengths:
        batch = max(1, args.tokens // length)
        bf16 = fwd_bwd_ms(batch, args.heads, length, args.head_dim, torch.bfloat16, args.repeats)
        fp32 = fwd_bwd_ms(batch, args.heads, length, args.head_dim, torch.float32, args.repeats)
        figures[f"ms.bf16.len{length}"], figures[f"ms.fp32.len{length}"] = round(bf16, 3), round(fp32, 3)
        print(f"{length:>7}{batch:>7}{bf16:>10.2f}{fp32:>10.2f}{bf16 / fp32:>11.2f}")
        if crossover is None and bf16 <= fp32:
            crossover = length
    figures["suggested_cpu_fp32_attention_below"] = crossover if crossover is not None else lengths[-1] + 1
    print(
        f"bf16 is at least as fast from length {crossover} on: training.cpu_fp32_attention_below={crossover}"
        if crossover is not None
        else f"fp32 was faster at every length measured: training.cpu_fp32_attention_below={lengths[-1] + 1} or more"
    )
    print("RESULT " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
