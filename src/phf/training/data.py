"""A training run's data: the scored corpus tokenized once into a token store, the tokenizer with the
objective's control tokens, the stream with the objective's batch transform (continuing a base run's
stream for a finetuning run), and each step's micro-batches built ahead on a thread.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phf.config import ConditionalConfig, ObjectiveConfig, TrainConfig
from phf.data.stream import Conditional, Filtering, PackedStream, bucket_edges, long_document_share
from phf.data.token_store import TokenStore
from phf.training.checkpoint import STATE_FILE, saved_checkpoints
from phf.training.errors import TrainingError


@dataclass
class TrainingData:
    """What :func:`build_data` builds for a run."""

    tokenizer: Any  # with the control tokens
    base_tokenizer: Any  # the corpus's, without them (the token store's)
    store: TokenStore
    stream: PackedStream
    control_tokens: list[str]
    conditional: Conditional | None  # conditional training's transform
    filter_threshold: float | None  # filtering's threshold, its percentile resolved on this corpus


def corpus_manifest(data_path: Path) -> dict:
    """The scored corpus's manifest, refused if it is no scored corpus or holds no document."""
    if not (data_path / "manifest.json").exists():
        raise TrainingError(
            f"data.path {str(data_path)!r} is not a scored corpus (no manifest.json); make one with `phf score`"
        )
    manifest = json.loads((data_path / "manifest.json").read_text())
    if not manifest.get("counts", {}).get("documents_scored"):  # written by a phf that allowed empty corpora
        raise TrainingError(
            f"data.path {str(data_path)!r} holds no scored document (see its manifest.json's issues); "
            "score a corpus with documents in it"
        )
    return manifest


def build_data(config: TrainConfig, accelerator, manifest: dict) -> TrainingData:
    """Token store, tokenizers and the stream of the run ``config`` describes."""
    base_tokenizer, store = _tokenized_corpus(config, accelerator, manifest)
    tokenizer = copy.deepcopy(base_tokenizer)
    filtering, conditional, control_tokens = _batch_transform(config.objective, store, tokenizer)
    start_doc = 0
    if config.data.continue_from:
        start_doc = _continuation_start(config, Path(config.data.continue_from), store, base_tokenizer)
    stream = _stream(config, store, tokenizer.eos_token_id, filtering, conditional, start_doc)
    if accelerator.is_main_process:
        _warn_if_batches_read_one_document(config, store)
    filter_threshold = filtering.resolved_threshold(store) if filtering else None
    return TrainingData(tokenizer, base_tokenizer, store, stream, control_tokens, conditional, filter_threshold)


# Above this share of tokens in documents longer than a batch, most stream-order batches hold one
# document (PII corpus: 45% of batches, PEP8: 72%; docs/paper-vs-phf.md).
LONG_DOCUMENT_SHARE = 0.25


def _warn_if_batches_read_one_document(config: TrainConfig, store: TokenStore) -> None:
    """Warn when sequences are read in stream order from a corpus whose documents are mostly
    longer than a batch: each step's gradient would then come from one or two documents."""
    d = config.data
    if d.shuffle_window > 1:
        return
    batch_tokens = config.training.batch_size * d.seq_len
    share = long_document_share(store, batch_tokens)
    if share > LONG_DOCUMENT_SHARE:
        warnings.warn(
            f"{share:.0%} of {d.path}'s tokens are in documents longer than a batch ({batch_tokens} tokens): "
            "read in stream order, many batches hold a single document; data.shuffle_window=512 mixes them "
            "(docs/usage.md)",
            stacklevel=2,
        )


def _tokenized_corpus(config: TrainConfig, accelerator, manifest: dict) -> tuple[Any, TokenStore]:
    """The base tokenizer and the corpus's token store (the main process builds them first).

    The corpus is tokenized with the base tokenizer (no control tokens), so every objective
    trains on the same token store and literal "<|good|>" in a document stays plain text."""
    from phf.data.token_store import build_token_store
    from phf.data.tokenizer import load_tokenizer

    data_path = Path(config.data.path)
    tokenizer_spec = config.model.init or config.data.tokenizer.name
    texts = texts_key = None
    if tokenizer_spec == "bpe":
        from phf.data.score_corpus import scored_documents
        from phf.data.token_store import corpus_fingerprint

        texts = scored_documents(data_path)
        texts_key = "corpus:" + corpus_fingerprint(manifest)
    with accelerator.main_process_first():
        # Keyed on the corpus fingerprint: a cached tokenizer needs no pass over the documents.
        base_tokenizer = load_tokenizer(
            tokenizer_spec, texts=texts, vocab_size=config.data.tokenizer.vocab_size, texts_key=texts_key
        )
        store = build_token_store(data_path, base_tokenizer, progress=accelerator.is_main_process)
    return base_tokenizer, store


def _batch_transform(
    o: ObjectiveConfig, store: TokenStore, tokenizer
) -> tuple[Filtering | None, Conditional | None, list[str]]:
    """The objective's batch transform (filtering, or conditional training's control tokens, which
    are added to ``tokenizer``) and its control tokens."""
    if o.name == "filtering":
        return Filtering(**asdict(o.filtering)), None, []
    if o.name != "conditional":
        return None, None, []
    return _conditional(o.conditional, store, tokenizer)


