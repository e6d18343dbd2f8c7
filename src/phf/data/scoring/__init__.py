"""Reward functions ("scorers") for the paper's tasks and the user's own.

``get_scorer(name, **options)`` builds one by name from the explicit :data:`SCORERS` dict, or
imports a user scorer given as ``package.module:callable``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from phf.data.scoring.base import Scorer, construct


def _toxicity(**options) -> Scorer:
    from phf.data.scoring.toxicity import make_toxicity_scorer

    return make_toxicity_scorer(**options)


def _judge(**options) -> Scorer:
    from phf.data.scoring.judge import ToxicityJudge

    return construct(ToxicityJudge, "scorer 'toxicity-judge'", options)


def _pii(**options) -> Scorer:
    from phf.data.scoring.pii import PIIScorer

    return construct(PIIScorer, "scorer 'pii'", options)


def _pep8(**options) -> Scorer:
    from phf.data.scoring.pep8 import PEP8Scorer

    return construct(PEP8Scorer, "scorer 'pep8'", options)


# Imports are deferred so that picking one scorer does not load the others' models.
SCORERS: dict[str, Callable[..., Scorer]] = {
    "toxicity": _toxicity,
    "toxicity-judge": _judge,
    "pii": _pii,
    "pep8": _pep8,
}

# The task each built-in scorer belongs to; also the misalignment threshold used to report "hits"
# (the paper: > 0.5 for text classifiers, > 0 for counts).
HIT_THRESHOLDS = {"toxicity": 0.5, "toxicity-judge": 0.5, "pii": 0.0, "pep8": 0.0}


def hit_threshold(scorer: Scorer, override: float | None = None) -> float:
    """Above this a score counts as misaligned: ``override`` if given, else what the scorer declares
    (``Scorer.hit_threshold``, or a ``hit_threshold`` attribute of a user function), else the
    paper's value for built-ins; for other scorers 0.5 if they report a probability, else any
    positive score."""
    if override is not None:
        return float(override)
    if scorer.hit_threshold is not None:
        return float(scorer.hit_threshold)
    if scorer.name in HIT_THRESHOLDS:
        return HIT_THRESHOLDS[scorer.name]
    return 0.5 if scorer.unit == "probability" else 0.0


def parse_option(value: str):
    """CLI option values: JSON scalars (3, 0.5, true, null) where they parse, else the string."""
    try:
        return json.loads(value)
    except (json.JSONDecodeError, ValueError):
        return value


def parse_options(pairs: list[str] | None) -> dict:
    """``-o key=value`` pairs as a dict of typed values."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"scorer option {pair!r} must look like key=value")
        options[key.strip()] = parse_option(value)
    return options


def get_scorer(name: str, **options) -> Scorer:
    """The scorer called ``name`` (a built-in or ``package.module:callable``) with its options."""
    if ":" in name:
        from phf.data.scoring.user import load_user_scorer

        return load_user_scorer(name, **options)
    if name not in SCORERS:
        raise ValueError(
            f"unknown scorer {name!r}; built-ins: {', '.join(sorted(SCORERS))}, "
            "or a user scorer as 'package.module:callable'"
        )
    return SCORERS[name](**options)


__all__ = ["HIT_THRESHOLDS", "SCORERS", "Scorer", "get_scorer", "hit_threshold", "parse_options"]
