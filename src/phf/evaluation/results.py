"""``eval.json``: what ``phf eval`` measured, one section type per metric (docs/method.md,
"Evaluation"; :mod:`phf.evaluation.evaluator` computes each).

A section is either its result or a :class:`Skipped` ("skipped, because ..."; in the file
``{"skipped": "why"}``). :class:`EvalResults` writes the file (``save``) and reads it back checked
(``EvalResults.from_file``), so a reader such as the report uses attributes. The file's keys and
values are those phf wrote before these types existed; the sections added since its first version
(``misalignment_by_protocol``, ``control_tokens``, ``tag_prediction``, ``humaneval``) and the fields
added since to a section default to None, so older eval.json files still load.

Each section names its *headline*: the few numbers runs are compared by, under the names the
report's rows (``phf.study.report``) give them. A new metric is a new section type here, a step
that computes it in the evaluator and, for a column of its own, one line in the report's table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any, ClassVar, get_args, get_type_hints

from phf.config import EvalConfig
from phf.io.records import OMIT_NONE, REST, Record, json_key


@dataclass(kw_only=True)
class Skipped(Record):
    """A section not computed, and why."""

    because: str = field(metadata=json_key("skipped"))
    # What was learnt on the way (tag_prediction: the tag positions read).
    details: dict[str, Any] = field(default_factory=dict, metadata=REST)


class Section(Record):
    """One metric of eval.json."""

    # The numbers runs are compared by: the report's name for each -> this section's attribute.
    headline: ClassVar[dict[str, str]] = {}
    # Skipped by design for many runs (a skip is then not worth a line in the report).
    optional: ClassVar[bool] = False


@dataclass(kw_only=True)
class _Scores(Section):
    """Scores of unconditional samples (:func:`phf.evaluation.metrics.misalignment_summary`)."""

    n: int
    mean: float | None  # None: no sample had a score
    max_at_25: float | None  # expected maximum over 25 samples
    hit_rate: float | None  # share of samples scored above the threshold
    ci95: list[float] | None  # bootstrap interval of the mean
    threshold: float
    scorer: dict[str, Any]  # Scorer.describe(): name, version, unit, segmenter, config

    @property
    def scorer_name(self) -> str | None:
        return self.scorer.get("name")


@dataclass(kw_only=True)
class Misalignment(_Scores):
    """The task scorer on unconditional samples; for a conditional model under one sampling protocol,
    with how many control tokens the samples emitted."""

    protocol: str | None = None  # None: not a conditional model
    tags_per_sample: float | None = field(default=None, metadata=OMIT_NONE)
    samples_with_tags: float | None = field(default=None, metadata=OMIT_NONE)

    headline: ClassVar[dict[str, str]] = {
        "misalignment_mean": "mean",
        "misalignment_ci95": "ci95",
        "misalignment_n": "n",
        "max_at_25": "max_at_25",
        "hit_rate": "hit_rate",
        "hit_threshold": "threshold",
        "protocol": "protocol",
        "tags_per_sample": "tags_per_sample",
    }


@dataclass(kw_only=True)
class Judge(_Scores):
    """The same samples scored by an independent judge (toxicity only)."""

    headline: ClassVar[dict[str, str]] = {
        "judge_mean": "mean",
        "judge_ci95": "ci95",
        "judge_max_at_25": "max_at_25",
        "judge_hit_rate": "hit_rate",
        "judge_scorer": "scorer_name",
    }


@dataclass(kw_only=True)
class Diversity(Section):
    """:func:`phf.evaluation.metrics.diversity` of the unconditional samples."""

    samples: int
    mean_length_words: float | None
    distinct_1: float
    distinct_2: float
    entropy_1_bits: float
    entropy_2_bits: float
    self_bleu_5: float | None  # None: EvalConfig.self_bleu_samples was 0

    headline: ClassVar[dict[str, str]] = {
        "diversity_samples": "samples",
        "mean_length_words": "mean_length_words",
        "distinct_1": "distinct_1",
        "distinct_2": "distinct_2",
        "entropy_1_bits": "entropy_1_bits",
        "entropy_2_bits": "entropy_2_bits",
        "self_bleu_5": "self_bleu_5",
    }


@dataclass(kw_only=True)
class LMLoss(Section):
    """Held-out loss per text token (control tokens excluded)."""

    loss: float
    perplexity: float
    tokens: int
    seq_len: int
    control_tokens_excluded: bool
    held_out: str  # the held-out file

    headline: ClassVar[dict[str, str]] = {"lm_loss": "loss", "perplexity": "perplexity", "lm_loss_tokens": "tokens"}


@dataclass(kw_only=True)
class ControlTokens(Section):
    """Conditional training: the AUROC of log p(segment | bad) - log p(segment | good) for the
    held-out segments' labels (0.5: the model ignores its control tokens)."""

    auroc: float
    threshold: float
    bad_threshold: float | None = None
    labels: str | None = None
    segments_good: int
    segments_bad: int
    mean_log_ratio_good: float
    mean_log_ratio_bad: float

    headline: ClassVar[dict[str, str]] = {"control_auroc": "auroc", "control_segments": "segments"}
    optional: ClassVar[bool] = True

    @property
    def segments(self) -> int:
        return self.segments_good + self.segments_bad


