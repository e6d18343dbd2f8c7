"""One writer per output directory: an ``flock`` on ``<dir>/.phf.lock`` held while phf writes there.

Two ``phf train`` (or ``phf score``) processes on one directory would interleave checkpoints,
metrics and shards; the second is refused with a message naming the first. The kernel drops an
``flock`` when its holder exits or is killed, so a lock left by a SIGKILLed run never blocks the
rerun. The holder removes the file on release; a process that opened the old file just before
that notices (its file is no longer the one at the path) and tries again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Literal

from phf.errors import PhfError

LOCK_FILE = ".phf.lock"


class RunLockedError(PhfError, RuntimeError):
    """Another phf process is writing the same output directory."""


class RunLock:
    """``with RunLock(dir, "phf train"):`` or ``acquire()`` / ``release()``.

    ``name`` picks the lock file, so jobs that may share a directory (the shards of a ``phf score``
    job array) each lock only their own part. Directories the lock had to create are removed again
    on release when nothing else was written to them, so a command that fails up front leaves no
    trace.
    """

    def __init__(self, directory: str | os.PathLike, command: str, name: str = LOCK_FILE):
        self.directory, self.command = Path(directory), command
        self.path = self.directory / name
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> RunLock:
        missing = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        self.directory.mkdir(parents=True, exist_ok=True)
        self._created = missing  # innermost first: the order rmdir needs
        try:
            self._fd = self._lock()
        except BaseException:
            self._remove_created()
            raise
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(self._fd, 0)
        os.write(self._fd, json.dumps(holder).encode())
        return self

    def _lock(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace")
                os.close(fd)
                raise RunLockedError(
                    f"{self.directory} is in use by {_describe(holder)}; wait for it to finish "
                    "or choose another output directory"
                ) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder released and removed the file between our open and flock

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: see the module docstring
        finally:
            os.close(self._fd)
            self._fd = None
            self._remove_created()

    def _remove_created(self) -> None:
        for directory in self._created:
            try:
                directory.rmdir()
            except OSError:
                break  # something was written there: keep it
        self._created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> Literal[False]:  # never swallows the exception
        self.release()
        return False


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
        return f"{h['command']} (pid {h['pid']} on {h['host']}, since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return "another phf process"
