"""Model construction and the training forward: the same functions as the stock ones, computed
without what costs time on a GPU (unfused activations, host reads, masks that bar flash attention,
unused KV caches)."""

import pytest
import torch
from tests.helpers.host_reads import HostReads
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from phf.config import ModelConfig
from phf.training.model import build_model, load_model


def test_fused_gelu_replaces_gelu_new_without_changing_the_function(tmp_path):
    built = build_model(
        ModelConfig(model_type="gpt2", config={"n_layer": 2, "n_head": 2, "n_embd": 32}),
        vocab_size=100,
        seq_len=16,
        eos_id=0,
    )
    assert built.config.activation_function == "gelu_pytorch_tanh"

    # A checkpoint saved with the stock activation loads with the fused one and the same outputs.
    torch.manual_seed(0)
    stock = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16, activation_function="gelu_new")
    ).eval()
    stock.save_pretrained(tmp_path)
    fused = load_model(str(tmp_path)).eval()
    assert fused.config.activation_function == "gelu_pytorch_tanh"
    ids = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, stock(ids).logits, rtol=1e-5, atol=1e-5)
    # What phf saves loads with plain transformers.
    fused.save_pretrained(tmp_path / "saved")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "saved").config.activation_function == "gelu_pytorch_tanh"


def test_compiled_training_forward_is_one_graph_with_flash_eligible_attention():
    """What ``training.compile`` relies on for GPU speed: no graph break anywhere in the policy's
    forward (trunk, chunked log-probs, value head), attention that SDPA can send to its flash kernel
    (``is_causal`` and no materialised mask), and no KV cache filled. Some transformers/torch pairs build a 4-D mask
    under compile (transformers' masking_utils: torch < 2.14 hides ``is_exporting`` from dynamo),
    which rules flash attention out; this guards the pinned pair."""
    from phf.training.objectives import ValueHead
    from phf.training.trainer import PolicyModel

    lm = build_model(
        ModelConfig(model_type="gpt2", config={"n_layer": 2, "n_head": 2, "n_embd": 32}),
        vocab_size=100,
        seq_len=16,
        eos_id=0,
    )
    policy = PolicyModel(lm, ValueHead(32), chunk_tokens=16, keep_softmax_mb=1)
    attention = []

    copies = []

    def backend(graph_module, example_inputs):
        attention.extend(n.kwargs for n in graph_module.graph.nodes if "scaled_dot_product" in str(n.target))
        copies.extend(n for n in graph_module.graph.nodes if n.target is torch.cat)  # a KV cache's appends
        return graph_module.forward

    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(policy)(ids, ids)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    torch._dynamo.reset()
    logp, values = torch.compile(policy, backend=backend)(ids, ids)
    (logp.sum() + values.sum()).backward()
    assert len(attention) == 2  # one per layer
    assert all(kw.get("attn_mask") is None and kw.get("is_causal") is True for kw in attention), attention
    assert copies == [] and lm.config._attn_implementation == "sdpa"


def _compiled_kernels(forward) -> list[list[str]]:
    """The kernels inductor's code launches for ``forward()`` under bf16 autocast and for its
    backward (one list per generated module, forward first): fused kernels by their op names,
    library calls (matmuls, attention) by name."""
    import re

    from torch._inductor.utils import run_and_get_code

    compiled = torch.compile(forward)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = compiled()
        out.float().sum().backward()

    _, modules = run_and_get_code(step)
    calls = re.compile(r"\b(cpp_fused_\w+?|extern_kernels\.\w+|aten\.[\w.]+|torch\.ops\.[\w.]+)(?:_\d+)?\(")
    return [calls.findall(code[code.index("def call(") :]) for code in modules]


