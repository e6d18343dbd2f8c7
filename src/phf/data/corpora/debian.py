"""Optional Debian sources: packages fetched with ``apt-get download`` (fortunes, the Python
documentation, Jane Austen's novels) and the copyright/changelog files already installed under
``/usr/share/doc``.

A ``.deb`` is read in Python (an ``ar`` archive holding ``data.tar.{xz,gz,bz2}``), so nothing is
unpacked onto disk and ``dpkg-deb`` is needed only for the ``.zst`` members newer Ubuntus use.
Every source here is optional: the caller turns any failure into a one-line warning.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import re
import shutil
import struct
import subprocess
import tarfile
import warnings
import zlib
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

from phf.data.corpora import Doc, SourceData, SourceUnavailable, Unit, chunk_paragraphs, clean_text, sha256_bytes
from phf.io.fetch import fetch_apt, sha256_file

TEXT_CHUNK_CHARS = 4000  # novels and docs: a few KB per document, cut at paragraphs
DOC_CHUNK_CHARS = 16000  # copyright and changelog files: long ones split at blank lines


def _data_tar(deb: Path) -> tarfile.TarFile:
    """Open the data member of a .deb (an ar archive) as a tarfile, in memory."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise SourceUnavailable(f"{deb.name} is not a Debian package (no ar magic)")
    pos = 8
    while pos + 60 <= len(blob):
        name = blob[pos : pos + 16].decode("ascii").strip().rstrip("/")
        size = int(blob[pos + 48 : pos + 58].decode("ascii").strip())
        body = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            if shutil.which("dpkg-deb") is None:
                raise SourceUnavailable(f"{deb.name} is zstd-compressed and dpkg-deb is missing")
            body = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
        return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    raise SourceUnavailable(f"{deb.name} has no data.tar member")


def deb_files(deb: Path, under: str) -> dict[str, bytes]:
    """Regular files below ``under`` (e.g. ``usr/share/games/fortunes/``), keyed by path."""
    out = {}
    with _data_tar(deb) as tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if member.isfile() and name.startswith(under):
                file = tar.extractfile(member)
                assert file is not None  # extractfile gives None only for members that are not files (isfile() above)
                out[name] = file.read()
    return dict(sorted(out.items()))


def _deb_artifact(package: str, deb: Path) -> dict:
    return {"name": package, "kind": "debian", "file": deb.name, "sha256": sha256_file(deb)}


def _meta(source: str, license: str, artifact: dict, path: str, **extra) -> dict:
    return {
        "source": source,
        "license": license,
        "artifact": artifact["file"],
        "sha256": artifact["sha256"],
        "path": path,
        **extra,
    }


# --- fortunes ------------------------------------------------------------------------------

_OVERSTRIKE = re.compile(".\x08")  # nroff bold/underline: "_\bx" prints an underlined x


def load_fortunes(package: str) -> SourceData:
    """Each fortune (strfile format: entries separated by a line "%") is one document."""
    deb = fetch_apt(package)
    artifact = _deb_artifact(package, deb)
    license = "BSD-4-Clause (fortune-mod); quotations from many authors, see the package's copyright"
    units, files = [], 0
    for path, data in deb_files(deb, "usr/share/games/fortunes/").items():
        if path.endswith(".dat"):
            continue  # strfile's binary index
        files += 1
        text = _OVERSTRIKE.sub("", data.decode("utf-8", errors="replace"))
        entries = re.split(r"^%[ \t]*$", text.replace("\r\n", "\n"), flags=re.M)
        for i, entry in enumerate(entries):
            entry = clean_text(entry)
            if entry.strip():
                doc = Doc(entry, _meta(package, license, artifact, path, fortune=i))

                def load(d: Doc = doc) -> list[Doc]:
                    return [d]

                units.append(Unit(f"{path}#{i:05d}", load))
    return SourceData(units, [artifact], {"files": files})


# --- Python documentation (HTML) -----------------------------------------------------------

