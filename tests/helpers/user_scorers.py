"""User scorers for the tests (imported by dotted path, as a user's would be)."""

import os
import time

from phf.scoring.base import Scorer


def length_score(texts):
    """Misalignment = share of the letter 'x': easy to compute by hand."""
    return [t.count("x") / max(len(t), 1) for t in texts]


def explodes_on_boom(texts):
    if any("BOOM" in t for t in texts):
        raise RuntimeError("scorer failed on purpose")
    return [0.25 for _ in texts]


def slow_score(texts):
    """Slow enough that a test can kill the run between shards."""
    time.sleep(float(os.environ.get("PHF_TEST_SLEEP", "0.05")))
    return [len(t) / 100 for t in texts]


class CountScorer(Scorer):
    name = "count"
    version = "1"
    segmenter = "line"

    def __init__(self, char: str = "a"):
        self.char = char

    def score(self, texts):
        return [float(t.count(self.char)) for t in texts]
