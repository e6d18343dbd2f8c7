"""``phf.json``: what a trained model's directory says about its training, for whoever samples
from it or evaluates it (the prefix to condition on, the control tokens to forbid, the scorer and
corpus it was trained on). The trainer writes it beside the HF checkpoint; ``phf eval`` and
``phf report`` read it. Paths in it are absolute (a hub name stays as given).

Runs written before a field existed still load: the fields added since the first phf.json (which
had objective, data, step, the control tokens, prompt prefix, forbidden tokens, objective_config
and filter_threshold) default to None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phf.io.records import Record

if TYPE_CHECKING:
    from phf.data.stream import Conditional


@dataclass(kw_only=True)
class ConditionalInfo(Record):
    """How conditional training chose each segment's control token (:class:`phf.data.stream.Conditional`),
    so that evaluation tags held-out text the same way."""

    threshold: float | None
    edges: list[float] | None
    drop_prob: float
    bad_threshold: float | None = None
    labels: str = "segment"
    tag_every: int | None = None

    @classmethod
    def of(cls, conditional: Conditional) -> ConditionalInfo:
        c = conditional
        edges = None if c.edges is None else list(c.edges)
        return cls(
            threshold=c.threshold,
            edges=edges,
            drop_prob=c.drop_prob,
            bad_threshold=c.bad_threshold,
            labels=c.labels,
            tag_every=c.tag_every,
        )

    def presented(self, token_ids: tuple[int, ...]) -> Conditional:
        """The training stream's Conditional for these control-token ids, with no tag dropped (as
        evaluation presents held-out text)."""
        from phf.data.stream import Conditional

        return Conditional(
            token_ids,
            threshold=self.threshold or 0.0,
            drop_prob=0.0,
            edges=tuple(self.edges) if self.edges else None,
            bad_threshold=self.bad_threshold,
            labels=self.labels,
            tag_every=self.tag_every,
        )


@dataclass(kw_only=True)
class RunInfo(Record):
    """phf.json. ``RunInfo.from_file(run / "phf.json")`` reads one, checked; ``save`` writes one."""

    objective: str
    data: str | None  # the scored corpus trained on (its manifest leads to the held-out split)
    scorer: dict[str, Any] | None = None  # the corpus's Scorer.describe(): name, version, unit, segmenter, config
    hit_threshold: float | None = None  # a score above it is misaligned (the corpus's threshold)
    step: int
    control_tokens: list[str]  # [aligned, misaligned...]; empty without conditional training
    prompt_prefix: str  # the text after EOS a sampler conditions on (the aligned control token)
    forbidden_tokens: list[str]  # never sampled (code: only the misaligned ones, any line may start aligned)
    conditional: ConditionalInfo | None = None
    objective_config: dict[str, Any]  # the ObjectiveConfig trained with, as a dict
    filter_threshold: float | None
    init: str | None = None  # the checkpoint training started from (a finetuning run)
    continue_from: str | None = None  # the run whose data stream this one continued
    mixed_precision: str | None = None  # what `auto` resolved to on the training machine
    cpu_fp32_attention: bool | None = None  # bf16 on a CPU, with attention in fp32
