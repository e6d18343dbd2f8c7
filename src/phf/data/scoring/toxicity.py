"""Toxicity scorers: P(toxic) in [0, 1] per sentence.

The default, ``alt-profanity-check``, is a linear SVM over character n-grams whose model ships
inside its wheel: it needs no download and scores >100k sentences/s on one core when batched.
The paper used Detoxify; that and any local HF sequence-classification directory are available
when the user has the weights on disk.
"""

from __future__ import annotations

import importlib.metadata
from functools import cached_property
from pathlib import Path

from phf.data.scoring.base import Scorer, construct


class ProfanityCheckScorer(Scorer):
    name = "toxicity"
    unit = "probability"
    segmenter = "sentence"

    def __init__(self) -> None:
        self.version = f"alt-profanity-check-{importlib.metadata.version('alt-profanity-check')}"

    def config(self):
        return {"backend": "profanity-check"}

    def score(self, texts):
        if not texts:
            return []
        from profanity_check import predict_prob

        return [float(p) for p in predict_prob(list(texts))]


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class HFClassifierScorer(Scorer):
    """Any local ``AutoModelForSequenceClassification`` directory; the score is one label's
    probability (softmax for single-label heads, sigmoid for multi-label ones)."""

    name = "toxicity"
    unit = "probability"
    segmenter = "sentence"

    def __init__(
        self, path: str, label: str | int = 1, batch_size: int = 64, max_length: int = 256, device: str = "cpu"
    ):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"hf-classifier: {path!r} is not a local model directory")
        self.path, self.label, self.batch_size = str(path), label, int(batch_size)
        self.max_length, self.device = int(max_length), device
        self.version = f"hf:{Path(self.path).resolve().name}"

    def config(self):
        return {"backend": "hf", "path": self.path, "label": self.label, "max_length": self.max_length}

    @cached_property
    def _model(self):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForSequenceClassification.from_pretrained(self.path).to(self.device).eval()
        labels = {name.lower(): int(i) for i, name in model.config.id2label.items()}
        if isinstance(self.label, str) and not self.label.lstrip("-").isdigit():
            if self.label.lower() not in labels:
                raise ValueError(f"hf-classifier: label {self.label!r} not in {sorted(labels)} of {self.path}")
            index = labels[self.label.lower()]
        else:
            index = int(self.label)
            if not 0 <= index < model.config.num_labels:
                raise ValueError(
                    f"hf-classifier: label index {index} out of range for {model.config.num_labels} labels"
                )
        return tokenizer, model, index

    def score(self, texts):
        import torch

        tokenizer, model, index = self._model
        multi = model.config.problem_type == "multi_label_classification" or model.config.num_labels == 1
        out: list[float] = []
        with torch.inference_mode():
            for batch in _batches(list(texts), self.batch_size):
                enc = tokenizer(
                    batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                ).to(self.device)
                logits = model(**enc).logits.float()
                probs = logits.sigmoid() if multi else logits.softmax(-1)
                out.extend(probs[:, index].tolist())
        return out


class DetoxifyScorer(Scorer):
    """Detoxify (the paper's classifier) from a local checkpoint file."""

    name = "toxicity"
    unit = "probability"
    segmenter = "sentence"

    def __init__(
        self,
        checkpoint: str,
        model_type: str = "original",
        label: str = "toxicity",
        batch_size: int = 64,
        device: str = "cpu",
    ):
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"detoxify: checkpoint {checkpoint!r} is not a local file")
        self.checkpoint, self.model_type, self.label = str(checkpoint), model_type, label
        self.batch_size, self.device = int(batch_size), device
        self.version = f"detoxify-{self.model_type}:{Path(self.checkpoint).name}"

    def config(self):
        return {
            "backend": "detoxify",
            "checkpoint": self.checkpoint,
            "model_type": self.model_type,
            "label": self.label,
        }

    @cached_property
    def _model(self):
        try:
            from detoxify import Detoxify
        except ImportError as exc:
            raise ImportError("the detoxify backend needs `pip install 'phf[detoxify]'`") from exc
        return Detoxify(model_type=self.model_type, checkpoint=self.checkpoint, device=self.device)

    def score(self, texts):
        out: list[float] = []
        for batch in _batches(list(texts), self.batch_size):
            result = self._model.predict(batch)
            if self.label not in result:
                raise ValueError(f"detoxify: label {self.label!r} not among {sorted(result)}")
            out.extend(float(x) for x in result[self.label])
        return out


TOXICITY_BACKENDS = {
    "profanity-check": ProfanityCheckScorer,
    "hf": HFClassifierScorer,
    "detoxify": DetoxifyScorer,
}


def make_toxicity_scorer(backend: str = "profanity-check", **options) -> Scorer:
    """The toxicity scorer of ``backend`` (default: the offline profanity-check model)."""
    if backend not in TOXICITY_BACKENDS:
        raise ValueError(f"toxicity: unknown backend {backend!r}; choose one of {sorted(TOXICITY_BACKENDS)}")
    return construct(TOXICITY_BACKENDS[backend], f"scorer 'toxicity' (backend {backend!r})", options)
