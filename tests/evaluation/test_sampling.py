"""phf.evaluation.sampling.generate on a tiny random GPT-2 (2 layers, d=32) with a BPE trained on a few sentences."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import pytest
import torch

from phf.data.tokenizer import add_control_tokens, train_bpe
from phf.evaluation import sampling
from phf.evaluation.sampling import Generation, SamplingConfig, _Forward, _sample, generate

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "To be or not to be, that is the question.",
    "All that glitters is not gold; the gold is in the ground.",
    "def add(a, b):\n    return a + b\n",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
] * 4
N_POSITIONS = 64


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_bpe(SENTENCES, vocab_size=300)
    add_control_tokens(tok, ["<|good|>", "<|bad|>"])
    return tok


@pytest.fixture(scope="module")
def ids(tokenizer):
    good, bad = tokenizer.convert_tokens_to_ids(["<|good|>", "<|bad|>"])
    return {"eos": tokenizer.eos_token_id, "good": good, "bad": bad}


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    vocab = math.ceil(len(tokenizer) / 64) * 64
    assert vocab > len(tokenizer)  # the test needs vocabulary-padding rows
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=vocab,
        n_positions=N_POSITIONS,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config).eval()


class logit_bias:
    """Adds ``value`` to the logits of ``token_ids`` while active (a forward hook on the LM head)."""

    def __init__(self, model, token_ids, value):
        self.model, self.token_ids, self.value = model, list(token_ids), value

    def __enter__(self):
        def hook(module, inputs, output):
            output = output.clone()
            output[..., self.token_ids] += self.value
            return output

        self.handle = self.model.lm_head.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def cfg(**kw):
    """Small test settings; EOS is forbidden throughout unless min_new_tokens says otherwise (a random
    model samples EOS now and then, and most tests want fixed lengths)."""
    kw.setdefault("max_new_tokens", 12)
    kw.setdefault("min_new_tokens", kw["max_new_tokens"])
    return SamplingConfig(**{"batch_size": 16, "seed": 0, **kw})


def decode_on_static_cache(monkeypatch):
    """CUDA's static-cache decoding (replayed as CUDA graphs there), run eagerly on this CPU."""
    monkeypatch.setattr(sampling, "_GRAPH_DEVICES", {"cpu"})


@pytest.fixture(params=[False, True], ids=["dynamic", "static"])
def static_cache(request, monkeypatch):
    """Whether the test decodes on transformers' dynamic cache or on CUDA's static one."""
    if request.param:
        decode_on_static_cache(monkeypatch)
    return request.param


def hf_greedy(model, prompt_ids, max_new, tokenizer, min_new=None):
    """transformers' greedy continuation (padding rows suppressed, as phf always does)."""
    padding = list(range(len(tokenizer), model.config.vocab_size))
    min_new = max_new if min_new is None else min_new
    out = model.generate(
        torch.tensor([prompt_ids]),
        do_sample=False,
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        suppress_tokens=padding,
    )
    new = out[0, len(prompt_ids) :].tolist()
    return new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new


def test_defaults_are_the_papers():
    c = SamplingConfig()
    assert (c.temperature, c.top_p, c.top_k, c.min_new_tokens, c.max_new_tokens) == (0.7, 0.9, 0, 10, 128)


def test_only_the_last_logits_are_computed(model, tokenizer):
    forward = _Forward(model)
    assert forward.last_only == {"logits_to_keep": 1}
    with torch.inference_mode():
        logits, cache = forward(torch.tensor([[tokenizer.eos_token_id] * 5] * 2), prefill=True)
        assert logits.shape == (2, model.config.vocab_size) and cache.get_seq_length() == 5
        full = model(torch.tensor([[tokenizer.eos_token_id] * 5] * 2)).logits
        assert full.shape[1] == 5 and torch.allclose(full[:, -1], logits, atol=1e-5)


