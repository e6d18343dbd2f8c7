"""phf's sampler: batched ancestral sampling with a KV cache, for evaluation and red teaming.

:func:`generate` samples continuations of prompts from any ``transformers`` causal LM with the
paper's settings by default (temperature 0.7, nucleus top-p 0.9, no top-k, 10 to 128 new tokens).
It is a lean decoding loop of its own rather than ``model.generate``:

* rows (prompt x sample) are sorted by prompt length and cut into batches of ``batch_size``, so
  prompts of equal token length share a batch and need no padding (the usual case: every row is
  ``EOS + "<|good|>"``); a batch of mixed lengths is left-padded with an attention mask and explicit
  ``position_ids``, so each row sees exactly what it would see alone;
* one prefill forward computing only the last position's logits (``logits_to_keep=1``), then one
  forward per new token on the KV cache; no per-row Python work per token: finished rows are
  masked with tensors, and on transformers' dynamic cache rows that have finished are dropped from
  the batch (and the cache) once enough of them have, so a batch whose samples mostly end early
  does not pay for the longest;
* on CUDA, when the model supports a static KV cache (``_can_compile_fullgraph``, as transformers'
  own static-cache decoding requires), decoding runs on a ``StaticCache`` and each step's forward is
  captured once as a CUDA graph and replayed (a padded batch's mask and positions in fixed buffers):
  a small model's decoding step is hundreds of kernel launches whose host-side cost, not the GPU's
  work, sets the pace; a replay is one launch, whatever the number of rows still running (so rows
  are not dropped). The cache length is rounded up to a multiple of 64, and the graph is kept for
  later batches of the same size and cache length.
  ``SamplingConfig.cuda_graphs=False`` turns this off; a capture that fails falls back to eager
  decoding with a warning;
* logits are processed in float32: forbidden tokens and the vocabulary-padding rows (ids from
  ``len(tokenizer)`` up to the model's output size) get ``-inf`` at every step, EOS too until
  ``min_new_tokens`` tokens exist; then temperature, top-k (optional) and top-p; the draw uses a
  ``torch.Generator`` seeded from ``config.seed`` (``torch.multinomial`` over the sorted nucleus on
  accelerators; on CPU a sort-free draw-and-redraw that is exactly as distributed, see
  :func:`_sample`): the global RNG is neither used nor touched, so results depend only on the inputs,
  the config (batch size included) and the device.

The model's maximum positions (``n_positions`` / ``max_position_embeddings``) are never exceeded:
a row's ``max_new_tokens`` is clamped so that prompt + continuation fits (one warning per call).
"""

from __future__ import annotations

import inspect
import operator
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from phf.training.model import max_positions

__all__ = ["Generation", "SamplingConfig", "generate"]

# On CUDA, asking "are all rows done?" synchronises host and device; doing it every few steps lets the
# host queue the next steps' kernels meanwhile. The few extra steps a batch may run are thrown away.
_CHECK_EVERY = {"cpu": 1}
_CHECK_EVERY_DEFAULT = 8
# Drop finished rows from the batch once at least this share of the rows still in it are done.
_COMPACT_FRACTION = 0.25


