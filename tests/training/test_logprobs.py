"""Chunked target log-probs equal the naive log_softmax reference, and never hold (T, V) logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from phf.training.logprobs import target_logprobs


def naive(hidden, weight, targets, bias=None, ignore_index=-100):
    logits = F.linear(hidden, weight, bias)
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    valid = targets != ignore_index
    logp = logits.log_softmax(-1).gather(-1, torch.where(valid, targets, 0)[..., None]).squeeze(-1)
    return torch.where(valid, logp, 0.0)


def make(shape, d, vocab, *, dtype=torch.float64, bias=True, ignore_frac=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, d, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, dtype=dtype).mul_(0.5).requires_grad_()
    b = torch.randn(vocab, generator=g, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, shape, generator=g)
    if ignore_frac:
        targets[torch.rand(shape, generator=g) < ignore_frac] = -100
    return hidden, weight, b, targets


def grads(out, upstream, tensors):
    return torch.autograd.grad(out, [t for t in tensors if t is not None], upstream)


@pytest.mark.parametrize(
    "shape,chunk,bias,ignore_frac,keep_mb",
    [
        ((2, 7), 3, True, 0.0, 0),  # chunk does not divide the 14 tokens
        ((2, 7), 3, True, 0.3, 0),  # ... with ignored targets
        ((2, 7), 3, True, 0.3, 1),  # ... the softmax of every chunk kept for backward (fits 1 MB)
        ((13,), 2048, False, 0.2, 0),  # one chunk (softmax kept for backward), no bias, 1-d leading shape
        ((2, 7), 64, True, 0.3, 0),  # one chunk with bias and ignored targets
        ((3, 2, 5), 4, True, 0.25, 0),  # several leading dims
        ((4, 5), 1, True, 0.0, 1),  # one token per chunk, kept
    ],
)
def test_matches_naive_float64(shape, chunk, bias, ignore_frac, keep_mb):
    hidden, weight, b, targets = make(shape, d=6, vocab=11, bias=bias, ignore_frac=ignore_frac)
    ours = target_logprobs(hidden, weight, targets, bias=b, chunk_tokens=chunk, keep_softmax_mb=keep_mb)
    ref = naive(hidden, weight, targets, b)
    assert ours.dtype == torch.float64 and ours.shape == targets.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # A random upstream gradient (not just ones) exercises the per-token scaling of the backward.
    upstream = torch.randn(targets.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for got, want in zip(grads(ours, upstream, [hidden, weight, b]), grads(ref, upstream, [hidden, weight, b])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_matches_naive_float32_and_float64_gradcheck():
    hidden, weight, b, targets = make((3, 9), d=16, vocab=37, dtype=torch.float32, ignore_frac=0.2)
    ours = target_logprobs(hidden, weight, targets, bias=b, chunk_tokens=5)
    ref = naive(hidden, weight, targets, b)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(ours.sum(), None, [hidden, weight, b]), grads(ref.sum(), None, [hidden, weight, b])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    h64, w64, b64, t64 = make((2, 3), d=4, vocab=7, ignore_frac=0.2, seed=3)
    # float64 inputs keep float64 throughout, so finite differences check the hand-written backward.
    # Chunked with logits recomputed, chunked with the softmax kept, one chunk (softmax kept). gradcheck
    # also runs each backward twice through the same graph, which must give identical gradients.
    for chunk, keep_mb in ((4, 0), (4, 1), (64, 0)):

        def fn(h, w, bb, chunk=chunk, keep_mb=keep_mb):
            return target_logprobs(h, w, t64, bias=bb, chunk_tokens=chunk, keep_softmax_mb=keep_mb)

        assert torch.autograd.gradcheck(fn, (h64, w64, b64))


def test_ignored_targets_get_zero_and_no_gradient():
    hidden, weight, b, targets = make((2, 4), d=5, vocab=9)
    targets[0, 1] = -100
    targets[1, 3] = -100
    out = target_logprobs(hidden, weight, targets, bias=b, chunk_tokens=3)
    assert out[0, 1] == 0 and out[1, 3] == 0
    (gh,) = torch.autograd.grad(out.sum(), [hidden])
    assert gh[0, 1].abs().sum() == 0 and gh[1, 3].abs().sum() == 0
    assert gh[0, 0].abs().sum() > 0
    # A custom ignore_index is honoured too.
    t2 = targets.clone()
    t2[t2 == -100] = 0
    t2[1, 0] = 8
    out2 = target_logprobs(hidden, weight, t2, bias=b, ignore_index=8)
    assert out2[1, 0] == 0


@pytest.mark.parametrize("keep_mb", [0, 1])  # logits recomputed / bf16 softmax kept
def test_bf16_autocast_close_to_fp32_and_grads_in_param_dtype(keep_mb):
    hidden, weight, b, targets = make((4, 33), d=32, vocab=101, dtype=torch.float32, ignore_frac=0.1)
    ref = naive(hidden, weight, targets, b)
    ref_grads = grads(ref.sum(), None, [hidden, weight, b])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = target_logprobs(hidden, weight, targets, bias=b, chunk_tokens=16, keep_softmax_mb=keep_mb)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0.05, atol=0.1)
    got = grads(ours.sum(), None, [hidden, weight, b])
    for g, r in zip(got, ref_grads):
        assert g.dtype == torch.float32
        assert (g - r).norm() / r.norm() < 0.05
    # bf16 inputs without autocast compute in bf16 and return bf16 gradients.
    hb, wb = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    outb = target_logprobs(hb, wb, targets, chunk_tokens=16, keep_softmax_mb=keep_mb)
    gh, gw = torch.autograd.grad(outb.sum(), [hb, wb])
    assert outb.dtype == torch.float32 and gh.dtype == wb.dtype == gw.dtype == torch.bfloat16
    torch.testing.assert_close(outb, naive(hidden, weight, targets), rtol=0.05, atol=0.1)


def test_tied_embedding_receives_both_gradients():
    """GPT-2 ties wte to lm_head: the gradient through the input lookup and the output add up."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(13, 8, dtype=torch.float64)
    ids = torch.randint(0, 13, (2, 6))
    targets = torch.randint(0, 13, (2, 6))
    for fn in (target_logprobs, naive):
        emb.zero_grad()
        hidden = torch.tanh(emb(ids))
        fn(hidden, emb.weight, targets).sum().backward()
        if fn is target_logprobs:
            ours = emb.weight.grad.clone()
    torch.testing.assert_close(ours, emb.weight.grad)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces (forward and backward), and matmul shapes."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.matmuls: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.matmuls.append(tuple(out.shape))
        return out