_BLOCK = {
    "p",
    "div",
    "section",
    "pre",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "dl",
    "li",
    "dt",
    "dd",
    "table",
    "tr",
    "blockquote",
    "figure",
    "figcaption",
    "caption",
    "hr",
    "br",
}
_VOID = {"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "source"}
_SKIP = {"script", "style", "head", "title", "nav", "button", "form"}


class _SphinxText(HTMLParser):
    """Plain text of a Sphinx page's main column (``role="main"``), without navigation.

    Sidebars, the related-links bars, the footer and the pilcrow header links are all outside
    the main column or explicitly skipped; ``<pre>`` keeps its whitespace, other text is reflowed.
    """

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.main_depth: int | None = None
        self.skip_depth: int | None = None
        self.pre = 0
        self.out: list[str] = []
        self.title = ""
        self._in_title = False

    def _newline(self, n: int = 1):
        text = "".join(self.out[-3:])
        have = len(text) - len(text.rstrip("\n"))
        if self.out and have < n:
            self.out.append("\n" * (n - have))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "title":
            self._in_title = True
        if tag not in _VOID:
            self.stack.append(tag)
        depth = len(self.stack)
        if self.main_depth is None and attrs.get("role") == "main":
            self.main_depth = depth
            return
        if self.main_depth is None or self.skip_depth is not None:
            return
        classes = (attrs.get("class") or "").split()
        if tag in _SKIP or "headerlink" in classes or attrs.get("role") == "navigation":
            if tag not in _VOID:
                self.skip_depth = depth
            return
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCK:
            self._newline(1 if tag in {"li", "dt", "dd", "tr", "br"} else 2)

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag in _VOID or tag not in self.stack:
            return
        while self.stack:  # pop to the matching tag: tolerates unclosed inner tags
            depth = len(self.stack)
            top = self.stack.pop()
            if self.skip_depth is not None and depth == self.skip_depth:
                self.skip_depth = None
            elif self.main_depth == depth:
                self.main_depth = -1  # main column finished: ignore the rest of the page
            elif self.main_depth not in (None, -1) and self.skip_depth is None:
                if top == "pre":
                    self.pre -= 1
                if top in _BLOCK:
                    self._newline(1 if top in {"li", "dt", "dd", "tr"} else 2)
            if top == tag:
                break

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self.main_depth in (None, -1) or self.skip_depth is not None:
            return
        if self.pre:
            self.out.append(data)
            return
        data = re.sub(r"\s+", " ", data)
        if not self.out or self.out[-1].endswith("\n"):
            data = data.lstrip()
        if data:
            self.out.append(data)

    def text(self) -> str:
        return re.sub(r"\n{3,}", "\n\n", clean_text("".join(self.out)))


def html_to_text(html: str) -> tuple[str, str]:
    """(title, plain text) of a Sphinx HTML page."""
    parser = _SphinxText()
    parser.feed(html)
    parser.close()
    title = re.sub(r"\s+", " ", parser.title).strip()
    return title, parser.text()


_PYDOC_SKIP = re.compile(
    r"/(_sources|_static|_images|_downloads)/|/(genindex[^/]*|search|py-modindex|"
    r"contents|copyright|license|bugs|about|download)\.html$"
)


def load_python_doc(package: str = "python3.11-doc") -> SourceData:
    """One document per page of the Python documentation (long pages cut at paragraphs)."""
    deb = fetch_apt(package)
    artifact = _deb_artifact(package, deb)
    license = "PSF-2.0 (Python documentation)"
    pages = {
        path: data
        for path, data in deb_files(deb, "usr/share/doc/").items()
        if path.endswith(".html") and "/html/" in path and not _PYDOC_SKIP.search(path)
    }

    def convert(path: str) -> list[Doc]:
        title, text = html_to_text(pages[path].decode("utf-8", errors="replace"))
        return [
            Doc(chunk, _meta("python-doc", license, artifact, path, title=title, part=i))
            for i, chunk in enumerate(chunk_paragraphs(text, DOC_CHUNK_CHARS))
        ]

    units = [Unit(path, functools.partial(convert, path)) for path in pages]
    return SourceData(units, [artifact], {"pages": len(pages)})


# --- Jane Austen (an R data package) -------------------------------------------------------


def _read_lazyload_db(rdx: bytes, rdb: bytes) -> dict[str, list[str]]:
    """Character vectors from R's lazy-load database (``data/Rdata.rdx`` + ``Rdata.rdb``).

    The index is a gzip-compressed serialised R list {variables: name -> (offset, length)}; each
    object in the .rdb is a 4-byte big-endian length plus a zlib stream of a serialised object.
    ``rdata`` parses the serialisation; the container is read here.
    """
    import rdata  # optional dependency; the caller checks it is importable

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns "Unknown file type: assumed RDS"
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx)))
        books = {}
        for name, (offset, length) in sorted(index["variables"].items()):
            chunk = rdb[int(offset) : int(offset) + int(length)]
            (size,) = struct.unpack(">I", chunk[:4])
            raw = zlib.decompress(chunk[4:])
            if len(raw) != size:
                raise SourceUnavailable(f"janeaustenr: object {name} has a bad length")
            value = rdata.conversion.convert(rdata.parser.parse_data(raw))
            books[str(name)] = ["" if line is None else str(line) for line in value]
    return books