def test_order_shapes_and_fields(model, tokenizer):
    prompts = [tokenizer.eos_token, tokenizer.eos_token + "<|good|>", "The quick"]
    gens = generate(model, tokenizer, prompts, cfg(max_new_tokens=5, batch_size=4), num_samples=3)
    assert len(gens) == 9 and all(isinstance(g, Generation) for g in gens)
    assert [g.prompt_index for g in gens] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [g.prompt for g in gens] == [p for p in prompts for _ in range(3)]
    for g in gens:
        assert len(g.token_ids) == 5 and not g.finished  # random weights: no EOS (biased below)
        assert g.text == tokenizer.decode(g.token_ids, skip_special_tokens=False)
    assert model.training is False


def test_forbidden_and_padding_rows_never_sampled(model, tokenizer, ids):
    padding = list(range(len(tokenizer), model.config.vocab_size))
    prompt = [tokenizer.eos_token + "<|good|>"]
    # Make the control tokens and the padding rows overwhelmingly likely.
    with logit_bias(model, [ids["good"], ids["bad"]] + padding, 30.0):
        gens = generate(model, tokenizer, prompt, cfg(), num_samples=8, forbidden_ids=[ids["good"], ids["bad"]])
        sampled = [t for g in gens for t in g.token_ids]
        assert len(sampled) == 8 * 12
        assert not {ids["good"], ids["bad"]} & set(sampled)
        assert max(sampled) < len(tokenizer)
        # Padding rows are forbidden even when nothing is passed; control tokens then do appear.
        gens = generate(model, tokenizer, prompt, cfg(), num_samples=8)
        sampled = [t for g in gens for t in g.token_ids]
        assert max(sampled) < len(tokenizer)
        assert {ids["good"], ids["bad"]} & set(sampled)
        # Greedy too.
        gens = generate(model, tokenizer, prompt, cfg(temperature=0.0), forbidden_ids=[ids["good"]])
        assert gens[0].token_ids and set(gens[0].token_ids) == {ids["bad"]}


def test_min_new_tokens_then_stops_at_eos(model, tokenizer, ids):
    with logit_bias(model, [ids["eos"]], 50.0):
        gens = generate(
            model, tokenizer, [tokenizer.eos_token], cfg(min_new_tokens=4, max_new_tokens=20), num_samples=6
        )
        for g in gens:
            assert len(g.token_ids) == 4 and g.finished
            assert ids["eos"] not in g.token_ids
        gens = generate(model, tokenizer, [tokenizer.eos_token], cfg(min_new_tokens=0), num_samples=2)
        assert all(g.token_ids == [] and g.text == "" and g.finished for g in gens)


def test_stops_each_row_at_its_own_eos(model, tokenizer, ids):
    # EOS is moderately likely: rows end at different steps; nothing after EOS is kept.
    with logit_bias(model, [ids["eos"]], 3.5):
        gens = generate(
            model,
            tokenizer,
            [tokenizer.eos_token],
            cfg(max_new_tokens=30, min_new_tokens=0, temperature=1.0, top_p=1.0),
            num_samples=32,
        )
    lengths = [len(g.token_ids) for g in gens]
    assert any(g.finished for g in gens) and len(set(lengths)) > 2
    for g in gens:
        assert ids["eos"] not in g.token_ids
        assert g.finished == (len(g.token_ids) < 30)