def test_never_materialises_full_logits():
    n_tokens, vocab, d, chunk = 256, 1000, 8, 16
    hidden, weight, b, targets = make((4, n_tokens // 4), d=d, vocab=vocab, dtype=torch.float32)

    saved: list[torch.Size] = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _LargestTensor() as mode:
        out = target_logprobs(hidden, weight, targets, bias=b, chunk_tokens=chunk)
        out.sum().backward()
    # Nothing of size tokens x vocab is kept for backward: only hidden, weight, bias and per-token vectors.
    assert all(torch.Size(s).numel() <= max(n_tokens * d, vocab * d) for s in saved), saved
    # ... and no op in forward or backward ever produced more than one chunk of logits.
    assert mode.largest <= chunk * vocab < n_tokens * vocab

    # The naive reference does produce (and keep) the full logits: the probe would catch it.
    with _LargestTensor() as mode:
        naive(hidden, weight, targets, b).sum().backward()
    assert mode.largest >= n_tokens * vocab


def test_kept_softmax_saves_the_recomputed_matmul_within_its_budget():
    n_tokens, vocab, chunk = 64, 50, 16
    hidden, weight, b, targets = make((n_tokens,), d=8, vocab=vocab, dtype=torch.float32)
    ref = naive(hidden, weight, targets, b)
    ref_grads = grads(ref.sum(), None, [hidden, weight, b])
    softmax_mb = n_tokens * vocab * 4 / 2**20
    for keep_mb, logit_matmuls in ((0, 8), (softmax_mb / 2, 8), (softmax_mb, 4)):
        with _LargestTensor() as mode:
            out = target_logprobs(hidden, weight, targets, bias=b, chunk_tokens=chunk, keep_softmax_mb=keep_mb)
            got = grads(out.sum(), None, [hidden, weight, b])
        # 4 chunks: forward computes each chunk's logits once; backward again only when not kept.
        assert mode.matmuls.count((chunk, vocab)) == logit_matmuls, (keep_mb, mode.matmuls)
        torch.testing.assert_close(out, ref)
        for g, r in zip(got, ref_grads):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("keep_mb", [0, 1])
def test_bf16_gradient_of_a_confident_target_is_exact(keep_mb):
    """d logp/d logit_target = 1 - p: with p = 0.9936 a bf16 softmax would give 1 - p off by 20-40%."""
    vocab = 8
    logits = torch.zeros(4, vocab)
    logits[:, 0] = 7.0  # exactly representable in bf16, so the bf16 matmul below is exact
    logits.requires_grad_()
    targets = torch.zeros(4, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = target_logprobs(logits, torch.eye(vocab), targets, chunk_tokens=2, keep_softmax_mb=keep_mb)
    (g,) = torch.autograd.grad(out.sum(), [logits])
    one_minus_p = 1 - torch.softmax(logits.detach().double(), -1)[:, 0]
    torch.testing.assert_close(g[:, 0].double(), one_minus_p, rtol=1e-2, atol=0)


def test_rejects_bad_shapes():
    hidden, weight, _b, targets = make((2, 3), d=4, vocab=5)
    with pytest.raises(ValueError, match="targets"):
        target_logprobs(hidden, weight, targets[:, :2])
    with pytest.raises(ValueError, match="weight"):
        target_logprobs(hidden, weight[:, :3], targets)
    with pytest.raises(ValueError, match="chunk_tokens"):
        target_logprobs(hidden, weight, targets, chunk_tokens=0)
    with pytest.raises(ValueError, match="keep_softmax_mb"):
        target_logprobs(hidden, weight, targets, keep_softmax_mb=-1)


@pytest.mark.parametrize("keep_mb", [0, 1])
def test_torch_compile_matches_eager(keep_mb):
    pytest.importorskip("torch._dynamo")
    hidden, weight, b, targets = make((2, 10), d=8, vocab=17, dtype=torch.float32, ignore_frac=0.2)
    eager = target_logprobs(hidden, weight, targets, bias=b, chunk_tokens=6, keep_softmax_mb=keep_mb)
    eager_grads = grads(eager.sum(), None, [hidden, weight, b])
    fn = torch.compile(
        lambda h, w, t, bb: target_logprobs(h, w, t, bias=bb, chunk_tokens=6, keep_softmax_mb=keep_mb),
        backend="aot_eager",
        fullgraph=True,
    )
    compiled = fn(hidden, weight, targets, b)
    torch.testing.assert_close(compiled, eager)
    for g, e in zip(grads(compiled.sum(), None, [hidden, weight, b]), eager_grads):
        torch.testing.assert_close(g, e)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_peak_memory_independent_of_vocab_times_tokens():
    dev = torch.device("cuda")
    n, d, vocab, chunk = 16384, 256, 50304, 1024
    hidden = torch.randn(n, d, device=dev, requires_grad=True)
    weight = (torch.randn(vocab, d, device=dev) * 0.02).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device=dev)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = target_logprobs(hidden, weight, targets, chunk_tokens=chunk)
    out.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    full_fp32_logits = n * vocab * 4
    assert extra < full_fp32_logits / 4, (extra, full_fp32_logits)
    ref = naive(hidden[:512].detach(), weight.detach(), targets[:512])
    torch.testing.assert_close(out[:512].detach(), ref, rtol=0.05, atol=0.1)


def test_parity_with_hf_gpt2_loss_and_tied_gradients():
    """On a tiny GPT-2, -mean(logp) is HF's own loss, and the tied wte gets HF's gradient."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).double().eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    ids = torch.randint(0, 64, (3, 12))
    labels = ids.clone()
    labels[1, 5:] = -100  # HF shifts labels inside; we shift by hand below

    ref = model(input_ids=ids, labels=labels).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    hidden = model.transformer(input_ids=ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    logp = target_logprobs(hidden, model.lm_head.weight, targets, chunk_tokens=7)
    ours = -logp.sum() / (targets != -100).sum()
    ours.backward()
    # HF upcasts logits to float32 inside its loss even for a float64 model: fp32 tolerances.
    torch.testing.assert_close(ours.float(), ref.float(), rtol=1e-6, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-5, atol=1e-7, msg=n)
