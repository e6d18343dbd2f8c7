"""Is a file what its writer finished? Sizes and sha256 recorded when it is written, checked before use.

A rename makes a write atomic against a kill, not against a disk that loses or garbles bytes, a
copy cut short, or a hand edit: a checkpoint or a scored shard that looks complete may still be
damaged. Recording what was written lets a reader tell, and skip it with a warning or stop with an
error, instead of training on garbage. Temp files are named after their host and process, so a
rerun can delete the ones a killed process left behind without touching a live writer's.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

from phf.io.fetch import sha256_file


def file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def directory_records(directory: Path) -> dict[str, dict]:
    """``{relative path: file_record}`` for every file under ``directory``."""
    return {str(p.relative_to(directory)): file_record(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def damage(path: Path, record: dict | None) -> str | None:
    """What is wrong with ``path`` against its record (None: intact)."""
    if record is None:
        return f"{path.name} has no recorded size and checksum"
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != record.get("bytes"):
        return f"{path.name} has {size} bytes, {record.get('bytes')} were written"
    if sha256_file(path) != record.get("sha256"):
        return f"{path.name} does not match its checksum"
    return None


def directory_damage(directory: Path, records: dict[str, dict]) -> str | None:
    """The first damaged file of ``directory_records`` (None: all intact)."""
    return next((problem for name, record in records.items() if (problem := damage(directory / name, record))), None)


def temp_path(path: Path) -> Path:
    """Where to write ``path`` before renaming it into place (see :func:`remove_stale_temps`)."""
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files and dirs (:func:`temp_path`) that processes of this host which no longer run
    left in ``directory``; returns them. Other hosts' temps are left alone: they may be live."""
    pattern = re.compile(rf"^\..+\.{re.escape(socket.gethostname())}-(\d+)\.tmp$")
    removed = []
    for entry in directory.iterdir() if directory.is_dir() else []:
        match = pattern.match(entry.name)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host. A zombie does not: a SIGKILLed scoring worker whose parent
    died too stays a zombie until init reaps it, which some inits (containers, VMs) do late or never,
    and its temp file must not outlive it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # /proc/<pid>/stat: "pid (comm) state ...": comm may hold spaces and parentheses.
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no procfs (macOS): kill(pid, 0) is all we know
