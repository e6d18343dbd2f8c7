"""Corpus inputs: JSONL(.gz), Parquet, a folder of .txt files, or a Hugging Face dataset.

Every input is a sequence of records with a stable index, so a range of indices is a shard that
any process can read on its own, and a bad record (malformed JSON, non-string text, invalid UTF-8,
empty document) is reported with its exact location instead of stopping the run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phf.io.fetch import sha256_file


@dataclass
class Record:
    index: int
    location: str  # "file:line" or "file#row=N": what a user greps for
    text: str | None  # None: not scorable (see issue)
    meta: dict[str, Any] = field(default_factory=dict)
    issue: str | None = None  # kind of problem, e.g. "malformed_json"; None if clean
    detail: str = ""


# Issues after which the record is still scored (its text was repaired) rather than skipped.
SCORED_ISSUES = {"invalid_utf8"}


def _text_record(index: int, location: str, value: Any, meta: dict, text_field: str) -> Record:
    """Validate the text field of one record."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = "".join(value)  # already segmented (e.g. the paper's `texts` column): re-join losslessly
    if value is None:
        return Record(index, location, None, meta, "missing_text", f"no field {text_field!r}")
    if not isinstance(value, str):
        return Record(
            index,
            location,
            None,
            meta,
            "text_not_string",
            f"field {text_field!r} is {type(value).__name__}, not a string",
        )
    if not value:
        return Record(index, location, None, meta, "empty_document", "empty text")
    return Record(index, location, value, meta)


def _json_safe(meta: dict) -> dict:
    """Parquet/HF values (timestamps, numpy scalars) as JSON-serialisable values."""
    return json.loads(json.dumps(meta, default=str))


class JsonlSource:
    """One JSON object per line; ``.gz`` is decompressed on the fly."""

    def __init__(self, path: Path, text_field: str):
        self.path, self.text_field = path, text_field

    def _open(self):
        return gzip.open(self.path, "rb") if self.path.suffix == ".gz" else open(self.path, "rb")

    def __len__(self) -> int:
        if not hasattr(self, "_len"):
            count, last = 0, b"\n"
            with self._open() as handle:
                while block := handle.read(1 << 22):
                    count += block.count(b"\n")
                    last = block[-1:]
            self._len = count + (last != b"\n")  # a last line without newline is a record too
        return self._len

    def fingerprint(self) -> str:
        return sha256_file(self.path)

    def line_offsets(self, lines: list[int]) -> list[int] | None:
        """Byte offset of each given line number, found in one pass; None for .gz (no seeking).

        Shards seek straight to their first line, so N shards read the file once in all instead
        of each scanning it from the top."""
        if self.path.suffix == ".gz":
            return None
        wanted, out, index, position = sorted(set(lines)), {}, 0, 0
        with open(self.path, "rb") as handle:
            for line in wanted:
                while index < line:
                    raw = handle.readline()
                    if not raw:
                        break
                    index += 1
                    position += len(raw)
                out[line] = position
        return [out[line] for line in lines]

    def records(self, start: int, stop: int, offset: int | None = None) -> Iterator[Record]:
        """Records [start, stop); ``offset``, if given, is the byte offset of line ``start``."""
        with self._open() as handle:
            first = 0
            if offset is not None:
                handle.seek(offset)
                first = start
            for index, raw in enumerate(handle, first):
                if index < start:
                    continue  # counting lines is far cheaper than parsing them
                if index >= stop:
                    break
                yield self._parse(index, raw)

    def _parse(self, index: int, raw: bytes) -> Record:
        location = f"{self.path}:{index + 1}"
        issue, detail = None, ""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.decode("utf-8", errors="replace")
            issue, detail = "invalid_utf8", f"byte {exc.start}: {exc.reason}; replaced with U+FFFD"
        if not line.strip():
            return Record(index, location, None, {}, "blank_line", "blank line")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            return Record(index, location, None, {}, "malformed_json", f"{exc.msg} at column {exc.colno}")
        if not isinstance(obj, dict):
            return Record(index, location, None, {}, "not_an_object", f"a JSON {type(obj).__name__}, not an object")
        value = obj.pop(self.text_field, None)
        record = _text_record(index, location, value, obj, self.text_field)
        if issue and record.issue is None:
            record.issue, record.detail = issue, detail
        return record