def test_finished_rows_dropped_mid_batch_match_full_batch(model, tokenizer, ids, static_cache):
    # Rows whose last input token is <|good|> are made to end at once (EOS logit +100); the others run on,
    # in a batch that drops the finished rows (and their KV cache) midway: they must not change. On a
    # static cache (CUDA's, run eagerly here) rows are never dropped, and a left-padded batch keeps its
    # mask and positions in the decoder's fixed buffers: the same must hold.
    def end_after_good(module, args, kwargs, output):
        last = kwargs["input_ids"][:, -1]
        output.logits[last == ids["good"], -1, ids["eos"]] += 100.0
        return output

    text = tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]
    equal = [[ids["eos"], ids["good"]], [ids["eos"], ids["bad"]]] * 3 + [[ids["eos"], ids["eos"]]]
    mixed = [
        [ids["eos"], ids["good"]],
        [ids["eos"], ids["bad"]] + text,
        text[:2] + [ids["good"]],
        text[:3],
        [ids["eos"]],
        text + [ids["good"]],
    ]  # left-padded batch: mask and positions are dropped too
    handle = model.register_forward_hook(end_after_good, with_kwargs=True)
    try:
        c = cfg(temperature=0.0, max_new_tokens=15, min_new_tokens=0)
        for prompts in (equal, mixed):
            solo = [generate(model, tokenizer, [p], c)[0] for p in prompts]
            batched = generate(model, tokenizer, prompts, c)
            assert [(g.token_ids, g.finished) for g in solo] == [(g.token_ids, g.finished) for g in batched]
            for p, g in zip(prompts, batched):
                if p[-1] == ids["good"]:
                    assert g.finished and g.token_ids == []
            assert any(not g.finished and len(g.token_ids) == 15 for g in batched)  # ran on after the drop
    finally:
        handle.remove()


def test_seed_reproducible_and_independent_of_global_rng(model, tokenizer):
    prompts = [tokenizer.eos_token, "The quick"]
    torch.manual_seed(1)
    a = generate(model, tokenizer, prompts, cfg(seed=7), num_samples=4)
    torch.manual_seed(2)
    torch.rand(10)
    b = generate(model, tokenizer, prompts, cfg(seed=7), num_samples=4)
    c = generate(model, tokenizer, prompts, cfg(seed=8), num_samples=4)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    # Samples of one prompt differ from each other.
    assert len({tuple(g.token_ids) for g in a[:4]}) > 1
    # The global RNG is left alone.
    torch.manual_seed(3)
    before = torch.get_rng_state()
    generate(model, tokenizer, prompts, cfg(seed=7))
    assert torch.equal(before, torch.get_rng_state())


def test_prompt_ids_are_the_prefix(model, tokenizer, ids):
    text = tokenizer.eos_token + "<|good|>The quick brown"
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert prompt_ids[:2] == [ids["eos"], ids["good"]]
    from_text = generate(model, tokenizer, [text], cfg(), num_samples=3)
    from_ids = generate(model, tokenizer, [prompt_ids], cfg(), num_samples=3)
    assert [g.token_ids for g in from_text] == [g.token_ids for g in from_ids]
    assert from_ids[0].prompt == tokenizer.decode(prompt_ids, skip_special_tokens=False) == text
    # The continuation is conditioned on exactly these ids: greedy equals transformers' greedy.
    greedy = generate(model, tokenizer, [prompt_ids], cfg(temperature=0.0))[0].token_ids
    assert greedy == hf_greedy(model, prompt_ids, 12, tokenizer)
    # Another prefix, same seed: other samples.
    other = generate(model, tokenizer, [prompt_ids[:1] + prompt_ids[2:]], cfg(), num_samples=3)
    assert [g.token_ids for g in other] != [g.token_ids for g in from_ids]


def test_top_k_1_is_greedy_and_matches_transformers(model, tokenizer):
    prompts = [tokenizer.eos_token, tokenizer.eos_token + "To be", "A journey of a thousand"]
    greedy = generate(model, tokenizer, prompts, cfg(temperature=0.0, min_new_tokens=3))
    top1 = generate(model, tokenizer, prompts, cfg(top_k=1, min_new_tokens=3, seed=5))
    assert [g.token_ids for g in greedy] == [g.token_ids for g in top1]
    for p, g in zip(prompts, greedy):
        prompt_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        assert g.token_ids == hf_greedy(model, prompt_ids, 12, tokenizer, min_new=3)


