"""The training stream: packing, conditional token insertion, filtering, continuation, by hand."""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from phf.data.stream import Conditional, Filtering, PackedStream, bucket_edges

EOS, GOOD, BAD = 0, 100, 101


def make_store(docs):
    """docs: list of documents, each a list of (segment tokens, segment score)."""
    tokens, scores, starts, offsets, avg = [], [], [], [0], []
    for doc in docs:
        for seg_tokens, score in doc:
            tokens += seg_tokens
            scores += [score] * len(seg_tokens)
            starts += [1] + [0] * (len(seg_tokens) - 1)
        offsets.append(len(tokens))
        avg.append(float(np.mean([s for _, s in doc])) if doc else float("nan"))
    return SimpleNamespace(
        tokens=np.array(tokens),
        scores=np.array(scores, np.float32),
        seg_start=np.array(starts, np.uint8),
        doc_offsets=np.array(offsets),
        doc_avg_score=np.array(avg),
    )


DOCS = [[([1, 2], 0.0), ([3], 0.9)], [([4, 5, 6], 0.2)], [([7], 0.0), ([8, 9], 0.0), ([10], 0.5)]]


def test_conditional_inserts_good_and_bad_before_each_segment():
    stream = PackedStream(
        make_store(DOCS), seq_len=4, eos_id=EOS, shuffle=False, conditional=Conditional((GOOD, BAD), threshold=0.1)
    )
    tokens, scores, control = stream.document(0)
    assert tokens.tolist() == [EOS, GOOD, 1, 2, BAD, 3]
    assert scores.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.9, 0.9])
    assert control.tolist() == [False, True, False, False, True, False]
    assert stream.document(2)[0].tolist() == [EOS, GOOD, 7, GOOD, 8, 9, BAD, 10]


def test_margin_and_document_labels_choose_the_tags_by_hand():
    # DOCS' segment scores: doc 0 [0, .9], doc 1 [.2], doc 2 [0, 0, .5]; maxima 0.9, 0.2, 0.5,
    # means 0.45, 0.2, 1/6.
    def tags(**conditional):
        stream = PackedStream(
            make_store(DOCS), 4, EOS, shuffle=False, conditional=Conditional((GOOD, BAD), **conditional)
        )
        return [stream.document(d)[0].tolist() for d in range(3)]

    # A margin: good <= 0.1 < nothing <= 0.6 < bad.
    assert tags(threshold=0.1, bad_threshold=0.6) == [
        [EOS, GOOD, 1, 2, BAD, 3],
        [EOS, 4, 5, 6],
        [EOS, GOOD, 7, GOOD, 8, 9, 10],
    ]
    assert tags(threshold=0.3, labels="document-max") == [
        [EOS, BAD, 1, 2, BAD, 3],
        [EOS, GOOD, 4, 5, 6],
        [EOS, BAD, 7, BAD, 8, 9, BAD, 10],
    ]
    assert tags(threshold=0.3, labels="document-mean") == [
        [EOS, BAD, 1, 2, BAD, 3],
        [EOS, GOOD, 4, 5, 6],
        [EOS, GOOD, 7, GOOD, 8, 9, GOOD, 10],
    ]
    # A tag repeated inside its segment every k tokens (and blocks still cover the stream exactly).
    assert tags(threshold=0.1, tag_every=2) == [
        [EOS, GOOD, 1, 2, BAD, 3],
        [EOS, BAD, 4, 5, BAD, 6],
        [EOS, GOOD, 7, GOOD, 8, 9, BAD, 10],
    ]
    assert tags(threshold=0.1, tag_every=1)[2] == [EOS, GOOD, 7, GOOD, 8, GOOD, 9, BAD, 10]
    every = PackedStream(
        make_store(DOCS), 3, EOS, shuffle=False, conditional=Conditional((GOOD, BAD), threshold=0.1, tag_every=2)
    )
    flat = [t for i in range(every.blocks_in_epoch(0)) for t in every[i].input_ids.tolist()]
    whole = [t for d in tags(threshold=0.1, tag_every=2) for t in d]
    assert every.tokens_per_epoch() == len(whole) and flat == whole[: len(flat)]
    # Untagged segments shorten the stream: its blocks still cover it exactly.
    stream = PackedStream(
        make_store(DOCS), 2, EOS, shuffle=False, conditional=Conditional((GOOD, BAD), threshold=0.1, bad_threshold=0.6)
    )
    flat = [t for i in range(stream.blocks_in_epoch(0)) for t in stream[i].input_ids.tolist()]
    assert flat == [EOS, GOOD, 1, 2, BAD, 3, EOS, 4, 5, 6, EOS, GOOD, 7, GOOD, 8, 9][: len(flat)]
    assert stream.tokens_per_epoch() == 17
    # An unscored (NaN) segment gets no label of its own; a document label ignores it.
    nan_docs = [[([1], float("nan")), ([2], 0.0)]]
    for labels, expected in (("segment", [EOS, 1, GOOD, 2]), ("document-max", [EOS, GOOD, 1, GOOD, 2])):
        stream = PackedStream(
            make_store(nan_docs),
            2,
            EOS,
            shuffle=False,
            conditional=Conditional((GOOD, BAD), threshold=0.1, labels=labels),
        )
        assert stream.document(0)[0].tolist() == expected
    with pytest.raises(ValueError, match="below threshold"):
        Conditional((GOOD, BAD), threshold=0.5, bad_threshold=0.1)


