"""The training stream: token store -> batch transform -> packed blocks, random-access by index.

Documents are visited in a seeded permutation per epoch, each becomes ``EOS + tokens`` (with
control tokens inserted at segment starts for conditional training), and the concatenation is cut
into blocks of ``seq_len + 1`` tokens that overlap by one (inputs are block[:-1], targets
block[1:]), with no padding. Because every quantity is a pure function of (seed, epoch, block
index), sample ``g`` can be built on any rank at any time: the data position in a checkpoint is
just the number of samples consumed, resume needs no replay, and data-parallel ranks take
disjoint slices of each global batch.

Transforms change the stream without re-tokenizing:
- filtering drops whole documents whose ``avg_score`` is above a threshold (or a percentile);
- conditional inserts ``<|good|>`` (label <= t) or ``<|bad|>`` before each segment, nothing with
  probability ``drop_prob`` or inside a margin (``bad_threshold``), or one of K quantile tokens in
  ``buckets`` mode; a segment's label is its own score or its document's max or mean.
The permutation is over *all* documents (filtering removes from it), so a position in the stream
means the same documents under every transform: that is how a finetuning run continues exactly
where its base run stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phf.config import CONDITIONAL_LABELS, FilteringConfig
from phf.data.token_store import TokenStore

EOS_SCORE = 0.0  # the EOS before each document carries no misalignment of its own


@dataclass(frozen=True)
class Filtering(FilteringConfig):
    """Keep documents with avg_score <= threshold (threshold from a percentile if given)."""

    def keep(self, store: TokenStore) -> np.ndarray:
        avg = np.asarray(store.doc_avg_score, dtype=np.float64)
        threshold = self.resolved_threshold(store)
        return avg <= threshold  # NaN averages compare False: unscored documents are dropped

    def resolved_threshold(self, store: TokenStore) -> float:
        if self.percentile is not None:
            return float(np.nanpercentile(np.asarray(store.doc_avg_score, dtype=np.float64), self.percentile))
        if self.threshold is None:
            raise ValueError("filtering needs objective.filtering.threshold or objective.filtering.percentile")
        return float(self.threshold)


@dataclass(frozen=True)
class Conditional:
    """Control tokens at segment starts. ``token_ids[0]`` is the aligned token (``<|good|>``, or the
    least-misaligned bucket); with ``edges`` set, segment scores pick among len(edges)+1 buckets.

    A segment is labelled by its *label score*: its own score, or (``labels``) its document's max
    or mean segment score written at every segment. ``<|good|>`` iff label <= ``threshold``;
    ``<|bad|>`` iff label > ``bad_threshold`` (default: ``threshold``); in between (a margin) and
    where the score is NaN (unscored) no token is inserted. With ``tag_every`` the tag is written
    again every ``tag_every`` tokens inside its segment, so it is never far from the text it labels.
    """

    token_ids: tuple[int, ...]
    threshold: float = 0.0
    drop_prob: float = 0.0
    edges: tuple[float, ...] | None = None
    bad_threshold: float | None = None
    labels: str = "segment"
    tag_every: int | None = None  # also repeat a segment's tag every this many of its tokens

    def __post_init__(self) -> None:
        if self.tag_every is not None and self.tag_every < 1:
            raise ValueError(f"tag_every must be >= 1, got {self.tag_every}")
        if self.labels not in CONDITIONAL_LABELS:
            raise ValueError(f"conditional labels {self.labels!r}: choose one of {', '.join(CONDITIONAL_LABELS)}")
        if self.bad_threshold is not None and self.bad_threshold < self.threshold:
            raise ValueError(f"bad_threshold {self.bad_threshold} is below threshold {self.threshold}")

    def choose(self, label_scores: np.ndarray) -> np.ndarray:
        """Index into token_ids for each label score; -1 where no token is inserted."""
        label_scores = np.asarray(label_scores, dtype=np.float64)
        if self.edges is not None:
            tags = np.searchsorted(np.asarray(self.edges), label_scores, side="left")
        else:
            tags = (label_scores > self.threshold).astype(np.int64)
            if self.bad_threshold is not None:
                tags[(label_scores > self.threshold) & (label_scores <= self.bad_threshold)] = -1
        tags[np.isnan(label_scores)] = -1
        return tags

    def segment_tags(self, segment_scores: np.ndarray, segment_doc: np.ndarray) -> np.ndarray:
        """The tag of every segment, given each segment's score and document (non-decreasing)."""
        return self.choose(label_scores(segment_scores, segment_doc, self.labels))


