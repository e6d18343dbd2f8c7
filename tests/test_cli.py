"""The ``phf`` command: a phf error that reaches it is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from phf.cli import main

TINY_MLE = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "toxicity" / "mle.yaml"


def _inflated_corpus(scored, tmp_path):
    """A copy of the scored corpus whose manifest claims one document more than its shards hold."""
    copy = tmp_path / "scored"
    shutil.copytree(scored, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["counts"]["documents_scored"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy, []


def _missing_tokenizer(scored, tmp_path):
    return scored, [f"data.tokenizer.name={tmp_path / 'no-such-tokenizer'}"]


@pytest.mark.parametrize(
    "setup, named",
    [(_inflated_corpus, "scored"), (_missing_tokenizer, "no-such-tokenizer")],
    ids=["TokenStoreError", "TokenizerError"],
)
def test_a_phf_error_prints_one_line_naming_the_input(setup, named, scored, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PHF_CACHE", str(tmp_path / "cache"))  # a fresh token store: the error is not cached away
    data, overrides = setup(scored, tmp_path)
    status = main(
        [
            "train",
            str(TINY_MLE),
            f"data.path={data}",
            f"output_dir={tmp_path / 'run'}",
            "training.max_steps=1",
            *overrides,
        ]
    )
    err = capsys.readouterr().err
    *progress, last = err.splitlines()  # progress bars come first; nothing may follow the error line
    assert status == 2 and last.startswith("phf train: error: ") and named in last, err
    assert "Traceback" not in err and not any("error" in line for line in progress), err


# --- Every command says what it did: one test per row of the issue, through the CLI ---------------

USER_SCORER = "tests.helpers.user_scorers:length_score"


def run(argv, capsys):
    """(exit status, stdout, stderr) of ``phf ARGV``; argparse's exits count as a status."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def _jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts))
    return path


