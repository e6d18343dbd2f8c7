"""phf: pretraining language models with human feedback (Korbak et al., ICML 2023).

Each CLI subcommand is also a function here: ``phf.corpus(...)``, ``phf.score(...)``.
"""

__version__ = "0.1.0"


def corpus(task: str, out: str, **kwargs) -> dict:
    """Build an embedded corpus; see :func:`phf.corpora.build.build_corpus`."""
    from phf.corpora.build import build_corpus

    return build_corpus(task, out, **kwargs)


def score(input: str, out: str, scorer: str = "toxicity", scorer_options: dict | None = None, **kwargs) -> dict:
    """Score a corpus; see :func:`phf.score_corpus.score_corpus`."""
    from phf.score_corpus import score_corpus

    return score_corpus(input, out, scorer, scorer_options, **kwargs)

# Module names must not shadow these functions: `import phf.<name>` would replace the function
# by the module. Hence phf.corpora.build (not phf.corpus), phf.score_corpus (not phf.score).