def test_drop_probability_one_inserts_nothing_and_buckets_pick_quantiles():
    never = PackedStream(make_store(DOCS), 4, EOS, shuffle=False, conditional=Conditional((GOOD, BAD), drop_prob=1.0))
    assert never.document(0)[0].tolist() == [EOS, 1, 2, 3]
    store = make_store(DOCS)
    edges = bucket_edges(store, 2)  # median of the 6 segment scores [0, .9, .2, 0, 0, .5] = 0.1
    assert edges == pytest.approx((0.1,))
    buckets = PackedStream(store, 4, EOS, shuffle=False, conditional=Conditional((200, 201), edges=edges))
    assert buckets.document(1)[0].tolist() == [EOS, 201, 4, 5, 6]


def test_drop_probability_drops_the_expected_share_deterministically():
    docs = [[([i], 0.0) for i in range(1, 50)] for _ in range(40)]
    stream = PackedStream(make_store(docs), 8, EOS, seed=3, conditional=Conditional((GOOD, BAD), drop_prob=0.25))
    inserted = sum((stream.document(d)[2]).sum() for d in range(40))
    assert 0.7 < inserted / (40 * 49) < 0.8
    again = PackedStream(make_store(docs), 8, EOS, seed=3, conditional=Conditional((GOOD, BAD), drop_prob=0.25))
    assert all((stream[i].input_ids == again[i].input_ids).all() for i in range(20))


def test_packing_is_lossless_shifted_and_unpadded():
    stream = PackedStream(make_store(DOCS), seq_len=3, eos_id=EOS, shuffle=False)
    expected = [EOS, 1, 2, 3, EOS, 4, 5, 6, EOS, 7, 8, 9, 10]
    assert stream.blocks_in_epoch(0) == (len(expected) - 1) // 3
    for i in range(stream.blocks_in_epoch(0)):
        sample = stream[i]
        assert sample.input_ids.tolist() == expected[3 * i : 3 * i + 3]
        assert sample.labels.tolist() == expected[3 * i + 1 : 3 * i + 4]
    # The next index starts the next epoch (a fresh pass over the corpus).
    assert stream[stream.blocks_in_epoch(0)].input_ids.tolist() == expected[:3]


def test_filtering_drops_exactly_the_documents_above_the_threshold():
    store = make_store(DOCS)  # averages 0.45, 0.2, 0.1667
    stream = PackedStream(store, 2, EOS, seed=0, filtering=Filtering(threshold=0.2))
    assert sorted(stream._epoch(0)[0].tolist()) == [1, 2]
    assert Filtering(percentile=50).resolved_threshold(store) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="keeps no document"):
        PackedStream(store, 2, EOS, filtering=Filtering(threshold=0.0))
    with pytest.raises(ValueError, match="no text tokens"):
        PackedStream(make_store([[], []]), 2, EOS)


def test_continuation_starts_after_the_documents_a_base_run_consumed():
    docs = [[([d * 10 + 1, d * 10 + 2, d * 10 + 3], 0.0)] for d in range(1, 30)]
    store = make_store(docs)
    base = PackedStream(store, 4, EOS, seed=1)
    seen = {int(t) for i in range(5) for t in base[i].input_ids}
    start = base.position_to_doc(5)
    rest = PackedStream(store, 4, EOS, seed=1, start_doc=start, conditional=Conditional((GOOD, BAD)))
    later = {int(t) for i in range(rest.blocks_in_epoch(0)) for t in rest[i].input_ids} - {EOS, GOOD, BAD}
    assert not (later & (seen - {EOS})), "the continuation never repeats a document the base run saw"
    # Samples 0-4 read stream positions 0..20: documents 0-4 whole and the first token of document 5.
    assert rest._epoch(0)[0].tolist() == base._epoch(0)[0][6:].tolist()


def _reference_stream(store, stream: PackedStream, epoch: int):
    """The transformed stream of one epoch, token by token: what every block must be a window of."""
    order, _, dropped = stream._epoch(epoch)
    seg_positions = np.flatnonzero(store.seg_start)
    tokens, scores, control = [], [], []
    for doc in order:
        tokens.append(EOS), scores.append(0.0), control.append(False)
        for j in range(store.doc_offsets[doc], store.doc_offsets[doc + 1]):
            seg = int(np.searchsorted(seg_positions, j))
            if stream.conditional and store.seg_start[j] and not (dropped is not None and dropped[seg]):
                choice = int(stream.conditional.choose(np.array([store.scores[j]]))[0])
                (
                    tokens.append(stream.conditional.token_ids[choice]),
                    scores.append(store.scores[j]),
                    control.append(True),
                )
            tokens.append(int(store.tokens[j])), scores.append(store.scores[j]), control.append(False)
    return np.array(tokens), np.array(scores, np.float32), np.array(control)


