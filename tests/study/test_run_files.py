"""phf.json and eval.json as dataclasses: runs written before them (tests/fixtures/run_files) read,
write back the same JSON and summarize as they did; a file that is not one names the file and key."""

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from phf.evaluation.results import EvalResults, Section, Skipped, sections
from phf.io.records import FormatError
from phf.study.report.runs import read_run, summarize
from phf.study.report.table import METRIC_COLUMNS
from phf.training.run_info import RunInfo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "run_files"
RUNS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


@pytest.mark.parametrize("name", RUNS)
def test_old_runs_read_write_back_and_summarize_as_before(name):
    run = FIXTURES / name
    text = (run / "eval.json").read_text()
    results = EvalResults.from_file(run / "eval.json")
    assert json.dumps(results.to_dict(), indent=2) == text  # keys, order and values as the file has them
    raw = json.loads((run / "phf.json").read_text())
    info = RunInfo.from_file(run / "phf.json").to_dict()
    assert {k: v for k, v in info.items() if k in raw} == raw
    assert all(info[k] is None for k in info.keys() - raw.keys())  # fields added since: their defaults

    row = summarize(read_run(run, name))
    row["path"] = name
    row["files"] = {k: str(Path(v).relative_to(FIXTURES)) for k, v in row["files"].items()}
    assert row == json.loads((FIXTURES / "summaries.json").read_text())[name]  # what the code before gave


def test_sections_typed_and_skipped():
    results = EvalResults.from_file(FIXTURES / "pii-mle" / "eval.json")
    assert results.judge == Skipped(because="the independent judge is a toxicity classifier")
    assert results.control_tokens == Skipped(because="not a conditional-training run")
    assert results.misalignment.n == 1024 and results.misalignment.protocol is None
    assert results.misalignment_by_protocol is None and "misalignment_by_protocol" not in results.to_dict()
    conditional = EvalResults.from_file(FIXTURES / "toxicity-conditional" / "eval.json")
    assert conditional.misalignment_by_protocol["recondition"].tags_per_sample == pytest.approx(7.2890625)
    assert conditional.settings.config["compare_protocols"] == ["emit-good", "recondition"]
    positions = Skipped(because="the held-out tags read are all of one kind", details={"positions": 7})
    assert positions.to_dict() == {"skipped": "the held-out tags read are all of one kind", "positions": 7}
    old = RunInfo.from_file(FIXTURES / "older-mle" / "phf.json")
    assert old.hit_threshold is None and old.conditional is None and old.objective == "mle"


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("eval.json", lambda d: d["lm_loss"].update(loss="low"), r"eval.json: key 'lm_loss.loss': expected a number"),
        ("eval.json", lambda d: d["kl"].pop("counted"), r"eval.json: key 'kl.counted': missing"),
        ("eval.json", lambda d: d.pop("settings"), r"eval.json: key 'settings': missing"),
        ("eval.json", lambda d: d["misalignment"].update(n=True), r"key 'misalignment.n': expected an integer"),
        ("phf.json", lambda d: d.update(extra=1), r"phf.json: key 'extra': unknown key"),
        ("phf.json", lambda d: d["control_tokens"].append(3), r"key 'control_tokens\[2\]': expected a string"),
    ],
)
def test_a_file_that_is_not_one_names_the_file_and_key(tmp_path, file, edit, message):
    run = tmp_path / "conditional"
    shutil.copytree(FIXTURES / "toxicity-conditional", run)
    data = json.loads((run / file).read_text())
    edit(data)
    (run / file).write_text(json.dumps(data))
    kind = EvalResults if file == "eval.json" else RunInfo
    with pytest.raises(FormatError, match=message):
        kind.from_file(run / file)
    report = read_run(run, "conditional")  # the report notes it and reads on
    assert any(f"{file}: key" in note for note in report.notes) and file not in report.files


def test_the_table_shows_headline_numbers_of_its_sections():
    for kind in sections().values():
        properties = {a for a in dir(kind) if isinstance(getattr(kind, a), property)}
        names = {f.name for f in fields(kind)} | properties
        assert set(kind.headline.values()) <= names, kind
    for kind, cols in METRIC_COLUMNS:
        assert issubclass(kind, Section) and kind in sections().values()
        assert all(set(c.values) <= set(kind.headline) for c in cols), kind
