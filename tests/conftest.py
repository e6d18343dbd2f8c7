"""Shared fixtures: a micro scored corpus (with a held-out split) that tiny models train on in seconds."""

import json
import random

import pytest

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "home", "red", "blue", "sky", "sea"]


def _documents(rng, count):
    docs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words)), "xxx")  # the user scorer's "misalignment"
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="session")
def scored(tmp_path_factory):
    """~300 training documents scored by tests.helpers.user_scorers:length_score, and a
    held-out test.jsonl beside the input (where phf looks for it)."""
    from phf.data.score_corpus import score_corpus

    rng = random.Random(0)
    root = tmp_path_factory.mktemp("corpus")
    for name, count in (("train.jsonl", 300), ("test.jsonl", 40)):
        with open(root / name, "w") as handle:
            for text in _documents(rng, count):
                handle.write(json.dumps({"text": text}) + "\n")
    score_corpus(
        str(root / "train.jsonl"), str(root / "scored"), "tests.helpers.user_scorers:length_score", progress=False
    )
    return root / "scored"