def test_mixed_lengths_left_padded_like_separate_runs(model, tokenizer):
    prompts = [
        "The quick brown fox jumps",
        tokenizer.eos_token,
        "To be or",
        "def add(a, b):\n    return",
        tokenizer.eos_token + "<|good|>She sells",
    ]
    lengths = {len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) >= 4
    together = generate(model, tokenizer, prompts, cfg(top_k=1, batch_size=8), num_samples=2)
    for i, p in enumerate(prompts):
        alone = generate(model, tokenizer, [p], cfg(top_k=1, batch_size=8), num_samples=1)[0]
        prompt_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        assert together[2 * i].token_ids == together[2 * i + 1].token_ids == alone.token_ids
        assert alone.token_ids == hf_greedy(model, prompt_ids, 12, tokenizer)


def test_mixed_lengths_sampling_distribution_matches(model, tokenizer):
    # With sampling, a padded batch gives the same next-token distribution as the unpadded one:
    # compare first-token frequencies of a short prompt sampled alone vs next to a long prompt.
    short, long = "To be", "The quick brown fox jumps over the lazy"
    c = cfg(max_new_tokens=1, temperature=1.0, top_p=1.0, batch_size=256)
    alone = Counter(g.token_ids[0] for g in generate(model, tokenizer, [short], c, num_samples=2000))
    mixed = generate(model, tokenizer, [short, long], c, num_samples=1000)
    mixed = Counter(g.token_ids[0] for g in mixed if g.prompt_index == 0)
    with torch.no_grad():
        prompt_ids = tokenizer(short, add_special_tokens=False)["input_ids"]
        probs = torch.softmax(model(torch.tensor([prompt_ids])).logits[0, -1, : len(tokenizer)].float(), -1)
    top = probs.argsort(descending=True)[:5].tolist()
    for t in top:
        p = probs[t].item()
        for counts, n in ((alone, 2000), (mixed, 1000)):
            assert abs(counts[t] / n - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-3


@pytest.mark.parametrize("method", ["reject", "sort"])
def test_top_p_keeps_the_nucleus(method):
    # Both ways of sampling the nucleus ("reject": CPU default, "sort": accelerators) are exact.
    scores = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]])).repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)

    def draw(**kw):
        config = SamplingConfig(**{"temperature": 1.0, "top_p": 0.9, **kw})
        return Counter(_sample(scores.clone(), torch.zeros(4), config, generator, method).tolist())

    counts = draw()
    assert set(counts) == {1, 2, 3}  # 0.5 + 0.3 = 0.8 < 0.9, so 0.15 is in; 0.05 is out
    for token, p in {1: 0.5 / 0.95, 3: 0.3 / 0.95, 2: 0.15 / 0.95}.items():
        assert abs(counts[token] / 20000 - p) < 0.015
    # Same set as transformers' TopPLogitsWarper.
    from transformers.generation.logits_process import TopPLogitsWarper

    kept = TopPLogitsWarper(0.9)(None, scores[:1].clone()).isfinite()[0].nonzero().flatten().tolist()
    assert sorted(kept) == [1, 2, 3]
    # A small top_p: only the top token (most draws need several rounds, or the sorted fallback).
    assert set(draw(top_p=0.3)) == {1}
    assert set(draw(top_p=0.55)) == {1, 3}
    # No nucleus: the full distribution.
    counts = draw(top_p=1.0)
    for token, p in enumerate([0.05, 0.5, 0.15, 0.3]):
        assert abs(counts[token] / 20000 - p) < 0.015
    # top_k then top_p; temperature sharpens; forbidden tokens (bias -inf) never drawn.
    assert set(draw(top_k=2)) == {1, 3}
    assert set(draw(temperature=0.01, top_p=1.0)) == {1}
    bias = torch.tensor([0.0, float("-inf"), 0.0, 0.0])
    config = SamplingConfig(temperature=1.0, top_p=0.85)
    counts = Counter(_sample(scores.clone(), bias, config, generator, method).tolist())
    assert set(counts) == {2, 3}  # renormalised 0.6, 0.3, 0.1: 0.6 + 0.3 >= 0.85 cuts 0.1
    assert abs(counts[3] / 20000 - 0.3 / 0.45) < 0.015


