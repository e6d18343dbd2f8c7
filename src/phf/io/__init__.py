"""The bottom layer, shared by every stage: atomic writes, checksums and damage checks, run locks,
and pinned registry downloads."""
