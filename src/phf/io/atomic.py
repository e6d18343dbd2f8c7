"""Files written whole or not at all: a reader (or a resumed run) sees the old file or the new one,
never half of one, however the writer dies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write; renamed onto ``path`` when the block ends
    without an error, deleted otherwise. Named by host and process (:func:`phf.io.integrity.temp_path`),
    so concurrent writers (array jobs on other hosts sharing the directory) never write into each
    other's file, and a rerun can delete what a killed writer left."""
    from phf.io.integrity import temp_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
