"""Per-token target log-probabilities without materialising the full logits.

Every phf objective needs only ``log p(x_t)`` of the observed next token, yet the usual path
(``lm_head`` -> ``(B, T, V)`` logits -> ``log_softmax`` in fp32 -> gather) keeps a ``(B*T, V)`` fp32
tensor alive for backward: for GPT-2 small at 8 x 1024 tokens that is 1.6 GB per micro-batch, more
than the rest of the activations. :func:`target_logprobs` takes the final hidden states and the
output embedding instead and works on ``chunk_tokens`` flattened tokens at a time, so at most one
chunk of fp32 logits exists at any time. What backward needs comes in one of two forms:

- the softmax itself, kept from forward in the matmul dtype (bf16 under bf16 autocast: half the bytes
  of the fp32 logits, a third of what ``F.cross_entropy`` keeps), when it fits ``keep_softmax_mb``
  or one chunk covers every token. Backward is then one pass over it and the two gradient matmuls;
- else one log-sum-exp per token, and backward recomputes each chunk's logits (one extra matmul, as
  in Liger's and torchtitan's chunked cross-entropy): peak extra memory ``chunk_tokens * V`` fp32
  numbers whatever the batch.

Precision follows what ``F.linear`` would do: under autocast the matmuls run in the autocast dtype
(bf16/fp16 tensor cores), otherwise in the inputs' dtype; only the logits of the current chunk are
upcast to fp32 for the log-sum-exp and the softmax, and weight/bias gradients are accumulated in fp32
across chunks. It is plain autograd (no hooks, no in-place writes into parameters), so DDP and FSDP
reduce its gradients like any other, and the only Python control flow is the static chunk loop, so
``torch.compile`` traces it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from phf.training.model import training_attention

__all__ = ["target_logprobs"]


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype ``F.linear(hidden, weight)`` would compute in right here (autocast-aware)."""
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    device_type = hidden.device.type
    # Autocast lowers fp32/fp16/bf16 matmuls and leaves float64 alone, exactly as for F.linear.
    if dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def _accumulate_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics need at least fp32; float64 inputs (tests, gradcheck) stay float64."""
    return torch.promote_types(compute_dtype, torch.float32)


def _logits(hidden: Tensor, w: Tensor, b: Tensor | None, compute_dtype: torch.dtype, acc_dtype: torch.dtype) -> Tensor:
    """One chunk's logits in the accumulation dtype (a fresh tensor: callers write into it)."""
    logits = (hidden.to(compute_dtype) @ w.T).to(acc_dtype)
    if b is not None:
        logits += b  # runs without autograd: in place saves a (chunk, V) copy
    return logits


def _matmul_logits(
    hidden: Tensor, w: Tensor, b: Tensor | None, compute_dtype: torch.dtype, acc_dtype: torch.dtype
) -> Tensor:
    """One chunk's logits as the matmul leaves them (bf16 under bf16 autocast): the softmaxes read
    them once and compute in fp32 inside their kernels, so no fp32 copy is made. With a bias, fp32."""
    return hidden.to(compute_dtype) @ w.T if b is None else _logits(hidden, w, b, compute_dtype, acc_dtype)