def test_strip_ids_removes_control_tokens_from_text(model, tokenizer, ids):
    with logit_bias(model, [ids["good"]], 4.0):
        gens = generate(model, tokenizer, [tokenizer.eos_token], cfg(), num_samples=4, strip_ids=[ids["good"]])
    assert any(ids["good"] in g.token_ids for g in gens)
    for g in gens:
        assert "<|good|>" not in g.text
        kept = [t for t in g.token_ids if t != ids["good"]]
        assert g.text == tokenizer.decode(kept, skip_special_tokens=False)


def test_replaced_ids_are_emitted_and_conditioned_on(model, tokenizer, ids):
    # Greedy: the first token the model picks is replaced; what follows must be the model's greedy
    # continuation of the prompt plus the *replacement*, i.e. the cache holds the emitted token.
    prompt = tokenizer(tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    first = generate(model, tokenizer, [prompt], cfg(temperature=0.0, max_new_tokens=1, min_new_tokens=1))[0].token_ids[
        0
    ]
    got = generate(
        model,
        tokenizer,
        [prompt],
        cfg(temperature=0.0, max_new_tokens=6, min_new_tokens=6),
        replace_ids={first: ids["good"]},
        strip_ids=[ids["good"]],
    )[0]
    assert got.token_ids[0] == ids["good"]
    assert first not in got.token_ids
    after = generate(
        model,
        tokenizer,
        [prompt + [ids["good"]]],
        cfg(temperature=0.0, max_new_tokens=5, min_new_tokens=5),
        replace_ids={first: ids["good"]},
    )[0]
    assert got.token_ids[1:] == after.token_ids
    # Sampled: a token made overwhelmingly likely never appears, its replacement always does.
    with logit_bias(model, [ids["bad"]], 30.0):
        gens = generate(
            model, tokenizer, [tokenizer.eos_token], cfg(), num_samples=4, replace_ids={ids["bad"]: ids["good"]}
        )
    assert all(set(g.token_ids) == {ids["good"]} for g in gens)
    with pytest.raises(ValueError, match="EOS"):
        generate(model, tokenizer, [tokenizer.eos_token], cfg(), replace_ids={ids["bad"]: tokenizer.eos_token_id})
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        generate(model, tokenizer, [tokenizer.eos_token], cfg(), replace_ids={ids["bad"]: 10**7})


def test_max_positions_clamped_with_one_warning(model, tokenizer):
    prompt_ids = tokenizer(" ".join(SENTENCES), add_special_tokens=False)["input_ids"][: N_POSITIONS - 5]
    with pytest.warns(UserWarning, match="positions") as record:
        gens = generate(model, tokenizer, [prompt_ids, prompt_ids[:10]], cfg(max_new_tokens=20), num_samples=2)
    assert len([w for w in record if "positions" in str(w.message)]) == 1
    assert [len(g.token_ids) for g in gens] == [5, 5, 20, 20]
    # One clamped row among many that run on (too few done rows to drop it from the batch): it must
    # not push position ids past the table.
    with pytest.warns(UserWarning, match="positions"):
        gens = generate(model, tokenizer, [prompt_ids] + [prompt_ids[:10]] * 7, cfg(max_new_tokens=20, top_k=1))
    assert [len(g.token_ids) for g in gens] == [5] + [20] * 7
    assert gens[1].token_ids == hf_greedy(model, prompt_ids[:10], 20, tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, tokenizer, [prompt_ids[:10]], cfg(max_new_tokens=20))
    with pytest.raises(ValueError, match="positions"):
        generate(model, tokenizer, [prompt_ids * 2], cfg())


def test_bad_inputs(model, tokenizer):
    with pytest.raises(ValueError, match="EOS"):
        generate(model, tokenizer, [""], cfg())
    with pytest.raises(ValueError):
        generate(model, tokenizer, [[]], cfg())
    with pytest.raises(TypeError):
        generate(model, tokenizer, tokenizer.eos_token, cfg())
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tokenizer, [tokenizer.eos_token], cfg(top_p=0.0))
    with pytest.raises(ValueError, match="outside"):
        generate(model, tokenizer, [tokenizer.eos_token], cfg(), forbidden_ids=[10**6])
    assert generate(model, tokenizer, [], cfg()) == []