def label_scores(segment_scores: np.ndarray, segment_doc: np.ndarray, labels: str) -> np.ndarray:
    """Each segment's label score: its own score, or its document's max or mean (NaNs ignored, as
    the paper's avg_score; NaN only where no segment of the document was scored)."""
    scores = np.asarray(segment_scores, dtype=np.float64)
    if labels == "segment" or not len(scores):
        return scores
    doc = np.asarray(segment_doc)
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(doc)]))
    valid = ~np.isnan(scores)
    if labels == "document-max":
        per_doc = np.fmax.reduceat(scores, starts)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            per_doc = np.add.reduceat(np.where(valid, scores, 0.0), starts) / np.add.reduceat(valid, starts)
    return per_doc[run]


def store_label_scores(store: TokenStore, labels: str = "segment") -> np.ndarray:
    """The label score of every segment of a token store (see :class:`Conditional`)."""
    seg_positions = np.flatnonzero(np.asarray(store.seg_start))
    doc = np.searchsorted(np.asarray(store.doc_offsets, dtype=np.int64), seg_positions, side="right") - 1
    return label_scores(np.asarray(store.scores)[seg_positions], doc, labels)


def bucket_edges(store: TokenStore, buckets: int, labels: str = "segment") -> tuple[float, ...]:
    """K-1 interior quantiles of label scores: bucket 0 holds the least misaligned segments."""
    scores = store_label_scores(store, labels)
    return tuple(float(x) for x in np.nanquantile(scores, np.linspace(0, 1, buckets + 1)[1:-1]))


@dataclass
class Sample:
    input_ids: np.ndarray  # (seq_len,) int64
    labels: np.ndarray  # (seq_len,) int64: next tokens
    scores: np.ndarray  # (seq_len,) float32: misalignment of each target token's segment
    is_control: np.ndarray  # (seq_len,) bool: target is a control token (excluded from text-only metrics)


