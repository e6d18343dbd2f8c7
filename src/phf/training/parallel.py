"""Sharded data parallelism (``training.parallelism: fsdp``): torch's FSDP2 ``fully_shard``.

Every rank keeps only its 1/W slice (dim 0) of each parameter, of its gradient and of AdamW's two
moments; a transformer block's full parameters exist only while that block runs forward or backward
(all-gathered, then freed). Gradients are reduce-scattered and averaged over ranks, as DDP averages
them, so the trainer's loss scaling is the same under both.

Why ``fully_shard`` directly rather than accelerate's FSDP plugin: accelerate (1.16) turns FSDP on
only for GPU-like distributed types, so on CPUs (gloo) the plugin is ignored and could not be tested
here; and its wrapping looks for the embeddings and ``_no_split_modules`` on the prepared module,
which is phf's :class:`~phf.training.trainer.PolicyModel` (LM + value head), not the LM.

Layout: one FSDP unit per transformer block (the classes the LM names in ``_no_split_modules``) and
the root unit (the policy) for everything else: embeddings, final norm, the output embedding (tied to
the input one in GPT-2: one parameter, in one unit, as FSDP2 requires), AWR's value head and the
control-token rows (rows of the embedding). The root unit stays gathered from forward to backward,
so :func:`phf.training.logprobs.lm_target_logprobs` may read the output embedding's weight directly.

Resumable checkpoints are sharded (``torch.distributed.checkpoint``): each rank writes its own
slice and nothing is gathered (a 1B model's weights and Adam moments, gathered, would take 12 GB
on one rank). The final checkpoint
is a full state dict gathered to rank 0's CPU memory and saved with ``save_pretrained``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

PARALLELISMS = ("ddp", "fsdp")
SHARDED_DIR = "sharded"  # inside a resumable checkpoint: model + optimizer, one file per rank


def block_classes(lm: nn.Module) -> set[type]:
    """The LM's transformer-block classes (those it names in ``_no_split_modules``)."""
    names = set(getattr(lm, "_no_split_modules", None) or [])
    return {type(m) for m in lm.modules() if type(m).__name__ in names}


def shard(policy: nn.Module, lm: nn.Module) -> nn.Module:
    """Shard ``policy`` (which holds ``lm``) in place over the default process group; returns it."""
    from torch.distributed.fsdp import fully_shard

    blocks = block_classes(lm)
    if not blocks:
        raise ValueError(
            f"{type(lm).__name__} names no transformer-block class in _no_split_modules: "
            "FSDP would gather the whole model at once; use training.parallelism=ddp"
        )
    for module in lm.modules():
        if type(module) in blocks:
            fully_shard(module)
    fully_shard(policy)
    # The policy returns log-probs that are views; phf's losses never modify them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    return policy


def _uncompiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (state-dict keys without ``_orig_mod.``), else ``model``."""
    return getattr(model, "_orig_mod", model)


def tied_copies(lm: Any) -> list[str]:
    """State-dict keys of ``lm`` that repeat a tied parameter (GPT-2's ``lm_head.weight``)."""
    out = lm.get_output_embeddings()
    if out is None or out.weight is not lm.get_input_embeddings().weight:
        return []
    return [f"{name}.weight" for name, module in lm.named_modules() if module is out]


@contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Reduce-scatter gradients in this backward only if ``sync`` (gradient accumulation)."""
    from torch.distributed.fsdp import FSDPModule

    model = _uncompiled(model)
    if not isinstance(model, FSDPModule):
        raise TypeError("gradient_sync needs a model that parallel.shard sharded")
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded gradients; the total norm as a plain tensor."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Model and optimizer state, each rank its slice (a collective: every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(_uncompiled(model), optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path / SHARDED_DIR))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Inverse of :func:`save_sharded` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(_uncompiled(model), optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path / SHARDED_DIR))
    set_state_dict(_uncompiled(model), optimizer, model_state_dict=model_state, optim_state_dict=optim_state)


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """The unsharded state dict on rank 0's CPU (empty elsewhere; a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def end_process_group() -> None:
    """Destroy the default process group, if this process made one (DDP or FSDP under torchrun).

    Left to interpreter exit, gloo's worker threads can outlive Python and abort the process
    (SIGABRT, "terminate called without an active exception") after a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