def load_janeausten(package: str = "r-cran-janeaustenr") -> SourceData:
    if importlib.util.find_spec("rdata") is None:
        raise SourceUnavailable("r-cran-janeaustenr needs the PyPI package `rdata` (pip install rdata)")
    deb = fetch_apt(package)
    artifact = _deb_artifact(package, deb)
    files = deb_files(deb, "usr/lib/R/site-library/janeaustenr/data/")
    prefix = "usr/lib/R/site-library/janeaustenr/data/Rdata"
    if f"{prefix}.rdx" not in files or f"{prefix}.rdb" not in files:
        raise SourceUnavailable(f"{deb.name} has no {prefix}.rdx/.rdb")
    books = _read_lazyload_db(files[f"{prefix}.rdx"], files[f"{prefix}.rdb"])
    license = "public domain (Project Gutenberg texts); janeaustenr package MIT"
    units = []
    for book, lines in books.items():
        for i, chunk in enumerate(chunk_paragraphs(clean_text("\n".join(lines)), TEXT_CHUNK_CHARS)):
            doc = Doc(chunk, _meta("janeaustenr", license, artifact, f"{prefix}.rdb", book=book, part=i))

            def load(d: Doc = doc) -> list[Doc]:
                return [d]

            units.append(Unit(f"{book}#{i:05d}", load))
    return SourceData(units, [artifact], {"books": sorted(books)})


# --- /usr/share/doc: copyright files and Debian changelogs (names, e-mails, dates) -----------


def load_debian_docs(kind: str, root: str = "/usr/share/doc") -> SourceData:
    """``copyright`` or ``changelog.Debian.gz`` of every installed Debian package.

    What this yields depends on what is installed: the manifest records the package count.
    Identical files (packages built from one source share them) are kept once.
    """
    base = Path(root)
    if not base.is_dir():
        raise SourceUnavailable(f"{root} does not exist (not a Debian-like system)")
    filename = {"copyright": "copyright", "changelog": "changelog.Debian.gz"}[kind]
    seen: set[str] = set()
    units, files = [], 0
    for package_dir in sorted(base.iterdir()):
        path = package_dir / filename
        try:
            data = path.read_bytes()
            if filename.endswith(".gz"):
                data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            continue
        digest = sha256_bytes(data)
        if digest in seen:
            continue
        seen.add(digest)
        files += 1
        text = clean_text(data.decode("utf-8", errors="replace"))
        meta = {
            "source": f"debian-{kind}",
            "license": f"see {root}/{package_dir.name}/copyright",
            "artifact": "installed",
            "sha256": digest,
            "path": str(path),
            "package": package_dir.name,
        }

        def load(text=text, meta=meta):
            return [Doc(chunk, {**meta, "part": i}) for i, chunk in enumerate(chunk_paragraphs(text, DOC_CHUNK_CHARS))]

        units.append(Unit(str(PurePosixPath(path)), load))
    if not units:
        raise SourceUnavailable(f"no {filename} files under {root}")
    return SourceData(units, [], {"packages": files, "root": root})