def test_restores_training_mode_and_progress(model, tokenizer):
    model.train()
    try:
        gens = generate(model, tokenizer, [tokenizer.eos_token], cfg(max_new_tokens=3), num_samples=5, progress=True)
        assert len(gens) == 5 and model.training
    finally:
        model.eval()


def test_llama_works(tokenizer, static_cache):  # static: rotary positions from the decoder's buffer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=math.ceil(len(tokenizer) / 64) * 64,
        max_position_embeddings=N_POSITIONS,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    llama = LlamaForCausalLM(config).eval()
    assert _Forward(llama).last_only == {"logits_to_keep": 1} and _Forward(llama).cache_name in (
        "cache",
        "past_key_values",
    )
    prompts = ["The quick brown fox", tokenizer.eos_token]
    together = generate(llama, tokenizer, prompts, cfg(temperature=0.0))
    for p, g in zip(prompts, together):
        prompt_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        assert g.token_ids == hf_greedy(llama, prompt_ids, 12, tokenizer)
    sampled = generate(llama, tokenizer, prompts, cfg(), num_samples=3)
    assert all(len(g.token_ids) == 12 and max(g.token_ids) < len(tokenizer) for g in sampled)


def test_accelerator_schedule_on_cpu(model, tokenizer, ids, monkeypatch, static_cache):
    # On CUDA the sampler checks for finished rows every 8 steps (fewer host syncs), draws with
    # sort + multinomial and decodes equal-length batches on a static cache (replayed as a CUDA graph
    # there, run eagerly here): run that schedule here and check the same invariants.
    monkeypatch.setattr(sampling, "_CHECK_EVERY", {})
    steps = Counter()
    if static_cache:
        original_step = sampling._StaticDecoder.step
        monkeypatch.setattr(
            sampling._StaticDecoder,
            "step",
            lambda self, token, positions: steps.update([token.shape[0]]) or original_step(self, token, positions),
        )
    original = sampling._sample
    monkeypatch.setattr(sampling, "_sample", lambda *a: original(*a, method="sort"))
    with logit_bias(model, [ids["eos"]], 3.5):
        gens = generate(
            model,
            tokenizer,
            [tokenizer.eos_token],
            cfg(max_new_tokens=30, min_new_tokens=2, temperature=1.0, top_p=1.0),
            num_samples=24,
        )
    assert any(g.finished for g in gens) and len({len(g.token_ids) for g in gens}) > 2
    for g in gens:
        assert ids["eos"] not in g.token_ids and len(g.token_ids) >= 2
        assert g.finished == (len(g.token_ids) < 30)
    prompts = ["The quick brown fox jumps", tokenizer.eos_token, "To be or"]
    for batch in (3, 1):  # left-padded together (dynamic cache always), alone (static where enabled)
        together = generate(model, tokenizer, prompts, cfg(temperature=0.0, max_new_tokens=20, batch_size=batch))
        for p, g in zip(prompts, together):
            prompt_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
            assert g.token_ids == hf_greedy(model, prompt_ids, 20, tokenizer)
    # Static decoding keeps every row to the end (no compaction): 24 rows of the EOS prompt in batches
    # of 16 and 8, the three prompts left-padded together, then each alone.
    assert steps == (Counter({16: 29, 8: 29, 3: 19, 1: 3 * 19}) if static_cache else Counter())


