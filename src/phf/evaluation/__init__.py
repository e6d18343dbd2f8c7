"""The third stage (``phf eval``, ``phf redteam``): sampling, misalignment and capability metrics,
reference models, red teaming, and the evaluation of a run directory that ties them together."""
