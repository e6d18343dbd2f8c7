"""Sources already on the machine: the Python standard library's sources (code for PEP8) and
the metadata, licence, author and changelog files of installed Python distributions (PII).

Their content depends on the Python version and on what is installed, so the readers report
both for the manifest; a corpus built elsewhere is expected to differ.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import io
import platform
import re
import sys
import sysconfig
import tokenize
from pathlib import Path, PurePosixPath

from phf.data.corpora import Doc, SourceData, SourceUnavailable, Unit, chunk_paragraphs, clean_text, sha256_bytes

STDLIB_MAX_FILE_BYTES = 256_000  # generated giants (pydoc_data/topics.py: 750 KB) are not code to learn from
DIST_CHUNK_CHARS = 16000

# --- Python standard library (PEP8) ---------------------------------------------------------


def load_stdlib(root: str | None = None) -> SourceData:
    """Every ``*.py`` of the standard library, tests included, one document per file.

    Files are decoded with their declared source encoding (PEP 263) and kept byte-for-byte
    otherwise: PEP8 scoring is about exactly this text. ``site-packages`` is excluded.
    """
    base = Path(root or sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise SourceUnavailable(f"standard library not found at {base}")
    units, skipped = [], {"too_large": 0, "undecodable": 0}
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if "site-packages" in rel.parts or "dist-packages" in rel.parts or not path.is_file():
            continue
        data = path.read_bytes()
        if len(data) > STDLIB_MAX_FILE_BYTES:
            skipped["too_large"] += 1
            continue
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
            text = data.decode(encoding)
        except (SyntaxError, LookupError, UnicodeDecodeError):
            skipped["undecodable"] += 1  # deliberately broken test inputs
            continue
        if "\x00" in text or not text.strip():
            continue
        text = text.lstrip("\ufeff")
        doc = Doc(
            text,
            {
                "source": "stdlib",
                "license": "PSF-2.0",
                "artifact": "stdlib",
                "sha256": sha256_bytes(data),
                "path": str(PurePosixPath(rel)),
            },
        )

        def load(d: Doc = doc) -> list[Doc]:
            return [d]

        units.append(Unit(str(PurePosixPath(rel)), load))
    info = {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "files": len(units),
        "skipped_files": skipped,
        "max_file_bytes": STDLIB_MAX_FILE_BYTES,
    }
    return SourceData(units, [], info)


# --- Installed Python distributions (PII) ---------------------------------------------------

_PII_FILE = re.compile(
    r"^(METADATA|PKG-INFO|LICEN[CS]E|COPYING|AUTHORS|CONTRIBUTORS|CHANGELOG|CHANGES|HISTORY)"
    r"([-_.][A-Za-z0-9_.-]*)?$",
    re.I,
)
# Plain-text suffixes only: "LICENSE.txt", "LICENSE.APACHE", not sklearn's "metadata_routing.py" or "metadata.h".
_TEXT_SUFFIXES = {
    "",
    ".txt",
    ".md",
    ".rst",
    ".markdown",
    ".apache",
    ".apache2",
    ".mit",
    ".bsd",
    ".psf",
    ".gpl",
    ".lgpl",
}


def _field(meta: importlib_metadata.PackageMetadata, name: str) -> str:
    """The first ``name`` field of the metadata, "" where there is none: ``meta.get(name) or ""``,
    but PackageMetadata has ``get`` only from Python 3.12 on."""
    values = meta.get_all(name)
    return values[0] if values else ""


def _dist_license(dist: importlib_metadata.Distribution) -> str:
    meta = dist.metadata
    expression = _field(meta, "License-Expression").strip()
    if expression:
        return expression
    classifiers = [c.split("::")[-1].strip() for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")]
    if classifiers:
        return "; ".join(sorted(set(classifiers)))
    license = _field(meta, "License").strip()
    if license and len(license) <= 100 and "\n" not in license:
        return license
    return "see the distribution's licence file" if license else "unknown"


def _dist_files(dist: importlib_metadata.Distribution) -> list[tuple[str, bytes]]:
    out = []
    for file in dist.files or []:
        name = PurePosixPath(str(file)).name
        if not _PII_FILE.match(name) or PurePosixPath(name).suffix.lower() not in _TEXT_SUFFIXES:
            continue
        try:
            data = file.read_binary()  # also inside a zip on sys.path, where locate_file is a zipfile.Path
        except OSError:
            continue
        if b"\x00" not in data:  # binary
            out.append((str(file), data))
    if not out:  # no RECORD (old egg-info): at least the metadata
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
        if text:
            out.append(("METADATA", text.encode("utf-8")))
    return out


def load_python_dists(exclude: tuple[str, ...] = ("phf",)) -> SourceData:
    """METADATA, licence, author and changelog files of the distributions on ``sys.path``.

    Identical files (the same MIT licence text vendored twice) are kept once; phf itself is
    left out so the corpus does not change with phf's own README.
    """
    dists: dict[tuple[str, str], importlib_metadata.Distribution] = {}
    for dist in importlib_metadata.distributions():
        name = _field(dist.metadata, "Name").strip()
        if not name or name.lower() in exclude:
            continue
        dists.setdefault((name.lower(), dist.version), dist)  # first on sys.path wins
    seen: set[str] = set()
    units = []
    for (name, version), dist in sorted(dists.items()):
        license = _dist_license(dist)
        for rel, data in sorted(_dist_files(dist)):
            digest = sha256_bytes(data)
            if digest in seen:
                continue
            seen.add(digest)
            text = clean_text(data.decode("utf-8", errors="replace"))
            if not text.strip():
                continue
            meta = {
                "source": "python-dists",
                "license": license,
                "artifact": "installed",
                "sha256": digest,
                "path": f"{name}-{version}/{rel}",
                "distribution": name,
                "version": version,
            }

            def load(text=text, meta=meta):
                return [Doc(c, {**meta, "part": i}) for i, c in enumerate(chunk_paragraphs(text, DIST_CHUNK_CHARS))]

            units.append(Unit(meta["path"], load))
    if not units:
        raise SourceUnavailable("no installed Python distributions with metadata files found")
    info = {
        "distributions": len(dists),
        "files": len(units),
        "python": platform.python_version(),
        "sys_prefix": sys.prefix,
    }
    return SourceData(units, [], info)
