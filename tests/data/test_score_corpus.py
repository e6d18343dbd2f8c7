"""Corpus scoring: schema, losslessness, parallel/sharded equivalence, resume after SIGKILL, bad input."""

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from phf.data.score_corpus import ScoringError, load_scored, score_corpus

USER = "tests.helpers.user_scorers"
ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path, texts, extra_lines=()):
    with open(path, "wb") as handle:
        for i, text in enumerate(texts):
            handle.write((json.dumps({"text": text, "id": i}) + "\n").encode())
        for line in extra_lines:
            handle.write(line)
    return path


def corpus_texts(n):
    return [f"Doc {i}. It has x{'x' * (i % 7)} marks! Second sentence?\n\nA paragraph {i}" for i in range(n)]


def rows(out):
    table = pq.read_table(sorted((Path(out) / "data").glob("*.parquet"))).to_pylist()
    return sorted(table, key=lambda r: r["doc_index"])


def test_schema_lossless_and_hand_checked_scores(tmp_path):
    texts = corpus_texts(30)
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    manifest = score_corpus(str(src), str(tmp_path / "out"), f"{USER}:length_score", shard_size=8, progress=False)
    got = rows(tmp_path / "out")
    assert [r["doc_index"] for r in got] == list(range(30))
    for row, text in zip(got, texts):
        assert "".join(row["texts"]) == text
        assert row["scores"] == [s.count("x") / len(s) for s in row["texts"]]
        assert row["avg_score"] == pytest.approx(sum(row["scores"]) / len(row["scores"]))
        assert row["num_sents"] == len(row["texts"])
        assert json.loads(row["meta"]) == {"id": row["doc_index"]}
    assert manifest["counts"]["documents_scored"] == 30 and len(manifest["shards"]) == 4
    assert manifest["counts"]["segments"] == sum(r["num_sents"] for r in got)
    assert manifest["input"]["fingerprint"] and manifest["scorer"]["name"].endswith("length_score")
    # Loadable by the HF datasets library with no phf code, and by phf's helper.
    import datasets

    assert datasets.load_dataset(str(tmp_path / "out"), split="train").num_rows == 30
    assert load_scored(tmp_path / "out").column_names[:5] == ["texts", "scores", "avg_score", "num_sents", "meta"]


