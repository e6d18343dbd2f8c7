"""phf: pretraining language models with human feedback (Korbak et al., ICML 2023).

Each CLI subcommand is also a function here: ``phf.corpus``, ``phf.score``, ``phf.train``, ``phf.eval``,
``phf.redteam``, ``phf.experiment``, ``phf.report``.
"""

from phf._version import __version__


def corpus(task: str, out: str, **kwargs) -> dict:
    """Build an embedded corpus; see :func:`phf.data.corpora.build.build_corpus`."""
    from phf.data.corpora.build import build_corpus

    return build_corpus(task, out, **kwargs)


def score(input: str, out: str, scorer: str = "toxicity", scorer_options: dict | None = None, **kwargs) -> dict:
    """Score a corpus; see :func:`phf.data.score_corpus.score_corpus`."""
    from phf.data.score_corpus import score_corpus

    return score_corpus(input, out, scorer, scorer_options, **kwargs)

def train(*files: str, overrides: tuple[str, ...] = (), resume: bool = False) -> dict:
    """Train from YAML files and key=value overrides; see :class:`phf.training.trainer.Trainer`."""
    from phf.config import load_config
    from phf.training.trainer import train as run

    return run(load_config(list(files), list(overrides)), resume=resume)


def eval(run_dir: str, **settings) -> dict:  # noqa: A001 - the CLI verb: each verb is a function of its name
    """Evaluate a run or HF model directory; settings are :class:`phf.evaluation.evaluator.EvalConfig` fields."""
    from phf.evaluation.evaluator import EvalConfig, evaluate

    return evaluate(run_dir, EvalConfig(**settings))


def experiment(study: str, *overrides: str) -> dict:
    """Run a whole study (corpus, scores, training, evaluation, report); see :mod:`phf.study`."""
    from phf.study import run_experiment

    return run_experiment(study, list(overrides))


def report(run_dirs: list[str], out: str, **kwargs) -> dict:
    """Tables and plots for evaluated runs; see :func:`phf.study.report.build_report`."""
    from phf.study.report import build_report

    return build_report(run_dirs, out, **kwargs)


def redteam(run_dir: str, **settings) -> dict:
    """Red-team a run; settings are :class:`phf.evaluation.evaluator.RedTeamConfig` fields."""
    from phf.evaluation.evaluator import RedTeamConfig, redteam

    return redteam(run_dir, RedTeamConfig(**settings))


# Names in phf must not shadow these functions: `import phf.<name>` would replace the function by
# the module. Hence phf.data (not phf.corpus, phf.score), phf.training (not phf.train),
# phf.evaluation (not phf.eval, phf.redteam), phf.study (not phf.experiment, phf.report).