@dataclass
class SamplingConfig:
    """Sampling settings; the defaults are the paper's (temperature 0.7, top-p 0.9, 10 to 128 new tokens)."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0  # 0 = off (the paper)
    min_new_tokens: int = 10
    max_new_tokens: int = 128  # 640 for code
    batch_size: int = 64
    seed: int = 0
    cuda_graphs: bool = True  # replay decoding steps as CUDA graphs where possible (see the module doc)


@dataclass
class Generation:
    """One sample: its prompt and the continuation, as text and ids."""

    prompt: str  # the prompt text as given (decoded from ids when ids were given)
    text: str  # the continuation only, control tokens (strip_ids) removed before decoding
    token_ids: list[int]  # the continuation's ids (EOS excluded; nothing after EOS)
    prompt_index: int
    finished: bool  # ended with EOS (vs hit max_new_tokens)


# --- inputs ---------------------------------------------------------------------------------------
def _check_config(config: SamplingConfig, num_samples: int) -> None:
    if not isinstance(config, SamplingConfig):
        raise TypeError(f"config must be a SamplingConfig, got {type(config).__name__}")
    if config.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {config.temperature}")
    if not 0 < config.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {config.top_p}")
    if config.top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {config.top_k}")
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}")
    if not 0 <= config.min_new_tokens <= config.max_new_tokens:
        raise ValueError(
            f"min_new_tokens must be in [0, max_new_tokens={config.max_new_tokens}], got {config.min_new_tokens}"
        )
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not isinstance(config.cuda_graphs, bool):
        raise TypeError(f"cuda_graphs must be True or False, got {config.cuda_graphs!r}")


def _encode_prompts(tokenizer, prompts) -> tuple[list[str], list[list[int]]]:
    """(prompt texts, prompt ids): strings are tokenized without special tokens; ids are decoded."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError("prompts must be a sequence of prompts (a list of strings or of id lists), not one string")
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise TypeError(f"a tensor of prompts must be 2-D (prompts x ids), got shape {tuple(prompts.shape)}")
        prompts = prompts.tolist()
    prompts = list(prompts)
    if not prompts:
        return [], []
    if all(isinstance(p, str) for p in prompts):
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(
                    f"prompt {i} is empty: a causal LM needs at least one token to condition on "
                    "(the paper prompts with the EOS token: pass tokenizer.eos_token)"
                )
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        for i, row in enumerate(ids):
            if not row:
                raise ValueError(f"prompt {i} ({prompts[i]!r}) tokenizes to no tokens")
        return prompts, [list(row) for row in ids]
    if any(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be all strings or all id sequences, not a mix")
    ids = []
    for i, p in enumerate(prompts):
        row = p.tolist() if isinstance(p, torch.Tensor) else list(p)
        if not row:
            raise ValueError(
                f"prompt {i} has no ids: a causal LM needs at least one token to condition on "
                "(the paper prompts with the EOS token)"
            )
        try:
            ids.append([operator.index(t) for t in row])  # ints, numpy ints; not floats
        except TypeError:
            raise TypeError(f"prompt {i}: ids must be integers, got {row[:5]!r}") from None
    texts = [tokenizer.decode(row, skip_special_tokens=False) for row in ids]
    return texts, ids


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


class _Forward:
    """Calls the model's forward with the keyword names this transformers version uses."""

    def __init__(self, model):
        self.model = model
        params = inspect.signature(model.forward).parameters
        accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        # transformers >= 5.2x renamed `past_key_values` to `cache` (the old name still works, with a warning).
        self.cache_name = "cache" if "cache" in params else "past_key_values"
        if "logits_to_keep" in params:
            self.last_only = {"logits_to_keep": 1}
        elif "num_logits_to_keep" in params:  # transformers 4.45 - 4.49
            self.last_only = {"num_logits_to_keep": 1}
        else:
            self.last_only = {}
        self.position_ids = "position_ids" in params or accepts_kwargs

    def __call__(self, input_ids, cache=None, attention_mask=None, position_ids=None, prefill=False):
        kwargs = {"input_ids": input_ids, "use_cache": True}
        if cache is not None:
            kwargs[self.cache_name] = cache
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if position_ids is not None:
            if not self.position_ids:
                raise ValueError(
                    f"{type(self.model).__name__}.forward takes no position_ids, so prompts of "
                    "different lengths cannot share a batch: use batch_size=1"
                )
            kwargs["position_ids"] = position_ids
        if prefill:
            kwargs.update(self.last_only)
        out = self.model(**kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        if new_cache is None:
            raise ValueError(f"{type(self.model).__name__} returned no KV cache with use_cache=True")
        return out.logits[:, -1, :], new_cache


# --- sampling -------------------------------------------------------------------------------------
def _sample(
    scores: torch.Tensor, bias: torch.Tensor, config: SamplingConfig, generator: torch.Generator, method: str = "auto"
) -> torch.Tensor:
    """One token per row from float32 ``scores`` (B, V), which this modifies in place.

    The nucleus is the set of tokens whose strictly-more-likely tokens hold less than ``top_p`` of the
    mass (the most likely token is always in it): the same set as transformers' ``TopPLogitsWarper``.
    ``method`` picks how it is sampled, all exactly from the renormalised nucleus distribution:
    ``"sort"`` sorts the vocabulary and draws with ``torch.multinomial`` (transformers' way; used on
    accelerators, where it needs no host sync); ``"reject"`` draws from the full distribution by inverse
    CDF and redraws the rows whose token fell outside the nucleus (at most 1 - top_p of the time), so no
    sort is needed: several times faster on CPU, where a (64 x 4096) sort alone costs more than a small
    model's forward. ``"auto"``: ``"reject"`` on CPU, ``"sort"`` elsewhere.
    """
    scores.add_(bias)
    if config.temperature == 0:
        return scores.argmax(-1)
    if config.temperature != 1:
        scores.div_(config.temperature)
    vocab = scores.shape[-1]
    if 0 < config.top_k < vocab:
        values, indices = scores.topk(config.top_k, dim=-1)  # sorted, largest first
        choice = _multinomial_sorted(torch.softmax(values, dim=-1), config.top_p, generator)
        return indices.gather(-1, choice).squeeze(1)
    probs = torch.softmax(scores, dim=-1)
    if method == "auto":
        method = "reject" if scores.device.type == "cpu" else "sort"
    if method == "reject":
        return _sample_reject(probs, config.top_p, generator)
    if method != "sort":
        raise ValueError(f"unknown sampling method {method!r}")
    return _sample_sort(probs, config.top_p, generator)


def _multinomial_sorted(probs: torch.Tensor, top_p: float, generator) -> torch.Tensor:
    """Positions (B, 1) drawn from probabilities sorted largest first, cut to the nucleus."""
    if top_p < 1:
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        probs = probs.masked_fill(before >= top_p, 0.0)
    return torch.multinomial(probs, 1, generator=generator)  # unnormalised weights are fine


def _sample_sort(probs: torch.Tensor, top_p: float, generator) -> torch.Tensor:
    if top_p >= 1:
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    values, indices = probs.sort(dim=-1, descending=True)
    return indices.gather(-1, _multinomial_sorted(values, top_p, generator)).squeeze(1)


_REJECT_ROUNDS = 8  # then the rows still outside their nucleus (< (1 - top_p) ** 8 of them) are sorted


def _sample_reject(probs: torch.Tensor, top_p: float, generator) -> torch.Tensor:
    """Nucleus sampling without a sort: draw from ``probs``, keep the draws inside the nucleus, redraw the rest.

    A draw ``t`` is in the nucleus iff the mass of the tokens strictly more likely than ``t`` is < top_p,
    an O(V) test per row. The accepted draws follow ``probs`` restricted to the nucleus, renormalised:
    exactly top-p sampling. Each redraw round only touches the rows that need it.
    """
    vocab = probs.shape[-1]
    cum = probs.cumsum(-1)
    tokens: torch.Tensor | None = None  # set by the first round
    rows: torch.Tensor | None = None  # rows still to draw (None: all of them)
    for _ in range(_REJECT_ROUNDS):
        p = probs if rows is None else probs[rows]
        c = cum if rows is None else cum[rows]
        u = torch.rand(p.shape[0], 1, generator=generator, dtype=c.dtype, device=c.device) * c[:, -1:]
        draw = torch.searchsorted(c, u, right=True).clamp_(max=vocab - 1)  # inverse CDF
        p_draw = p.gather(1, draw)
        ok = p_draw > 0  # (rounding at the very top of the CDF could land on a forbidden token)
        if top_p < 1:
            ok &= (p > p_draw).to(p.dtype).mul_(p).sum(-1, keepdim=True) < top_p  # mass above the draw
        ok, draw = ok.squeeze(1), draw.squeeze(1)
        if rows is None:
            tokens = draw
            if bool(ok.all()):
                return tokens
            rows = (~ok).nonzero().squeeze(1)
        else:
            assert tokens is not None  # the first round (rows is None) set it
            tokens[rows[ok]] = draw[ok]
            rows = rows[~ok]
            if rows.numel() == 0:
                return tokens
    assert tokens is not None and rows is not None  # _REJECT_ROUNDS >= 1 rounds ran without returning
    tokens[rows] = _sample_sort(probs[rows], top_p, generator)
    return tokens


def _bias(vocab: int, forbidden: Sequence[int], n_tokens: int, device) -> torch.Tensor:
    bias = torch.zeros(vocab, dtype=torch.float32)
    ids = [i for i in forbidden if 0 <= i < vocab]
    if ids:
        bias[ids] = float("-inf")
    if n_tokens < vocab:
        bias[n_tokens:] = float("-inf")  # rows that only pad the vocabulary
    return bias.to(device)


def _compact(cache, keep: torch.Tensor) -> bool:
    reorder = getattr(cache, "reorder_cache", None)
    if reorder is None:
        return False
    reorder(keep)
    return True


# Devices where decoding on a static cache replays CUDA graphs. On others the static cache only costs
# (attention over the whole preallocated length), so they decode on transformers' dynamic cache.
_GRAPH_DEVICES = {"cuda"}
# Cache lengths are rounded up to this, so batches whose prompt lengths differ a little (scenario
# prompts, red-team rounds) share one cache and graph; the extra slots are masked, never written.
_CACHE_LEN_MULTIPLE = 64
# Decoders kept per call (full batches and the last, smaller one): each holds a KV cache and a graph.
_DECODERS_KEPT = 2


class _StaticDecoder:
    """Prefill and decoding steps of one batch shape on a preallocated ``StaticCache``.

    With ``graph=True`` (CUDA) the first decoding step runs eagerly on a side stream (the warm-up a
    capture needs: lazy cuBLAS workspaces and the like), then the step's forward is captured into a
    CUDA graph that every later step, of this batch and of later batches of the same shape, replays.
    Everything the forward reads lives at fixed addresses: the input token buffer, the cache tensors,
    the cache's write position (a device tensor the replayed graph advances itself) and, for a
    left-padded batch, the attention mask over the whole cache (fixed for the batch: every row's
    next token goes to the same cache slot) and the rows' position ids (copied in each step).
    """

    def __init__(self, forward: _Forward, batch: int, max_len: int, padded: bool, graph: bool, device):
        from transformers import StaticCache

        self.forward = forward
        self.cache = StaticCache(config=forward.model.config, max_cache_len=max_len)
        self.mask = torch.ones(batch, max_len, dtype=torch.long, device=device) if padded else None
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device) if padded else None
        self.graph_wanted = graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.token: torch.Tensor | None = None  # the graph's input, (batch, 1)
        self.logits: torch.Tensor | None = None  # the graph's output, (batch, vocab)

    def prefill(self, input_ids: torch.Tensor, mask: torch.Tensor | None, position_ids: torch.Tensor | None):
        """The prompt's forward; ``mask`` (left-padded batches) spans the whole cache."""
        self.cache.reset()  # in place: the tensors keep the addresses a captured graph reads
        if self.mask is not None:
            assert mask is not None  # a padded decoder serves padded batches, which have a mask
            self.mask.fill_(1)  # slots past the batch's own length: causally masked until written
            self.mask[:, : mask.shape[1]].copy_(mask)
        return self.forward(
            input_ids, cache=self.cache, attention_mask=self.mask, position_ids=position_ids, prefill=True
        )[0]

    def _step_forward(self, token: torch.Tensor) -> torch.Tensor:
        return self.forward(token, cache=self.cache, attention_mask=self.mask, position_ids=self.positions)[0]

    def step(self, token: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """The next logits after ``token`` (batch,); ``positions`` (batch, 1) for left-padded batches."""
        if self.positions is not None:
            assert positions is not None  # a padded decoder serves padded batches, which have positions
            self.positions.copy_(positions)
        if self.graph is not None:
            assert self.token is not None and self.logits is not None  # set before the graph was
            self.token.copy_(token.unsqueeze(1))
            self.graph.replay()
            return self.logits
        if not self.graph_wanted:
            return self._step_forward(token.unsqueeze(1))
        graph_token = self.token = token.unsqueeze(1).clone()
        side = torch.cuda.Stream(device=graph_token.device)
        main = torch.cuda.current_stream(graph_token.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            logits = self._step_forward(graph_token)
        main.wait_stream(side)
        logits.record_stream(main)  # allocated on the side stream, read on this one: not reused before
        graph = torch.cuda.CUDAGraph()
        try:
            # Records the step, runs nothing. thread_local: CUDA calls of other threads (a training
            # run's batch prefetch, when it samples for eval_every) neither break nor join the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.logits = self._step_forward(graph_token)
        except Exception as exc:
            self.graph_wanted = False
            warnings.warn(
                f"could not capture {type(self.forward.model).__name__}'s decoding step as a CUDA graph "
                f"({type(exc).__name__}: {exc}); decoding eagerly (SamplingConfig.cuda_graphs=False "
                "skips the attempt)",
                stacklevel=6,  # generate's caller (via _sample_rows, _generate_batch, _Batch.advance)
            )
        else:
            self.graph = graph
        return logits


# --- decoding -------------------------------------------------------------------------------------
@dataclass
class _Draw:
    """How a step's token is drawn from its logits; made from the first batch's logits, which tell
    the vocabulary size and the device sampling runs on."""

    config: SamplingConfig
    bias: torch.Tensor  # -inf for forbidden ids and vocabulary padding
    bias_min: torch.Tensor  # the same and EOS: the bias until min_new_tokens tokens exist
    replace_table: torch.Tensor | None  # sampled id -> id emitted (None: no replace_ids)
    generator: torch.Generator  # seeded from config.seed; the only randomness of a call

    def __call__(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        bias = self.bias_min if step < self.config.min_new_tokens else self.bias
        token = _sample(logits.float(), bias, self.config, self.generator)
        return token if self.replace_table is None else self.replace_table[token]


@dataclass
class _Decoding:
    """What the batches of one :func:`generate` call share."""

    forward: _Forward
    config: SamplingConfig
    device: torch.device  # the model's: where inputs go
    eos: int
    forbidden: list[int]
    n_tokens: int  # len(tokenizer): ids from here up to the model's output size only pad the vocabulary
    max_positions: int | None
    replace: dict[int, int]
    draw: _Draw | None = None  # set by the first batch (see _Draw)
    # Static-cache decoders by (batch, cache length, padded), oldest first (see _static_decoder).
    decoders: dict[tuple[int, int, bool], _StaticDecoder] = field(default_factory=dict)
    static_refused: bool = False  # the model has no static cache: every batch decodes eagerly

    def draw_for(self, logits: torch.Tensor) -> _Draw:
        """The call's :class:`_Draw`, made (the vocabulary checked) on the first batch's logits."""
        if self.draw is not None:
            return self.draw
        vocab, device = logits.shape[-1], logits.device
        if self.n_tokens > vocab:
            raise ValueError(
                f"the tokenizer has {self.n_tokens} tokens but the model outputs only {vocab} "
                "logits: this tokenizer does not belong to this model"
            )
        bad = [i for i in self.forbidden if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"forbidden_ids {bad[:5]} are outside the model's vocabulary (0..{vocab - 1})")
        bias = _bias(vocab, self.forbidden, self.n_tokens, device)
        bias_min = bias.clone()
        bias_min[self.eos] = float("-inf")
        table = None
        if self.replace:
            bad = [i for pair in self.replace.items() for i in pair if not 0 <= i < vocab]
            if bad:
                raise ValueError(f"replace_ids {bad[:5]} are outside the model's vocabulary (0..{vocab - 1})")
            # A lookup table: one gather per step whatever the number of replaced ids.
            table = torch.arange(vocab, dtype=torch.long)
            table[list(self.replace)] = torch.tensor(list(self.replace.values()), dtype=torch.long)
            table = table.to(device)
        generator = torch.Generator(device=device).manual_seed(int(self.config.seed))
        self.draw = _Draw(self.config, bias, bias_min, table, generator)
        return self.draw


def _static_decoder(state: _Decoding, batch: int, length: int, padded: bool) -> _StaticDecoder | None:
    """A static-cache decoder for a batch of ``batch`` rows needing ``length`` cache slots (kept for
    later batches of its shape in this call), or None to decode eagerly on transformers' dynamic cache."""
    forward, device = state.forward, state.device
    if device.type not in _GRAPH_DEVICES or not getattr(forward.model, "_can_compile_fullgraph", False):
        return None
    if (padded and not forward.position_ids) or state.static_refused:
        return None  # (the eager path says why a padded batch cannot run without position ids)
    key = (batch, -(-length // _CACHE_LEN_MULTIPLE) * _CACHE_LEN_MULTIPLE, padded)
    decoders = state.decoders  # oldest first
    decoder = decoders.pop(key, None)
    if decoder is None:
        while len(decoders) >= _DECODERS_KEPT:
            decoders.pop(next(iter(decoders)))  # frees its cache and graph
        try:
            decoder = _StaticDecoder(forward, batch, key[1], padded, graph=device.type == "cuda", device=device)
        except Exception as exc:
            state.static_refused = True
            warnings.warn(
                f"no static KV cache for {type(forward.model).__name__} ({type(exc).__name__}: {exc}); "
                "decoding eagerly without CUDA graphs",
                stacklevel=6,  # generate's caller (via _sample_rows, _generate_batch, _start_batch)
            )
            return None
    decoders[key] = decoder
    return decoder


@dataclass
class _Batch:
    """One batch being decoded: its inputs (on the model's device), then per row still decoded (on the
    logits' device) its limit and whether it is done, and every row's sampled ids so far."""

    width: int  # the prompts' length, left-padded
    steps: int  # the most new tokens a row may take
    decoder: _StaticDecoder | None  # None: decoding on transformers' dynamic cache, ``cache``
    cache: Any
    mask: torch.Tensor | None  # left-padded batches only: the attention mask over prompt and continuation
    next_position: torch.Tensor | None  # left-padded batches only: each row's first new position
    out: torch.Tensor  # (rows, steps): the sampled ids, EOS as filler after a row ends
    limit: torch.Tensor  # each row's max_new_tokens
    done: torch.Tensor
    token: torch.Tensor | None = None  # the last step's ids
    alive: torch.Tensor | None = None  # indices (into the batch) of the rows still decoded; None = all

    def record(self, step: int, token: torch.Tensor, eos: int) -> None:
        """Writes this step's ids (EOS for rows already done) and marks the rows that end with them."""
        self.token = token = torch.where(self.done, eos, token)
        if self.alive is None:
            self.out[:, step] = token
        else:
            self.out[self.alive, step] = token
        self.done = self.done | (token == eos) | (self.limit <= step + 1)

    def running(self) -> bool:
        """Whether any row runs on; finished rows leave a dynamic cache once enough of them have. (A
        static cache keeps its batch: its graph's replay costs the same for any number of rows.)"""
        n_done = int(self.done.sum())
        if n_done == self.done.shape[0]:
            return False
        if self.decoder is None and n_done and n_done >= _COMPACT_FRACTION * self.done.shape[0]:
            keep = (~self.done).nonzero().squeeze(1)
            if _compact(self.cache, keep):
                assert self.token is not None  # recorded before any check
                self.alive = keep if self.alive is None else self.alive[keep]
                self.token, self.done, self.limit = self.token[keep], self.done[keep], self.limit[keep]
                if self.mask is not None:
                    assert self.next_position is not None  # set with the mask
                    keep_in = keep.to(self.mask.device)
                    self.mask, self.next_position = self.mask[keep_in], self.next_position[keep_in]
        return True

    def advance(self, state: _Decoding, step: int) -> torch.Tensor:
        """The logits after this step's ids (of the rows still decoded)."""
        assert self.token is not None  # recorded before any step forward
        positions = None
        if self.mask is not None:
            assert self.next_position is not None  # set with the mask
            positions = (self.next_position + step).unsqueeze(1)
            if state.max_positions is not None:
                # A row past its own limit (done, its output ignored) may run on beside longer-lived
                # rows of shorter prompts: keep its position ids inside the position table.
                positions = positions.clamp_(max=state.max_positions - 1)
        if self.decoder is not None:
            return self.decoder.step(self.token.to(state.device), positions)
        step_mask = None if self.mask is None else self.mask[:, : self.width + step + 1]
        logits, self.cache = state.forward(
            self.token.unsqueeze(1).to(state.device), cache=self.cache, attention_mask=step_mask, position_ids=positions
        )
        return logits


def _start_batch(state: _Decoding, rows: list[list[int]], limits: list[int]) -> tuple[_Batch, torch.Tensor]:
    """The batch's prompts, left-padded to one width, through the model: the batch and its first logits."""
    batch, lengths = len(rows), [len(r) for r in rows]
    width, steps = max(lengths), max(limits)
    padded = min(lengths) != width
    input_ids = torch.tensor([[state.eos] * (width - n) + r for r, n in zip(rows, lengths)], dtype=torch.long)
    # Left-padded batches only: the attention mask, the prompt's position ids, each row's next position.
    mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    next_position: torch.Tensor | None = None
    if padded:
        mask = torch.ones(batch, width + steps, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, : width - n] = 0
        mask = mask.to(state.device)
        position_ids = (mask[:, :width].cumsum(-1) - 1).clamp_(min=0)
        next_position = torch.tensor(lengths, dtype=torch.long, device=state.device)
    decoder = _static_decoder(state, batch, width + steps, padded) if state.config.cuda_graphs else None
    if decoder is not None:
        logits, cache = decoder.prefill(input_ids.to(state.device), mask, position_ids), None
    else:
        logits, cache = state.forward(
            input_ids.to(state.device),
            attention_mask=None if mask is None else mask[:, :width],
            position_ids=position_ids,
            prefill=True,
        )
    device = logits.device  # sampling happens where the logits come out (a split model's last device)
    out = torch.full((batch, steps), state.eos, dtype=torch.long, device=device)
    limit = torch.tensor(limits, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    return _Batch(width, steps, decoder, cache, mask, next_position, out, limit, done), logits


def _generate_batch(state: _Decoding, rows: list[list[int]], limits: list[int]) -> tuple[list[list[int]], list[bool]]:
    """Sample one batch; returns per row the continuation ids (no EOS) and whether it ended with EOS."""
    batch, logits = _start_batch(state, rows, limits)
    draw = state.draw_for(logits)
    check_every = _CHECK_EVERY.get(logits.device.type, _CHECK_EVERY_DEFAULT)
    for step in range(batch.steps):
        batch.record(step, draw(logits, step), state.eos)
        if step + 1 == batch.steps or ((step + 1) % check_every == 0 and not batch.running()):
            break
        logits = batch.advance(state, step)

    # One transfer, then plain lists: the first EOS ends a row; a row without one ran to its limit.
    # (Columns past a row's limit, or after the batch stopped, hold EOS as filler: hence the `< limit`.)
    is_eos = batch.out == state.eos
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), batch.steps)
    row_limit = torch.tensor(limits, dtype=torch.long, device=batch.out.device)
    finished = first < row_limit
    ends = torch.minimum(first, row_limit)
    out_rows, row_ends, row_finished = batch.out.tolist(), ends.tolist(), finished.tolist()
    return [row[:end] for row, end in zip(out_rows, row_ends)], row_finished


# --- the API --------------------------------------------------------------------------------------
def _row_limits(prompt_ids: list[list[int]], config: SamplingConfig, positions: int | None) -> list[int]:
    """Per prompt: how many new tokens fit in the model's positions (one warning when any is cut)."""
    limits = []
    clamped = []
    for i, ids in enumerate(prompt_ids):
        limit = config.max_new_tokens
        if positions is not None:
            room = positions - len(ids)
            if room < 1:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens, but the model takes at most {positions} "
                    "positions: no room left to generate"
                )
            if room < limit:
                limit = room
                clamped.append(i)
        limits.append(limit)
    if clamped:
        warnings.warn(
            f"max_new_tokens={config.max_new_tokens} does not fit in the model's {positions} positions "
            f"after {len(clamped)} of {len(prompt_ids)} prompt(s) (the longest has "
            f"{max(len(prompt_ids[i]) for i in clamped)} tokens): those rows generate at most "
            f"{min(limits[i] for i in clamped)} to {max(limits[i] for i in clamped)} new tokens",
            stacklevel=3,  # generate's caller
        )
    return limits


def _sample_rows(
    model, state: _Decoding, prompt_ids: list[list[int]], limits: list[int], num_samples: int, progress: bool
) -> tuple[list[list[int]], list[bool]]:
    """Every row's ids and whether it ended with EOS; row r = prompt * num_samples + sample."""
    # Sorted by prompt length, so that equal lengths share batches.
    n_rows = len(prompt_ids) * num_samples
    order = sorted(range(n_rows), key=lambda r: (len(prompt_ids[r // num_samples]), r))
    tokens: list[list[int]] = [[] for _ in range(n_rows)]  # every row is filled by exactly one batch
    finished: list[bool] = [False] * n_rows
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_rows, desc="sampling", unit="sample")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n_rows, state.config.batch_size):
                batch = order[start : start + state.config.batch_size]
                rows = [prompt_ids[r // num_samples] for r in batch]
                got, ended = _generate_batch(state, rows, [limits[r // num_samples] for r in batch])
                for r, ids, end in zip(batch, got, ended):
                    tokens[r], finished[r] = ids, end
                if bar is not None:
                    bar.update(len(batch))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return tokens, finished


def generate(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    config: SamplingConfig,
    *,
    num_samples: int = 1,
    forbidden_ids: Sequence[int] = (),
    strip_ids: Sequence[int] = (),
    replace_ids: Mapping[int, int] | None = None,
    progress: bool = False,
) -> list[Generation]:
    """Sample ``num_samples`` continuations of every prompt; results in prompt order, then sample order.

    Prompts given as strings are tokenized without special tokens (write the EOS / control tokens into
    them, e.g. ``tokenizer.eos_token + "<|good|>"``); prompts given as id lists are used as they are.
    ``forbidden_ids`` (and, always, the vocabulary-padding rows past ``len(tokenizer)``) are never
    sampled; ``strip_ids`` are removed from ``Generation.text`` (not from ``token_ids``).
    ``replace_ids`` maps sampled ids to the ids emitted in their place, which the model then
    conditions on (a conditional model's control tokens re-conditioned on ``<|good|>``).
    """
    _check_config(config, num_samples)
    texts, prompt_ids = _encode_prompts(tokenizer, prompts)
    if not prompt_ids:
        return []
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"{type(tokenizer).__name__} has no EOS token; the sampler stops rows at EOS")
    positions = max_positions(model)
    limits = _row_limits(prompt_ids, config, positions)
    replace = {int(k): int(v) for k, v in (replace_ids or {}).items()}
    if eos in replace or eos in replace.values():
        raise ValueError("replace_ids may not involve the EOS token: it ends a sample")
    forbidden = sorted({int(i) for i in forbidden_ids})
    state = _Decoding(
        _Forward(model), config, _model_device(model), int(eos), forbidden, len(tokenizer), positions, replace
    )
    tokens, finished = _sample_rows(model, state, prompt_ids, limits, num_samples, progress)

    strip = {int(i) for i in strip_ids}
    kept = [[t for t in ids if t not in strip] for ids in tokens] if strip else tokens
    decoded = tokenizer.batch_decode(kept, skip_special_tokens=False)
    return [
        Generation(
            prompt=texts[r // num_samples],
            text=decoded[r],
            token_ids=tokens[r],
            prompt_index=r // num_samples,
            finished=finished[r],
        )
        for r in range(len(tokens))
    ]
