"""Lossless segmenters: cut a document into the units a scorer scores.

Invariant for every segmenter and every string: ``"".join(segment(doc)) == doc``. Whitespace
stays attached to the segment it follows (as spaCy's ``text_with_ws`` does in the paper's
pipeline), so segments re-join to the document and token spans map back exactly. An empty
document has no segments.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A sentence ends after terminal punctuation (plus closing quotes/brackets) that is followed by
# whitespace, or at a blank line. The whitespace after the boundary belongs to the sentence before.
_SENTENCE_END = re.compile(
    r"""[.!?\u2026\u3002\uff01\uff1f]+["'\u2019\u201d)\]]*\s+"""  # punctuation, closers, whitespace
    r"""|\n[ \t\r\f\v]*\n\s*"""  # a blank line ends a paragraph even without punctuation
)
_WHITESPACE = re.compile(r"\s")

# Scorers are trained on sentences; an unpunctuated 10 MB blob must not become one segment.
MAX_SEGMENT_CHARS = 2000


def _cap(segment: str, limit: int) -> list[str]:
    """Split an over-long segment at the last whitespace before each ``limit`` chars."""
    out = []
    while len(segment) > limit:
        cut = limit
        for match in _WHITESPACE.finditer(segment, limit // 2, limit):
            cut = match.end()
        out.append(segment[:cut])
        segment = segment[cut:]
    if segment:
        out.append(segment)
    return out


def split_sentences(text: str, max_chars: int = MAX_SEGMENT_CHARS) -> list[str]:
    """Sentences with their trailing whitespace; leading whitespace joins the first sentence."""
    segments, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if end > start:
            segments.extend(_cap(text[start:end], max_chars))
            start = end
    if start < len(text):
        rest = text[start:]
        # Trailing whitespace alone is not a sentence: give it to the last one.
        if segments and not rest.strip():
            segments[-1] += rest
        else:
            segments.extend(_cap(rest, max_chars))
    return segments


def split_lines(text: str, max_chars: int | None = None) -> list[str]:
    """Lines with their ending (``\\n`` or ``\\r\\n``); the last line may lack one.

    Only ``\\n`` ends a line, as it does for pycodestyle, so CRLF stays inside one line and form
    feeds or U+2028 do not split code the way ``str.splitlines`` would.
    """
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    if max_chars is not None:
        out = [piece for line in out for piece in _cap(line, max_chars)]
    return out


SEGMENTERS: dict[str, Callable[[str], list[str]]] = {
    "sentence": split_sentences,
    "line": split_lines,
}


def get_segmenter(name: str) -> Callable[[str], list[str]]:
    """The lossless segmenter called ``name``."""
    try:
        return SEGMENTERS[name]
    except KeyError:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {sorted(SEGMENTERS)}") from None
