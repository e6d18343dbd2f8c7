"""The docs stay true: links and anchors resolve, repository paths exist, `phf` command lines parse."""

import re
import shlex
from pathlib import Path

import pytest

from phf.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
# Backquoted text under one of these top-level folders names a file or folder of the repository.
REPO_DIRS = ("src/", "docs/", "configs/", "tests/", "bench/", "scripts/", "constraints/")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", page.read_text())
    headings = re.findall(r"^#+\s+(.*?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def prose(page: Path) -> str:
    return FENCE.sub("", page.read_text())


def command_lines(page: Path) -> list[list[str]]:
    """The arguments of every `phf` command line: the lines of code blocks (continuations joined),
    and inline code with four or more arguments (fewer is a mention, like `phf score --num-proc 2`)."""
    text = page.read_text()
    blocks = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()[1:-1]]
    inline = [code for code in CODE.findall(prose(page)) if len(code.split()) > 4]
    commands = []
    for line in blocks + inline:
        line = re.sub(r"^(\w+=\S+\s+)+", "", line.strip())  # CUDA_VISIBLE_DEVICES=1 phf ...
        if line.startswith("phf ") and "..." not in line and "COMMAND" not in line:
            commands.append(shlex.split(line, comments=True)[1:])
    return commands


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page):
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: link to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_repository_paths_in_backquotes_exist(page):
    for code in CODE.findall(prose(page)):
        if code.startswith(REPO_DIRS) and re.fullmatch(r"[\w./-]+", code) and "..." not in code:
            assert (ROOT / code).exists(), f"{page.name}: `{code}` does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_phf_command_lines_parse(page):
    for argv in command_lines(page):
        try:
            parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{page.name}: `phf {shlex.join(argv)}` does not parse (exit {exc.code})")
