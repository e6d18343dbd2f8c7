"""The ``phf`` command: a phf error that reaches it is one line on stderr and exit status 2."""

from __future__ import annotations

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