def test_compiled_training_micro_batch_has_no_more_kernels_than_a_minimal_gpt():
    """Issue 6's target (training as fast as a minimal hand-written GPT), at the level a CPU can
    check: inductor's code for one training micro-batch of phf's model and log-prob head (what
    ``training.compile`` compiles on a GPU, attention in bf16) launches no more kernels, forward and
    backward, than the minimal GPT of ``bench/minimal_gpt.py`` with its cross-entropy (both 21
    forward and 32 backward with torch 2.13 and transformers 5.24), and as many matmuls. A
    transformers or torch upgrade, or a phf change, that puts work into the compiled step (a KV
    cache, a mask, casts, copies) fails here with both lists."""
    from itertools import zip_longest

    from bench.minimal_gpt import GPTConfig, MinimalGPT

    from phf.training.trainer import PolicyModel

    layers, heads, width, vocab, seq, batch = 2, 4, 128, 512, 64, 2
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    lm = build_model(
        ModelConfig(model_type="gpt2", config={"n_layer": layers, "n_head": heads, "n_embd": width}),
        vocab_size=vocab,
        seq_len=seq,
        eos_id=0,
    )
    policy = PolicyModel(lm, None, chunk_tokens=batch * seq, keep_softmax_mb=0)  # one chunk, as the GPT-2 preset
    minimal = MinimalGPT(GPTConfig(vocab_size=vocab, seq_len=seq, n_layer=layers, n_head=heads, n_embd=width))
    ours = _compiled_kernels(lambda: policy(ids, ids)[0])
    reference = _compiled_kernels(lambda: minimal(ids, ids))
    assert len(ours) == len(reference) == 2, (ours, reference)
    for part, mine, theirs in zip(("forward", "backward"), ours, reference):
        assert len(mine) <= len(theirs), f"{part}: phf {len(mine)} kernels, minimal GPT {len(theirs)}:\n" + "\n".join(
            f"{a:<70} {b}" for a, b in zip_longest(mine, theirs, fillvalue="")
        )
        matmuls = [sum(name.startswith("extern_kernels") for name in k) for k in (mine, theirs)]
        assert matmuls[0] == matmuls[1], f"{part}: {matmuls[0]} matmuls against {matmuls[1]}"


SHAPES = {
    "gpt2": {"n_layer": 2, "n_head": 2, "n_embd": 32},
    "llama": {
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
    },
}


def _tiny(model_type: str, weights=None, **config):
    """A tiny model of its type's shape in SHAPES (Mistral: Llama's) with ``config`` on top,
    optionally with another's weights."""
    shape = {**SHAPES["llama" if model_type == "mistral" else model_type], **config}
    lm = build_model(ModelConfig(model_type=model_type, config=shape), vocab_size=100, seq_len=16, eos_id=0)
    if weights is not None:
        lm.load_state_dict(weights.state_dict())
    return lm


@pytest.mark.parametrize("model_type", list(SHAPES))
def test_eager_training_forward_reads_nothing_builds_no_mask_and_fills_no_kv_cache(monkeypatch, model_type):
    """phf's training forward (unpadded blocks) must equal the model's own forward to the last bit
    while (1) reading nothing on the host (transformers' packed-sequence check does, every forward),
    (2) sending attention to SDPA as plain causal with no mask (flash-eligible), and (3) filling no
    KV cache: configs default to ``use_cache=True``, which copies every layer's keys and values into a
    cache nobody reads and keeps the copies for backward."""
    from transformers import cache_utils

    from phf.training.logprobs import lm_target_logprobs, target_logprobs

    lm = _tiny(model_type)
    updates, attention = [], []
    update, sdpa = cache_utils.DynamicLayer.update, torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        cache_utils.DynamicLayer,
        "update",
        lambda self, *args, **kwargs: updates.append(1) or update(self, *args, **kwargs),
    )
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda *args, **kwargs: attention.append(kwargs) or sdpa(*args, **kwargs),
    )
    ids = torch.randint(1, 100, (2, 16), generator=torch.Generator().manual_seed(0))

    def saved_bytes(forward):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward()
        return out, sum(storages.values())

    with HostReads() as host:
        ours, ours_bytes = saved_bytes(lambda: lm_target_logprobs(lm, ids, ids)[0])
    assert host.reads == [] and updates == []
    assert lm.config._attn_implementation == "sdpa"  # restored
    assert len(attention) == 2 and all(kw.get("attn_mask") is None and kw.get("is_causal") for kw in attention)
    default, default_bytes = saved_bytes(
        lambda: target_logprobs(lm.base_model(input_ids=ids).last_hidden_state, lm.lm_head.weight, ids)
    )
    assert len(updates) == 2  # the probe sees the default's cache: one update per layer
    with HostReads() as host:  # and, with no cache, transformers' packed-sequence check
        uncached = target_logprobs(
            lm.base_model(input_ids=ids, use_cache=False).last_hidden_state, lm.lm_head.weight, ids
        )
    assert host.reads == ["__bool__"]
    assert torch.equal(ours, default) and torch.equal(ours, uncached)
    # GPT-2's keys and values are views of its fused qkv projection, which attention's backward keeps
    # anyway: the cache's copies come on top (2 x 2 layers x 2 x 16 x 32 floats). Llama's copies take
    # the place of the rotated keys and the value projection: no more bytes, only the copying.
    assert default_bytes - ours_bytes == (2 * 2 * ids.numel() * 32 * 4 if model_type == "gpt2" else 0)


