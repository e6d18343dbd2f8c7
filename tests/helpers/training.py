"""Settings for tiny training runs in tests."""

import json
from pathlib import Path

# Per-objective settings that make each objective meaningful on the micro corpus (scores = share of 'x').
OBJECTIVE_SETTINGS = {
    "mle": {},
    "filtering": {"objective.threshold": 0.02},
    "conditional": {"objective.threshold": 0.0},
    "ul": {"objective.threshold": 0.0},
    "rwr": {"objective.beta": 0.1},
    "awr": {"objective.beta": 0.1},
}


def tiny_overrides(out, data, steps=8, **extra):
    base = {
        "output_dir": str(out),
        "data.path": str(data),
        "data.tokenizer.name": "bpe",
        "data.tokenizer.vocab_size": 300,
        "data.seq_len": 32,
        "model.config": "{n_layer: 1, n_head: 2, n_embd: 32}",
        "training.max_steps": steps,
        "training.batch_size": 8,
        "training.micro_batch_size": 8,
        "training.lr": 3e-3,
        "training.warmup_ratio": 0.0,
        "training.log_every": 1,
        "training.save_every": 1000,
        "training.seed": 0,
        "logging.progress": False,
        # fp32 whatever the CPU: the invariance tests compare runs to 1e-5.
        "training.mixed_precision": "no",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def train_tiny(out, data, objective="mle", steps=8, **extra):
    from phf.config import load_config
    from phf.training.trainer import train

    settings = {"objective.name": objective, **OBJECTIVE_SETTINGS[objective], **extra}
    train(load_config([], tiny_overrides(out, data, steps, **settings)))
    return Path(out)


def losses(run):
    return [
        json.loads(line)["loss"]
        for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
