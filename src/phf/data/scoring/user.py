"""User scorers: any importable callable ``package.module:name`` that scores a list of strings.

The target may be a plain function ``f(texts) -> list[float]``, a :class:`~phf.data.scoring.base.Scorer`
subclass (instantiated with the options given), or a Scorer instance.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Sequence

from phf.data.scoring.base import Scorer, construct
from phf.data.segment import SEGMENTERS


class FunctionScorer(Scorer):
    unit = "user-defined"

    def __init__(self, spec: str, fn: Callable[[list[str]], Sequence[float]], segmenter: str = "sentence"):
        if segmenter not in SEGMENTERS:
            raise ValueError(f"{spec}: unknown segmenter {segmenter!r}; choose one of {sorted(SEGMENTERS)}")
        self.name, self.fn, self.segmenter = spec, fn, segmenter
        self.version = _code_version(fn)
        # A function declares its threshold as an attribute: `shouting.hit_threshold = 0.5`.
        self.hit_threshold = getattr(fn, "hit_threshold", None)

    def config(self):
        return {"segmenter": self.segmenter}

    def score(self, texts):
        scores = list(self.fn(list(texts)))
        if len(scores) != len(texts):
            raise ValueError(f"user scorer {self.name} returned {len(scores)} scores for {len(texts)} texts")
        return [float(s) for s in scores]


def _code_version(obj) -> str:
    """``__version__`` of the module if it has one, else a hash of the source: a scored corpus
    must record a different version whenever the user's code changed."""
    module = inspect.getmodule(obj)
    if module is None:  # no module to read a version or source from
        return "unknown"
    if getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return "unknown"
    return "src-" + hashlib.sha256(source.encode()).hexdigest()[:12]


def load_user_scorer(spec: str, **options) -> Scorer:
    """The scorer ``package.module:name`` names: a function of texts, a Scorer class or a Scorer."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"user scorer {spec!r} must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"user scorer {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"user scorer {spec!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if isinstance(target, Scorer):
        if options:
            raise ValueError(f"user scorer {spec!r} is a Scorer instance and takes no options: {sorted(options)}")
        return target
    if inspect.isclass(target) and issubclass(target, Scorer):
        return construct(target, f"user scorer {spec!r}", options)
    if callable(target):
        return construct(
            lambda segmenter="sentence": FunctionScorer(spec, target, segmenter), f"user scorer {spec!r}", options
        )
    raise ValueError(f"user scorer {spec!r} is a {type(target).__name__}, not a callable")