def test_score_fails_when_nothing_was_scored_and_says_why(tmp_path, capsys):
    records = _jsonl(tmp_path / "in.jsonl", ["One x. Two.", "Three."], field="body")
    status, _, err = run(
        ["score", "--input", str(records), "--out", str(tmp_path / "s1"), "--scorer", USER_SCORER], capsys
    )
    assert status == 2 and "no document scored" in err and "2 records read, 2 skipped" in err, err
    assert "missing_text (2x" in err and "--text-field" in err, err
    assert not (tmp_path / "s1" / "manifest.json").exists()  # nothing to train on is not a corpus
    (tmp_path / "empty.jsonl").write_text("")
    for _ in range(2):  # a rerun says the same
        status, _, err = run(
            ["score", "--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "s2"), "--scorer", USER_SCORER],
            capsys,
        )
        assert status == 2 and "empty.jsonl holds no record" in err, err


def test_score_needs_a_scorer_and_prints_clean_paths(tmp_path, capsys):
    records = _jsonl(tmp_path / "in.jsonl", ["One x. Two.", "Three."])
    status, _, err = run(["score", "--input", str(records), "--out", str(tmp_path / "s")], capsys)
    assert status == 2 and "--scorer" in err
    for _ in range(2):  # a rerun of a finished run still succeeds
        status, out, _ = run(
            ["score", "--input", str(records), "--out", f"{tmp_path / 's'}/", "--scorer", USER_SCORER, "--quiet"],
            capsys,
        )
        assert status == 0 and "2 documents" in out and "0 issues," in out and "s/manifest.json" in out, out
        assert " ," not in out and "//" not in out, out


def test_a_scorer_declares_its_hit_threshold_and_the_cli_overrides_it(tmp_path, capsys):
    records = _jsonl(tmp_path / "in.jsonl", ["One x. Two.", "Three. Four."])
    scorer = "tests.helpers.user_scorers:x_probability"
    status, out, _ = run(["score", "--input", str(records), "--out", str(tmp_path / "a"), "--scorer", scorer], capsys)
    assert status == 0 and "(score > 0.5): 1 of 4 (25.00%)" in out, out
    argv = [
        "score",
        "--input",
        str(records),
        "--out",
        str(tmp_path / "b"),
        "--scorer",
        scorer,
        "--hit-threshold",
        "0.1",
    ]
    status, out, _ = run(argv, capsys)
    assert status == 0 and "(score > 0.1): 4 of 4 (100.00%)" in out, out


def test_runs_and_manifests_do_not_depend_on_the_working_directory(tmp_path, monkeypatch, capsys):
    import random

    from tests.conftest import _documents
    from tests.helpers.training import tiny_overrides

    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    made.mkdir(), elsewhere.mkdir()
    rng = random.Random(0)
    _jsonl(made / "train.jsonl", _documents(rng, 40))
    _jsonl(made / "test.jsonl", _documents(rng, 8))
    monkeypatch.setenv("PHF_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(made)  # every path below is relative to it
    assert (
        run(["score", "--input", "train.jsonl", "--out", "scored", "--scorer", USER_SCORER, "--quiet"], capsys)[0] == 0
    )
    overrides = [o for o in tiny_overrides("unused", "scored", steps=2) if not o.startswith("output_dir=")]
    status, out, err = run(["train", *overrides, "--out", "run", "--quiet"], capsys)
    assert status == 0 and out.strip().startswith("run written to run (") and "next: phf eval run" in out, out + err
    monkeypatch.chdir(elsewhere)
    argv = [
        "eval",
        "../made/run",
        "--num-samples",
        "4",
        "--max-new-tokens",
        "4",
        "--no-scenarios",
        "--reference",
        "none",
        "--quiet",
    ]
    status, out, err = run(argv, capsys)
    assert status == 0 and "held-out LM loss" in out, out + err
    assert "skipped KL from the reference: disabled (--reference none)" in out, out
    assert "None" not in out and "auto" not in out, out  # max@25 None, a CI of unrounded floats, `auto` for none
    assert "Loading weights" not in err, err  # --quiet hides the libraries' bars too


@pytest.mark.parametrize("what", ["missing", "empty", "not-a-run"])
def test_report_refuses_a_path_without_a_run(what, tmp_path, capsys):
    path = tmp_path / what
    if what != "missing":
        path.mkdir()
    if what == "not-a-run":
        (path / "notes.txt").write_text("hello")
    status, _, err = run(["report", str(path), "--out", str(tmp_path / "report")], capsys)
    why = "does not exist" if what == "missing" else "holds no run"
    assert status == 2 and f"{path} {why}" in err, err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    "override, key",
    [("training.lr=-0.001", "training.lr"), ("training.lr=0", "training.lr"), ("model.dropout=1.5", "model.dropout")],
)
def test_numeric_settings_are_checked_before_any_work(override, key, tmp_path, capsys):
    argv = ["train", str(TINY_MLE), f"data.path={tmp_path / 'no-corpus'}", "--out", str(tmp_path / "run"), override]
    status, _, err = run(argv, capsys)
    assert status == 2 and f"phf train: error: {key} must be" in err, err  # before the missing corpus is noticed


def test_train_help_lists_every_config_key_with_its_default(capsys):
    from phf.config import config_keys

    status, out, _ = run(["train", "--help"], capsys)
    assert status == 0 and "--out" in out and "--quiet" in out and "CUDA_VISIBLE_DEVICES" in out
    for setting in config_keys():
        assert f"  {setting.key}={setting.default}  " in out, setting.key
    assert "training.lr=0.0005  (float)\n      Peak learning rate" in out


def test_every_option_of_every_command_has_help_and_the_same_names():
    from phf.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        flags = {flag for action in command._actions for flag in action.option_strings}
        assert {"--out", "--quiet"} <= flags, name  # one name for one idea in every command
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"phf {name} {action.option_strings or action.dest} has no help text"
