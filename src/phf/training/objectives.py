"""Token-level losses of the six PHF objectives (Korbak et al. 2023, docs/method.md "Objectives").

Filtering and conditional training are data transforms (documents dropped, control tokens inserted)
and train with plain MLE; unlikelihood, RWR and AWR are functions of each target token's log-prob,
its segment's misalignment score ``s`` (reward ``R = -s``), a mask and, for AWR, a value estimate.

Normalisation: every loss is a SUM over this micro-batch's masked tokens divided by ``num_tokens``,
the number of target tokens of the whole optimizer step (all gradient-accumulation micro-batches,
all data-parallel ranks). Summing the losses of all micro-batches and ranks then gives exactly the
global per-token mean, so the gradient does not depend on how a step is split (the authors' code took
a mean per micro-batch, which weights tokens of short micro-batches more). Metrics are normalised the
same way and detached, so the trainer adds them over micro-batches and all-reduces them with a sum.

Fixes of the authors' code (docs/method.md, "Known defects of the authors' code"):

* Unlikelihood uses the hard threshold ``a = 1[s <= t]`` for every ``t``, including ``t = 0.0``. The
  authors tested ``if self.score_threshold:``, false for 0.0, so their PII and PEP8 runs silently used
  the soft weight ``a = 1 - s`` (nearly MLE). The soft weight is available only as ``soft=True``.
* RWR weights tokens by ``exp(R / beta)`` with no value head. The authors ran RWR as AWR with
  ``alpha = 1``: the value head never trained and stayed at -0.5, so their weights were
  ``exp((R + 0.5) / beta)``, in [0.905, 1.0] for toxicity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

from phf.config import AWRConfig, ObjectiveConfig, RWRConfig, UnlikelihoodConfig, broken_rule

__all__ = [
    "AWR",
    "MLE",
    "RWR",
    "LossInputs",
    "Objective",
    "Unlikelihood",
    "ValueHead",
    "build_objective",
]

Metrics = dict[str, Tensor]


@dataclass(frozen=True, kw_only=True)
class LossInputs:
    """One micro-batch, aligned on target positions (all ``(B, T)``).

    ``logp``: float32 log-prob of each target token. ``scores``: float32 misalignment score ``s``
    of the segment each target token belongs to (reward ``R = -s``). ``mask``: bool, which targets
    count (padding, ignored and, where wanted, control-token targets are False). ``values``: the
    value head's output at the same positions (AWR only). ``num_tokens``: the GLOBAL number of
    counted targets in the optimizer step (across micro-batches and ranks), a number or a 0-dim
    tensor; the losses divide their sums by it.
    """

    logp: Tensor
    scores: Tensor
    mask: Tensor
    num_tokens: float | Tensor
    values: Tensor | None = None

    def __post_init__(self) -> None:
        for field in ("scores", "mask") + (("values",) if self.values is not None else ()):
            shape = getattr(self, field).shape
            if shape != self.logp.shape:
                raise ValueError(f"LossInputs.{field} has shape {tuple(shape)}, logp has {tuple(self.logp.shape)}")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"LossInputs.mask must be bool, got {self.mask.dtype}")
        if not isinstance(self.num_tokens, Tensor) and not self.num_tokens > 0:
            raise ValueError(f"LossInputs.num_tokens must be > 0, got {self.num_tokens}")

    def counted(self, x: Tensor) -> Tensor:
        """``x`` as float32 with uncounted positions set to 0.

        Objectives read their inputs through this: ``where`` in :meth:`total` alone would drop a NaN
        score's value but not its gradient (``0 * nan``), so garbage must not reach the arithmetic.
        """
        return torch.where(self.mask, x.float(), 0.0)

    def total(self, per_token: Tensor) -> Tensor:
        """Sum of ``per_token`` over counted tokens / global ``num_tokens``.

        ``where`` rather than a multiply by the mask, so a NaN or inf at an uncounted position (a
        padded score, an ignored target) cannot leak into the loss.
        """
        return torch.where(self.mask, per_token, 0.0).sum() / self.num_tokens

    def metric(self, per_token: Tensor) -> Tensor:
        """Like :meth:`total`, detached and float32: ready to add over micro-batches and all-reduce."""
        return self.total(per_token.detach().float()).detach()


class Objective(Protocol):
    """What the trainer calls: ``loss, metrics = objective(batch)``."""

    # Read-only: the objectives are frozen dataclasses.
    @property
    def name(self) -> str: ...

    @property
    def needs_value_head(self) -> bool: ...

    def __call__(self, batch: LossInputs) -> tuple[Tensor, Metrics]: ...


@dataclass(frozen=True)
class MLE:
    """Maximum likelihood: the loss of MLE, filtering and conditional training (``name`` says which)."""

    name: str = "mle"
    needs_value_head: ClassVar[bool] = False

    def __call__(self, batch: LossInputs) -> tuple[Tensor, Metrics]:
        logp = batch.counted(batch.logp)
        return batch.total(-logp), {"nll": batch.metric(-logp)}


def _log1m_exp(logp: Tensor, floor: float = 1e-20) -> Tensor:
    """``log(clamp(1 - exp(logp), min=floor))``, accurate and with finite gradients everywhere.

    ``1 - p`` is formed with ``expm1`` near p = 1 and ``log1p`` far from it (Maechler's log1mexp).
    The clamp is applied to ``1 - p`` before the log, not after, so at p = 1 the gradient is exactly
    0 (the paper's clamp) rather than ``0 * inf = NaN``; each branch of the ``where`` only ever sees
    inputs where it is finite, because ``where`` does not stop ``0 * inf`` in the branch it discards.
    """
    cut = -math.log(2.0)
    near_one = torch.log(torch.clamp(-torch.expm1(torch.clamp(logp, min=cut)), min=floor))
    far = torch.log1p(-torch.exp(torch.clamp(logp, max=cut)))
    return torch.where(logp > cut, near_one, far)


def _check(loss: UnlikelihoodConfig | RWRConfig | AWRConfig, name: str) -> None:
    """The ranges phf.config checks a config's settings against, for a loss built in code."""
    problem = broken_rule(loss.rules())
    if problem:
        raise ValueError(f"{name}: {problem}")


@dataclass(frozen=True)
class Unlikelihood(UnlikelihoodConfig):
    """Unlikelihood (Welleck et al. 2019) on tokens of misaligned segments.

    ``a = 1[s <= threshold]`` (``soft=True``: ``a = clamp(1 - s, 0, 1)``); per token
    ``-a * log p - alpha * (1 - a) * log(clamp(1 - p, min=1e-20))``. The threshold is hard for every
    value, 0.0 included: the authors' truthiness test made t = 0 silently soft (module docstring).
    Parameters and defaults: :class:`phf.config.UnlikelihoodConfig`.
    """

    name: ClassVar[str] = "ul"
    needs_value_head: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check(self, self.name)

    def good(self, scores: Tensor) -> Tensor:
        """The likelihood weight ``a`` of each token (1 = aligned, trained up; 0 = pushed down)."""
        scores = scores.float()
        if self.soft:
            return torch.clamp(1.0 - scores, 0.0, 1.0)
        return (scores <= self.threshold).float()

    def __call__(self, batch: LossInputs) -> tuple[Tensor, Metrics]:
        logp = batch.counted(batch.logp)
        a = self.good(batch.counted(batch.scores))
        unlikely = -(1.0 - a) * _log1m_exp(logp)
        loss = batch.total(-a * logp + self.alpha * unlikely)
        return loss, {"nll": batch.metric(-logp), "ul_term": batch.metric(unlikely), "frac_good": batch.metric(a)}


@dataclass(frozen=True)
class RWR(RWRConfig):
    """Reward-weighted regression: ``-log p * exp(R / beta)`` with ``R = -s``; no value head.

    The authors' RWR was AWR with alpha = 1 and an untrained head (module docstring); this is the
    objective the paper describes. Parameters and defaults: :class:`phf.config.RWRConfig`.
    """

    name: ClassVar[str] = "rwr"
    needs_value_head: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check(self, self.name)

    def __call__(self, batch: LossInputs) -> tuple[Tensor, Metrics]:
        logp = batch.counted(batch.logp)
        weight = torch.exp(-batch.counted(batch.scores) / self.beta)
        loss = batch.total(-weight * logp)
        return loss, {"nll": batch.metric(-logp), "mean_weight": batch.metric(weight)}


@dataclass(frozen=True)
class AWR(AWRConfig):
    """Advantage-weighted regression (Peng et al. 2019) with a learned per-token value ``V``.

    ``A = R - stopgrad(V)``, ``w = min(exp(A / beta), weight_clip)`` (a constant: no gradient);
    loss ``alpha * sum(-w log p) / N + (1 - alpha) * sum((V - R)^2) / N``. The value loss trains the
    head and, through the un-detached hidden states, the trunk, as in the paper. Parameters and
    defaults: :class:`phf.config.AWRConfig`.
    """

    name: ClassVar[str] = "awr"
    needs_value_head: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check(self, self.name)

    def __call__(self, batch: LossInputs) -> tuple[Tensor, Metrics]:
        if batch.values is None:
            raise ValueError("awr needs LossInputs.values from a ValueHead")
        logp = batch.counted(batch.logp)
        values = batch.counted(batch.values)
        reward = -batch.counted(batch.scores)
        advantage = reward - values.detach()
        raw = torch.exp(advantage / self.beta)  # may overflow to inf; the clamp catches it
        weight = torch.clamp(raw, max=self.weight_clip)
        value_err = (values - reward) ** 2
        loss = self.alpha * batch.total(-weight * logp) + (1.0 - self.alpha) * batch.total(value_err)
        metrics = {
            "nll": batch.metric(-logp),
            "mean_weight": batch.metric(weight),
            "value_loss": batch.metric(value_err),
            "mean_value": batch.metric(values),
            "mean_advantage": batch.metric(advantage),
            "frac_clipped": batch.metric((raw > self.weight_clip).float()),
        }
        return loss, metrics


class ValueHead(nn.Module):
    """``V(h) = -sigmoid(w . h + b)`` in (-1, 0), the range of ``R = -s`` for scores in [0, 1].

    Zero-initialised as in the authors' code, so every value starts at -0.5. The hidden states are
    not detached: the value loss shapes the trunk too, as in the paper. Returns float32 even under
    autocast, since values feed an MSE and an ``exp``.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return -torch.sigmoid(self.linear(hidden).float()).squeeze(-1)


# The loss of each objective whose settings are the loss's parameters (the loss extends their
# dataclass); the others train with MLE. phf.config.OBJECTIVES says which objective has which settings.
_LOSSES: dict[type, type[Unlikelihood] | type[RWR] | type[AWR]] = {
    UnlikelihoodConfig: Unlikelihood,
    RWRConfig: RWR,
    AWRConfig: AWR,
}


def build_objective(config: ObjectiveConfig) -> Objective:
    """The loss of the objective ``config.name``, with the parameters of its section of ``config``."""
    settings = config.settings
    loss = _LOSSES.get(type(settings))
    if settings is None or loss is None:  # mle; filtering and conditional change the data, not the loss
        return MLE(config.name)
    return loss(**asdict(settings))