def test_static_decoders_are_shared_across_batches_and_bounded(model, tokenizer, monkeypatch):
    # Cache lengths are rounded up, so batches of different prompt lengths reuse one decoder (one CUDA
    # graph on a GPU); a call keeps at most two, whatever the number of batch shapes it meets.
    prompts = [
        tokenizer.eos_token,
        "To be or",
        "To be or not",
        *[" ".join(["The quick brown fox"] * k) for k in (1, 2, 3)],
        "She sells",
    ]
    c = cfg(temperature=0.0, max_new_tokens=12, batch_size=2)
    dynamic = generate(model, tokenizer, prompts, c)
    decode_on_static_cache(monkeypatch)
    made = []
    init = sampling._StaticDecoder.__init__
    monkeypatch.setattr(
        sampling._StaticDecoder,
        "__init__",
        lambda self, forward, batch, length, padded, **kw: (
            made.append((batch, length, padded)) or init(self, forward, batch, length, padded, **kw)
        ),
    )
    static = generate(model, tokenizer, prompts, c)
    assert [g.token_ids for g in static] == [g.token_ids for g in dynamic]
    lengths = sorted(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    batches = [lengths[i : i + 2] for i in range(0, len(lengths), 2)]
    shapes = [(len(b), 64, min(b) != max(b)) for b in batches]  # every batch needs <= 64 slots here
    assert len(set(shapes)) < len(batches) and made == list(dict.fromkeys(shapes)), (made, shapes)


def test_a_model_without_a_static_cache_decodes_eagerly_with_one_warning(model, tokenizer, monkeypatch):
    import transformers

    c = cfg(temperature=0.0, max_new_tokens=8, batch_size=2)
    expected = generate(model, tokenizer, [tokenizer.eos_token] * 3 + ["To be or"], c)
    decode_on_static_cache(monkeypatch)

    def refuse(**kwargs):
        raise ValueError("this config has no layers a static cache knows")

    monkeypatch.setattr(transformers, "StaticCache", refuse)
    with pytest.warns(UserWarning, match="no static KV cache for GPT2LMHeadModel") as caught:
        got = generate(model, tokenizer, [tokenizer.eos_token] * 3 + ["To be or"], c)
    assert len(caught) == 1 and [g.token_ids for g in got] == [g.token_ids for g in expected]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_decoding_matches_eager(model, tokenizer, ids):
    cuda = model.to("cuda")
    try:
        prompts = [tokenizer.eos_token, "The quick brown fox jumps"]
        for batch in (4, 8):  # equal prompt lengths per batch; both lengths left-padded in one batch
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a failed capture falls back with a warning: fail instead
                graphed = generate(
                    cuda, tokenizer, prompts, cfg(temperature=0.0, max_new_tokens=20, batch_size=batch), num_samples=4
                )
            eager = generate(
                cuda,
                tokenizer,
                prompts,
                cfg(temperature=0.0, max_new_tokens=20, batch_size=batch, cuda_graphs=False),
                num_samples=4,
            )
            assert [g.token_ids for g in graphed] == [g.token_ids for g in eager]
        state = sampling._Decoding(
            sampling._Forward(cuda), cfg(), torch.device("cuda"), ids["eos"], [], len(tokenizer), N_POSITIONS, {}
        )
        decoder = sampling._static_decoder(state, 2, 10, False)
        with torch.inference_mode():
            decoder.prefill(torch.full((2, 1), ids["eos"], device="cuda"), None, None)
            first = decoder.step(torch.tensor([ids["good"], ids["bad"]], device="cuda"), None).clone()
            replayed = decoder.step(first.argmax(-1), None)
        assert decoder.graph is not None and torch.isfinite(replayed).all()
    finally:
        model.to("cpu")
