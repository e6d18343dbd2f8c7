"""Causal LMs for phf: build one from a config or load a checkpoint, add control tokens, save.

Any ``transformers`` causal LM works. New models get dropout 0 (the paper's setting, and free
speed), a vocabulary padded to a multiple of 64 (tensor-core friendly matmuls) and, new or loaded,
torch's fused tanh-GELU where the config names HF's unfused ``gelu_new`` (the same function); their
unpadded training forwards attend causally without a mask, in fp32 where that is faster
(:func:`training_attention`). Saved checkpoints are plain HF directories: the tokenizer, a
``generation_config.json`` that already forbids the control tokens, ``phf.json`` (what a sampler
must know: the prefix to condition on) and a model card, so
``AutoModelForCausalLM.from_pretrained(run_dir)`` + ``generate`` work with no phf code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, GenerationConfig
from transformers.masking_utils import AttentionMaskInterface

from phf.config import ModelConfig
from phf.training.run_info import RunInfo

# Shapes used when the config does not say: GPT-2 small (124M), the paper's model.
DEFAULT_SHAPES: dict[str, dict[str, Any]] = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}
CONTROL_INIT_NOISE = 0.01  # new control-token rows: mean of existing rows + 0.01 * N(0, 1) (paper)


def padded_vocab(size: int, multiple: int) -> int:
    return int(math.ceil(size / multiple) * multiple) if multiple > 1 else size


# Activations with a faster kernel that computes the same function: HF's "gelu_new" (GPT-2, GPT-Neo)
# is the tanh approximation written as eight elementwise ops; torch's fused gelu(approximate="tanh")
# computes it in one (docs/benchmarks.md). Checkpoints stay loadable by any transformers (the saved
# config names the fused one).
FAST_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


# transformers' SDPA attention, also under phf's own names (below).
_SDPA = AttentionInterface()["sdpa"]


def sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention computed in fp32 from (bf16) inputs and returned in their dtype,
    autocast off: the same function, computed more precisely, and on a CPU faster.

    Why: torch's CPU flash-attention kernel is slower in bf16 than in fp32 on short sequences (its
    bf16 backward); ``bench/cpu_attention.py`` finds the crossover on a CPU (docs/benchmarks.md),
    hence ``training.cpu_fp32_attention_below``. An attention function (selected by
    :func:`training_attention`) rather than a mode that intercepts every torch call: no Python cost
    on the other ops, and ``torch.compile`` traces it (inductor would otherwise call the bf16 CPU
    kernel)."""
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()  # a float mask must match q's dtype
    with torch.autocast(query.device.type, enabled=False):
        out, weights = _SDPA(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


# SDPA under names transformers has no mask builder for: for such names it builds no attention mask
# at all (masking_utils' early exit for custom attention backends) and SDPA runs plain causal.
# Registered at import: a compiled forward that saw the registry change would be compiled again.
CAUSAL_ONLY_ATTENTION = "phf_causal_sdpa"
CAUSAL_ONLY_FP32_ATTENTION = "phf_causal_sdpa_fp32"
AttentionInterface.register(CAUSAL_ONLY_ATTENTION, _SDPA)
AttentionInterface.register(CAUSAL_ONLY_FP32_ATTENTION, sdpa_in_fp32)
# fp32 SDPA for models whose mask is more than causal (a sliding window): masks built as for SDPA.
FP32_ATTENTION = "phf_sdpa_fp32"
AttentionInterface.register(FP32_ATTENTION, sdpa_in_fp32)
AttentionMaskInterface.register(FP32_ATTENTION, AttentionMaskInterface()["sdpa"])
# Config fields that limit attention to a window or chunk (the mask, not SDPA, applies them).
_WINDOW_FIELDS = ("sliding_window", "attention_chunk_size")


def _on_attention_interface(lm) -> bool:
    return lm.config._attn_implementation == "sdpa" and getattr(lm, "_supports_attention_backend", False)


def causal_only_attention_applies(lm) -> bool:
    """Whether :func:`training_attention` drops ``lm``'s mask: SDPA models built on transformers'
    attention interface whose mask is plain causal."""
    config = lm.config
    return (
        _on_attention_interface(lm)
        and getattr(config, "is_causal", True)
        and not getattr(config, "sub_configs", None)
        and not any(getattr(config, name, None) for name in _WINDOW_FIELDS)
        and set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    )


@contextmanager
def training_attention(lm, *, fp32: bool = False) -> Iterator[bool]:
    """The attention of ``lm``'s forwards inside it, for forwards with no padding and no KV cache
    (phf's training and held-out-loss forwards). Yields whether they attend causally with no mask.

    No mask: where :func:`causal_only_attention_applies`, the forwards build no attention mask and
    attend causally, exactly as SDPA's ``is_causal`` path that transformers picks on its own for
    unpadded inputs. Why: to rule out packed sequences, transformers 5 checks the position ids on
    every forward without a cache and reads the answer on the host (``find_packed_sequence_indices``):
    one host-device synchronisation per micro-batch, after which the GPU waits while Python launches
    the next kernels. Under ``torch.compile`` it cannot decide while tracing and builds a 4-D mask,
    which bars SDPA's flash kernel, so compiled forwards had to carry a KV cache (a copy of every
    layer's keys and values) only to skip the check.

    ``fp32``: SDPA computes in fp32 (:func:`sdpa_in_fp32`), with or without the mask, for models on
    transformers' attention interface. Elsewhere nothing changes. Sets the model's config for the
    duration: not for a model that another thread runs at the same time."""
    maskless = causal_only_attention_applies(lm)
    if maskless:
        name = CAUSAL_ONLY_FP32_ATTENTION if fp32 else CAUSAL_ONLY_ATTENTION
    elif fp32 and _on_attention_interface(lm):
        name = FP32_ATTENTION
    else:
        yield False
        return
    lm.config._attn_implementation = name
    try:
        yield maskless
    finally:
        lm.config._attn_implementation = "sdpa"


def _fast_activation(config) -> None:
    for name in ("activation_function", "hidden_act"):
        value = getattr(config, name, None)
        if value in FAST_ACTIVATIONS:
            setattr(config, name, FAST_ACTIVATIONS[value])


def _zero_dropout(config, dropout: float) -> None:
    for name, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in name or "pdrop" in name):
            setattr(config, name, dropout)


@contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """transformers' own progress bars (weight loading) on or off inside the block, as before after
    it: ``--quiet`` and ``progress: false`` mean no bar at all, not only phf's."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    if was and not enabled:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            logging.enable_progress_bar()


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int, eos_id: int):
    """A freshly initialised causal LM whose embedding covers ``vocab_size`` (padded)."""
    kwargs = {**DEFAULT_SHAPES.get(cfg.model_type, {}), **cfg.config}
    try:
        config = AutoConfig.for_model(cfg.model_type, **kwargs)
    except ValueError as exc:
        raise ValueError(f"model.model_type {cfg.model_type!r}: {exc}") from None
    unknown = sorted(k for k in kwargs if not hasattr(config, k))
    if unknown:
        raise ValueError(f"model.config: {cfg.model_type} configs have no field(s) {', '.join(unknown)}")
    config.vocab_size = padded_vocab(vocab_size, cfg.pad_vocab_multiple)
    for name in ("n_positions", "max_position_embeddings"):
        if hasattr(config, name) and name not in cfg.config:
            setattr(config, name, seq_len)
    config.eos_token_id = config.bos_token_id = eos_id
    config.pad_token_id = None
    _zero_dropout(config, cfg.dropout)
    _fast_activation(config)
    config.tie_word_embeddings = cfg.config.get("tie_word_embeddings", True)
    return AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)


def load_model(path: str, attn_implementation: str = "sdpa", dropout: float | None = 0.0):
    """A causal LM from an HF checkpoint directory, with the fast activation and the given dropout."""
    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"model.init {path!r} is not an HF checkpoint directory (no config.json)")
    config = AutoConfig.from_pretrained(path)
    _fast_activation(config)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, attn_implementation=attn_implementation)
    if dropout is not None:
        _zero_dropout(model.config, dropout)
    return model


def add_token_rows(
    model,
    tokenizer,
    new_token_ids: list[int],
    known_rows: int,
    pad_multiple: int,
    generator: torch.Generator | None = None,
) -> None:
    """Cover tokens added to a trained model's tokenizer (control tokens when finetuning).

    Their rows start at the mean of the ``known_rows`` trained rows plus 0.01 * N(0, 1), as in the
    paper, rather than at whatever a resize or the vocabulary padding left there.
    """
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(padded_vocab(len(tokenizer), pad_multiple), mean_resizing=False)
    if not new_token_ids:
        return
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        mean = weight[:known_rows].float().mean(0)
        noise = torch.randn(len(new_token_ids), weight.shape[1], generator=generator) * CONTROL_INIT_NOISE
        weight[new_token_ids] = (mean + noise.to(mean.device)).to(weight.dtype)


def check_vocab(model, tokenizer, source: str) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise ValueError(
            f"{source}: the model's embedding has {rows} rows but the tokenizer has {len(tokenizer)} "
            "tokens: this tokenizer does not belong to this checkpoint"
        )


def max_positions(model) -> int | None:
    """The most positions ``model`` takes: its config's ``n_positions`` or ``max_position_embeddings``.

    None where the config names neither (ALiBi models such as BLOOM): no limit is known, so callers
    enforce none rather than guess one.
    """
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def save_checkpoint(
    model, tokenizer, out: str | Path, *, phf_info: RunInfo, state_dict: dict[str, Any] | None = None
) -> None:
    """An HF directory that samples correctly with plain transformers. ``state_dict``: the weights to
    save where the model's own are sharded (FSDP: gathered by ``phf.training.parallel.full_state_dict``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    forbidden = phf_info.forbidden_tokens
    padding_rows = list(range(len(tokenizer), model.get_input_embeddings().weight.shape[0]))
    positions = max_positions(model)
    generation = GenerationConfig(
        # The paper's sampling settings; at most 128 new tokens, fewer if the context is shorter.
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        max_new_tokens=min(128, (positions or 130) - 2),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        # Control tokens must never be sampled, nor the unused rows that pad the vocabulary.
        suppress_tokens=[tokenizer.convert_tokens_to_ids(t) for t in forbidden] + padding_rows or None,
    )
    generation.save_pretrained(out)
    phf_info.save(out / "phf.json")
    prefix = phf_info.prompt_prefix
    (out / "README.md").write_text(
        f"# {out.name}\n\nA causal LM trained with phf ({phf_info.objective} objective on "
        f"{phf_info.data}).\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"prompt = tokenizer.eos_token + {prefix!r}  # condition on the aligned control token\n"
        "ids = tokenizer(prompt, return_tensors='pt').input_ids\n"
        "print(tokenizer.decode(model.generate(ids)[0], skip_special_tokens=True))\n```\n\n"
        f"Prompt prefix: `{prefix or '(none)'}`. Control tokens forbidden at sampling (already in "
        f"generation_config.json): {', '.join(forbidden) or 'none'}.\n"
    )
