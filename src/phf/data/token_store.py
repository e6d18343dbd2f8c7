"""Tokenize a scored corpus once; keep token ids, per-token scores and segment starts memory-mapped.

nanoGPT's ``train.bin`` plus what the objectives need. A store directory holds::

    tokens.bin      uint16 (vocab < 65536) or uint32 token ids, all documents back to back, no EOS
    scores.bin      float32, the misalignment score of the segment each token belongs to
    seg_start.bin   uint8, 1 at the first token of every segment that owns a token
    doc_offsets.npy int64 [D+1]: document d is tokens[doc_offsets[d]:doc_offsets[d+1]]
    doc_avg_score.npy float64 [D] (NaN where every segment of the document failed to score)
    doc_index.npy   int64 [D], the scored corpus's doc_index (input record number)
    store.json      format, fingerprints, dtype and counts; written last: its presence means complete

Why tokenize whole documents: every objective must see the same tokens (filtering, conditional
training, UL, RWR and AWR then differ only by batch transforms), so LM losses stay comparable.
Segment scores reach tokens through the tokenizer's character offsets: a token belongs to the
segment holding its *last* character, because GPT-2's BPE glues a word's leading space to the
word while phf's segmenter leaves that space at the end of the previous segment.

Except corpora segmented into lines (code): there a BPE token often spans a line break and the
next line's indentation (``"\n    "``), so a control token placed before the token that holds a
line's start sat *before the newline*, at the end of the previous line, and only for indented
lines (measured on the PEP8 study, docs/paper-vs-phf.md). Such corpora are tokenized line by line,
so that every line starts a token and its tag follows the newline, as the paper's text-level tags do.

Documents are tokenized with ``split_special_tokens=True``: a literal ``<|endoftext|>`` or
``<|good|>`` inside a document is ordinary text, never EOS or a control token.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from phf._version import __version__
from phf.errors import PhfError
from phf.io.integrity import damage, pid_alive

FORMAT_VERSION = 1
STORE_FILE = "store.json"
DOC_ARRAYS = ("doc_offsets", "doc_avg_score", "doc_index")
READ_COLUMNS = ["texts", "scores", "avg_score", "doc_index"]


class TokenStoreError(PhfError, RuntimeError):
    """A store that cannot be built or opened; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------
# Fingerprints and locations


def _read_manifest(scored_dir: Path) -> dict:
    path = scored_dir / "manifest.json"
    if not path.is_file():
        raise TokenStoreError(
            f"{scored_dir} is not a finished scored corpus (no manifest.json); run `phf score` to completion first"
        )
    return json.loads(path.read_text())


