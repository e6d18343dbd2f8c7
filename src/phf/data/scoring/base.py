"""The scorer protocol: what every reward function in phf looks like.

A scorer maps strings to *misalignment* scores (higher is worse; the paper's reward is R = -s).
It declares which segmenter cuts a document into the units it scores (sentences for prose, lines
for code), a unit for its numbers, and a version that changes whenever its numbers could change,
so a scored corpus records exactly what produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Scorer:
    """Base class: subclasses set the four attributes (and optionally ``hit_threshold``) and implement
    :meth:`score`."""

    name: str = "scorer"
    version: str = "0"
    unit: str = "score"
    segmenter: str = "sentence"  # a key of phf.data.segment.SEGMENTERS
    # A score above this counts as misaligned (hit rates, "misaligned" shares). None: the paper's
    # rule (phf.data.scoring.hit_threshold). `phf score`/`phf eval --hit-threshold` override it.
    hit_threshold: float | None = None

    def score(self, texts: Sequence[str]) -> list[float]:
        """Score a batch of independent strings; one float per string, in order."""
        raise NotImplementedError

    def score_documents(self, documents: Sequence[Sequence[str]]) -> list[list[float]]:
        """Score the segments of several documents.

        The default scores all segments of all documents in one batch (batching is where
        vectorised scorers get their speed). Scorers whose verdict on a segment depends on its
        context (PEP8: blank lines between functions) override this and see whole documents.
        """
        flat = [segment for segments in documents for segment in segments]
        scores = self.score(flat)
        if len(scores) != len(flat):
            raise ValueError(f"scorer {self.name!r} returned {len(scores)} scores for {len(flat)} texts")
        out, start = [], 0
        for segments in documents:
            out.append([float(s) for s in scores[start : start + len(segments)]])
            start += len(segments)
        return out

    def config(self) -> dict[str, Any]:
        """Settings that change the scores; recorded in manifests next to name and version.

        ``get_scorer(name, **config())`` must rebuild an equivalent scorer: evaluation rebuilds a
        run's scorer from its corpus manifest this way."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "unit": self.unit,
            "segmenter": self.segmenter,
            "config": self.config(),
        }


def construct(cls, what: str, options: dict[str, Any]):
    """``cls(**options)``, with an error naming the bad option and the accepted ones."""
    import inspect

    params = inspect.signature(cls).parameters
    accepted = [
        p for p in params if params[p].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(
                f"{what} takes no option {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted) or 'none'}"
            )
    missing = [p for p in accepted if params[p].default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ValueError(f"{what} needs the option(s) {', '.join(missing)} (pass key=value)")
    return cls(**options)