class _TargetLogprobs(torch.autograd.Function):
    """log p(target) = logit[target] - logsumexp(logits), chunk by chunk; backward either reuses the
    softmax kept from forward (``keep``) or recomputes each chunk's logits from the log-sum-exp."""

    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,  # (N, d)
        weight: Tensor,  # (V, d)
        bias: Tensor | None,  # (V,)
        targets: Tensor,  # (N,) int64
        chunk_tokens: int,
        ignore_index: int,
        compute_dtype: torch.dtype,
        keep: bool,
    ) -> Tensor:
        n = hidden.shape[0]
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)  # gather needs an in-range index everywhere
        acc_dtype = _accumulate_dtype(compute_dtype)
        logp = torch.empty(n, dtype=acc_dtype, device=hidden.device)
        lse = torch.empty(0 if keep else n, dtype=acc_dtype, device=hidden.device)  # recomputing needs it
        kept: list[Tensor] = []  # per chunk: its softmax in the matmul dtype, when keeping
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(acc_dtype)
            for start in range(0, n, chunk_tokens):
                end = min(start + chunk_tokens, n)
                if keep:
                    logits = _matmul_logits(hidden[start:end], w, b, compute_dtype, acc_dtype)
                    # log_softmax: one fused pass (on CPU far cheaper than logsumexp's four) with the upcast.
                    log_probs = torch.log_softmax(logits, 1, dtype=acc_dtype)
                    logp[start:end] = log_probs.gather(1, safe_targets[start:end, None]).squeeze(1)
                    del log_probs
                    # The softmax straight from the logits, in the matmul dtype: half the memory traffic
                    # of exp() over the fp32 log-softmax and a downcast.
                    kept.append(torch.softmax(logits, 1).to(compute_dtype))
                else:
                    logits = _logits(hidden[start:end], w, b, compute_dtype, acc_dtype)
                    target_logit = logits.gather(1, safe_targets[start:end, None]).squeeze(1)
                    # cross_entropy's fused kernel is faster than logsumexp + gather; lse follows from it.
                    lse[start:end] = target_logit + F.cross_entropy(logits, safe_targets[start:end], reduction="none")
                    logp[start:end] = target_logit - lse[start:end]
        # Saved like any tensor (not stashed on ctx): torch.compile traces it, and a second backward
        # through a retained graph finds it intact.
        ctx.save_for_backward(hidden, weight, bias, safe_targets, valid, lse, logp, *kept)
        ctx.chunk_tokens = chunk_tokens
        ctx.compute_dtype = compute_dtype
        return torch.where(valid, logp, 0.0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp: Tensor):
        hidden, weight, bias, targets, valid, lse, logp, *kept = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        chunk_tokens, compute_dtype = ctx.chunk_tokens, ctx.compute_dtype
        n = hidden.shape[0]
        acc_dtype = logp.dtype
        # Ignored targets get no gradient; where() also stops a NaN upstream grad from leaking in.
        g = torch.where(valid, grad_logp.to(acc_dtype), 0.0)
        # d logp / d logit_target = 1 - p_target, from the fp32 log-prob: a bf16 softmax cannot
        # resolve 1 - p of a confident prediction (p = 0.999 rounds to 0.9961 or 1).
        g_target = (g * -torch.expm1(logp))[:, None]
        # Gradients nobody asked for stay empty and are returned as None.
        grad_h = torch.empty_like(hidden) if need_h else hidden.new_empty(0)
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_w else weight.new_empty(0)
        grad_b = torch.zeros(bias.shape, dtype=acc_dtype, device=bias.device) if need_b else weight.new_empty(0)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(acc_dtype)
            for i, start in enumerate(range(0, n, chunk_tokens)):
                end = min(start + chunk_tokens, n)
                h = hidden[start:end].to(compute_dtype)
                g_chunk = g[start:end, None]
                # d logp / d logits = g * (onehot(target) - softmax), built in one buffer.
                if kept:
                    grad_logits = kept[i] * (-g_chunk).to(kept[i].dtype)  # stays in the matmul dtype
                else:
                    logits = _logits(h, w, b, compute_dtype, acc_dtype)
                    grad_logits = logits.sub_(lse[start:end, None]).exp_().mul_(-g_chunk)
                grad_logits.scatter_(1, targets[start:end, None], g_target[start:end].to(grad_logits.dtype))
                if need_b:
                    grad_b += grad_logits.sum(0, dtype=acc_dtype)
                grad_logits = grad_logits.to(compute_dtype)
                if need_h:
                    grad_h[start:end] = (grad_logits @ w).to(hidden.dtype)
                if need_w and compute_dtype == acc_dtype:
                    grad_w.addmm_(grad_logits.T, h)  # no (V, d) temporary per chunk
                elif need_w:
                    grad_w += (grad_logits.T @ h).to(acc_dtype)
        return (
            grad_h if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
            None,
            None,
            None,
        )