class ParquetSource:
    def __init__(self, path: Path, text_field: str):
        import pyarrow.parquet as pq

        self.path, self.text_field = path, text_field
        self._file = pq.ParquetFile(path)
        if text_field not in self._file.schema_arrow.names:
            raise ValueError(
                f"{path}: no column {text_field!r} (columns: {self._file.schema_arrow.names}); pass --text-field"
            )

    def __len__(self) -> int:
        return self._file.metadata.num_rows

    def fingerprint(self) -> str:
        return sha256_file(self.path)

    def records(self, start: int, stop: int) -> Iterator[Record]:
        offset = 0
        for group in range(self._file.num_row_groups):
            rows = self._file.metadata.row_group(group).num_rows
            if offset + rows > start and offset < stop:
                table = self._file.read_row_group(group)
                for i, row in enumerate(table.to_pylist()):
                    index = offset + i
                    if start <= index < stop:
                        value = row.pop(self.text_field)
                        yield _text_record(index, f"{self.path}#row={index}", value, _json_safe(row), self.text_field)
            offset += rows
            if offset >= stop:
                break


class TextFolderSource:
    """Every ``*.txt`` under a folder (sorted, recursive) is one document."""

    def __init__(self, path: Path):
        self.path = path
        self.files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not self.files:
            raise ValueError(f"{path}: folder holds no .txt files")

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for file in self.files:
            digest.update(str(file.relative_to(self.path)).encode() + b"\0" + sha256_file(file).encode())
        return digest.hexdigest()

    def records(self, start: int, stop: int) -> Iterator[Record]:
        for index in range(start, min(stop, len(self.files))):
            file = self.files[index]
            raw = file.read_bytes()
            meta = {"path": str(file.relative_to(self.path))}
            try:
                text, issue, detail = raw.decode("utf-8"), None, ""
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", errors="replace")
                issue, detail = "invalid_utf8", f"byte {exc.start}: {exc.reason}; replaced with U+FFFD"
            record = _text_record(index, str(file), text, meta, "text")
            if issue and record.issue is None:
                record.issue, record.detail = issue, detail
            yield record


class ConcatSource:
    """Several files of one format read as one sequence (a folder of shards)."""

    def __init__(self, sources: list):
        self.sources = sources
        self.offsets = [0]
        for source in sources:
            self.offsets.append(self.offsets[-1] + len(source))

    def __len__(self) -> int:
        return self.offsets[-1]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for source in self.sources:
            digest.update(source.fingerprint().encode())
        return digest.hexdigest()

    def records(self, start: int, stop: int) -> Iterator[Record]:
        for source, base, end in zip(self.sources, self.offsets, self.offsets[1:]):
            if end <= start or base >= stop:
                continue
            for record in source.records(max(start - base, 0), min(stop, end) - base):
                record.index += base
                yield record


class HFSource:
    """A dataset saved with ``save_to_disk`` or loadable with ``datasets.load_dataset``."""

    def __init__(self, name: str, text_field: str, split: str):
        import datasets

        self.name, self.text_field = name, text_field
        if _is_saved_dataset(Path(name)):
            dataset = datasets.load_from_disk(name)
        else:
            try:
                dataset = datasets.load_dataset(name, split=split)
            except Exception as exc:
                raise ValueError(
                    f"cannot load {name!r} as a local file, folder or Hugging Face dataset: {exc}"
                ) from exc
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{name}: no split {split!r} (splits: {list(dataset)}); pass --split")
            dataset = dataset[split]
        if text_field not in dataset.column_names:
            raise ValueError(f"{name}: no column {text_field!r} (columns: {dataset.column_names}); pass --text-field")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def fingerprint(self) -> str:
        return f"hf:{self.dataset._fingerprint}"

    def records(self, start: int, stop: int) -> Iterator[Record]:
        stop = min(stop, len(self.dataset))
        for offset, row in enumerate(self.dataset.select(range(start, stop))):
            index = start + offset
            value = row.pop(self.text_field)
            yield _text_record(index, f"{self.name}#row={index}", value, _json_safe(row), self.text_field)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists())


def _file_source(path: Path, text_field: str):
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        return JsonlSource(path, text_field)
    if name.endswith(".parquet"):
        return ParquetSource(path, text_field)
    raise ValueError(f"{path}: unknown input format (expected .jsonl[.gz], .parquet, a folder, or a HF dataset)")


def open_source(spec: str | os.PathLike, text_field: str = "text", split: str = "train"):
    """The input named by ``spec``: a file, a folder of files, or a Hugging Face dataset."""
    path = Path(spec)
    if path.is_file():
        return _file_source(path, text_field)
    if path.is_dir():
        if _is_saved_dataset(path):
            return HFSource(str(path), text_field, split)
        shards = sorted(
            p
            for p in path.iterdir()
            if p.is_file()
            and not p.name.startswith((".", "_"))
            and p.name.lower().endswith((".jsonl", ".jsonl.gz", ".parquet", ".ndjson"))
        )
        if shards:
            return ConcatSource([_file_source(p, text_field) for p in shards])
        return TextFolderSource(path)
    text = str(spec)
    if text.startswith((".", "/", "~")) or text.lower().endswith((".jsonl", ".gz", ".parquet", ".json", ".txt")):
        raise FileNotFoundError(f"input {spec!r} does not exist")
    return HFSource(str(spec), text_field, split)
