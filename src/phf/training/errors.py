"""The training stage's error, shared by the loop, its checkpoints and its run log."""

from phf.errors import PhfError


class TrainingError(PhfError, RuntimeError):
    """Training cannot go on (NaN loss, a run directory in the way); the message says what to do."""
