"""The last stage: whole studies (``phf experiment``: corpus, scores, training, evaluation and
red teaming for every arm, on this machine, one GPU per arm or Ray) and the report comparing their
runs (``phf report``, :mod:`phf.study.report`)."""

from phf.study.experiment import ExperimentError, StudyConfig, load_study, run_arm, run_experiment

__all__ = ["ExperimentError", "StudyConfig", "load_study", "run_arm", "run_experiment"]
