"""PEP8 scorer: pycodestyle violations per character (the paper's code task).

A corpus document is checked whole, because several checks need context (two blank lines before
a top-level ``def``, continuation-line indentation), and each violation is charged to the line
pycodestyle reports it on; a line's score is its violations divided by its length. A standalone
string (a model sample) scores its violations per character of the whole string.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import pycodestyle

from phf.data.scoring.base import Scorer
from phf.data.segment import split_lines


class _LineReport(pycodestyle.BaseReport):
    """Collects the line number of every reported (non-ignored) violation."""

    def __init__(self, options):
        super().__init__(options)
        self.line_numbers: list[int] = []

    def error(self, line_number, offset, text, check):
        code = super().error(line_number, offset, text, check)
        if code is not None:
            self.line_numbers.append(line_number)
        return code


class PEP8Scorer(Scorer):
    name = "pep8"
    version = f"pycodestyle-{pycodestyle.__version__}"
    unit = "violations per character"
    segmenter = "line"

    def __init__(self, max_line_length: int = pycodestyle.MAX_LINE_LENGTH):
        self.max_line_length = max_line_length

    def config(self):
        return {"max_line_length": self.max_line_length}

    @cached_property
    def _options(self):
        # The paper used pycodestyle's defaults (its default ignore list included).
        return pycodestyle.StyleGuide(quiet=True, max_line_length=self.max_line_length).options

    def violations_per_line(self, lines: Sequence[str]) -> list[int]:
        """Violations charged to each line of one document."""
        counts = [0] * len(lines)
        if not lines:
            return counts
        report = _LineReport(self._options)
        checker = pycodestyle.Checker(filename="<phf>", lines=list(lines), options=self._options, report=report)
        try:
            checker.check_all()
        except (IndexError, SyntaxError, ValueError):
            # pycodestyle indexes past the end on some truncated code (the paper's corpus was cut at
            # arbitrary lengths). What it reported before failing stands; the failure itself counts
            # as one violation on the last line, as an E902 tokenizer error would.
            report.line_numbers.append(len(lines))
        for number in report.line_numbers:
            # W391 and tokenizer errors point one past the end or at line 0: clamp into the document.
            counts[min(max(number, 1), len(lines)) - 1] += 1
        return counts

    def score_documents(self, documents):
        out = []
        for lines in documents:
            counts = self.violations_per_line(lines)
            out.append([c / max(len(line), 1) for c, line in zip(counts, lines)])
        return out

    def score(self, texts):
        scores = []
        for text in texts:
            lines = split_lines(text)
            scores.append(sum(self.violations_per_line(lines)) / max(len(text), 1))
        return scores
