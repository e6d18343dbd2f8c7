"""Training-state memory per GPU under DDP and FSDP (docs/scaling.md), computed from the model's shape.

AdamW with fp32 master weights (phf's default, bf16 autocast or not): 4 bytes of parameter, 4 of
gradient and 8 of Adam moments per parameter. DDP holds all of it on every GPU, plus its gradient
buckets (another fp32 copy of the gradients). FSDP (phf.training.parallel) holds 1/W of it, plus
what is gathered while it runs: the root unit (embeddings, final norm, value head) from forward to
backward with its unsharded gradient, and at most two transformer blocks (the one running and the
one prefetched) with theirs, all in fp32. Activations are not counted: they depend on
micro_batch_size x seq_len and are the same under both.

    python bench/fsdp_memory.py [--gpus 8]
"""

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM

SHAPES = {
    "GPT-2 small (paper)": {"n_layer": 12, "n_head": 12, "n_embd": 768},
    "GPT-2 shape, 1B": {"n_layer": 18, "n_head": 16, "n_embd": 2048},
}
VOCAB, SEQ = 50304, 1024  # GPT-2's tokenizer padded to a multiple of 64 (phf's default), 1024 positions
GB = 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args()
    print("| model | parameters | DDP, any W | " + " | ".join(f"FSDP, W={w}" for w in args.gpus) + " |")
    print("|---|---|---|" + "---|" * len(args.gpus))
    for name, shape in SHAPES.items():
        config = AutoConfig.for_model("gpt2", vocab_size=VOCAB, n_positions=SEQ, **shape)
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(config)
        n = sum(p.numel() for p in lm.parameters())
        block = sum(p.numel() for p in lm.transformer.h[0].parameters())
        root = n - block * config.n_layer
        ddp = (16 + 4) * n
        gathered = 2 * 4 * root + 2 * 2 * 4 * block  # fp32 parameters + gradients, unsharded
        fsdp = [16 * n / w + gathered for w in args.gpus]
        cells = " | ".join(f"{m / GB:.2f} GB" for m in fsdp)
        print(f"| {name} | {n / 1e6:,.0f}M | {ddp / GB:.2f} GB | {cells} |")


if __name__ == "__main__":
    main()