def target_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    chunk_tokens: int = 2048,
    keep_softmax_mb: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    """``log softmax(hidden @ weight.T + bias)[..., target]`` as float32, shaped like ``targets``.

    The result is float32 for fp32/bf16/fp16 inputs (float64 only when the inputs are float64, so
    gradcheck works). The bias, if any, is added after the upcast, in fp32.

    ``hidden`` is ``(..., d)`` with the same leading dims as ``targets``; ``weight`` is the ``(V, d)``
    output embedding (in GPT-2 it is tied to the input embedding, and gradients flow into it as into
    any parameter). Targets equal to ``ignore_index`` get log-prob 0 and no gradient. At most
    ``chunk_tokens x V`` fp32 logits exist at any time, in forward and in backward.

    ``keep_softmax_mb``: when a gradient is needed and the softmax of all tokens, in the matmul dtype
    (bf16 under bf16 autocast), takes at most this many MB, forward keeps it for backward, which then
    skips recomputing the logits: one ``(tokens x d) @ (d x V)`` matmul fewer, ~8% of a GPT-2 small
    training step's FLOPs. 0 keeps it only when one chunk covers every token (no memory beyond that
    chunk's).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be targets {tuple(targets.shape)} + (d,)")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (V, {hidden.shape[-1]}), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if keep_softmax_mb < 0:
        raise ValueError(f"keep_softmax_mb must be >= 0, got {keep_softmax_mb}")
    compute_dtype = _compute_dtype(hidden, weight)
    n = targets.numel()
    softmax_mb = n * weight.shape[0] * compute_dtype.itemsize / 2**20
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    keep = needs_grad and (n <= chunk_tokens or softmax_mb <= keep_softmax_mb)
    flat = _TargetLogprobs.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        bias,
        targets.reshape(-1).long(),
        int(chunk_tokens),
        int(ignore_index),
        compute_dtype,
        keep,
    )
    return flat.reshape(targets.shape)


def lm_hidden_states(
    lm, input_ids: Tensor, attention_mask: Tensor | None = None, *, fp32_attention: bool = False
) -> Tensor:
    """Final hidden states of a transformers causal LM for a training-style forward (no KV cache).

    Without ``attention_mask`` the inputs are taken to be unpadded, and the forward attends
    causally with no mask built (:func:`phf.training.model.training_attention`): no host sync to rule out
    packed sequences, flash-eligible SDPA compiled or not; ``fp32_attention`` computes it in fp32
    (faster on CPUs for short sequences under bf16 autocast)."""
    # No KV cache: configs default to use_cache=True, and a forward then copies every layer's keys
    # and values into a cache it never reads and keeps the copies for backward (GPT-2 small,
    # 16 x 1024 tokens: 24 x 25 MB in bf16, ~5% of what the step saves). Only a compiled forward of a
    # model that needs its mask keeps one: without a cache, transformers assumes packed sequences it
    # cannot rule out while tracing and builds a 4-D mask, which bars SDPA's flash kernel.
    with training_attention(lm, fp32=fp32_attention) if attention_mask is None else nullcontext(False) as maskless:
        return lm.base_model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=torch.compiler.is_compiling() and not maskless
        ).last_hidden_state


def lm_target_logprobs(
    lm,
    input_ids: Tensor,
    labels: Tensor,
    *,
    attention_mask: Tensor | None = None,
    chunk_tokens: int = 2048,
    keep_softmax_mb: float = 0.0,
    fp32_attention: bool = False,
) -> tuple[Tensor, Tensor]:
    """Target log-probs of a transformers causal LM, from its final hidden states
    (:func:`lm_hidden_states`) and output embedding (no full logits). Returns ``(logp, hidden)``;
    labels equal to -100 get 0."""
    hidden = lm_hidden_states(lm, input_ids, attention_mask, fp32_attention=fp32_attention)
    head = lm.get_output_embeddings()
    logp = target_logprobs(
        hidden,
        head.weight,
        labels,
        bias=getattr(head, "bias", None),
        chunk_tokens=chunk_tokens,
        keep_softmax_mb=keep_softmax_mb,
    )
    return logp, hidden
