"""One rank of the FSDP tests (run under torchrun): trains each objective named on the command line
with training.parallelism=fsdp, and records which share of every parameter this rank holds.

Usage: fsdp_worker.py OUT_ROOT DATA MODE OBJECTIVE... [KEY=VALUE...] with MODE `run` (train each objective to the
end), `die` (exit the process right after the step-2 checkpoint, as a kill would) or `resume`."""

import json
import os
import sys
from pathlib import Path

from tests.helpers.training import OBJECTIVE_SETTINGS, tiny_overrides

from phf.config import load_config
from phf.training.parallel import end_process_group
from phf.training.trainer import Trainer

STEPS, SAVE_EVERY, DIE_AFTER = 4, 2, 2


def overrides(out: Path, data: str, objective: str, extra: list[str]) -> list[str]:
    settings = {"objective.name": objective, **OBJECTIVE_SETTINGS[objective]}
    return [
        *tiny_overrides(
            out,
            data,
            STEPS,
            **settings,
            **{"training.parallelism": "fsdp", "training.micro_batch_size": 2, "training.save_every": SAVE_EVERY},
        ),
        *extra,
    ]


def die_after_checkpoint(trainer: Trainer):
    """``trainer.checkpoints.save`` that ends the process (no clean-up, as SIGKILL) once step DIE_AFTER is saved."""
    save = trainer.checkpoints.save

    def save_then_die(step, model, optimizer) -> None:
        save(step, model, optimizer)
        if step == DIE_AFTER:
            os._exit(9)

    return save_then_die


def main() -> None:
    root, data, mode, *rest = sys.argv[1:]
    objectives = [a for a in rest if "=" not in a]
    extra = [a for a in rest if "=" in a]
    rank = int(os.environ["RANK"])
    for objective in objectives:
        out = Path(root) / objective
        trainer = Trainer(load_config([], overrides(out, data, objective, extra)), resume=mode == "resume")
        if mode == "run":
            from torch.distributed.tensor import DTensor

            shards = {
                name: [p.to_local().numel() if isinstance(p, DTensor) else -1, p.numel()]
                for name, p in trainer.model.named_parameters()
            }
            (Path(root) / f"shards-{objective}-{rank}.json").write_text(json.dumps(shards))
        if mode == "die":
            trainer.checkpoints.save = die_after_checkpoint(trainer)  # type: ignore[method-assign]
        trainer.train()
    end_process_group()


if __name__ == "__main__":
    main()
