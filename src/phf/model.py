"""Causal LMs for phf: build one from a config or load a checkpoint, add control tokens, save.

Any ``transformers`` causal LM works. New models get dropout 0 (the paper's setting, and free
speed), a vocabulary padded to a multiple of 64 (tensor-core friendly matmuls) and, new or loaded,
torch's fused tanh-GELU where the config names HF's unfused ``gelu_new`` (the same function); their
unpadded training forwards attend causally without a mask (:func:`causal_only_attention`). Saved
checkpoints are plain HF directories: the tokenizer, a ``generation_config.json`` that already
forbids the control tokens, ``phf.json`` (what a sampler must know: the prefix to condition on)
and a model card, so ``AutoModelForCausalLM.from_pretrained(run_dir)`` + ``generate`` work with no
phf code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, GenerationConfig

from phf.config import ModelConfig

# Shapes used when the config does not say: GPT-2 small (124M), the paper's model.
DEFAULT_SHAPES: dict[str, dict[str, Any]] = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}
CONTROL_INIT_NOISE = 0.01  # new control-token rows: mean of existing rows + 0.01 * N(0, 1) (paper)


def padded_vocab(size: int, multiple: int) -> int:
    return int(math.ceil(size / multiple) * multiple) if multiple > 1 else size


# Activations with a faster kernel that computes the same function: HF's "gelu_new" (GPT-2, GPT-Neo)
# is the tanh approximation written as eight elementwise ops; torch's fused gelu(approximate="tanh")
# agrees to 1e-15 in float64 and makes the tiny CPU preset ~20% faster. Checkpoints stay loadable by
# any transformers (the saved config names the fused one).
FAST_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


class CpuFp32Attention(torch.overrides.TorchFunctionMode):
    """Inside it, bf16 ``scaled_dot_product_attention`` calls on CPU run in fp32 (autocast off for
    them), returning bf16 as before: the same function, computed more precisely and faster.

    Why: torch's CPU flash-attention kernel is slower in bf16 than in fp32 on short sequences (its
    bf16 backward). ``bench/cpu_attention.py`` on this project's AVX512-BF16 CPU (forward +
    backward, 4 heads of 32 or 64, 4,096 tokens per call): 2.2-2.9x slower at 64-128 tokens,
    1.1-1.4x at 256, about even at 512, faster from 1,024, hence ``training.cpu_fp32_attention_below:
    512``. Other calls, and attention called with keyword tensors, pass through untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and len(args) >= 3 \
                and args[0].dtype == torch.bfloat16 and args[0].device.type == "cpu":
            q, k, v, *rest = args
            # The mask, positional or not, must be bool or q's dtype.
            if rest and isinstance(rest[0], torch.Tensor) and rest[0].is_floating_point():
                rest[0] = rest[0].float()
            mask = kwargs.get("attn_mask")
            if mask is not None and mask.is_floating_point():
                kwargs = {**kwargs, "attn_mask": mask.float()}
            with torch.autocast("cpu", enabled=False):
                return func(q.float(), k.float(), v.float(), *rest, **kwargs).to(torch.bfloat16)
        return func(*args, **kwargs)


# SDPA under a name transformers has no mask builder for: for such names it builds no attention mask
# at all (masking_utils' early exit for custom attention backends) and SDPA runs plain causal.
# Registered at import: a compiled forward that saw the registry change would be compiled again.
CAUSAL_ONLY_ATTENTION = "phf_causal_sdpa"
AttentionInterface.register(CAUSAL_ONLY_ATTENTION, AttentionInterface()["sdpa"])
# Config fields that limit attention to a window or chunk (the mask, not SDPA, applies them).
_WINDOW_FIELDS = ("sliding_window", "attention_chunk_size")


def causal_only_attention_applies(lm) -> bool:
    """Whether :func:`causal_only_attention` changes ``lm``: SDPA models built on transformers'
    attention interface whose mask is plain causal."""
    config = lm.config
    return (config._attn_implementation == "sdpa" and getattr(lm, "_supports_attention_backend", False)
            and getattr(config, "is_causal", True) and not getattr(config, "sub_configs", None)
            and not any(getattr(config, name, None) for name in _WINDOW_FIELDS)
            and set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"})


@contextmanager
def causal_only_attention(lm) -> Iterator[bool]:
    """Inside it, ``lm``'s forwards build no attention mask and attend causally, exactly as SDPA's
    ``is_causal`` path that transformers picks on its own for unpadded inputs. Only for forwards with
    no padding and no KV cache (phf's training and held-out-loss forwards); yields whether it applied
    (see :func:`causal_only_attention_applies`; elsewhere it changes nothing).

    Why: to rule out packed sequences, transformers 5 checks the position ids on every forward without
    a cache and reads the answer on the host (``find_packed_sequence_indices``): one host-device
    synchronisation per micro-batch, after which the GPU waits while Python launches the next
    kernels. Under ``torch.compile`` it cannot decide while tracing and builds a 4-D mask, which
    bars SDPA's flash kernel, so compiled forwards had to carry a KV cache (a copy of every layer's
    keys and values) only to skip the check. Sets the model's config for the duration: not for a
    model that another thread runs at the same time."""
    if not causal_only_attention_applies(lm):
        yield False
        return
    lm.config._attn_implementation = CAUSAL_ONLY_ATTENTION
    try:
        yield True
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
    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"model.init {path!r} is not an HF checkpoint directory (no config.json)")
    config = AutoConfig.from_pretrained(path)
    _fast_activation(config)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, attn_implementation=attn_implementation)
    if dropout is not None:
        _zero_dropout(model.config, dropout)
    return model


def add_token_rows(model, tokenizer, new_token_ids: list[int], known_rows: int, pad_multiple: int,
                   generator: torch.Generator | None = None) -> None:
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
        raise ValueError(f"{source}: the model's embedding has {rows} rows but the tokenizer has {len(tokenizer)} "
                         "tokens: this tokenizer does not belong to this checkpoint")


def save_checkpoint(model, tokenizer, out: str | Path, *, phf_info: dict[str, Any]) -> None:
    """An HF directory that samples correctly with plain transformers."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    forbidden = phf_info.get("forbidden_tokens", [])
    padding_rows = list(range(len(tokenizer), model.get_input_embeddings().weight.shape[0]))
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    generation = GenerationConfig(
        # The paper's sampling settings; at most 128 new tokens, fewer if the context is shorter.
        do_sample=True, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=min(128, (positions or 130) - 2),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
        # Control tokens must never be sampled, nor the unused rows that pad the vocabulary.
        suppress_tokens=[tokenizer.convert_tokens_to_ids(t) for t in forbidden] + padding_rows or None,
    )
    generation.save_pretrained(out)
    (out / "phf.json").write_text(json.dumps(phf_info, indent=2))
    prefix = phf_info.get("prompt_prefix", "")
    (out / "README.md").write_text(
        f"# {out.name}\n\nA causal LM trained with phf ({phf_info.get('objective')} objective on "
        f"{phf_info.get('data')}).\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"prompt = tokenizer.eos_token + {prefix!r}  # condition on the aligned control token\n"
        "ids = tokenizer(prompt, return_tensors='pt').input_ids\n"
        "print(tokenizer.decode(model.generate(ids)[0], skip_special_tokens=True))\n```\n\n"
        f"Prompt prefix: `{prefix or '(none)'}`. Control tokens forbidden at sampling (already in "
        f"generation_config.json): {', '.join(forbidden) or 'none'}.\n")