def test_models_whose_mask_is_more_than_causal_keep_it():
    """A sliding window lives in the mask: such a model keeps transformers' mask (and its answers),
    as do padded batches."""
    from phf.training.logprobs import lm_target_logprobs
    from phf.training.model import causal_only_attention_applies

    mistral = _tiny("mistral", sliding_window=4).eval()
    assert not causal_only_attention_applies(mistral)
    ids = torch.randint(1, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp, _ = lm_target_logprobs(mistral, ids, ids)
        unwindowed = _tiny("mistral", weights=mistral, sliding_window=None).eval()
        reference = mistral(ids).logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
        assert not torch.allclose(
            lm_target_logprobs(unwindowed, ids, ids)[0], reference, atol=1e-3
        )  # the window matters
    torch.testing.assert_close(logp, reference, rtol=1e-5, atol=1e-5)

    # A padding mask is honoured: the same log-probs as the model's own masked forward.
    lm = _tiny("gpt2")
    mask = (torch.arange(16) >= 4).long().expand(2, 16)
    with torch.no_grad():
        logp, _ = lm_target_logprobs(lm, ids, ids, attention_mask=mask)
        reference = lm(ids, attention_mask=mask).logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
        torch.testing.assert_close(logp, reference, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(lm_target_logprobs(lm, ids, ids)[0], reference, atol=1e-3)  # the mask matters


@pytest.mark.parametrize("model_type", ["gpt2", "mistral"])
def test_fp32_attention_is_the_same_forward_with_attention_computed_in_fp32(monkeypatch, model_type):
    """Under bf16 autocast, ``fp32_attention`` gives the log-probs and gradients of the same forward
    with each attention call computed in fp32 from its bf16 inputs and rounded back to bf16, to the
    last bit; a mask that is more than causal (Mistral's sliding window) is still built and applied.
    Without it attention runs in bf16, a different rounding. Compiled, the traced attention takes
    fp32 inputs too (inductor would otherwise call the bf16 CPU kernel)."""
    import torch.nn.functional as F

    from phf.training.logprobs import lm_target_logprobs

    windowed = model_type == "mistral"
    lm = _tiny("mistral", sliding_window=4) if windowed else _tiny("gpt2")
    ids = torch.randint(1, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    sdpa, calls = F.scaled_dot_product_attention, []

    def recording(q, k, v, *args, **kwargs):  # the dtype it computes in: autocast's, if on (it casts q, k, v)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
        calls.append((dtype, kwargs.get("attn_mask") is not None))
        return sdpa(q, k, v, *args, **kwargs)

    def in_fp32(q, k, v, *args, **kwargs):  # the reference: this call alone in fp32
        with torch.autocast("cpu", enabled=False):
            return sdpa(q.float(), k.float(), v.float(), *args, **kwargs).to(q.dtype)

    def run(fp32: bool, attention):
        monkeypatch.setattr(F, "scaled_dot_product_attention", attention)
        lm.zero_grad(set_to_none=True)
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, _ = lm_target_logprobs(lm, ids, ids, fp32_attention=fp32)
        logp.sum().backward()
        return logp.detach(), [p.grad.clone() for p in lm.parameters()], list(calls)

    ours, grads, seen = run(True, recording)
    assert seen == [(torch.float32, windowed)] * 2 and lm.config._attn_implementation == "sdpa"
    reference, reference_grads, _ = run(False, in_fp32)
    assert torch.equal(ours, reference) and all(torch.equal(a, b) for a, b in zip(grads, reference_grads))
    plain, _, seen = run(False, recording)
    assert seen == [(torch.bfloat16, windowed)] * 2 and not torch.equal(plain, ours)
    if windowed:  # the window is applied: the same model without it gives other log-probs
        unwindowed = _tiny("mistral", weights=lm, sliding_window=None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not torch.equal(lm_target_logprobs(unwindowed, ids, ids, fp32_attention=True)[0], ours)
        return

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    traced = []

    def backend(graph_module, example_inputs):
        traced.extend(
            n.args[0].meta["example_value"].dtype
            for n in graph_module.graph.nodes
            if "scaled_dot_product" in str(n.target)
        )
        return graph_module.forward

    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.compile(lambda: lm_target_logprobs(lm, ids, ids, fp32_attention=True)[0], backend=backend)()
    assert traced == [torch.float32] * 2
