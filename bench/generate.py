"""Sampling throughput: phf's sampler (``phf.evaluation.sampling.generate``) against ``model.generate``.

Both sample unconditionally (prompt = EOS) with the paper's evaluation settings on the same model:
temperature 0.7, top-p 0.9, top-k 0, min 10 new tokens, the same batch size, and the same forbidden
ids (the vocabulary-padding rows, which phf always forbids; ``suppress_tokens`` for transformers).
Each is warmed up, then both run ``--repeats`` times, interleaved, and the median time counts.
Then the phf samples are scored with each of phf's scorers (toxicity, toxicity-judge, pii, pep8):
scoring-only samples/s and end-to-end (sample + score) samples/s per scorer.

    python bench/generate.py                 # CPU: tiny preset shape; CUDA: GPT-2 small
    python bench/generate.py --preset gpt2-small --num-samples 256 --max-new-tokens 128
    python bench/generate.py --prompts mixed  # prompts of 1-32 tokens: every batch left-padded

Models have random weights (the shape is what costs time). A random-weight model almost never
samples EOS, so every row runs to ``max_new_tokens``: the figures are those of full-length samples,
and phf's dropping of finished rows (which helps trained models, whose samples often end early)
does not come into play. On CPU phf draws the nucleus without sorting the vocabulary (see
``phf.evaluation.sampling._sample``); on CUDA it sorts, like transformers, and replays each decoding step as a
CUDA graph (timed without them too, as ``phf_eager``). Ends with ``RESULT <json>``:
``samples_s.phf``, ``samples_s.hf_generate``, ``ratio.phf_vs_hf_generate`` (tokens/s alike; on CUDA
``samples_s.phf_eager`` and ``ratio.phf_vs_phf_eager`` too), then per
scorer ``scoring_samples_s.<name>`` (scoring alone) and ``scored_samples_s.<name>`` (sampling + scoring).
Figures are comparisons within one run on one machine; anything else running on a shared CPU skews
them (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from phf.evaluation.sampling import SamplingConfig, generate  # noqa: E402

SCORERS = ("toxicity", "toxicity-judge", "pii", "pep8")
# name -> (model section of the preset, context)
PRESETS = {
    "tiny": ({"n_layer": 2, "n_head": 4, "n_embd": 128}, 128, 4096),  # configs/tiny/base.yaml
    "gpt2-small": ({"n_layer": 12, "n_head": 12, "n_embd": 768}, 1024, 50257),
}


def _words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    syllables = [
        "ba",
        "ke",
        "lo",
        "mi",
        "nu",
        "ra",
        "si",
        "to",
        "ve",
        "xa",
        "zo",
        "pre",
        "ston",
        "ing",
        "er",
        "the",
        "and",
        "of",
        "qu",
        "sh",
        "ch",
        "th",
    ]
    vocab = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 30))) + "." for _ in range(n)]


def build_tokenizer(preset: str, vocab_size: int):
    from phf.data.tokenizer import gpt2_tokenizer, train_bpe

    if preset == "gpt2-small":
        try:
            return gpt2_tokenizer()
        except Exception as exc:
            print(f"(GPT-2 tokenizer unavailable: {type(exc).__name__}; using a BPE trained on synthetic text)")
    return train_bpe(_words(4000), vocab_size=vocab_size)


def build(preset: str, device: str, dtype: torch.dtype):
    from phf.config import ModelConfig
    from phf.training.model import build_model

    shape, context, vocab_size = PRESETS[preset]
    tokenizer = build_tokenizer(preset, vocab_size)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(model_type="gpt2", config=dict(shape), pad_vocab_multiple=64),
        vocab_size=max(len(tokenizer), vocab_size),
        seq_len=context,
        eos_id=tokenizer.eos_token_id,
    )
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompt_rows(tokenizer, n: int, kind: str) -> list[list[int]]:
    """``n`` prompts as id lists, shortest first (the order phf batches them in): EOS alone (the
    paper's unconditional samples), or EOS + 0-31 tokens of text, so that every batch is left-padded
    (like the evaluation's scenario prompts)."""
    eos = tokenizer.eos_token_id
    if kind == "eos":
        return [[eos]] * n
    text = tokenizer(" ".join(_words(40, seed=1)), add_special_tokens=False)["input_ids"]
    return sorted(([eos] + text[i % 97 : i % 97 + i % 32] for i in range(n)), key=len)


def run_phf(model, tokenizer, config: SamplingConfig, rows: list[list[int]]):
    return generate(model, tokenizer, rows, config)


def run_hf(model, tokenizer, config: SamplingConfig, rows: list[list[int]], suppress: list[int]):
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)
    outs = []
    with torch.inference_mode():
        for start in range(0, len(rows), config.batch_size):
            batch = rows[start : start + config.batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([[eos] * (width - len(r)) + r for r in batch], device=device)  # left-padded
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=device)
            outs.append(
                model.generate(
                    ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    top_k=config.top_k,
                    min_new_tokens=config.min_new_tokens,
                    max_new_tokens=config.max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=eos,
                    suppress_tokens=suppress or None,
                )
            )
    return outs


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="model shape (default: tiny on CPU, gpt2-small on CUDA)"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="default: float32 on CPU, bfloat16 on CUDA",
    )
    parser.add_argument("--num-samples", type=int, default=None, help="default: 64 on CPU, 512 on CUDA")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 on CPU, 128 on CUDA")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's, or 1 when the load average already reaches "
        "the core count: on a CPU shared with other busy processes, OpenMP threads stall "
        "each other and every op, both samplers', runs many times slower and erratically)",
    )
    parser.add_argument(
        "--prompts",
        choices=["eos", "mixed"],
        default="eos",
        help="eos: every sample from EOS alone (equal-length batches); mixed: EOS + 0-31 "
        "tokens of text, every batch left-padded",
    )
    parser.add_argument("--scorers", default=",".join(SCORERS), help="comma-separated; '' for none")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    threads = args.threads
    if threads is None and not cuda and hasattr(os, "getloadavg") and os.getloadavg()[0] >= (os.cpu_count() or 1):
        threads = 1
        print(
            f"(load average {os.getloadavg()[0]:.1f} >= {os.cpu_count()} cores: using 1 torch thread; "
            "pass --threads to override)"
        )
    if threads:
        torch.set_num_threads(threads)
    preset = args.preset or ("gpt2-small" if cuda else "tiny")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    n = args.num_samples or (512 if cuda else 64)
    max_new = args.max_new_tokens or (128 if cuda else 64)

    model, tokenizer = build(preset, args.device, dtype)
    vocab_rows = model.get_output_embeddings().weight.shape[0]
    padding = list(range(len(tokenizer), vocab_rows))
    config = SamplingConfig(
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        min_new_tokens=10,
        max_new_tokens=max_new,
        batch_size=args.batch_size,
        seed=0,
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"device {device_name}, load average {load:.2f}; {preset} GPT-2 ({params:.1f}M params, vocab {vocab_rows}, "
        f"{len(padding)} padding rows forbidden), {dtype}; {n} samples ({args.prompts} prompts), batch "
        f"{config.batch_size}, {config.min_new_tokens}-{max_new} new tokens, T {config.temperature}, top-p "
        f"{config.top_p}, top-k {config.top_k}"
    )

    # On CUDA phf replays its decoding steps as CUDA graphs; "phf_eager" is phf's loop without them.
    eager = SamplingConfig(**{**vars(config), "cuda_graphs": False}) if cuda else None
    # Warm-up (kernels, allocator, lazy imports), one batch each.
    warm = SamplingConfig(**{**vars(config), "max_new_tokens": min(max_new, 16)})
    rows = prompt_rows(tokenizer, n, args.prompts)
    run_phf(model, tokenizer, warm, rows[: config.batch_size])
    run_hf(model, tokenizer, warm, rows[: config.batch_size], padding)

    times = {"phf": [], "hf_generate": [], **({"phf_eager": []} if eager else {})}
    samples = None
    for _ in range(args.repeats):
        sync(args.device)
        start = time.perf_counter()
        samples = run_phf(model, tokenizer, config, rows)
        sync(args.device)
        times["phf"].append(time.perf_counter() - start)
        times["hf_generate"].append(timed(lambda: run_hf(model, tokenizer, config, rows, padding), args.device))
        if eager:
            times["phf_eager"].append(timed(lambda: run_phf(model, tokenizer, eager, rows), args.device))
    new_tokens = sum(len(g.token_ids) for g in samples)
    finished = sum(g.finished for g in samples)
    result: dict[str, float | str] = {
        "device": device_name,
        "preset": preset,
        "dtype": str(dtype).split(".")[-1],
        "num_samples": n,
        "prompts": args.prompts,
        "max_new_tokens": max_new,
    }
    print(f"\n{'sampler':<14}{'median s':>10}{'samples/s':>12}{'tokens/s':>12}   runs (s)")
    median = {}
    for name, ts in times.items():
        median[name] = statistics.median(ts)
        sps = n / median[name]
        result[f"samples_s.{name}"] = round(sps, 2)
        result[f"tokens_s.{name}"] = round(sps * new_tokens / n, 1)
        print(
            f"{name:<14}{median[name]:>10.3f}{sps:>12.1f}{sps * new_tokens / n:>12.0f}   "
            + " ".join(f"{t:.3f}" for t in ts)
        )
    ratio = median["hf_generate"] / median["phf"]
    result["ratio.phf_vs_hf_generate"] = round(ratio, 3)
    if eager:
        result["ratio.phf_vs_phf_eager"] = round(median["phf_eager"] / median["phf"], 3)
        print(f"phf with CUDA graphs vs without: {result['ratio.phf_vs_phf_eager']:.2f}x samples/s")
    print(
        f"phf vs model.generate: {ratio:.2f}x samples/s  ({finished}/{n} phf samples ended with EOS, "
        f"mean {new_tokens / n:.1f} new tokens)"
    )

    scorers = [s for s in args.scorers.split(",") if s]
    if scorers:
        from phf.data.scoring import get_scorer

        texts = [g.text for g in samples]
        print(f"\n{'scorer':<16}{'score s':>10}{'scoring samples/s':>19}{'sample+score samples/s':>24}{'mean':>9}")
        for name in scorers:
            try:
                scorer = get_scorer(name)
                scorer.score(texts[:2])  # load the scorer's model outside the timing
                start = time.perf_counter()
                scores = scorer.score(texts)
                elapsed = time.perf_counter() - start
            except Exception as exc:
                print(f"{name:<16}unavailable: {type(exc).__name__}: {exc}")
                continue
            scoring = n / elapsed
            end_to_end = n / (median["phf"] + elapsed)
            result[f"scoring_samples_s.{name}"] = round(scoring, 1)
            result[f"scored_samples_s.{name}"] = round(end_to_end, 2)
            print(f"{name:<16}{elapsed:>10.3f}{scoring:>19.1f}{end_to_end:>24.1f}{sum(scores) / len(scores):>9.3f}")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
