"""Readers for the embedded corpora's sources, one module per kind of source.

Every reader returns a :class:`SourceData`: a list of *units* (a Shakespeare chunk, an HTML page,
a file) that are cheap to list and load their documents only when asked, so a small ``max_mb``
never pays for converting pages it will not keep. ``phf.data.corpora.build`` orders the units by a seeded
hash of their key, takes documents until the source's share of the budget is used, splits and
writes them. Readers never print; an optional source that cannot be used raises
:class:`SourceUnavailable` (or ``phf.io.fetch.FetchError``) with a one-line reason.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phf.errors import PhfError


class SourceUnavailable(PhfError):
    """An optional source cannot be used here (no apt, no /usr/share/doc, no ``rdata``)."""


@dataclass(frozen=True)
class Doc:
    text: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class Unit:
    """A stable, cheaply listed piece of a source; ``load`` does the (maybe costly) conversion."""

    key: str
    load: Callable[[], list[Doc]]


@dataclass
class SourceData:
    units: list[Unit]
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # {name, file, sha256, kind}
    info: dict[str, Any] = field(default_factory=dict)  # goes to the manifest (counts, environment)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Make prose safe for UTF-8 JSON lines: one newline convention, no NULs, no lone surrogates."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = _SURROGATES.sub("\ufffd", text)
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


_BLANK_LINES = re.compile(r"\n[ \t]*\n+")


def chunk_paragraphs(text: str, target: int) -> list[str]:
    """Cut ``text`` at blank lines into pieces of at most ~``target`` characters.

    Paragraphs are packed greedily; one paragraph longer than the target stays whole (a
    document is never cut mid-paragraph), so the pieces are real units of the text.
    """
    paragraphs = [p for p in _BLANK_LINES.split(text) if p.strip()]
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for para in paragraphs:
        if current and size + 2 + len(para) > target:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        size += len(para) + (2 if current else 0)
        current.append(para)
    if current:
        chunks.append("\n\n".join(current))
    return chunks
