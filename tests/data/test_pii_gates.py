"""The gated PII scorer finds exactly what scrubadub finds (issue 27).

Each detector of the PII scorer runs only where a cheap necessary condition holds; these tests
compare the result, filth by filth (type, span, text, and the parts of merged filth), with
``Scrubber.iter_filth`` running every detector on one text at a time, on real segments of the
PII corpus's local source (installed distributions' metadata) and on texts written to sit on the
gates' edges. ``bench/scoring.py`` repeats the check on the whole PII corpus.
"""

from __future__ import annotations

import random

import pytest

from phf.data.corpora.installed import load_python_dists
from phf.data.scoring import get_scorer
from phf.data.scoring.pii import filth_key
from phf.data.segment import get_segmenter

ADVERSARIAL = [
    # each detector's PII alone, at the very start and the very end of a segment
    "jane.doe@example.com",
    "Mail jane.doe@example.com",
    "write to john at gmail dot com please",
    "https://example.com/a?b=c",
    "see www.example.org",
    "HTTP://EXAMPLE.COM and WWW.EXAMPLE.COM in capitals",
    "@jane_doe",
    "username: root password: hunter2",
    "LOGIN admin PW secret",
    "u: bob p: 1234",
    "call 4111111111111111",
    " 4111111111111111",
    "SSN 078-05-1120",
    "078.05.1120",
    "(415) 555-2671",
    "+44 20 7946 0958 ext. 123",
    "+43 1 2345",
    "555-2671 x 12",
    "1-800-FLOWERS or 1 800 356 9377",
    "add me on skype: cool_dude42 tonight",
    "my SKYPE is johnny.b.goode1999",
    "I was born on 10-Nov-1980.",
    "Date of birth: 1975-03-02",
    "D.O.B. 02/03/1970",
    "225 E. John Carpenter Freeway, Suite 1500 Irving, Texas 75062",
    "1600 Pennsylvania Avenue NW, Washington, DC 20500",
    "10 Downing St London",
    "One hundred Main Street, Springfield, IL 62701",
    "9 Elm Street, Springfield, ohio",
    "12 Oak Rd\nBoston\tMA",
    # unicode digits: \d matches them (Arabic-Indic, fullwidth, Devanagari), isdigit() more (²)
    "call ٠١٢٣٤٥٦٧٨٩ now",
    "ｃａｌｌ （４１５） ５５５－２６７１",
    "phone ४१५ ५५५ २६७१",
    "x² + y² = z², 123 Main St, Anytown, CA",
    "card ４１１１１１１１１１１１１１１１",
    # case folding that str.lower() and re.IGNORECASE do differently (long s, Kelvin sign, dotted I)
    "uſername: root paſſword: x",
    "LOGİN root PASSWORD x",
    "ſkype: someone_strange",
    "SKYPE: someone_strange_1",
    # overlapping and touching matches, merged by scrubadub
    "jane@example.com@jane_doe http://jane@example.com/x",
    "4111111111111111 078-05-1120 (415) 555-2671",
    "@a@b@c @twitter @admin_x",
    "born 1980-01-01 and 1980-01-01 again, birth 12/12/1950",
    # near misses
    "",
    "   \n\t ",
    "no digits, no at sign, no links here.",
    "version 2.3.1 released",
    "at the end. at",
    "email me at",
    "www",
    "://",
    "p:",
]


def _outcome(find):
    """The filth keys, or the error's name: scrubadub raises FilthMergeError when pyap's span (in
    its whitespace-normalised text) overlaps another detector's, and the gated path must too."""
    try:
        return [filth_key(f) for f in find()]
    except Exception as exc:  # any error, as long as both paths raise the same one
        return type(exc).__name__


def _assert_same(scorer, texts):
    """Per text against scrubadub, with all the texts in one batch as `phf score` calls it (the
    texts that raise, each alone: one error fails its whole batch, in both paths)."""
    reference = {text: _outcome(lambda text=text: scorer.reference_filth(text)) for text in texts}
    clean = [text for text in texts if not isinstance(reference[text], str)]
    assert [[filth_key(f) for f in found] for found in scorer.filth(clean)] == [reference[t] for t in clean]
    for text in set(texts) - set(clean):
        assert _outcome(lambda text=text: scorer.filth([text])[0]) == reference[text], repr(text)


@pytest.fixture(scope="module")
def scorer():
    return get_scorer("pii")


def _long_texts() -> list[str]:
    """Segments of a few thousand characters, many kinds of PII in one."""
    rng = random.Random(0)
    pieces = [t for t in ADVERSARIAL if t.strip()] + ["plain words " * 20]
    return ["".join(rng.choice(pieces) + rng.choice([" ", "\n", ", "]) for _ in range(25)) for _ in range(2)]


def test_gates_find_what_scrubadub_finds_on_adversarial_texts(scorer):
    _assert_same(scorer, ADVERSARIAL)


@pytest.mark.slow  # about a minute of CPU: dateparser reads every long text that mentions a birth, twice
def test_gates_find_what_scrubadub_finds_in_long_segments(scorer):
    _assert_same(scorer, _long_texts())


def test_gates_find_what_scrubadub_finds_on_real_segments(scorer):
    """~2,000 segments of installed packages' metadata (authors, e-mails, URLs, dates, numbers),
    half of them drawn among segments where some digit-driven gate passes."""
    segment = get_segmenter(scorer.segmenter)
    segments = [s for unit in load_python_dists().units for doc in unit.load() for s in segment(doc.text)]
    rng = random.Random(0)
    rng.shuffle(segments)
    digits = [s for s in segments if sum(ch.isdigit() for ch in s) >= 2]
    sample = segments[:1000] + digits[:1000]
    assert sum(1 for found in scorer.filth(sample) if found) > 100  # the sample does exercise the detectors
    _assert_same(scorer, sample)


def test_each_text_is_scored_alone(scorer):
    """A batch gives each text the filth it has alone: nothing leaks across texts."""
    texts = ["Write to jane", "@example.com today", "(415) 555", "-2671", "born", "1980-01-01", ""]
    _assert_same(scorer, texts)
    assert scorer.score(texts) == [len(scorer.reference_filth(t)) / max(len(t), 1) for t in texts]
