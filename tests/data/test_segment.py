"""Segmenters are lossless on any string, and cut where the paper's pipeline cuts."""

from hypothesis import given, settings
from hypothesis import strategies as st

from phf.data.segment import MAX_SEGMENT_CHARS, split_lines, split_sentences

# Text biased towards the characters segmenters care about: punctuation, quotes, CR/LF, spaces.
tricky = st.text(alphabet=st.sampled_from(list("ab .!?\"')\n\r\t\u2029\u2028é日")) | st.characters(), max_size=300)


@settings(max_examples=500, deadline=None)
@given(tricky)
def test_sentences_rejoin_losslessly(text):
    segments = split_sentences(text)
    assert "".join(segments) == text
    assert all(segments), "no empty segment"
    assert all(len(s) <= MAX_SEGMENT_CHARS for s in segments)


@settings(max_examples=500, deadline=None)
@given(tricky)
def test_lines_rejoin_losslessly(text):
    lines = split_lines(text)
    assert "".join(lines) == text
    assert all(lines)
    assert all("\n" not in line[:-1] for line in lines), "a newline only ever ends a line"
    assert all(line.endswith("\n") for line in lines[:-1])


def test_sentence_boundaries_keep_whitespace_with_the_sentence_before():
    text = "  Hello there. How are you?  Fine!\n\nNo punctuation here\n\nEnd.  "
    assert split_sentences(text) == [
        "  Hello there. ",
        "How are you?  ",
        "Fine!\n\n",
        "No punctuation here\n\n",
        "End.  ",
    ]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop." ', "Then left."]


def test_edge_documents():
    assert split_sentences("") == [] and split_lines("") == []
    assert split_sentences("   ") == ["   "]
    assert split_lines("a\r\nb\r\n") == ["a\r\n", "b\r\n"]  # CRLF stays in one line
    assert split_lines("no final newline") == ["no final newline"]
    assert split_lines("\n\n") == ["\n", "\n"]


def test_overlong_unpunctuated_text_is_capped_at_whitespace():
    text = ("word " * 2000).strip()
    segments = split_sentences(text)
    assert "".join(segments) == text
    assert len(segments) > 1 and all(len(s) <= MAX_SEGMENT_CHARS for s in segments)
    assert all(s.endswith(" ") for s in segments[:-1]), "cut after whitespace, never inside a word"
