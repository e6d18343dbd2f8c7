"""The bottom layer, shared by every stage: atomic writes, checksums and damage checks, run locks,
pinned registry downloads, and Ray for ``--engine ray``."""