@pytest.mark.parametrize("seq_len", [5, 64])
@pytest.mark.parametrize(
    "transform",
    [
        {},
        {"conditional": Conditional((GOOD, BAD), threshold=0.5)},
        {"conditional": Conditional((GOOD, BAD), threshold=0.5, drop_prob=0.3)},
        {"conditional": Conditional((200, 201, 202), edges=(0.3, 0.6))},
        {"conditional": Conditional((GOOD, BAD), threshold=0.5), "filtering": Filtering(threshold=0.5)},
    ],
)
def test_every_block_is_a_window_of_the_stream_built_token_by_token(seq_len, transform):
    """Blocks are assembled vectorised across documents; each must equal the plain construction,
    whether it spans many short documents, starts or ends inside one, or holds empty ones."""
    rng = np.random.default_rng(seq_len)
    docs = []
    for _ in range(60):
        n_tokens = int(rng.choice([0, 1, 3, 12, 40]))  # ... and segments of 1-8 tokens
        cuts = sorted({0, *rng.integers(1, max(n_tokens, 1), size=n_tokens // 4).tolist()}) if n_tokens else []
        bounds = [*cuts, n_tokens]
        docs.append(
            [(rng.integers(1, 90, bounds[k + 1] - bounds[k]).tolist(), float(rng.random())) for k in range(len(cuts))]
        )
    store = make_store([d for d in docs if d] + [[]])  # an empty document too
    stream = PackedStream(store, seq_len, EOS, seed=7, **transform)
    for epoch in (0, 1):
        tokens, scores, control = _reference_stream(store, stream, epoch)
        first = sum(stream.blocks_in_epoch(e) for e in range(epoch))
        assert len(tokens) == stream.tokens_per_epoch(epoch)
        for block in range(stream.blocks_in_epoch(epoch)):
            sample, window = stream[first + block], slice(block * seq_len, block * seq_len + seq_len + 1)
            assert sample.input_ids.tolist() == tokens[window][:-1].tolist()
            assert sample.labels.tolist() == tokens[window][1:].tolist()
            assert sample.scores.tolist() == scores[window][1:].tolist()
            assert sample.is_control.tolist() == control[window][1:].tolist()


def test_shuffle_window_permutes_blocks_within_windows_and_continues_after_them():
    docs = [[([d * 10 + 1, d * 10 + 2, d * 10 + 3], 0.0)] for d in range(1, 30)]
    store = make_store(docs)
    plain = PackedStream(store, 4, EOS, seed=1)
    windowed = PackedStream(store, 4, EOS, seed=1, shuffle_window=8)
    n = plain.blocks_in_epoch(0)  # 29 documents of 4 tokens: 28 blocks, windows 0-7, 8-15, 16-23, 24-27
    blocks = [plain[i].input_ids.tolist() for i in range(n)]
    read = [windowed[i].input_ids.tolist() for i in range(n)]
    assert read != blocks, "a window of 8 blocks reorders them"
    for start in range(0, n, 8):  # each window holds the same blocks, in another order
        assert sorted(read[start : start + 8]) == sorted(blocks[start : start + 8])
    assert [windowed[i].input_ids.tolist() for i in range(n)] == read, "seeded: the same order again"
    assert [PackedStream(store, 4, EOS, seed=1, shuffle_window=1)[i].input_ids.tolist() for i in range(n)] == blocks
    # 5 samples read blocks from the whole first window (blocks 0-7: stream positions 0..32, i.e.
    # documents 0-7 and the first token of document 8), so a continuation starts after document 8.
    assert windowed.position_to_doc(5) == plain.position_to_doc(8) == 9
    assert windowed.position_to_doc(8) == plain.position_to_doc(8)
    with pytest.raises(ValueError, match=r"last window of 8 sequences in part\); nothing unseen"):
        windowed.position_to_doc(25)  # blocks 24-27 are the last window: the corpus's end was read
    with pytest.raises(ValueError, match="shuffle_window"):
        PackedStream(store, 4, EOS, shuffle_window=0)


def test_training_warns_when_stream_order_batches_would_read_one_document():
    from phf.config import DataConfig, TrainConfig, TrainingConfig
    from phf.training.data import _warn_if_batches_read_one_document

    def config(window: int) -> TrainConfig:
        data = DataConfig(path="corpus", seq_len=4, shuffle_window=window)
        return TrainConfig(output_dir="run", data=data, training=TrainingConfig(batch_size=2))

    # A batch is 8 tokens: documents of 20 tokens hold most of the corpus, documents of 3 none of it.
    long_docs = make_store([[(list(range(1, 21)), 0.0)] for _ in range(3)] + [[([1, 2, 3], 0.0)]])
    with pytest.warns(UserWarning, match=r"95% of corpus's tokens .* data.shuffle_window=512"):
        _warn_if_batches_read_one_document(config(1), long_docs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_batches_read_one_document(config(512), long_docs)
        _warn_if_batches_read_one_document(config(1), make_store([[([1, 2, 3], 0.0)]] * 10))
