"""`phf train`, `phf eval` and `phf redteam` read one config dialect: YAML files, then key=value,
then the older options as short forms of keys; `--help` lists every key with its help."""

from __future__ import annotations

import argparse

import pytest

from phf.cli import build_parser, parse_args, settings
from phf.config import ConfigError, EvalConfig, RedTeamConfig, TrainConfig, config_keys

# Every option of every command before the config dialect (phf 0.x's --help): each must still parse.
OLD_OPTIONS = {
    "corpus": "--max-mb --out --quiet --seed --test-fraction",
    "score": "--batch-docs --engine --hit-threshold --input --num-proc --option --out --overwrite --quiet "
    "--ray-address --scorer --shard --shard-size --split --strict --text-field -o",
    "train": "--out --quiet --resume",
    "eval": "--batch-size --compare-protocols --device --hit-threshold --humaneval --humaneval-samples "
    "--kl-samples --max-new-tokens --no-judge --no-scenarios --num-samples --option --out --prompts --protocol "
    "--quiet --reference --scorer --seed --test -o",
    "redteam": "--completions --continuations --device --option --out --pool-size --prompts --quiet --red-lm "
    "--rounds --scorer --seed --test --trials -o",
    "experiment": "--engine --no-report --only --out --quiet --ray-address",
    "report": "--names --out --quiet --title",
    "claims": "--out --quiet",
}


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        parse_args([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(OLD_OPTIONS))
def test_help_keeps_every_older_option(command, capsys):
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    options = {flag for action in commands[command]._actions for flag in action.option_strings}
    assert set(OLD_OPTIONS[command].split()) <= options
    text = _help(command, capsys)
    assert all(f"{flag} " in text or f"{flag}," in text for flag in OLD_OPTIONS[command].split()), text


@pytest.mark.parametrize("command, schema", [("train", TrainConfig), ("eval", EvalConfig), ("redteam", RedTeamConfig)])
def test_help_lists_every_key_with_its_default_and_help(command, schema, capsys):
    text = _help(command, capsys)
    for key in config_keys(schema):
        line = f"  {key.key}={key.default}  ({key.type})"
        # ObjectiveConfig's keys get their help with the objectives' own configs (another change).
        assert key.help or key.key.startswith("objective."), f"{key.key} has no attribute docstring"
        assert f"{line}\n      {key.help.split()[0]} " in text if key.help else line in text, key


def _config(argv):
    return settings(parse_args(argv))


# What main's CLI built from the older options of eval (the flags parse to the same config).
OLD_EVAL = [
    "--num-samples", "64", "--max-new-tokens", "32", "--batch-size", "8", "--scorer", "toxicity",
    "-o", "backend=hf", "-o", "n=3", "--test", "t.jsonl", "--prompts", "p.txt", "--seed", "3", "--device", "cpu",
    "--quiet", "--hit-threshold", "0.25", "--reference", "none", "--kl-samples", "16", "--no-judge",
    "--no-scenarios", "--protocol", "emit-good", "--compare-protocols", "paper", "recondition",
    "--humaneval", "2", "--humaneval-samples", "3",
]  # fmt: skip
EVAL_SETTINGS = dict(
    num_samples=64,
    max_new_tokens=32,
    batch_size=8,
    scorer="toxicity",
    scorer_options={"backend": "hf", "n": 3},
    test_path="t.jsonl",
    prompts_path="p.txt",
    seed=3,
    device="cpu",
    progress=False,
    hit_threshold=0.25,
    reference="none",
    kl_samples=16,
    judge=False,
    scenarios=False,
    protocol="emit-good",
    compare_protocols=["paper", "recondition"],
    humaneval=2,
    humaneval_samples=3,
)
EVAL_YAML = """num_samples: 64
max_new_tokens: 32
batch_size: 8
scorer: toxicity
scorer_options: {backend: hf, n: 3}
test_path: t.jsonl
prompts_path: p.txt
seed: 3
device: cpu
progress: false
hit_threshold: 0.25
reference: none
kl_samples: 16
judge: false
scenarios: false
protocol: emit-good
compare_protocols: [paper, recondition]
humaneval: 2
humaneval_samples: 3
"""


def test_eval_options_keys_and_yaml_build_the_same_config(tmp_path):
    expected = EvalConfig(**EVAL_SETTINGS)
    assert _config(["eval", "run", *OLD_EVAL]) == expected
    as_keys = [line.replace(": ", "=", 1) for line in EVAL_YAML.splitlines()]
    assert _config(["eval", "run", *as_keys]) == expected
    (tmp_path / "eval.yaml").write_text(EVAL_YAML)
    assert _config(["eval", "run", str(tmp_path / "eval.yaml")]) == expected
    # Files, then key=value, then the options, wherever they stand on the line.
    mixed = ["eval", "run", "--num-samples", "64", str(tmp_path / "eval.yaml"), "num_samples=1", "--out", "o"]
    assert _config(mixed) == expected and parse_args(mixed).out == "o"
    assert _config(["eval", "run"]) == EvalConfig()
    assert _config(["eval", "run", "--compare-protocols", "-o", "x=1e-3", "scorer_options.y=[1, 2]"]) == EvalConfig(
        scorer_options={"x": 0.001, "y": [1, 2]}
    )


def test_every_eval_setting_is_reachable():
    """The settings the older options could not set (sampling, KL and scenario sizes) are keys now."""
    new = dict(
        temperature=1.0,
        top_p=0.95,
        top_k=40,
        min_new_tokens=0,
        kl_max_new_tokens=16,
        lm_loss_max_tokens=1000,
        scenario_prompts=3,
        scenario_samples=2,
        self_bleu_samples=10,
    )
    assert _config(["eval", "run", *(f"{k}={v}" for k, v in new.items())]) == EvalConfig(**new)


def test_redteam_options_and_keys_build_the_same_config(tmp_path):
    old = ["--rounds", "3", "--trials", "4", "--completions", "5", "--continuations", "6", "--pool-size", "7"]
    old += ["--red-lm", "dir", "--scorer", "pii", "-o", "k=1", "--test", "t", "--prompts", "p", "--seed", "9"]
    old += ["--device", "cuda:1", "--quiet"]
    expected = RedTeamConfig(
        rounds=3,
        trials=4,
        completions=5,
        continuations=6,
        pool_size=7,
        red_lm="dir",
        scorer="pii",
        scorer_options={"k": 1},
        test_path="t",
        prompts_path="p",
        seed=9,
        device="cuda:1",
        progress=False,
    )
    assert _config(["redteam", "run", *old]) == expected
    keys = ["rounds=3", "trials=4", "completions=5", "continuations=6", "pool_size=7", "red_lm=dir", "scorer=pii"]
    keys += ["scorer_options.k=1", "test_path=t", "prompts_path=p", "seed=9", "device=cuda:1", "progress=false"]
    assert _config(["redteam", "run", *keys]) == expected


def test_train_options_are_the_keys_they_name(tmp_path):
    base = ["train", "configs/tiny/toxicity/mle.yaml", "data.path=d"]
    with_options = _config([*base, "output_dir=ignored", "--out", "runs/x", "--quiet"])
    assert with_options == _config([*base, "output_dir=runs/x", "logging.progress=false"])
    assert with_options.output_dir == "runs/x" and not with_options.logging.progress


@pytest.mark.parametrize(
    "argv, named",
    [
        (["eval", "run", "nope=1"], "'nope'"),
        (["eval", "run", "num_samples=many"], "'num_samples'"),
        (["eval", "run", "protocol=best"], "protocol 'best'"),
        (["eval", "run", "--compare-protocols", "paper", "best"], "compare_protocols 'best'"),
        (["eval", "run", "test_path=${nowhere}"], "'test_path'"),
        (["redteam", "run", "rounds=2", "round=3"], "'round'"),
    ],
)
def test_a_bad_setting_is_an_error_that_names_it(argv, named):
    with pytest.raises(ConfigError, match=named):
        _config(argv)


def test_a_yaml_key_that_does_not_exist_names_the_file_and_key(tmp_path):
    (tmp_path / "redteam.yaml").write_text("rounds: 3\npool: 2\n")
    with pytest.raises(ConfigError, match=r"redteam\.yaml: key 'pool'"):
        _config(["redteam", "run", str(tmp_path / "redteam.yaml")])