def test_num_proc_and_job_array_match_a_single_process(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", corpus_texts(50))
    score_corpus(str(src), str(tmp_path / "one"), "toxicity", shard_size=10, progress=False)
    score_corpus(str(src), str(tmp_path / "two"), "toxicity", shard_size=10, num_proc=2, progress=False)
    status = score_corpus(str(src), str(tmp_path / "arr"), "toxicity", shard_size=10, shard="0/2", progress=False)
    assert status["complete"] is False and status["shards_done_now"] == [0, 2, 4]
    manifest = score_corpus(str(src), str(tmp_path / "arr"), "toxicity", shard_size=10, shard="1/2", progress=False)
    assert manifest["counts"]["documents_scored"] == 50
    assert rows(tmp_path / "one") == rows(tmp_path / "two") == rows(tmp_path / "arr")


def kill_and_rerun(tmp_path, *options: str, timeout: float = 60) -> None:
    """SIGKILL ``phf score [options]`` (10 shards of a slow scorer) once 3 shards are done, then
    rerun it: finished shards are not redone, no document is lost or doubled, no temp file is left."""
    src = write_jsonl(tmp_path / "in.jsonl", corpus_texts(40))
    out = tmp_path / "out"
    # fmt: off
    cmd = [sys.executable, "-m", "phf.cli", "score", "--input", str(src), "--out", str(out),
           "--scorer", f"{USER}:slow_score", "--shard-size", "4", "--batch-docs", "2", "--quiet", *options]
    # fmt: on
    env = {**os.environ, "PHF_TEST_SLEEP": "0.1"}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while len(list((out / "shards").glob("*.json"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.read_text() for p in (out / "shards").glob("*.json")}
    assert 3 <= len(finished) < 10 and not (out / "manifest.json").exists(), "killed in the middle"

    subprocess.run(cmd, env={**env, "PHF_TEST_SLEEP": "0"}, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    for name, text in finished.items():
        assert (out / "shards" / name).read_text() == text, f"finished shard {name} was redone"
    assert [r["doc_index"] for r in rows(out)] == list(range(40)), "no document lost or duplicated"
    assert not list(out.glob("data/.*")), "no temporary files left behind"
    assert json.loads((out / "manifest.json").read_text())["counts"]["documents_scored"] == 40


def test_resume_after_sigkill_redoes_only_unfinished_shards(tmp_path):
    kill_and_rerun(tmp_path)


def test_bad_records_are_reported_with_locations(tmp_path):
    bad = [
        b'{"text": broken\n',
        b'{"text": 5}\n',
        b'{"text": ""}\n',
        b"\n",
        '{"text": "caf\xe9 in latin-1"}\n'.encode("latin-1"),
        b"[1, 2]\n",
        b'{"body": "no text field"}',
    ]
    src = write_jsonl(tmp_path / "in.jsonl", ["Fine text. Another."], bad)
    manifest = score_corpus(str(src), str(tmp_path / "out"), "toxicity", progress=False)
    by_kind = manifest["issues"]["by_kind"]
    assert by_kind == {
        "malformed_json": 1,
        "text_not_string": 1,
        "empty_document": 1,
        "blank_line": 1,
        "invalid_utf8": 1,
        "not_an_object": 1,
        "missing_text": 1,
    }
    assert manifest["issues"]["examples"]["malformed_json"][0]["location"] == f"{src}:2"
    assert manifest["issues"]["examples"]["missing_text"][0]["location"] == f"{src}:8"
    assert manifest["counts"] == {
        **manifest["counts"],
        "documents_read": 8,
        "documents_scored": 2,
        "documents_skipped": 6,
    }
    assert "caf\ufffd in latin-1" in "".join(rows(tmp_path / "out")[1]["texts"])  # repaired and scored
    assert len((tmp_path / "out" / "issues.jsonl").read_text().splitlines()) == 7

    with pytest.raises(ScoringError, match=rf"{src}:2: malformed_json"):
        score_corpus(str(src), str(tmp_path / "strict"), "toxicity", strict=True, progress=False)
    assert not list((tmp_path / "strict").glob("data/*.parquet")), "strict failure writes no shard"


def test_scorer_exception_on_one_segment_costs_only_that_segment(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ["Good one. Another.", "Fine. BOOM goes this. Fine again.", "Ok."])
    manifest = score_corpus(str(src), str(tmp_path / "out"), f"{USER}:explodes_on_boom", progress=False)
    got = rows(tmp_path / "out")
    assert got[0]["scores"] == [0.25, 0.25] and got[2]["scores"] == [0.25]
    assert got[1]["scores"][0] == 0.25 and math.isnan(got[1]["scores"][1]) and got[1]["scores"][2] == 0.25
    assert got[1]["avg_score"] == 0.25  # mean of the segments that were scored
    assert manifest["counts"]["scorer_errors"] == 1
    assert manifest["issues"]["examples"]["scorer_error"][0]["location"] == f"{src}:2"


def test_a_ten_megabyte_document_is_scored(tmp_path):
    text = "A sentence of ordinary words goes here. " * 260_000  # ~10.4 MB
    src = write_jsonl(tmp_path / "in.jsonl", [text])
    started = time.perf_counter()
    manifest = score_corpus(str(src), str(tmp_path / "out"), "toxicity", progress=False)
    assert manifest["counts"]["segments"] == 260_000
    assert "".join(rows(tmp_path / "out")[0]["texts"]) == text
    assert time.perf_counter() - started < 120


def test_input_formats_parquet_gzip_txt_folder_and_hf_dataset(tmp_path):
    import datasets

    texts = corpus_texts(12)
    expected = [
        [s.count("x") / len(s) for s in row["texts"]]
        for row in rows_of(
            score_corpus(
                str(write_jsonl(tmp_path / "a.jsonl", texts)),
                str(tmp_path / "o1"),
                f"{USER}:length_score",
                progress=False,
            ),
            tmp_path / "o1",
        )
    ]
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as handle:
        handle.write((tmp_path / "a.jsonl").read_bytes())
    ds = datasets.Dataset.from_dict({"body": texts, "id": list(range(12))})
    ds.to_parquet(str(tmp_path / "c.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:03d}.txt").write_text(text)
    for name, field in [("b.jsonl.gz", "text"), ("c.parquet", "body"), ("saved", "body"), ("txt", "text")]:
        out = tmp_path / f"out-{name}"
        score_corpus(str(tmp_path / name), str(out), f"{USER}:length_score", text_field=field, progress=False)
        assert [r["scores"] for r in rows(out)] == expected, name
    assert json.loads(rows(tmp_path / "out-txt")[3]["meta"]) == {"path": "003.txt"}


def rows_of(manifest, out):
    assert manifest["counts"]["documents_scored"] > 0
    return rows(out)


def test_bad_arguments_change_nothing(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", corpus_texts(5))
    with pytest.raises(ScoringError, match="does not exist"):
        score_corpus(str(tmp_path / "missing.jsonl"), str(tmp_path / "o"), progress=False)
    with pytest.raises(ValueError, match="unknown scorer"):
        score_corpus(str(src), str(tmp_path / "o"), "nope", progress=False)
    with pytest.raises(ScoringError, match="must look like i/N"):
        score_corpus(str(src), str(tmp_path / "o"), shard="1-2", progress=False)
    with pytest.raises(ScoringError, match=r"no column 'body'"):
        score_corpus(str(write_parquet(tmp_path)), str(tmp_path / "o"), text_field="body", progress=False)
    assert not (tmp_path / "o").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("keep me")
    with pytest.raises(ScoringError, match="holds no scoring run"):
        score_corpus(str(src), str(tmp_path / "busy"), progress=False)
    score_corpus(str(src), str(tmp_path / "done"), "toxicity", progress=False)
    with pytest.raises(ScoringError, match="different scorer"):
        score_corpus(str(src), str(tmp_path / "done"), "pep8", progress=False)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*.parquet")}
    score_corpus(str(src), str(tmp_path / "done"), "toxicity", progress=False)  # finished: nothing redone
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*.parquet")}


def write_parquet(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "t.parquet")
    return tmp_path / "t.parquet"
