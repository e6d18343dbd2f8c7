"""Fuzzing what users type: config files, key=value overrides, study configs and CLI options.
Every invalid input must be one line that names the key (or option, or file), never a traceback."""

import json
from dataclasses import fields, is_dataclass

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from phf import cli
from phf.config import ConfigError, EvalConfig, TrainConfig
from phf.study import StudyConfig, load_study

# Bounded (< 30 s in all on 2 cores); no shrinking: a failure prints its input as generated.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


def leaf_keys(cls, prefix=""):
    keys = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            keys += leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


TRAIN_KEYS = [k for k in leaf_keys(TrainConfig) if k not in ("output_dir", "data.path")]  # no writes elsewhere
STUDY_KEYS = [k for k in leaf_keys(StudyConfig) if k != "out"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True), st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
typed = st.one_of(json_values.map(json.dumps), st.text(max_size=20))  # valid YAML values, and anything at all
# Made-up keys are printable: a key with a line break in it could not be named on one line.
made_up = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="="), min_size=1, max_size=20
)
keys = st.one_of(st.sampled_from(TRAIN_KEYS), made_up)


def run_cli(argv):
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse: usage, then one error line naming the argument
        return exc.code


def one_error_line(capsys, command):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(("phf: error:", f"phf {command}: error:")), err
    return errors[0]


def names(line, key):
    """Whether ``line`` names ``key``, as typed or escaped (repr) where it holds unprintable characters."""
    return key.strip() in line or repr(key.strip())[1:-1] in line


@pytest.fixture()
def base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a key that names a relative path stays inside the test
    return [f"output_dir={tmp_path / 'run'}", f"data.path={tmp_path / 'no-corpus'}", "training.max_steps=1"]


@FUZZ
@given(key=keys, value=typed)
# Once unnamed: a key with a quote, and a value that is not valid YAML (a bad unicode escape), made a
# message that quoted the override whole, and its repr escaped the quote in the key.
@example(key="W'>", value=json.dumps(["\U0002f116"]))  # JSON writes it as a surrogate pair YAML rejects
@example(key="training.export_steps", value="[[]]")  # once a TypeError: OmegaConf lets [[]] into list[int]
def test_train_overrides(base, capsys, key, value):
    assert run_cli(["train", *base, f"{key}={value}"]) == 2
    line = one_error_line(capsys, "train")
    # A valid setting gets as far as the missing corpus; anything else is named.
    assert names(line, key) or "is not a scored corpus" in line, line


@FUZZ
@given(document=st.one_of(st.text(max_size=80), st.dictionaries(keys, json_values, max_size=3).map(json.dumps)))
def test_train_config_files(base, tmp_path, capsys, document):
    path = tmp_path / "fuzzed.yaml"
    path.write_text(document)
    assert run_cli(["train", str(path), *base]) == 2
    line = one_error_line(capsys, "train")
    assert str(path) in line or any(k in line for k in leaf_keys(TrainConfig)), line  # the file, or a key


@FUZZ
@given(key=st.one_of(st.sampled_from(STUDY_KEYS), made_up), value=typed)
@example(key="tasks", value="[[]]")  # once a TypeError: OmegaConf lets a list into list[str]
def test_study_overrides(tmp_path, key, value):
    study = tmp_path / "study.yaml"
    study.write_text("tasks: [pep8]\nobjectives: [mle]\n")
    try:
        load_study(str(study), [f"{key}={value}"])
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and (names(message, key) or str(study) in message), message


@FUZZ
@given(key=st.one_of(st.sampled_from(leaf_keys(EvalConfig)), made_up.filter(lambda k: k[0] != "-")), value=typed)
# Once unnamed: OmegaConf's key reader raised an IndexError on "[", and the message quoted the whole
# override, whose repr escaped the quote in the key.
@example(key="[", value="")
@example(key=".x'", value='{"a": 1}')
def test_eval_settings(key, value):
    # `phf eval RUN key=value`: a config, or one line that names the key, before any model is loaded.
    try:
        assert isinstance(cli.settings(cli.parse_args(["eval", "run", f"{key}={value}"])), EvalConfig)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and names(message, key), message


OPTIONS = {
    "--num-proc": st.integers(-3, 1),
    "--shard": st.text(max_size=6),
    "--shard-size": st.integers(-3, 5),
    "--batch-docs": st.integers(-3, 5),
    "--text-field": st.sampled_from(["text", "body", ""]),
    "--scorer": st.sampled_from(["tests.helpers.user_scorers:length_score", "nope", "a:b", "pep8"]),
    "-o": st.text(max_size=10),
}


@FUZZ
@given(
    chosen=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.none(), min_size=1, max_size=3).flatmap(
        lambda d: st.fixed_dictionaries({k: OPTIONS[k].map(str) | st.text(max_size=6) for k in d})
    )
)
def test_score_options(tmp_path, capsys, chosen):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "One. Two x."}\n{"text": "Three."}\n')
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    argv = ["score", "--input", str(src), "--out", str(out), "--quiet"]
    if "--scorer" not in chosen:
        argv += ["--scorer", "tests.helpers.user_scorers:length_score"]
    for option, value in chosen.items():
        argv.append(f"{option}={value}")
    rc = run_cli(argv)
    if rc == 0:
        return
    assert rc == 2
    line = one_error_line(capsys, "score")
    assert any(option in line or option.lstrip("-") in line for option in chosen) or "scorer" in line, line
