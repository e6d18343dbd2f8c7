"""phf: pretraining language models with human feedback (Korbak et al., ICML 2023).

Each CLI subcommand is also a function here: ``phf.corpus``, ``phf.score``, ``phf.train``, ``phf.eval``,
``phf.redteam``, ``phf.experiment``, ``phf.report``. The building blocks most used from Python are
here too, imported on first use (``import phf`` stays light: no torch): ``phf.get_scorer``,
``phf.Scorer`` (subclass it for your own scorer), ``phf.score_corpus``, ``phf.build_corpus``,
``phf.load_config``, ``phf.Trainer``, ``phf.evaluate``, ``phf.run_experiment``, ``phf.build_report``,
``phf.build_model``, ``phf.load_tokenizer``, ``phf.build_token_store``, ``phf.PackedStream``.

The package follows the pipeline; a stage imports only from the stages before it
(tests/test_layout.py checks it): ``phf.io``, ``phf.errors``, ``phf.config`` (shared by all) <
``phf.data`` (corpora, scoring, tokens, the training stream) < ``phf.training`` <
``phf.evaluation`` < ``phf.study`` (experiments, the report) < ``phf.cli`` and this module.
"""

from phf._version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (8 ms): type checkers read it as True
if TYPE_CHECKING:
    from phf.config import load_config
    from phf.data.corpora.build import build_corpus
    from phf.data.score_corpus import score_corpus
    from phf.data.scoring import Scorer, get_scorer
    from phf.data.stream import PackedStream
    from phf.data.token_store import build_token_store
    from phf.data.tokenizer import load_tokenizer
    from phf.evaluation.evaluator import evaluate
    from phf.study import run_experiment
    from phf.study.report import build_report
    from phf.training.model import build_model
    from phf.training.trainer import Trainer

# name -> the module that defines it; imported when first asked for (PEP 562).
_EXPORTS = {
    "load_config": "phf.config",
    "build_corpus": "phf.data.corpora.build",
    "score_corpus": "phf.data.score_corpus",
    "Scorer": "phf.data.scoring",
    "get_scorer": "phf.data.scoring",
    "PackedStream": "phf.data.stream",
    "build_token_store": "phf.data.token_store",
    "load_tokenizer": "phf.data.tokenizer",
    "build_model": "phf.training.model",
    "Trainer": "phf.training.trainer",
    "evaluate": "phf.evaluation.evaluator",
    "run_experiment": "phf.study",
    "build_report": "phf.study.report",
}

# The CLI's verbs (corpus ... redteam, defined below) and the names of _EXPORTS.
__all__ = [
    "PackedStream",
    "Scorer",
    "Trainer",
    "__version__",
    "build_corpus",
    "build_model",
    "build_report",
    "build_token_store",
    "corpus",
    "eval",
    "evaluate",
    "experiment",
    "get_scorer",
    "load_config",
    "load_tokenizer",
    "redteam",
    "report",
    "run_experiment",
    "score",
    "score_corpus",
    "train",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'phf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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


def eval(run_dir: str, **settings) -> dict:
    """Evaluate a run or HF model directory; settings are :class:`phf.config.EvalConfig` fields."""
    from phf.config import EvalConfig
    from phf.evaluation.evaluator import evaluate

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
    """Red-team a run; settings are :class:`phf.config.RedTeamConfig` fields."""
    from phf.config import RedTeamConfig
    from phf.evaluation.evaluator import redteam

    return redteam(run_dir, RedTeamConfig(**settings))


# No module or package of phf may be named like these functions or the exports above: importing
# phf.<name> would replace the function by the module. Hence phf.data (not phf.corpus, phf.score),
# phf.training (not phf.train), phf.evaluation (not phf.eval, phf.evaluate, phf.redteam),
# phf.study (not phf.experiment, phf.report); tests/test_layout.py checks it.
