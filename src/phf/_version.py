"""phf's version: here alone, so that a stage can record it without importing the package's
functions, and pyproject.toml reads it from this file (one place to bump)."""

__version__ = "0.1.0"