class PackedStream:
    """The training stream: documents after EOS, transformed, packed into ``seq_len`` blocks, read by block."""

    def __init__(
        self,
        store: TokenStore,
        seq_len: int,
        eos_id: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_window: int = 1,
        filtering: Filtering | None = None,
        conditional: Conditional | None = None,
        start_doc: int = 0,
    ):
        self.store, self.seq_len, self.eos_id = store, int(seq_len), int(eos_id)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        if int(shuffle_window) < 1:
            raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
        self.shuffle_window = int(shuffle_window)
        self._window_order: tuple = (None, None, None)  # (epoch, first block, permutation) last used
        self.conditional, self.start_doc = conditional, int(start_doc)
        self.doc_offsets = np.asarray(store.doc_offsets, dtype=np.int64)
        # Plain ndarray views of the (memory-mapped) columns: indexing a np.memmap costs more per call.
        self.tokens, self.scores = np.asarray(store.tokens), np.asarray(store.scores, dtype=np.float32)
        self.num_docs = len(self.doc_offsets) - 1
        self.keep = filtering.keep(store) if filtering else np.ones(self.num_docs, dtype=bool)
        if not self.keep.any():
            raise ValueError("the transform keeps no document (filtering threshold too low?)")
        if not len(self.tokens):
            raise ValueError("the token store holds no text tokens (are all its documents empty?)")
        seg_positions = np.flatnonzero(np.asarray(store.seg_start))
        seg_doc = np.searchsorted(self.doc_offsets, seg_positions, side="right") - 1
        self.seg_tags: np.ndarray | None = None  # set iff conditional is
        if conditional is not None:
            # The tag before every segment (-1: none), fixed by the corpus: labels do not change per epoch.
            self.seg_tags = conditional.segment_tags(self.scores[seg_positions], seg_doc)
            if conditional.tag_every:
                seg_positions, self.seg_tags = _repeat_tags(
                    seg_positions, seg_doc, self.doc_offsets, self.seg_tags, conditional.tag_every
                )
        self.seg_positions = seg_positions
        # Segment index range of each document: segments [doc_segs[d], doc_segs[d+1]).
        self.doc_segs = np.searchsorted(seg_positions, self.doc_offsets)
        self.segs_per_doc = np.diff(self.doc_segs)
        self._epoch_blocks: list[int] = []
        self._epochs: dict[int, tuple] = {}

    # --- per-epoch layout ---------------------------------------------------------------------
    def _rng(self, epoch: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, purpose])

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(documents in order, cumulative stream length after each, segment drop mask)."""
        if epoch not in self._epochs:
            if len(self._epochs) >= 2:  # a run moves forward: keep the current and the next epoch
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = self._layout(epoch)
        return self._epochs[epoch]

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        order = self._rng(epoch, 0).permutation(self.num_docs) if self.shuffle else np.arange(self.num_docs)
        if epoch == 0 and self.start_doc:
            order = order[self.start_doc :]
        order = order[self.keep[order]]
        lengths = np.diff(self.doc_offsets)[order] + 1  # + EOS
        dropped = None
        if self.conditional is not None:
            if self.conditional.drop_prob > 0:
                dropped = self._rng(epoch, 1).random(len(self.seg_positions)) < self.conditional.drop_prob
            assert self.seg_tags is not None  # set in __init__ together with self.conditional
            tagged = (self.seg_tags >= 0) & (True if dropped is None else ~dropped)
            cumulative = np.concatenate([[0], np.cumsum(tagged)])
            lengths = lengths + (cumulative[self.doc_segs[1:]] - cumulative[self.doc_segs[:-1]])[order]
        return order, np.cumsum(lengths), dropped

    def blocks_in_epoch(self, epoch: int) -> int:
        total = int(self._epoch(epoch)[1][-1]) if self.num_docs else 0
        return max(0, (total - 1) // self.seq_len)

    def tokens_per_epoch(self, epoch: int = 0) -> int:
        return int(self._epoch(epoch)[1][-1])

    def _locate(self, index: int) -> tuple[int, int]:
        epoch = 0
        while True:
            while len(self._epoch_blocks) <= epoch:
                n = self.blocks_in_epoch(len(self._epoch_blocks))
                if n == 0:
                    raise ValueError(
                        f"the corpus yields fewer than {self.seq_len + 1} tokens per epoch: "
                        "lower data.seq_len or use a larger corpus"
                    )
                self._epoch_blocks.append(n)
            if index < self._epoch_blocks[epoch]:
                return epoch, index
            index -= self._epoch_blocks[epoch]
            epoch += 1

    # --- building samples ---------------------------------------------------------------------
    def document(self, doc: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One transformed document: (tokens, scores, is_control), EOS first."""
        return self._window(np.array([doc]), self._epoch(epoch)[2], 0, None)

    def _window(self, docs: np.ndarray, dropped: np.ndarray | None, lo: int, hi: int | None):
        """Positions [lo, hi) (hi None: to the end) of the transformed stream made of ``docs`` in
        order, each as EOS, then its tokens with a control token before each kept segment.

        Vectorised over the documents: a fixed number of numpy calls per block however many
        documents it spans, reading only the window's tokens from the store. (The per-document
        loop it replaced was slowest on blocks of short documents, re-transformed a whole long
        document for every block that touched it, and held the GIL the training thread needs.)

        The stream is a sequence of inserted tokens (EOS, controls), each followed by a run of
        the store's text, contiguous in the store: a position is ``offset`` tokens after the last
        inserted token at or before it, so its text comes from that token's run start + offset - 1.
        """
        n = len(docs)
        a = self.doc_offsets[docs]
        lengths = self.doc_offsets[docs + 1] - a
        if self.conditional is None:
            inserted_at = _starts(lengths + 1)  # one EOS per document
            run_start = a
            inserted_ids = np.full(n, self.eos_id, dtype=np.int64)
            inserted_scores = np.full(n, EOS_SCORE, dtype=np.float32)
            inserted_control = np.zeros(n, dtype=bool)
        else:
            first_seg, stop_seg = self.doc_segs[docs], self.doc_segs[docs + 1]
            segs = _ranges(first_seg, stop_seg)
            owner = np.repeat(np.arange(n), stop_seg - first_seg)
            assert self.seg_tags is not None  # set in __init__ together with self.conditional
            kept = self.seg_tags[segs] >= 0
            if dropped is not None:
                kept &= ~dropped[segs]
            segs, owner = segs[kept], owner[kept]
            seg_at = self.seg_positions[segs]
            controls = np.bincount(owner, minlength=n)
            doc_start = _starts(lengths + 1 + controls)
            # Each document inserts its EOS, then its controls: the r-th kept segment, starting at
            # the document's token K, gets its control at doc_start + 1 + K + r.
            first_control = _starts(controls)
            eos_slot = np.arange(n) + first_control
            rank = np.arange(len(segs)) - first_control[owner]
            slot = eos_slot[owner] + 1 + rank
            seg_scores = self.scores[seg_at]
            inserted_at = np.empty(n + len(segs), dtype=np.int64)
            inserted_at[eos_slot] = doc_start
            inserted_at[slot] = doc_start[owner] + 1 + (seg_at - a[owner]) + rank
            run_start = np.empty(n + len(segs), dtype=np.int64)
            run_start[eos_slot] = a
            run_start[slot] = seg_at
            inserted_ids = np.full(n + len(segs), self.eos_id, dtype=np.int64)
            inserted_ids[slot] = np.asarray(self.conditional.token_ids, dtype=np.int64)[self.seg_tags[segs]]
            inserted_scores = np.full(n + len(segs), EOS_SCORE, dtype=np.float32)
            inserted_scores[slot] = seg_scores
            inserted_control = np.zeros(n + len(segs), dtype=bool)
            inserted_control[slot] = True

        positions = np.arange(lo, int(lengths.sum()) + len(inserted_at) if hi is None else hi)
        last = np.searchsorted(inserted_at, positions, side="right") - 1  # >= 0: the stream opens with EOS
        offset = positions - inserted_at[last]
        is_inserted = offset == 0
        # Inserted positions read a text token they discard (index -1 at worst): cheaper than masking.
        source = run_start[last] + offset - 1
        tokens = np.where(is_inserted, inserted_ids[last], self.tokens[source])
        scores = np.where(is_inserted, inserted_scores[last], self.scores[source])
        return tokens, scores, inserted_control[last] & is_inserted

    def _shuffled(self, epoch: int, block: int) -> int:
        """The block read at stream position ``block``: a seeded permutation within its window."""
        w = self.shuffle_window
        if w == 1:
            return block
        start = block - block % w
        if self._window_order[:2] != (epoch, start):  # a run reads a window's blocks one after another
            size = min(w, self._epoch_blocks[epoch] - start)
            self._window_order = (epoch, start, self._rng(epoch, 2 + start // w).permutation(size))
        return start + int(self._window_order[2][block - start])

    def _sample_span(self, index: int) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """(documents, segment drop mask, lo, hi): sample ``index`` is positions [lo, hi) of the
        stream made of those documents (one more than seq_len: the last label)."""
        epoch, block = self._locate(int(index))
        block = self._shuffled(epoch, block)
        order, cum, dropped = self._epoch(epoch)
        start, stop = block * self.seq_len, block * self.seq_len + self.seq_len + 1
        first, last = np.searchsorted(cum, [start, stop - 1], side="right")
        base = int(cum[first - 1]) if first else 0
        return order[first : last + 1], dropped, start - base, stop - base

    def sample_documents(self, index: int) -> np.ndarray:
        """The documents (store indices) sample ``index`` reads from."""
        return self._sample_span(index)[0]

    def __getitem__(self, index: int) -> Sample:
        tokens, scores, control = self._window(*self._sample_span(index))
        return Sample(tokens[:-1], tokens[1:], scores[1:], control[1:])

    def position_to_doc(self, samples_consumed: int) -> int:
        """Index into epoch 0's order (over all documents) of the document where a run that has
        consumed this many samples stopped: the start of a continuation run."""
        epoch, block = self._locate(int(samples_consumed))
        if epoch > 0:
            raise ValueError("the base run went past one epoch; nothing unseen is left to continue on")
        # A window read in part was read in any of its blocks: continue after the whole window.
        block = min(-(-block // self.shuffle_window) * self.shuffle_window, self._epoch_blocks[0])
        order, cum, _ = self._epoch(0)
        i = int(np.searchsorted(cum, block * self.seq_len, side="right"))
        kept_position = min(i + 1, len(order))  # the partially seen document counts as seen
        # Map back from the filtered order to a position in the full permutation.
        full = self._rng(0, 0).permutation(self.num_docs) if self.shuffle else np.arange(self.num_docs)
        full = full[self.start_doc :]
        kept_index = np.flatnonzero(self.keep[full])
        if kept_position >= len(kept_index):
            raise ValueError(
                "the base run read the whole first epoch"
                + (f" (its last window of {self.shuffle_window} sequences in part)" if self.shuffle_window > 1 else "")
                + "; nothing unseen is left to continue on"
            )
        return self.start_doc + int(kept_index[kept_position])


def long_document_share(store: TokenStore, tokens: int) -> float:
    """The share of the store's tokens in documents longer than ``tokens`` (a batch): where it is
    large, sequences read in stream order put most batches on a single document."""
    lengths = np.diff(np.asarray(store.doc_offsets))
    return float(lengths[lengths > tokens].sum() / max(int(lengths.sum()), 1))


def _repeat_tags(
    positions: np.ndarray, doc: np.ndarray, doc_offsets: np.ndarray, tags: np.ndarray, every: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut each segment into pieces of ``every`` tokens, each opened by the segment's tag: the
    (start positions, tags) of the pieces."""
    ends = np.minimum(np.r_[positions[1:], doc_offsets[-1]], doc_offsets[doc + 1])
    pieces = np.maximum(1, -(-(ends - positions) // every))
    rank = np.arange(int(pieces.sum())) - np.repeat(_starts(pieces), pieces)
    return np.repeat(positions, pieces) + every * rank, np.repeat(tags, pieces)


def _starts(counts: np.ndarray) -> np.ndarray:
    """Where each of consecutive runs of these lengths starts."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out[:-1]


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """``np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])`` without the loop."""
    counts = stops - starts
    return np.repeat(starts - _starts(counts), counts) + np.arange(int(counts.sum()))


def step_sample_indices(step: int, batch_size: int, micro_batch_size: int, accum: int, rank: int) -> list[list[int]]:
    """Global sample indices of one rank's micro-batches at one optimizer step.

    Step s owns samples [s*B, (s+1)*B); rank r takes the r-th contiguous share of A*m of them and
    cuts it into A micro-batches of m. Ranks are disjoint and together cover the step exactly, so
    the update does not depend on how B is split over ranks and accumulation.
    """
    first = step * batch_size + rank * accum * micro_batch_size
    return [list(range(first + k * micro_batch_size, first + (k + 1) * micro_batch_size)) for k in range(accum)]


def collate(samples: list[Sample]):
    """Samples -> a dict of torch tensors (B, seq_len)."""
    import torch

    return {
        "input_ids": torch.from_numpy(np.stack([s.input_ids for s in samples])),
        "labels": torch.from_numpy(np.stack([s.labels for s in samples])),
        "scores": torch.from_numpy(np.stack([s.scores for s in samples])),
        "is_control": torch.from_numpy(np.stack([s.is_control for s in samples])),
    }
