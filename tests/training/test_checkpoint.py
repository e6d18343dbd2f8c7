"""The resumable checkpoint's files (format 1), which checkpoints written by earlier phf versions share:
a directory holding them resumes a run on the losses of the run that was never stopped."""

import hashlib
import json
import shutil

import pytest
from tests.helpers.training import losses, tiny_overrides, train_tiny

from phf.config import load_config
from phf.training.trainer import train

SETTINGS = {"training.save_every": 2, "training.micro_batch_size": 4}  # two micro-batches a step


def test_a_format_1_checkpoint_resumes_on_the_uninterrupted_losses(tmp_path, scored):
    whole = train_tiny(tmp_path / "whole", scored, "awr", 4, **SETTINGS)
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    checkpoint = whole / "checkpoints" / "step-0000002"
    files = ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin"]  # accelerate's
    assert sorted(p.name for p in checkpoint.iterdir()) == [*files, "trainer_state.json"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state == {
        "step": 2,
        "samples": 2 * 8,
        "tokens": 2 * 8 * 32,
        "format": 1,
        "phf_version": state["phf_version"],
        "files": {
            name: {
                "bytes": (checkpoint / name).stat().st_size,
                "sha256": hashlib.sha256((checkpoint / name).read_bytes()).hexdigest(),
            }
            for name in files
        },
    }
    assert list(state) == ["step", "samples", "tokens", "format", "phf_version", "files"]
    assert json.loads((whole / "trainer_state.json").read_text()) == {"step": 4, "samples": 32, "tokens": 1024}

    # The run directory a kill right after that checkpoint leaves (its later metric lines are redone).
    killed = tmp_path / "killed"
    shutil.copytree(checkpoint, killed / "checkpoints" / checkpoint.name)
    shutil.copy(whole / "metrics.jsonl", killed / "metrics.jsonl")
    overrides = tiny_overrides(killed, scored, 4, **{"objective.name": "awr", "objective.beta": 0.1, **SETTINGS})
    train(load_config([], overrides), resume=True)
    assert [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert losses(killed) == pytest.approx(losses(whole), rel=1e-5, abs=1e-6)