@dataclass(kw_only=True)
class TagPrediction(Section):
    """Conditional training: how well the text before a held-out segment predicts its tag (AUROC)."""

    auroc: float
    positions: int
    bad_share: float
    mean_p_bad_given_good: float
    mean_p_bad_given_bad: float
    mean_p_tag: float

    headline: ClassVar[dict[str, str]] = {"tag_auroc": "auroc"}
    optional: ClassVar[bool] = True


@dataclass(kw_only=True)
class ScenarioPrompt(Record):
    prompt: str
    source_score: Any  # the mined segment's score, or a prompt file's "score" as given (None: none)
    mean: float | None  # over this prompt's continuations


@dataclass(kw_only=True)
class Scenarios(Section):
    """Continuations of challenging prompts (:func:`phf.evaluation.metrics.per_prompt_summary`)."""

    prompts: int
    continuations_per_prompt: int | None = field(default=None, metadata=OMIT_NONE)
    mean: float | None
    max_at_25: float | None
    hit_rate: float | None
    ci95: list[float] | None
    threshold: float
    scored: str  # "continuation", or "prompt + continuation" (code)
    prompts_list: list[ScenarioPrompt]

    headline: ClassVar[dict[str, str]] = {
        "scenario_prompts": "prompts",
        "scenario_mean": "mean",
        "scenario_max_at_25": "max_at_25",
        "scenario_hit_rate": "hit_rate",
    }


@dataclass(kw_only=True)
class KL(Section):
    """KL(reference || model) over reference samples, text tokens only."""

    reference: str
    samples: int
    kl: float
    kl_per_token: float
    ci95: list[float] | None
    counted: str

    headline: ClassVar[dict[str, str]] = {
        "kl": "kl",
        "kl_ci95": "ci95",
        "kl_per_token": "kl_per_token",
        "kl_samples": "samples",
        "kl_reference": "reference",
    }


@dataclass(kw_only=True)
class HumanEval(Section):
    """pass@1 (and pass@k) of completions of HumanEval problems (:mod:`phf.evaluation.humaneval`)."""

    problems: int
    samples_per_problem: int
    decoding: str
    pass_at_1: float
    pass_at_k: dict[str, float]
    problems_solved: int
    outcomes: dict[str, int]  # execution outcome -> completions
    max_new_tokens: int
    prompts_truncated: int
    stop_sequences: list[str]
    timeout_s: float
    memory_limit_mb: int
    isolation: str
    source: str  # the pinned wheel the problems come from
    generation_seconds: float
    execution_seconds: float
    seconds: float

    headline: ClassVar[dict[str, str]] = {"humaneval_pass_at_1": "pass_at_1"}
    optional: ClassVar[bool] = True


@dataclass(kw_only=True)
class Settings(Record):
    """What was evaluated and how: the model, its prompt, and every EvalConfig field."""

    model: str
    prompt: str
    forbidden_ids: list[int]
    objective: str | None
    # EvalConfig's fields, as given (max_new_tokens None: the task's default; device "auto" stays so).
    max_new_tokens: int | None
    device: str
    num_samples: int
    temperature: float
    top_p: float
    top_k: int
    config: dict[str, Any] = field(default_factory=dict, metadata=REST)  # EvalConfig's other fields
    timings_s: dict[str, float]  # seconds per step of the evaluation
    seconds: float

    @classmethod
    def of(cls, config: EvalConfig, **facts: Any) -> Settings:
        """The settings of an evaluation with ``config``; ``facts``: the fields not from the config."""
        given = asdict(config)
        own = {f.name for f in fields(cls)}
        rest = {k: v for k, v in given.items() if k not in own}
        return cls(**{k: v for k, v in given.items() if k in own}, config=rest, **facts)


@dataclass(kw_only=True)
class EvalResults(Record):
    """eval.json: every section, and the settings."""

    misalignment: Misalignment
    # Conditional models: the headline protocol and EvalConfig.compare_protocols.
    misalignment_by_protocol: dict[str, Misalignment] | None = field(default=None, metadata=OMIT_NONE)
    judge: Judge | Skipped
    diversity: Diversity
    lm_loss: LMLoss | Skipped
    control_tokens: ControlTokens | Skipped | None = field(default=None, metadata=OMIT_NONE)
    tag_prediction: TagPrediction | Skipped | None = field(default=None, metadata=OMIT_NONE)
    scenarios: Scenarios | Skipped
    kl: KL | Skipped
    humaneval: HumanEval | Skipped | None = field(default=None, metadata=OMIT_NONE)
    settings: Settings


@cache
def sections() -> dict[str, type[Section]]:
    """eval.json's key -> section type, in the file's order."""
    found = {}
    for name, kind in get_type_hints(EvalResults).items():
        arms = [a for a in (get_args(kind) or (kind,)) if isinstance(a, type) and issubclass(a, Section)]
        if arms:
            found[name] = arms[0]
    return found


def headline(results: EvalResults | None) -> dict[str, Any]:
    """Every section's headline numbers under their report names; None where the section is missing
    or skipped (or there are no results)."""
    out = {}
    for key, kind in sections().items():
        section = getattr(results, key, None)
        present = isinstance(section, kind)
        out.update({name: getattr(section, attr) if present else None for name, attr in kind.headline.items()})
    return out
