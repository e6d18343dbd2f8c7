"""A minimal pure-PyTorch GPT-2 and its training-throughput benchmark: the speed of light for phf.

No transformers, no accelerate, no data pipeline: pre-LN blocks with one fused qkv projection,
``F.scaled_dot_product_attention(is_causal=True)``, a tanh-GELU MLP, tied input/output embeddings,
the vocabulary padded to a multiple of 64 (50304 for GPT-2), dropout 0. It trains on random tokens
with fused AdamW (under bf16 autocast by default on CUDA), with gradient accumulation and grad-norm
clipping like phf's loop, optionally ``torch.compile``'d. ``bench/train.py`` runs it next to phf's
objectives, with the same shape, batch, sequence length and precision, to show how far phf is from
a bare training loop.

    python bench/minimal_gpt.py --tiny            # CPU smoke check: a 2-layer model, a few steps
    python bench/minimal_gpt.py                   # GPT-2 small, 64 x 1024 tokens per step
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64
    seq_len: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.out = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # (B, T, 3, H, D/H) -> three (B, H, T, D/H) views
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class MinimalGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        # The two fields phf.training.metrics.flops_per_token reads, so MFU is computed the same way for both.
        self.config = SimpleNamespace(num_hidden_layers=cfg.n_layer, hidden_size=cfg.n_embd)
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.seq_len, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied
        self.apply(self._init)
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2: scale the residual-stream writes
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, std=residual_std)
            nn.init.normal_(block.proj.weight, std=residual_std)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; ``targets`` are already shifted (same shape as ``idx``)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=device.type in ("cuda", "cpu"))


def run_benchmark(
    *,
    n_layer: int = 12,
    n_head: int = 12,
    n_embd: int = 768,
    vocab_size: int = 50304,
    seq_len: int = 1024,
    batch_size: int = 64,
    micro_batch_size: int = 16,
    steps: int = 20,
    warmup: int = 5,
    compile: bool = False,
    device: str | None = None,
    bf16: bool | None = None,
    lr: float = 5e-4,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 42,
    make_model=None,
    profile_steps: int = 0,
) -> dict:
    """Train on random tokens; returns tok_s, step_s, peak_mem_mb (CUDA) and mfu (known CUDA devices).

    ``make_model(GPTConfig)`` swaps in another model for :class:`MinimalGPT` (its forward takes
    ``(idx, targets)`` and returns the mean loss): the same loop then times another model class.
    ``profile_steps`` > 0 profiles that many more steps after the timed ones (``result["profile"]``,
    see ``bench/kernel_profile.py``)."""
    from phf.training.hardware import peak_flops
    from phf.training.metrics import flops_per_token

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = (dev.type == "cuda") if bf16 is None else bf16
    if batch_size % micro_batch_size:
        raise ValueError(f"batch_size {batch_size} is not a multiple of micro_batch_size {micro_batch_size}")
    accum = batch_size // micro_batch_size
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    model = (make_model or MinimalGPT)(cfg).to(dev)
    model.train()
    fpt = flops_per_token(model, seq_len)
    optimizer = make_optimizer(model, lr, weight_decay, dev)
    step_model = torch.compile(model) if compile else model
    generator = torch.Generator(device=dev).manual_seed(seed)

    def one_step() -> None:
        for _ in range(accum):
            tokens = torch.randint(0, vocab_size, (micro_batch_size, seq_len + 1), device=dev, generator=generator)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = step_model(tokens[:, :-1], tokens[:, 1:])
            (loss / accum).backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        one_step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    started = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync()
    seconds = time.perf_counter() - started
    tok_s = steps * batch_size * seq_len / seconds
    peak = peak_flops(dev)
    result = {
        "tok_s": tok_s,
        "step_s": seconds / max(steps, 1),
        "flops_per_token": fpt,
        "params": sum(p.numel() for p in model.parameters()),
        "peak_mem_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "mfu": tok_s * fpt / peak if peak else None,
        "device": str(dev),
    }
    if profile_steps > 0:
        from kernel_profile import profile_steps as profile

        summary = profile(lambda: [one_step() for _ in range(profile_steps)], dev, profile_steps)
        if summary is not None:
            result["profile"] = summary
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2 layers, d=64, vocab 512, seq 32: a CPU smoke check")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.tiny:
        shape = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, seq_len=32, batch_size=8, micro_batch_size=4)
        steps, warmup = args.steps or 5, args.warmup if args.warmup is not None else 1
    else:
        shape = {}
        steps, warmup = args.steps or 20, args.warmup if args.warmup is not None else 5
    result = run_benchmark(**shape, steps=steps, warmup=warmup, compile=args.compile, device=args.device)
    mfu = f", MFU {100 * result['mfu']:.1f}%" if result["mfu"] else ""
    print(f"minimal GPT on {result['device']}: {result['tok_s']:,.0f} tok/s{mfu}")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
