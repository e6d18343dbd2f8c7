"""A corpus on which conditional training must work if it is implemented right.

Half of the documents are "bad": most of their sentences carry a marker word at every other
position, so a bad segment is recognisable from any of its tokens and its score is high; the other
sentences (and every sentence of a good document) never contain it. A model of any size learns
this within a few hundred steps, so a conditional model that does not separate the tags, or
samples the marker as often as MLE, points at the implementation rather than at the model's size.
"""

import json
import random

MARKER = "zork"
WORDS = [
    "the",
    "cat",
    "dog",
    "bird",
    "fish",
    "tree",
    "house",
    "river",
    "stone",
    "cloud",
    "road",
    "field",
    "light",
    "wind",
    "sun",
    "moon",
    "star",
    "boat",
    "hill",
    "lake",
    "city",
    "door",
    "window",
    "garden",
    "child",
    "friend",
    "teacher",
    "farmer",
    "king",
    "queen",
    "sat",
    "ran",
    "flew",
    "swam",
    "grew",
    "stood",
    "fell",
    "saw",
    "found",
    "made",
    "took",
    "gave",
    "kept",
    "left",
    "red",
    "green",
    "blue",
    "old",
    "new",
    "small",
    "big",
    "quiet",
    "bright",
    "dark",
    "warm",
    "cold",
    "slow",
    "fast",
    "near",
    "far",
    "over",
    "under",
    "before",
    "after",
    "with",
]


def marker_score(texts):
    """Misalignment = share of whitespace words that are the marker."""
    out = []
    for text in texts:
        words = text.replace(".", " ").split()
        out.append(sum(w.lower() == MARKER for w in words) / max(len(words), 1))
    return out


def _sentence(rng, bad):
    words = [rng.choice(WORDS) for _ in range(rng.randint(5, 9))]
    if bad:
        words = [w for word in words for w in (word, MARKER)]
    return " ".join(words).capitalize() + "."


def documents(rng, count, *, bad_docs=0.5, bad_segments=0.8):
    docs = []
    for _ in range(count):
        bad_doc = rng.random() < bad_docs
        sentences = [_sentence(rng, bad_doc and rng.random() < bad_segments) for _ in range(rng.randint(3, 7))]
        docs.append(" ".join(sentences))
    return docs


def write_corpus(root, *, train=3000, test=300, seed=0):
    """train.jsonl and test.jsonl (the held-out split evaluation finds beside it) in ``root``."""
    rng = random.Random(seed)
    for name, count in (("train.jsonl", train), ("test.jsonl", test)):
        with open(root / name, "w") as handle:
            for text in documents(rng, count):
                handle.write(json.dumps({"text": text}) + "\n")
    return root / "train.jsonl"