def _conditional(o: ConditionalConfig, store: TokenStore, tokenizer) -> tuple[None, Conditional, list[str]]:
    """Conditional training's transform: control tokens (one per score bucket, or good/bad with
    thresholds resolved on this corpus), added to ``tokenizer``."""
    from phf.data.tokenizer import add_control_tokens

    threshold = bad_threshold = edges = None
    if o.buckets:
        control_tokens = [f"<|bucket{k}|>" for k in range(o.buckets)]
        edges = bucket_edges(store, o.buckets, o.labels)
    else:
        control_tokens = [o.good_token, o.bad_token]
        threshold, bad_threshold = _conditional_thresholds(o, store)
    ids = add_control_tokens(tokenizer, control_tokens)
    conditional = Conditional(
        tuple(ids),
        threshold=threshold or 0.0,
        drop_prob=o.drop_prob,
        edges=edges,
        bad_threshold=bad_threshold,
        labels=o.labels,
        tag_every=o.tag_every,
    )
    return None, conditional, control_tokens


def _conditional_thresholds(o: ConditionalConfig, store: TokenStore) -> tuple[float, float | None]:
    """(threshold, bad_threshold) of conditional training, percentiles resolved on this corpus's
    label scores (recorded in phf.json, so evaluation labels held-out text the same way)."""
    from phf.data.stream import store_label_scores

    # `is not None`, not truth: percentile 0 is a threshold too.
    by_percentile = o.percentile is not None or o.bad_percentile is not None
    scores = store_label_scores(store, o.labels) if by_percentile else np.empty(0)
    threshold = float(np.nanpercentile(scores, o.percentile)) if o.percentile is not None else o.threshold
    bad = float(np.nanpercentile(scores, o.bad_percentile)) if o.bad_percentile is not None else o.bad_threshold
    if threshold is None:
        raise TrainingError(
            "conditional training needs objective.threshold or objective.percentile (or objective.buckets)"
        )
    if bad is not None and bad < threshold:
        raise TrainingError(
            f"the bad threshold ({bad:.4g}) is below the good one ({threshold:.4g}): "
            "raise objective.bad_percentile / bad_threshold"
        )
    return threshold, bad


def _continuation_start(config: TrainConfig, base_run: Path, store: TokenStore, base_tokenizer) -> int:
    """Where the base run's stream stopped, as a position in the shared document order."""
    from phf.config import load_config

    base = load_config([str(base_run / "config.yaml")])
    states = saved_checkpoints(base_run)
    state_file = (
        base_run / STATE_FILE if (base_run / STATE_FILE).exists() else (states[-1] / STATE_FILE if states else None)
    )
    if state_file is None:
        raise TrainingError(f"data.continue_from {str(base_run)!r} has no trainer state")
    if base.training.seed != config.training.seed or base.data.seq_len != config.data.seq_len:
        raise TrainingError("data.continue_from: the base run must use the same training.seed and data.seq_len")
    consumed = json.loads(state_file.read_text())["samples"]
    base_filter = Filtering(**asdict(base.objective.filtering)) if base.objective.name == "filtering" else None
    return _stream(base, store, base_tokenizer.eos_token_id, base_filter).position_to_doc(consumed)


def _stream(
    config: TrainConfig,
    store: TokenStore,
    eos_id: int,
    filtering: Filtering | None = None,
    conditional: Conditional | None = None,
    start_doc: int = 0,
) -> PackedStream:
    """The packed stream a run of ``config`` reads, with its batch transform."""
    d = config.data
    return PackedStream(
        store,
        d.seq_len,
        eos_id,
        seed=config.training.seed,
        shuffle=d.shuffle,
        shuffle_window=d.shuffle_window,
        filtering=filtering,
        conditional=conditional,
        start_doc=start_doc,
    )


class Prefetch:
    """Builds step s+1's micro-batches on one background thread while step s runs on the device.

    The stream is a pure function of the sample index, so prefetched batches are exactly the ones
    the step would have built itself. Batches are pinned on CUDA so the host-to-device copies in
    ``Trainer._step`` (``non_blocking=True``) overlap with compute. Only this thread touches the
    stream once training runs; a step that was not prefetched (the first, after a resume) is built
    in place. ``Trainer._step`` starts the next build once it has queued all its kernels.
    """

    def __init__(self, build: Callable[[int], list[dict]], *, pin: bool):
        self.build, self.pin = build, pin
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phf-data")
        self.pending: tuple[int, Future] | None = None

    def _load(self, step: int) -> list[dict]:
        batches = self.build(step)
        return [{k: v.pin_memory() for k, v in b.items()} for b in batches] if self.pin else batches

    def get(self, step: int) -> list[dict]:
        pending, self.pending = self.pending, None
        if pending is not None:
            batches = pending[1].result()  # also: never build on two threads at once
            if pending[0] == step:
                return batches
        return self._load(step)

    def start(self, step: int) -> None:
        if self.pending is None:
            self.pending = (step, self.pool.submit(self._load, step))

    def close(self) -> None:
        self.pending = None
        self.pool.shutdown(wait=True, cancel_futures=True)