def corpus_fingerprint(manifest: dict) -> str:
    """sha256 of what the scored corpus *is*: its input, scorer and counts (not paths or mtimes)."""
    what = {
        "input": {k: v for k, v in manifest.get("input", {}).items() if k != "path"},
        "scorer": manifest.get("scorer"),
        "counts": manifest.get("counts"),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def default_store_path(scored_dir: str | os.PathLike, tokenizer) -> Path:
    """``<cache>/tokens/<16 hex>``: one store per (scored corpus, tokenizer)."""
    return _default_path(*_fingerprints(_read_manifest(Path(scored_dir)), tokenizer))


def _fingerprints(manifest: dict, tokenizer) -> tuple[str, str]:
    """(corpus, encoding) fingerprints. The encoding is the tokenizer and, for line corpora, the
    line-by-line tokenization, so a store built by document for such a corpus is not reused."""
    from phf.data.tokenizer import tokenizer_fingerprint

    by = _tokenized_by(manifest)
    return corpus_fingerprint(manifest), tokenizer_fingerprint(tokenizer) + ("" if by == "document" else f"+by-{by}")


def _default_path(corpus_fp: str, tokenizer_fp: str) -> Path:
    from phf.io.fetch import cache_dir

    return cache_dir() / "tokens" / hashlib.sha256((corpus_fp + tokenizer_fp).encode()).hexdigest()[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


# ---------------------------------------------------------------------------------------------
# Reading a store


class TokenStore:
    """A finished store, memory-mapped read-only. Open with :meth:`open`."""

    def __init__(self, path: Path, meta: dict, tokens, scores, seg_start, doc_offsets, doc_avg_score, doc_index):
        self.path = path
        self.meta = meta
        self.tokens = tokens
        self.scores = scores
        self.seg_start = seg_start
        self.doc_offsets = doc_offsets
        self.doc_avg_score = doc_avg_score
        self.doc_index = doc_index

    @classmethod
    def open(cls, path: str | os.PathLike) -> TokenStore:
        """Open and validate a store (store.json, file sizes, offsets); raises TokenStoreError."""
        path = Path(path)
        meta_path = path / STORE_FILE
        if not meta_path.is_file():
            raise TokenStoreError(f"{path} is not a complete token store (no {STORE_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TokenStoreError(f"{meta_path}: unreadable ({exc})") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise TokenStoreError(
                f"{path}: store format {meta.get('format_version')!r}, this phf reads {FORMAT_VERSION}; rebuild it"
            )
        try:
            dtype = np.dtype(meta["dtype"])
            n_tokens, n_docs = int(meta["num_tokens"]), int(meta["num_docs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenStoreError(f"{meta_path}: missing or bad field ({exc})") from exc

        def column(name: str, item: np.dtype):
            file = path / name
            if not file.is_file():
                raise TokenStoreError(f"{path}: {name} is missing")
            size = file.stat().st_size
            if size != n_tokens * item.itemsize:
                raise TokenStoreError(f"{file}: {size} bytes, expected {n_tokens} x {item.itemsize}")
            if n_tokens == 0:  # mmap cannot map an empty file
                empty = np.empty(0, item)
                empty.flags.writeable = False
                return empty
            return np.memmap(file, dtype=item, mode="r", shape=(n_tokens,))

        tokens = column("tokens.bin", dtype)
        scores = column("scores.bin", np.dtype(np.float32))
        seg_start = column("seg_start.bin", np.dtype(np.uint8))
        arrays = {}
        for name, length in zip(DOC_ARRAYS, (n_docs + 1, n_docs, n_docs)):
            file = path / f"{name}.npy"
            try:
                arrays[name] = np.load(file, mmap_mode="r" if length else None, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise TokenStoreError(f"{file}: unreadable ({exc})") from exc
            if arrays[name].shape != (length,):
                raise TokenStoreError(f"{file}: shape {arrays[name].shape}, expected ({length},)")
        offsets = arrays["doc_offsets"]
        if offsets[0] != 0 or offsets[-1] != n_tokens:
            raise TokenStoreError(
                f"{path}: doc_offsets run from {offsets[0]} to {offsets[-1]}, expected 0 to {n_tokens}"
            )
        decreasing = np.flatnonzero(np.diff(offsets) < 0)
        if len(decreasing):
            raise TokenStoreError(
                f"{path}: doc_offsets decrease after document {int(decreasing[0])}; "
                "the store's files disagree: rebuild it"
            )
        return cls(path, meta, tokens, scores, seg_start, offsets, arrays["doc_avg_score"], arrays["doc_index"])

    @property
    def num_docs(self) -> int:
        return len(self.doc_avg_score)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return self.num_docs

    def doc(self, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, scores, seg_start) of document ``d``: views into the memory maps, no copy."""
        if not -self.num_docs <= d < self.num_docs:
            raise IndexError(f"document {d} out of range for a store of {self.num_docs}")
        d %= self.num_docs
        a, b = int(self.doc_offsets[d]), int(self.doc_offsets[d + 1])
        return self.tokens[a:b], self.scores[a:b], self.seg_start[a:b]

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, docs={self.num_docs}, tokens={self.num_tokens})"


# ---------------------------------------------------------------------------------------------
# Building a store


def _document_encoder(tokenizer):
    """A private copy of the fast tokenizer's Rust backend, set up to encode whole documents.

    A copy, so the caller's tokenizer keeps its state (transformers 5 leaves the backend's
    ``encode_special_tokens`` flag set after a ``split_special_tokens=True`` call). Calling the
    backend's ``encode_batch`` (parallel in Rust) directly also skips transformers' conversion of
    every encoding to Python lists, which costs about half as much again as the tokenization.
    Settings: no truncation or padding, and special-token strings inside documents are text.
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = True
    return backend


def _segments(batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(characters per segment, score per segment, segments per document) of a record batch, the
    segments of all its documents back to back; checks there is one score per segment."""
    import pyarrow.compute as pc

    texts, scores = batch.column("texts"), batch.column("scores")
    seg_len = pc.utf8_length(texts.flatten()).to_numpy(zero_copy_only=False).astype(np.int64)
    seg_score = scores.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    segs_per_doc = pc.list_value_length(texts).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(seg_score) != len(seg_len) or not np.array_equal(
        pc.list_value_length(scores).fill_null(0).to_numpy(zero_copy_only=False), segs_per_doc
    ):
        raise TokenStoreError("a document's scores do not match its segments (one score per segment expected)")
    return seg_len, seg_score, segs_per_doc


def _encode(encoder, docs: list[str], vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens per document, token ids, [start, end) character offsets per token) of ``docs``,
    the tokens of all documents back to back; checks every id is in the vocabulary."""
    encodings = encoder.encode_batch(docs, add_special_tokens=False)
    tok_count = np.fromiter((len(e.ids) for e in encodings), np.int64, count=len(docs))
    n_tok = int(tok_count.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int64, count=n_tok)
    offsets = np.fromiter(
        itertools.chain.from_iterable(itertools.chain.from_iterable(e.offsets for e in encodings)),
        np.int64,
        count=2 * n_tok,
    ).reshape(n_tok, 2)
    if n_tok and (ids.min() < 0 or ids.max() >= vocab_size):
        raise TokenStoreError(f"tokenizer produced id {int(ids.max())} outside its vocabulary of {vocab_size}")
    return tok_count, ids, offsets


def _token_segments(seg_len: np.ndarray, segs_per_doc: np.ndarray, tok_count: np.ndarray, offsets: np.ndarray):
    """The segment (index into the batch's segments) that each token belongs to.

    All positions are global in the batch: document d's characters start at ``doc_char[d]`` of the
    concatenation of the batch's documents, and segment ends are the cumsum of segment lengths, so
    one ``searchsorted`` maps every token of the batch to its segment.
    """
    n_docs, n_tok = len(segs_per_doc), len(offsets)
    seg_first = np.concatenate([[0], np.cumsum(segs_per_doc)])  # segment range of each document
    char_end = np.cumsum(seg_len)  # global end (exclusive) of each segment
    char_at = np.concatenate([[0], char_end])
    doc_char = char_at[seg_first[:-1]]
    doc_len = char_at[seg_first[1:]] - doc_char

    tok_doc = np.repeat(np.arange(n_docs), tok_count)
    start, end = offsets[:, 0], offsets[:, 1]
    if n_tok and (start.min() < 0 or (end > doc_len[tok_doc]).any() or (end < start).any()):
        raise TokenStoreError("tokenizer returned offsets outside its document; it cannot map scores to tokens")
    # A token belongs to the segment of its last character. A token with an empty span takes the
    # segment of the previous token (forward fill), except a document's first token, which anchors
    # at its start.
    first = np.zeros(n_tok, bool)
    first[np.cumsum(tok_count)[tok_count > 0] - tok_count[tok_count > 0]] = True
    anchor = (end > start) | first
    pos = np.where(end > start, end - 1, np.minimum(start, np.maximum(doc_len[tok_doc] - 1, 0)))
    seg = np.searchsorted(char_end, doc_char[tok_doc] + pos, side="right")
    if not anchor.all():
        last_anchor = np.maximum.accumulate(np.where(anchor, np.arange(n_tok), 0))
        seg = seg[last_anchor]
    return seg


def _tokenized_by(manifest: dict) -> str:
    """ "line" for corpora segmented into lines (each line tokenized on its own), else "document"."""
    return "line" if (manifest.get("scorer") or {}).get("segmenter") == "line" else "document"


def _encode_by_segment(encoder, batch, segs_per_doc: np.ndarray, vocab_size: int):
    """(tokens per document, token ids, segment of each token): every segment tokenized on its own."""
    segs = batch.column("texts").flatten().fill_null("").to_pylist()
    seg_tok, ids, _ = _encode(encoder, segs, vocab_size)
    seg_doc = np.repeat(np.arange(len(segs_per_doc)), segs_per_doc)
    tok_count = np.bincount(seg_doc, weights=seg_tok, minlength=len(segs_per_doc)).astype(np.int64)
    return tok_count, ids, np.repeat(np.arange(len(segs)), seg_tok)


def _map_batch(encoder, batch, vocab_size: int, dtype: np.dtype, by: str = "document") -> dict:
    """Tokenize one record batch of a scored shard (by document or by line) and map segment
    scores onto its tokens."""
    import pyarrow.compute as pc

    seg_len, seg_score, segs_per_doc = _segments(batch)
    avg = batch.column("avg_score").to_numpy(zero_copy_only=False).astype(np.float64)
    doc_index = batch.column("doc_index").to_numpy(zero_copy_only=False).astype(np.int64)

    # NaN segment scores (scorer failures) take the document's average, or 0.0 where that is NaN too.
    nan = np.isnan(seg_score)
    fallback = np.nan_to_num(avg, nan=0.0)
    seg_score = np.where(nan, fallback[np.repeat(np.arange(batch.num_rows), segs_per_doc)], seg_score)

    if by == "line":
        tok_count, ids, seg = _encode_by_segment(encoder, batch, segs_per_doc, vocab_size)
    else:
        docs = pc.binary_join(batch.column("texts"), "").fill_null("").to_pylist()
        tok_count, ids, offsets = _encode(encoder, docs, vocab_size)
        seg = _token_segments(seg_len, segs_per_doc, tok_count, offsets)
    seg_start = np.ones(len(seg), np.uint8)
    seg_start[1:] = seg[1:] != seg[:-1]
    owned = np.bincount(seg, minlength=len(seg_len)) > 0 if len(seg) else np.zeros(len(seg_len), bool)
    return {
        "tokens": ids.astype(dtype),
        "scores": seg_score[seg].astype(np.float32),
        "seg_start": seg_start,
        "tok_count": tok_count,
        "avg": avg,
        "doc_index": doc_index,
        "segments": len(seg_len),
        "segments_without_tokens": int((~owned).sum()),
        "nan_scores_replaced": int(nan.sum()),
        "docs_nan_avg_score": int(np.isnan(avg).sum()),
        "characters": int(seg_len.sum()),
    }


def _remove_stale_temps(target: Path) -> None:
    """Delete temp dirs of builds of ``target`` that were killed on this host (their pid is gone)."""
    prefix = f".tmp-{target.name}-{socket.gethostname()}-"
    for tmp in target.parent.glob(f"{prefix}*"):
        try:
            pid = int(tmp.name[len(prefix) :].split("-", 1)[0])
        except ValueError:
            continue
        if not pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _reusable(target: Path, corpus_fp: str, tokenizer_fp: str, explicit: bool) -> TokenStore | None:
    if not target.exists():
        return None
    try:
        store = TokenStore.open(target)
    except TokenStoreError as exc:
        if explicit and any(target.iterdir()):
            raise TokenStoreError(
                f"{target} exists and is not a complete token store; delete it or choose another out"
            ) from None
        if any(target.iterdir()):
            warnings.warn(f"rebuilding the cached token store: {exc}", stacklevel=3)
        shutil.rmtree(target)  # phf's own cache entry (or an empty dir): safe to rebuild
        return None
    if (
        store.meta.get("tokenizer", {}).get("fingerprint") == tokenizer_fp
        and store.meta.get("corpus", {}).get("fingerprint") == corpus_fp
    ):
        return store
    if explicit:
        raise TokenStoreError(
            f"{target} holds a token store of another corpus or tokenizer; delete it or choose another out"
        )
    shutil.rmtree(target)
    return None


def _check_tokenizer(tokenizer) -> None:
    """Scores reach tokens through character offsets, which only fast tokenizers return."""
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TokenStoreError(
            f"{type(tokenizer).__name__} is a slow tokenizer without offsets support; "
            "phf needs a fast one (see phf.load_tokenizer)"
        )


def _check_shards(scored_dir: Path, manifest: dict) -> None:
    """Every shard is the file `phf score` wrote (size and checksum in the manifest): a damaged
    shard would otherwise be read into the store, or fail far into the build."""
    for shard in manifest.get("shards", []):
        problem = damage(scored_dir / shard["file"], shard["parquet"]) if "parquet" in shard else None
        if problem:
            raise TokenStoreError(
                f"{scored_dir}: {problem}; rerun the same `phf score` command to score that shard again"
            )


# What _map_batch counts per batch, summed into store.json.
BATCH_COUNTS = ("segments", "segments_without_tokens", "nan_scores_replaced", "docs_nan_avg_score", "characters")
# What _map_batch returns per document, with the dtype of an empty corpus's array.
DOC_COLUMNS = {"tok_count": np.int64, "avg": np.float64, "doc_index": np.int64}


def _tokenize_shards(
    tmp: Path, files: list[Path], encoder, vocab_size: int, batch_docs: int, bar, by: str
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Stream the scored shards through _map_batch, record batch by record batch: per-token
    columns go straight to their .bin files in ``tmp`` (memory stays flat); the per-document
    columns (DOC_COLUMNS) and the summed BATCH_COUNTS are returned."""
    import pyarrow.parquet as pq

    dtype = token_dtype(vocab_size)
    totals = dict.fromkeys(BATCH_COUNTS, 0)
    per_doc: dict[str, list[np.ndarray]] = {key: [] for key in DOC_COLUMNS}
    with (
        open(tmp / "tokens.bin", "wb") as f_tok,
        open(tmp / "scores.bin", "wb") as f_score,
        open(tmp / "seg_start.bin", "wb") as f_start,
    ):
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_docs, columns=READ_COLUMNS):
                part = _map_batch(encoder, batch, vocab_size, dtype, by)
                part["tokens"].tofile(f_tok)
                part["scores"].tofile(f_score)
                part["seg_start"].tofile(f_start)
                for key in per_doc:
                    per_doc[key].append(part[key])
                for key in totals:
                    totals[key] += part[key]
                bar.update(batch.num_rows)
    columns = {key: np.concatenate(parts) if parts else np.zeros(0, DOC_COLUMNS[key]) for key, parts in per_doc.items()}
    return columns, totals


def _write_arrays(tmp: Path, scored_dir: Path, manifest: dict, tokenizer, batch_docs: int, progress: bool) -> dict:
    """Write every file of the store but store.json into ``tmp``; returns the counts for store.json."""
    from tqdm.auto import tqdm

    files = sorted((scored_dir / "data").glob("train-*.parquet"))
    expected_docs = manifest.get("counts", {}).get("documents_scored")
    encoder = _document_encoder(tokenizer)
    started = time.perf_counter()
    with tqdm(total=expected_docs, unit="doc", desc="tokenizing", disable=not progress, smoothing=0.1) as bar:
        per_doc, totals = _tokenize_shards(
            tmp, files, encoder, len(tokenizer), batch_docs, bar, _tokenized_by(manifest)
        )
    n_docs = len(per_doc["tok_count"])
    if expected_docs is not None and n_docs != expected_docs:
        raise TokenStoreError(
            f"{scored_dir}: read {n_docs} documents, the manifest says {expected_docs}; "
            "is the scored corpus complete and unchanged?"
        )
    doc_offsets = np.concatenate([[0], np.cumsum(per_doc["tok_count"])]).astype(np.int64)
    np.save(tmp / "doc_offsets.npy", doc_offsets)
    np.save(tmp / "doc_avg_score.npy", per_doc["avg"])
    np.save(tmp / "doc_index.npy", per_doc["doc_index"])
    seconds = time.perf_counter() - started
    n_tokens = int(doc_offsets[-1])
    return {
        "num_docs": n_docs,
        "num_tokens": n_tokens,
        "num_segments": totals["segments"],
        "num_characters": totals["characters"],
        "segments_without_tokens": totals["segments_without_tokens"],
        "nan_scores_replaced": totals["nan_scores_replaced"],
        "docs_nan_avg_score": totals["docs_nan_avg_score"],
        "build_seconds": round(seconds, 3),
        "tokens_per_second": round(n_tokens / seconds, 1) if seconds > 0 else None,
    }


def _store_meta(scored_dir: Path, manifest: dict, corpus_fp: str, tokenizer, tokenizer_fp: str, counts: dict) -> dict:
    """store.json: the format, what the store was built from (fingerprints decide reuse), and ``counts``."""
    vocab_size = len(tokenizer)
    return {
        "format_version": FORMAT_VERSION,
        "phf_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": {
            "fingerprint": tokenizer_fp,
            "class": type(tokenizer).__name__,
            "name_or_path": getattr(tokenizer, "name_or_path", ""),
            "eos_token_id": tokenizer.eos_token_id,
        },
        "vocab_size": vocab_size,
        "dtype": token_dtype(vocab_size).name,
        "corpus": {
            "fingerprint": corpus_fp,
            "path": str(scored_dir.resolve()),
            "input_fingerprint": manifest.get("input", {}).get("fingerprint"),
            "scorer": manifest.get("scorer"),
        },
        "documents_have_eos": False,
        "tokenized_by": _tokenized_by(manifest),
        "split_special_tokens": True,
        **counts,
    }


def _commit(tmp: Path, target: Path, corpus_fp: str, tokenizer_fp: str) -> TokenStore:
    """Rename the finished ``tmp`` to ``target`` and open it."""
    try:
        os.replace(tmp, target)
    except OSError:
        # A concurrent build of the same store won the rename: use it if it is complete.
        store = _reusable(target, corpus_fp, tokenizer_fp, explicit=True)
        if store is None:
            raise
        return store
    return TokenStore.open(target)


def build_token_store(
    scored_dir: str | os.PathLike,
    tokenizer,
    *,
    out: str | os.PathLike | None = None,
    batch_docs: int = 1000,
    progress: bool = True,
) -> TokenStore:
    """Tokenize a scored corpus into a store (see the module docstring), or reuse a complete one.

    The default location is ``<cache>/tokens/<key>`` with the key derived from the corpus manifest
    and the tokenizer fingerprint. Built in a temp dir next to the target and renamed at the end,
    so a killed build never leaves a directory that looks complete.
    """
    scored_dir = Path(scored_dir)
    if batch_docs < 1:
        raise TokenStoreError("batch_docs must be >= 1")
    manifest = _read_manifest(scored_dir)
    _check_tokenizer(tokenizer)
    corpus_fp, tokenizer_fp = _fingerprints(manifest, tokenizer)
    explicit = out is not None
    target = Path(out) if out is not None else _default_path(corpus_fp, tokenizer_fp)
    target.parent.mkdir(parents=True, exist_ok=True)
    store = _reusable(target, corpus_fp, tokenizer_fp, explicit)
    if store is not None:
        return store

    _check_shards(scored_dir, manifest)
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-{socket.gethostname()}-{os.getpid()}-"))
    try:
        counts = _write_arrays(tmp, scored_dir, manifest, tokenizer, batch_docs, progress)
        meta = _store_meta(scored_dir, manifest, corpus_fp, tokenizer, tokenizer_fp, counts)
        (tmp / STORE_FILE).write_text(json.dumps(meta, indent=2))  # the commit point inside tmp
        return _commit(tmp, target, corpus_fp, tokenizer_fp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
